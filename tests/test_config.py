import dataclasses
import json
from pathlib import Path

import pytest

from lmjax import config as config_lib
from lmjax import models, tasks
from lmjax.errors import LmjaxError
from lmjax.models.family import Workload
from lmjax.models.bert import BertConfig, PRESETS

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_every_recipe_loads(path, arg):
  cfg = config_lib.load_recipe(f"{path}:{arg}" if arg else str(path))
  assert isinstance(cfg, config_lib.Config)
  task = tasks.get(cfg.train.objective)
  assert models.of(cfg.model).name in task.families
  task.check(cfg)  # lengths fit the model, settings in range
  # The resolved config survives its JSON form (what goes into the workdir).
  assert config_lib.Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_recipes_start_with_their_command():
  for path in CONFIGS:
    doc = path.read_text().split('"""')[1]
    assert f"--config configs/{path.name}" in doc, path


def test_override_parses_types(tiny_cfg):
  cfg = config_lib.override(tiny_cfg, ["train.steps=40", "train.learning_rate=5e-4", "model.pre_ln=true",
                                       "mesh.rules=fsdp", "data.max_seq_len=16"])
  assert cfg.train.steps == 40 and isinstance(cfg.train.steps, int)
  assert cfg.train.learning_rate == 5e-4
  assert cfg.model.pre_ln is True
  assert cfg.mesh.rules == "fsdp"
  assert cfg.data.max_seq_len == 16
  assert tiny_cfg.train.steps == 6  # frozen: the original is untouched


def test_related_overrides_apply_together_in_any_order(tiny_cfg):
  """hidden_size=42 alone fails against the recipe's 4 heads; with num_heads=6 given after it, it is fine."""
  cfg = config_lib.override(tiny_cfg, ["model.hidden_size=42", "model.num_heads=6", "model.hidden_size=48"])
  assert (cfg.model.hidden_size, cfg.model.num_heads) == (48, 6)  # the last value of a key wins
  with pytest.raises(LmjaxError, match="not divisible"):
    config_lib.override(tiny_cfg, ["model.hidden_size=42"])


def test_unknown_key_names_the_closest(tiny_cfg):
  with pytest.raises(LmjaxError, match=r"Unknown config key 'train.stpes'.*train\.steps"):
    config_lib.override(tiny_cfg, ["train.stpes=3"])
  with pytest.raises(LmjaxError, match=r"Unknown config key 'trian.steps'.*train\.steps"):
    config_lib.override(tiny_cfg, ["trian.steps=3"])
  with pytest.raises(LmjaxError, match="KEY=VALUE"):
    config_lib.override(tiny_cfg, ["train.steps"])


@pytest.mark.parametrize("item, expected", [
    ("train.steps=abc", "expects a value of type int"),
    ("train.steps=1.5", "expects a value of type int"),
    ("train.learning_rate=fast", "expects a value of type float"),
    ("model.pre_ln=maybe", "expects a value of type bool"),
])
def test_wrong_type_is_refused(tiny_cfg, item, expected):
  with pytest.raises(LmjaxError, match=expected):
    config_lib.override(tiny_cfg, [item])


def test_missing_recipe_file():
  with pytest.raises(LmjaxError, match="not found"):
    config_lib.load_recipe("configs/no_such_recipe.py")


def test_presets_match_published_sizes():
  expected = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512), "base": (12, 768),
              "large": (24, 1024)}
  assert PRESETS == expected
  for name, (layers, hidden) in expected.items():
    cfg = BertConfig.preset(name)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.mlp_dim) == (layers, hidden, hidden // 64, 4 * hidden)


def test_flops_per_token_hand_count():
  cfg = BertConfig(vocab_size=100, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16)
  t, p = 4, 2
  # QKV + out: 4 * 2*8*8 = 512; MLP: 2 * 2*8*16 = 512; scores + values: 2 * 2*4*8 = 128
  per_layer = 512 + 512 + 128
  mlm = p / t * (2 * 8 * 8 + 2 * 8 * 100)  # transform + vocabulary at predicted positions only
  per_seq = (2 * 8 * 8 + 2 * 8 * 2) / t  # pooler + NSP
  assert cfg.flops_per_token(Workload(t, p), training=False) == pytest.approx(per_layer + mlm + per_seq)
  assert cfg.flops_per_token(Workload(t, p)) == pytest.approx(3 * (per_layer + mlm + per_seq))


def test_data_groups_partition_the_data_section_and_tasks_name_theirs():
  from lmjax import tasks
  grouped = [f for fields in config_lib.DATA_GROUPS.values() for f in fields]
  assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(config_lib.DataConfig))
  assert len(grouped) == len(set(grouped))
  for task in tasks.TASKS.values():
    assert set(task.data_groups) <= set(config_lib.DATA_GROUPS) - {"common"}, task.name
  data = config_lib.DataConfig(mask_prob=0.2, text_column="review", max_seq_len=64)
  assert config_lib.unused_data_fields(data, tasks.get("causal_lm").data_groups) == ["mask_prob", "text_column"]
  assert config_lib.unused_data_fields(data, tasks.get("mlm_nsp").data_groups) == ["text_column"]
  assert config_lib.unused_data_fields(data, tasks.get("classification").data_groups) == ["mask_prob"]


def test_a_field_the_task_does_not_read_is_reported(tiny_cfg, capsys):
  from lmjax import sharding as sh
  from lmjax import trainer
  trainer.validate(config_lib.override(tiny_cfg, ["data.text_column=review"]), sh.make_mesh(-1, 1, 1))
  assert "data.text_column is set but train.objective='mlm_nsp' does not read it" in capsys.readouterr().err


def test_async_save_defaults_to_auto_and_takes_true_or_false(tiny_cfg):
  from lmjax import trainer  # noqa: PLC0415

  assert config_lib.CheckpointConfig().async_save is None
  assert trainer.async_saves(config_lib.CheckpointConfig()) is False  # the CPU backend: no second copy
  cfg = tiny_cfg
  for text, value in (("true", True), ("false", False)):
    cc = config_lib.override(cfg, [f"checkpoint.async_save={text}"]).checkpoint
    assert cc.async_save is value and trainer.async_saves(cc) is value
  with pytest.raises(LmjaxError, match="checkpoint.async_save"):
    config_lib.override(cfg, ["checkpoint.async_save=sometimes"])
