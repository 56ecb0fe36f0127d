"""lmjax.generate: beam search (both families), its settings, the T5 command line."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax.errors import LmjaxError
from lmjax.generate import BeamSearch, Generator, Sampling
from lmjax.models import gpt, t5

STOP = 1


def _sharpen(params, factor=3.0):
  """Larger weights: peaked distributions, so that search settings change the outcome."""
  return jax.tree.map(lambda x: x * factor if x.ndim > 1 else x, params)


def _t5(vocab=256, seed=0):
  cfg = t5.T5Config.preset("t5-tiny", vocab_size=vocab, dropout_rate=0.0)
  model = t5.T5ForConditionalGeneration(cfg, rngs=nnx.Rngs(seed))
  return cfg, model, _sharpen(nnx.state(model, nnx.Param))


def _gpt():
  cfg = gpt.GptConfig.preset("tiny", dropout_rate=0.0, vocab_size=97)
  model = gpt.GptForCausalLM(cfg, rngs=nnx.Rngs(0))
  return cfg, model, _sharpen(nnx.state(model, nnx.Param), 2.0)


def test_beam_width_one_is_greedy():
  cfg, _, params = _t5()
  gen = Generator(cfg, params)
  rng = np.random.default_rng(0)
  inputs = [list(rng.integers(5, 256, n)) for n in (3, 9, 17)]
  greedy = gen.generate(inputs=inputs, sampling=Sampling(10, 0.0), stop_ids=(STOP,)).tokens
  beams = gen.beam_search(inputs=inputs, search=BeamSearch(1, 1, 0.0, True, 10), stop_ids=(STOP,))
  assert [s[0] for s in beams.sequences] == greedy

  cfg, _, params = _gpt()
  gen = Generator(cfg, params)
  prompts = [[5, 6, 7], [9], list(range(10, 30))]
  greedy = gen.generate(prompts, Sampling(12, 0.0), stop_ids=(STOP,)).tokens
  beams = gen.beam_search(prompts, BeamSearch(1, 1, 0.0, True, 12), stop_ids=(STOP,))
  assert [s[0] for s in beams.sequences] == greedy


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_returns_the_k_best_of_every_output(length_penalty):
  """Vocabulary of 6, at most 2 new tokens: every possible output is enumerated and
  scored by teacher forcing; width 6 returns the 6 best, in order, with their scores."""
  v, k = 6, 6
  cfg, model, params = _t5(vocab=v, seed=1)
  model = nnx.merge(nnx.graphdef(model), params)
  source = [2, 3, 4, 5, 2]
  outputs = [[STOP]] + [[a, b] for a, b in itertools.product(range(v), repeat=2) if a != STOP]
  dec = np.asarray([[0] + o[:-1] + [0] * (2 - len(o)) for o in outputs], np.int32)
  logp = jax.nn.log_softmax(model(jnp.asarray([source] * len(outputs), jnp.int32), jnp.asarray(dec)), -1)
  logp = np.asarray(logp)
  summed = [sum(logp[i, j, t] for j, t in enumerate(o)) for i, o in enumerate(outputs)]
  scored = sorted(((s / len(o) ** length_penalty, s, o) for s, o in zip(summed, outputs)), key=lambda h: -h[0])

  gen = Generator(cfg, params)
  got = gen.beam_search(inputs=[source], search=BeamSearch(k, k, length_penalty, False, 2), stop_ids=(STOP,))
  assert got.sequences[0] == [o for _, _, o in scored[:k]]
  np.testing.assert_allclose(got.scores[0], [s for s, _, _ in scored[:k]], rtol=1e-5)
  np.testing.assert_allclose(got.log_probs[0], [s for _, s, _ in scored[:k]], rtol=1e-5)


def test_beam_rows_are_independent_of_their_batch():
  cfg, _, params = _t5()
  gen = Generator(cfg, params)
  inputs = [[5, 6, 7, 8], [40, 41], [100, 101, 102, 103, 104, 105, 106]]
  search = BeamSearch(4, 3, 0.6, False, 8)
  together = gen.beam_search(inputs=inputs, search=search, stop_ids=(STOP,))
  assert all(len(s) == 3 for s in together.sequences)
  assert all(sc == sorted(sc, reverse=True) for sc in together.scores)
  alone = gen.beam_search(inputs=[inputs[1]], search=search, stop_ids=(STOP,))
  assert alone.sequences[0] == together.sequences[1]
  np.testing.assert_allclose(alone.scores[0], together.scores[1], rtol=1e-5)


@pytest.mark.parametrize("search, message", [
    (BeamSearch(num_beams=0), "at least 1"),
    (BeamSearch(num_beams=300), "larger than the vocabulary"),
    (BeamSearch(num_beams=2, num_return_sequences=3), "between 1 and num_beams"),
    (BeamSearch(max_new_tokens=0), "at least one token"),
])
def test_bad_beam_settings(search, message):
  cfg, _, params = _t5()
  with pytest.raises(LmjaxError, match=message):
    Generator(cfg, params).beam_search(inputs=[[5, 6]], search=search)


def test_encoder_decoder_needs_inputs():
  cfg, _, params = _t5()
  gen = Generator(cfg, params)
  with pytest.raises(LmjaxError, match="needs an input"):
    gen.generate([[0]])
  cfg, _, params = _gpt()
  with pytest.raises(LmjaxError, match="decoder only"):
    Generator(cfg, params).generate([[5]], inputs=[[5]])


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_parameters_split_over_a_mesh_decode_the_same(family):
  """Sharded inference: parameters placed by their logical axes on fsdp x tensor
  (the training layout), greedy and beam outputs equal the single-device ones."""
  from lmjax import sharding as sh

  if family == "gpt":  # a vocabulary the tensor axis divides
    cfg = gpt.GptConfig.preset("tiny", dropout_rate=0.0, vocab_size=96)
    model = gpt.GptForCausalLM(cfg, rngs=nnx.Rngs(0))
    params = _sharpen(nnx.state(model, nnx.Param), 2.0)
  else:
    cfg, model, params = _t5()
  mesh = sh.parse_mesh("1,4,2")
  shardings = sh.param_shardings(model, mesh, sh.rules_for("fsdp_tp"))
  pure = nnx.to_pure_dict(params)
  split = jax.device_put(pure, shardings)
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in jax.tree.leaves(split))
  rows = [[5, 6, 7], [8, 9, 10, 11, 12]]
  kw = {"inputs": rows} if family == "t5" else {"prompts": rows}
  greedy = Sampling(max_new_tokens=6, temperature=0.0)
  one = Generator(cfg, pure).generate(sampling=greedy, stop_ids=(STOP,), **kw).tokens
  gen = Generator(cfg, split)
  assert gen.generate(sampling=greedy, stop_ids=(STOP,), **kw).tokens == one
  search = BeamSearch(3, 2, 1.0, False, 5)
  alone = Generator(cfg, pure).beam_search(search=search, stop_ids=(STOP,), **kw)
  beams = gen.beam_search(search=search, stop_ids=(STOP,), **kw)
  assert beams.sequences == alone.sequences
  np.testing.assert_allclose(beams.scores, alone.scores, rtol=1e-5)


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, True), (0.0, True), (2.0, False)])
def test_beam_search_matches_transformers_generate(tmp_path, length_penalty, early_stopping):
  """The same decoder exported to transformers: `generate(num_beams=4, num_return_sequences=3)` returns
  the same n-best sequences with the same length-normalised scores, with and without a stop token."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from lmjax.convert import gpt as convert
  cfg, _, params = _gpt()
  prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
  gen = Generator(cfg, params)
  # a stop token the search meets: the third token greedy decoding writes
  stop = gen.generate(prompts[:1], Sampling(3, 0.0)).tokens[0][2]
  convert.save_pretrained(tmp_path, cfg, jax.tree.map(np.asarray, nnx.to_pure_dict(params)), eos_token_id=stop)
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  search = BeamSearch(4, 3, length_penalty, early_stopping, 8)
  got = gen.beam_search(prompts, search, stop_ids=(stop,))
  ended = 0
  for p, seqs, scores in zip(prompts, got.sequences, got.scores):
    with torch.no_grad():
      out = hf.generate(torch.tensor([p]), num_beams=4, num_return_sequences=3, length_penalty=length_penalty,
                        early_stopping=early_stopping, max_new_tokens=8, eos_token_id=stop, pad_token_id=stop,
                        do_sample=False, output_scores=True, return_dict_in_generate=True)
    want = [s[len(p):].tolist() for s in out.sequences]
    want = [w[:w.index(stop) + 1] if stop in w else w for w in want]
    assert seqs == want
    np.testing.assert_allclose(scores, out.sequences_scores.numpy(), rtol=1e-4, atol=1e-5)
    ended += sum(s[-1] == stop for s in seqs)
  assert ended > 0  # some hypotheses did end on the stop token
