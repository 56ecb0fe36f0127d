"""The run loader: parameters only, from best / latest / a step, for every command."""

import dataclasses

import jax
import numpy as np
import pytest

from lmjax import generate, runs, trainer
from lmjax.checkpoint import BestCheckpoint
from lmjax.errors import LmjaxError
from lmjax.models.gpt import GptConfig

from conftest import replace


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory, corpus_dir, cache_dir):
  """A tiny causal-LM run with evaluations at steps 2, 4, 6 and a best checkpoint by perplexity
  (maximised, so the best is the first evaluation: not the latest)."""
  from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, TrainConfig
  workdir = tmp_path_factory.mktemp("decoder")
  cfg = Config(
      model=GptConfig.preset("tiny", vocab_size=256, hidden_size=32, mlp_dim=64, max_position_embeddings=64),
      data=DataConfig(dataset="text_dir", text_dir=str(corpus_dir), doc_split="blank_line", cache_dir=str(cache_dir),
                      max_seq_len=32, prefetch=0),
      train=TrainConfig(objective="causal_lm", steps=6, batch_size=8, learning_rate=3e-3, warmup_steps=1,
                        eval_every=2, eval_batches=1),
      checkpoint=CheckpointConfig(every=2, keep=5, async_save=False, best_metric="perplexity"),
      logging=LoggingConfig(every=2, tensorboard=False, progress_bar=False))
  trainer.train(cfg, workdir)
  return cfg, workdir


def _leaves(params):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]


def test_best_latest_and_step_load_different_parameters(decoder_run):
  _, workdir = decoder_run
  best = BestCheckpoint(workdir, "perplexity")
  kept = best.info()["step"]
  best.close()
  assert kept == 2
  by_name = {c: runs.open_run(workdir, c) for c in ("best", "latest", "2", "6")}
  assert (by_name["best"].step, by_name["latest"].step) == (2, 6)
  assert "best checkpoint, step 2" in by_name["best"].description
  for a, b in zip(_leaves(by_name["best"].params), _leaves(by_name["2"].params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_leaves(by_name["latest"].params), _leaves(by_name["6"].params)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(by_name["best"].params),
                                                      _leaves(by_name["latest"].params)))
  explicit = runs.open_run(workdir / "checkpoints" / "4", "latest")
  assert explicit.step == 4


def test_generate_checkpoint_best_loads_the_best_checkpoint(decoder_run, capsys):
  _, workdir = decoder_run
  best = generate.load(workdir, "best")
  latest = generate.load(workdir, "latest")
  stored = runs.open_run(workdir, "2", tokenizer=False)
  for a, b in zip(_leaves(best.params), _leaves(stored.params)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(best.params), _leaves(latest.params)))
  assert generate.main(["--workdir", str(workdir), "--checkpoint", "best", "--prompt", "the king",
                        "--max-new-tokens", "2", "--temperature", "0"]) == 0
  assert "best checkpoint, step 2" in capsys.readouterr().err


def test_clear_errors(decoder_run, tmp_path, capsys):
  cfg, workdir = decoder_run
  no_best = tmp_path / "no_best"
  trainer.train(replace(cfg, train=dict(steps=2), checkpoint=dict(best_metric="")), no_best)
  with pytest.raises(LmjaxError, match="has no best checkpoint"):
    runs.open_run(no_best, "best")
  assert runs.open_run(no_best, "auto").step == 2  # auto: latest when there is no best
  assert generate.main(["--workdir", str(no_best), "--checkpoint", "best", "--prompt", "x"]) == 2
  assert "has no best checkpoint" in capsys.readouterr().err
  with pytest.raises(LmjaxError, match="has no checkpoint at step 5"):
    runs.open_run(workdir, "5")
  with pytest.raises(LmjaxError, match="use 'best', 'latest' or a step number"):
    runs.open_run(workdir, "newest")
  with pytest.raises(LmjaxError, match="does not exist"):
    runs.open_run(tmp_path / "nowhere")
  other = dataclasses.replace(cfg.model, hidden_size=64)
  assert runs.inspect(workdir).model != other
