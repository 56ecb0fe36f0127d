"""Tasks (training objectives) as plug-ins, registered by objective name.

    from lmjax import tasks
    task = tasks.get("causal_lm")
    task.batch(cfg)          # the batch, declared once
    task.loss(model, batch, rng, task.denominators(batch))

Each task is one module; `lmjax.tasks.base.Task` is the protocol the
training loop relies on. Adding a task: a new module with a `Task` subclass
and one line in `_BUILTIN` (docs/architecture.md has the checklist).
"""

from __future__ import annotations

from lmjax.errors import LmjaxError
from lmjax.tasks.base import Task
from lmjax.tasks.bert_pretraining import Mlm, MlmNsp
from lmjax.tasks.causal_lm import CausalLm
from lmjax.tasks.classification import Classification
from lmjax.tasks.seq2seq import Seq2Seq
from lmjax.tasks.span_corruption import SpanCorruption
from lmjax.tasks.token_classification import TokenClassification

_BUILTIN = (MlmNsp(), Mlm(), CausalLm(), SpanCorruption(), Classification(), TokenClassification(), Seq2Seq())
TASKS: dict[str, Task] = {t.name: t for t in _BUILTIN}


def register(task: Task) -> Task:
  """Adds a task defined outside this package (a plug-in, or a test's toy)."""
  TASKS[task.name] = task
  return task


def get(name: str) -> Task:
  if name not in TASKS:
    raise LmjaxError(f"Unknown train.objective {name!r}; available: {', '.join(TASKS)}.")
  return TASKS[name]
