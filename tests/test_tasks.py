"""The task and family protocols: declared batches match the data pipelines,
a toy family and task plug in without touching generic modules, the training
loop names no family or task, and the package has no import cycles."""

import ast
import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import layers as L
from lmjax import models, tasks, trainer
from lmjax.config import Config, DataConfig
from lmjax.data import classification_examples, packing
from lmjax.data.bert_examples import BertExamples
from lmjax.data.corpus import TokenizedCorpus
from lmjax.data.stream import stack
from lmjax.errors import LmjaxError
from lmjax.models.family import Family, Workload
from lmjax.tasks import base

from conftest import TINY_BERT, replace

PACKAGE = Path(__file__).parent.parent / "lmjax"


def _bert_cfg(**data):
  return Config(model=TINY_BERT, data=DataConfig(max_seq_len=32, max_predictions_per_seq=5, **data))


def test_bert_examples_match_the_declared_batch():
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 12, 40)
  corpus = TokenizedCorpus(rng.integers(5, 200, lengths.sum()).astype(np.int32),
                           np.concatenate([[0], np.cumsum(lengths)]), np.arange(0, 41, 5))
  cfg = _bert_cfg()
  examples = BertExamples(corpus, cfg.data, 256, seed=0)
  for name in ("mlm_nsp", "mlm"):
    base.check_batch(tasks.get(name), cfg, stack([examples[k] for k in range(4)]), rows=4)


def test_packed_rows_match_the_declared_batch():
  from lmjax.models.gpt import GptConfig
  cfg = Config(model=GptConfig.preset("tiny", vocab_size=256), data=DataConfig(max_seq_len=16))
  docs = [np.arange(5, 5 + n, dtype=np.int32) for n in (7, 30, 3, 12)]
  rows = packing.PackedExamples.from_documents(docs, 2, 16, seed=0)
  base.check_batch(tasks.get("causal_lm"), cfg, stack([rows[k] for k in range(3)]), rows=3)


def test_classification_rows_match_the_declared_batch():
  cfg = _bert_cfg()
  ids = np.ones((6, 32), np.int32)
  split = classification_examples.EncodedSplit(ids, ids * 0, ids, np.arange(6, dtype=np.int32) % 2, [""] * 6)
  task = tasks.get("classification")
  base.check_batch(task, cfg, classification_examples.ClassificationExamples(split, 0).split.rows(np.arange(4)))
  base.check_batch(task, cfg, next(classification_examples.eval_batches(split, 4)))


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_synthetic_batches_follow_the_declaration(name):
  task = tasks.get(name)
  cfg = _bert_cfg()
  if "bert" not in task.families:
    from lmjax.models.gpt import GptConfig
    cfg = dataclasses.replace(cfg, model=GptConfig.preset("tiny", vocab_size=256))
  batch = base.synthetic_batch(task, cfg, np.random.default_rng(0))
  base.check_batch(task, cfg, batch, rows=cfg.train.batch_size)
  with pytest.raises(AssertionError):
    base.check_batch(task, cfg, {k: v[:, None] if v.ndim else v for k, v in batch.items()})


# --- a toy family and a toy task, defined here and registered: nothing generic changes ---

@dataclasses.dataclass(frozen=True)
class ToyConfig:
  vocab_size: int = 64
  hidden_size: int = 16
  dtype: str = "float32"

  def mesh_divisors(self):
    return {"vocab_size": (self.vocab_size, "tensor"), "hidden_size": (self.hidden_size, "fsdp")}

  def flops_per_token(self, workload: Workload, training: bool = True) -> float:
    forward = 2 * self.hidden_size * self.vocab_size
    return 3 * forward if training else forward


class ToyBigram(nnx.Module):
  """Next-token logits from the current token alone."""

  def __init__(self, cfg: ToyConfig, *, rngs: nnx.Rngs):
    self.embed = L.Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), init_std=0.02, rngs=rngs)
    self.out = L.Dense(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), init_std=0.02, rngs=rngs)

  def __call__(self, ids_bt, rng=None):
    return self.out(self.embed(ids_bt, jnp.float32)).astype(jnp.float32)


class Cycle:
  """Rows of a repeating sequence 0, 1, ..., 7: a bigram model learns it exactly."""

  def __init__(self, seq_len):
    self.seq_len = seq_len

  def __len__(self):
    return 8

  def __getitem__(self, k):
    ids = (np.arange(self.seq_len + 1) + k) % 8
    return {"ids": ids[:-1].astype(np.int32), "next": ids[1:].astype(np.int32)}


class ToyNext(base.Task):
  name = "toy_next"
  families = ("toy",)
  loss_terms = ("toy_loss",)

  def batch(self, cfg):
    t = cfg.data.max_seq_len
    return {"ids": base.BatchField((t,), np.int32, ("seq",), base.random_ids(0, 8)),
            "next": base.BatchField((t,), np.int32, ("seq",), base.random_ids(0, 8))}

  def open(self, cfg, workdir, mesh, resumed):
    rows = Cycle(cfg.data.max_seq_len)
    return base.TaskData(cfg, rows, lambda ctx, params: base.held_out(self, ctx, params, rows, 1))

  def denominators(self, batch):
    return {"n": jnp.asarray(batch["ids"].size, jnp.float32)}

  def loss(self, model, batch, rng, denominators):
    ce, correct, count = base.weighted_ce(model(batch["ids"]), batch["next"], jnp.ones(batch["ids"].shape))
    return ce / denominators["n"], {"toy_loss": (ce, count), "accuracy": (correct, count)}


@pytest.fixture
def toy_registered():
  family = models.register(Family(name="toy", config=ToyConfig, models={"pretraining": ToyBigram}))
  task = tasks.register(ToyNext())
  yield family, task
  del models.FAMILIES["toy"], tasks.TASKS["toy_next"]


def test_a_toy_family_and_task_train_through_the_generic_loop(toy_registered, tiny_cfg, tmp_path):
  cfg = replace(dataclasses.replace(tiny_cfg, model=ToyConfig()), data=dict(max_seq_len=8),
                train=dict(objective="toy_next", steps=30, batch_size=8, learning_rate=0.1, warmup_steps=1,
                           eval_every=30))
  last = trainer.train(cfg, tmp_path)
  assert last["accuracy"] == 1.0 and last["loss"] < 0.5
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["family"] == "toy" and saved["train"]["objective"] == "toy_next"
  from lmjax import bench
  out = bench.run(cfg, steps=1, warmup=0)
  assert out["objective"] == "toy_next" and out["model_flops_per_token"] == 3 * 2 * 16 * 64
  with pytest.raises(LmjaxError, match="trains a 'toy' model"):
    trainer.train(replace(tiny_cfg, train=dict(objective="toy_next")), tmp_path / "x")


def _code_names(path: Path) -> set[str]:
  """Identifiers and string constants in code, docstrings and comments left out."""
  tree = ast.parse(path.read_text())
  docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
  out = set()
  for n in ast.walk(tree):
    if isinstance(n, ast.Name):
      out.add(n.id.lower())
    elif isinstance(n, ast.Attribute):
      out.add(n.attr.lower())
    elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
      out.add(n.value.lower())
    elif isinstance(n, ast.alias):
      out.add(n.name.lower())
  return out


@pytest.mark.parametrize("module", ["trainer.py", "bench.py", "runs.py", "checkpoint.py"])
def test_generic_modules_name_no_family_or_task(module):
  words = ("bert", "gpt", "llama", "t5", "mlm", "nsp", "causal_lm", "classification", "span_corruption", "seq2seq")
  names = _code_names(PACKAGE / module)
  found = sorted(n for n in names for w in words if w in n.split(".") or w == n or n.startswith(w + "_"))
  assert not found, f"{module} names {found}"


def _imports() -> dict[str, set[str]]:
  """module -> lmjax modules it imports (at any depth in the file)."""
  modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    deps = set()
    for n in ast.walk(ast.parse(path.read_text())):
      if isinstance(n, ast.Import):
        deps |= {a.name for a in n.names if a.name.startswith("lmjax")}
      elif isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("lmjax"):
        deps |= {f"{n.module}.{a.name}" if f"{n.module}.{a.name}" in modules else n.module for a in n.names}
    graph[name] = {d for d in deps if d in modules and d != name}
  return graph


def test_the_package_has_no_import_cycles():
  graph = _imports()
  state: dict[str, int] = {}

  def visit(node, path):
    state[node] = 1
    for dep in sorted(graph[node]):
      if state.get(dep) == 1:
        pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
      if dep not in state:
        visit(dep, path + [dep])
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
