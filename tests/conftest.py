"""Shared fixtures. 8 host CPU devices, set before JAX starts."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, MeshConfig, TrainConfig  # noqa: E402
from lmjax.models.bert import BertConfig  # noqa: E402

_WORDS = ("the king queen lord lady night day love death sword crown castle storm sea ship letter ghost "
          "father mother son daughter friend enemy speak swear fly stay come go weep laugh fight sleep dream "
          "bright dark cold sweet bitter noble false true gentle proud poor rich old young fair foul "
          "heaven earth fire water wind stone rose blood heart eye hand tongue word name honour grief joy").split()


def write_corpus(root: Path, num_files: int = 12, paragraphs: int = 6, seed: int = 0) -> Path:
  """A small synthetic English-like corpus: files of blank-line separated paragraphs."""
  rng = random.Random(seed)
  root.mkdir(parents=True, exist_ok=True)
  for f in range(num_files):
    # Each file draws from its own slice of the word list, so documents have
    # topics (next-sentence prediction has something to learn).
    topic = _WORDS[(f * 7) % len(_WORDS):] + _WORDS[:(f * 7) % len(_WORDS)]
    paras = []
    for _ in range(paragraphs):
      sentences = []
      for _ in range(rng.randint(3, 8)):
        words = [rng.choice(topic[:30]) for _ in range(rng.randint(4, 12))]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
      paras.append(" ".join(sentences))
    (root / f"doc{f:02d}.txt").write_text("\n\n".join(paras) + "\n", encoding="utf-8")
  return root


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
  return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("lmjax_cache")


TINY_BERT = BertConfig(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
                       max_position_embeddings=32)


def make_tiny_cfg(corpus_dir: Path, cache_dir: Path) -> Config:
  """A run config that trains in seconds on the synthetic corpus."""
  return Config(
      model=TINY_BERT,
      data=DataConfig(dataset="text_dir", text_dir=str(corpus_dir), doc_split="blank_line",
                      cache_dir=str(cache_dir), max_seq_len=32, max_predictions_per_seq=5, prefetch=1),
      train=TrainConfig(steps=6, batch_size=16, learning_rate=1e-3, warmup_steps=2, eval_every=3, eval_batches=1),
      mesh=MeshConfig(data=-1),
      checkpoint=CheckpointConfig(every=3, keep=5, async_save=True),
      logging=LoggingConfig(every=1, tensorboard=True, progress_bar=False),
  )


@pytest.fixture
def tiny_cfg(corpus_dir, cache_dir) -> Config:
  return make_tiny_cfg(corpus_dir, cache_dir)


@pytest.fixture(scope="session")
def tiny_pretraining_run(corpus_dir, cache_dir, tmp_path_factory) -> Path:
  """`tiny_cfg` trained once per test session: checkpoints and evaluations at steps 3
  and 6. Read it, or copy it before running train.py on it. Tests using it carry
  @pytest.mark.xdist_group("tiny_pretraining_run"), so one worker builds it."""
  from lmjax import trainer
  workdir = tmp_path_factory.mktemp("tiny_pretraining_run")
  trainer.train(make_tiny_cfg(corpus_dir, cache_dir), workdir)
  return workdir


def assert_logical_axes_known(module) -> None:
  """Every parameter of `module` carries one logical axis name per dimension, each mapped by every rule set."""
  import jax
  from flax import nnx

  from lmjax.sharding import RULE_SETS
  _, state = nnx.split(module)
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert leaves
  for var in leaves:
    meta = var.get_metadata()
    axes = meta.get("sharding") or meta.get("out_sharding")
    assert axes is not None and len(axes) == var[...].ndim, (var, axes)
    for rules in RULE_SETS.values():
      assert all(a in rules for a in axes), axes


def replace(cfg: Config, **sections) -> Config:
  """replace(cfg, train=dict(steps=3)) -> cfg with those fields changed."""
  return dataclasses.replace(cfg, **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()})
