"""Model families. A family is one file holding its frozen config and modules;
this registry maps a family name to its config class and, per task, the
model class ("pretraining", "classification", ...).

    from lmjax.models.bert import BertConfig, BertForPreTraining
    model = BertForPreTraining(BertConfig.preset("tiny"), rngs=nnx.Rngs(0))
"""

from __future__ import annotations

from lmjax.models import bert, gpt

FAMILIES = {
    "bert": (bert.BertConfig, {"pretraining": bert.BertForPreTraining,
                               "classification": bert.BertForSequenceClassification}),
    "gpt": (gpt.GptConfig, {"pretraining": gpt.GptForCausalLM}),
}


def family_of(model_cfg) -> str:
  for name, (cfg_cls, _) in FAMILIES.items():
    if isinstance(model_cfg, cfg_cls):
      return name
  raise TypeError(f"{type(model_cfg).__name__} is not a registered model config")


def config_class(family: str):
  if family not in FAMILIES:
    from lmjax.errors import LmjaxError  # noqa: PLC0415
    raise LmjaxError(f"Unknown model family {family!r}; known: {', '.join(FAMILIES)}.")
  return FAMILIES[family][0]


def model_class(model_cfg, task: str = "pretraining"):
  family = family_of(model_cfg)
  classes = FAMILIES[family][1]
  if task not in classes:
    from lmjax.errors import LmjaxError  # noqa: PLC0415
    raise LmjaxError(f"The {family!r} family has no model for the {task!r} task; it has: {', '.join(classes)}.")
  return classes[task]
