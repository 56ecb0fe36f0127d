"""Text generation with a decoder or an encoder-decoder and a KV cache (any
family whose record has `generation` hooks: lmjax.models.family.Generation).

  python -m lmjax.generate --workdir runs/gpt_tiny --prompt "To be, or not to be"
  python -m lmjax.generate --workdir path/to/hf_gpt2 --prompt "Hello" --temperature 0.8 --top-p 0.9
  python -m lmjax.generate --workdir runs/t5_g2p --checkpoint best --prompt photosynthesis \
      --num-beams 4 --num-return-sequences 3

--workdir is an lmjax causal-LM or seq2seq run (config.json, checkpoints/,
tokenizer) or a Hugging Face GPT-2 / Llama / T5 directory (config.json,
model.safetensors, tokenizer.json or vocab.json + merges.txt). For an
encoder-decoder the prompt is the input: a seq2seq run applies its input
template (data.input_template, e.g. "translate English to German: {input}")
and its decode settings (beam width, length penalty) unless told otherwise.
Beam search (--num-beams K) keeps K hypotheses per prompt, each with its
own cache rows, and prints the N best (--num-return-sequences N) with their
length-normalised log-probabilities. Several --prompt flags (or lines
on stdin with --stdin) are decoded together as one batch; a single prompt
streams its continuation to the terminal as it is produced.

How it works: prompts of different lengths are right-padded into one batch
and run through the model once (prefill), writing every layer's keys and
values into a cache of S slots; each row then continues at its own
position, one token per step, attending to the cache. Prefill is compiled
once per padded prompt length (rounded up to a multiple of 64) and the step
once per (batch, S): no recompilation per token. Greedy decoding
(temperature 0), temperature, top-k and top-p (nucleus) sampling, stop
tokens and a new-token limit. `use_cache=False` recomputes the whole
sequence every step instead (the baseline of the decode benchmark).

`--mesh DATA,FSDP,TENSOR` (e.g. `--mesh 1,4,2`) keeps the parameters split
over this host's devices with the run's sharding rules (`--rules` to choose
others), for a model that does not fit one device; XLA runs each step where
the parameters are, and the output is the same as on one device.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from lmjax.errors import LmjaxError, cli
from lmjax.metrics import log

PROMPT_BUCKET = 64  # prompt lengths are padded up to a multiple of this (fewer compilations)


@dataclasses.dataclass(frozen=True)
class Sampling:
  max_new_tokens: int = 64
  temperature: float = 1.0  # 0 = greedy (argmax)
  top_k: int = 0  # keep the k most likely tokens (0 = all)
  top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches p (1 = all)
  seed: int = 0

  def check(self) -> None:
    if self.max_new_tokens < 1:
      raise LmjaxError(f"max_new_tokens={self.max_new_tokens}: generate at least one token.")
    if not self.temperature >= 0:
      raise LmjaxError(f"temperature={self.temperature} must be >= 0 (0 = greedy).")
    if not 0 < self.top_p <= 1:
      raise LmjaxError(f"top_p={self.top_p} must be in (0, 1] (1 = no nucleus cut).")
    if self.top_k < 0:
      raise LmjaxError(f"top_k={self.top_k} must be >= 0 (0 = no top-k cut).")


def sample(logits_bv, rng, temperature: float, top_k: int, top_p: float):
  """Next token ids [B] from float32 logits [B, V] (jit-able; settings static)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  if temperature == 0:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  logits_bv = logits_bv / temperature
  neg = jnp.finfo(logits_bv.dtype).min
  if 0 < top_k < logits_bv.shape[-1]:
    kth_b1 = jax.lax.top_k(logits_bv, top_k)[0][:, -1:]
    logits_bv = jnp.where(logits_bv < kth_b1, neg, logits_bv)
  if top_p < 1.0:
    sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
    cum_bv = jnp.cumsum(jax.nn.softmax(sorted_bv, axis=-1), axis=-1)
    # The smallest logit still inside the nucleus: tokens before it sum to < p.
    inside_bv = (cum_bv - jax.nn.softmax(sorted_bv, axis=-1)) < top_p
    cutoff_b1 = jnp.min(jnp.where(inside_bv, sorted_bv, jnp.inf), axis=-1, keepdims=True)
    logits_bv = jnp.where(logits_bv < cutoff_b1, neg, logits_bv)
  return jax.random.categorical(rng, logits_bv, axis=-1).astype(jnp.int32)


@dataclasses.dataclass
class Output:
  tokens: list[list[int]]  # new tokens per prompt (a stop token, if hit, is the last one)
  stopped: list[bool]  # True where a stop token ended the row
  prefill_s: float = 0.0
  decode_s: float = 0.0
  steps: int = 0
  max_new_tokens: int = 0  # the limit applied: the request, or less where the context window ends first


@dataclasses.dataclass(frozen=True)
class BeamSearch:
  """Beam search settings (as Hugging Face's `generate`).

  A hypothesis' score is its summed log-probability divided by
  len ** length_penalty, len counting its new tokens (the stop token
  included): > 0 favours longer outputs, < 0 shorter ones, 0 = raw sum.
  early_stopping: stop an input as soon as num_beams hypotheses have ended;
  otherwise stop when no live beam could still beat the worst of them at
  its current length.
  """
  num_beams: int = 4
  num_return_sequences: int = 1
  length_penalty: float = 1.0
  early_stopping: bool = False
  max_new_tokens: int = 64

  def check(self, vocab_size: int | None = None) -> None:
    if self.num_beams < 1:
      raise LmjaxError(f"num_beams={self.num_beams}: the beam width must be at least 1.")
    if vocab_size is not None and self.num_beams > vocab_size:
      raise LmjaxError(f"num_beams={self.num_beams} is larger than the vocabulary ({vocab_size} tokens): there are "
                       "not that many distinct continuations. Use a smaller width.")
    if not 1 <= self.num_return_sequences <= self.num_beams:
      raise LmjaxError(f"num_return_sequences={self.num_return_sequences} must be between 1 and num_beams="
                       f"{self.num_beams} (beam search keeps that many hypotheses).")
    if self.max_new_tokens < 1:
      raise LmjaxError(f"max_new_tokens={self.max_new_tokens}: generate at least one token.")


@dataclasses.dataclass
class Beams:
  """The n best hypotheses per input, best first."""
  sequences: list[list[list[int]]]  # new tokens (the stop token last where one ended the hypothesis)
  scores: list[list[float]]  # length-normalised (see BeamSearch)
  log_probs: list[list[float]]  # summed log-probability
  prefill_s: float = 0.0
  decode_s: float = 0.0
  steps: int = 0


def apply_template(template: str, text: str) -> str:
  """A seq2seq run's input template ("... {input} ...") applied to a text."""
  return template.replace("{input}", text)


def encode_inputs(tok, texts: list[str], template: str = "{input}") -> list[list[int]]:
  """Encoder tokens of each text: the template applied, then the end-of-text token (as T5's inputs)."""
  return [list(ids) + [tok.eos_id] for ids in tok.encode([apply_template(template, t) for t in texts])]


def _bucket(n: int) -> int:
  """Padded length for n tokens: powers of two up to PROMPT_BUCKET, then its multiples (few compilations)."""
  if n <= PROMPT_BUCKET:
    return 1 << max(0, (n - 1).bit_length())
  return -(-n // PROMPT_BUCKET) * PROMPT_BUCKET


class Generator:
  """A decoder's (or an encoder-decoder's) parameters with compiled prefill /
  decode steps: greedy decoding, sampling and beam search.

  For an encoder-decoder (T5) the `inputs` are encoded once; the decoder
  starts from the family's start token (or the given `prompts`).
  """

  def __init__(self, cfg, params: dict | None):
    """Build it outside a mesh context (`jax.set_mesh`): parameters arrive with their own shardings."""
    import jax  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from lmjax import models  # noqa: PLC0415

    family = models.of(cfg)
    if family.generation is None:
      raise LmjaxError(f"The {family.name!r} family does not generate text (it has no decoder).")
    self.cfg = cfg
    self.hooks = family.generation
    model_cls = family.model_class(self.hooks.model)
    self.graphdef = nnx.split(nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0))))[0]
    # None: set .params before decoding (a training run's evaluator does, with its current parameters).
    self.params = None if params is None else jax.tree.map(jax.numpy.asarray, params)
    self._fns: dict = {}

  @property
  def encoder_decoder(self) -> bool:
    return self.hooks.encoder_decoder

  def _model(self, params):
    from flax import nnx  # noqa: PLC0415
    return nnx.merge(self.graphdef, params)

  def _compiled(self, name, build: Callable):
    if name not in self._fns:
      self._fns[name] = build()
    return self._fns[name]

  # --- the jitted pieces ---------------------------------------------------
  def _encode_fn(self, params, ids_bs, segments_bs, cache):
    return self.hooks.encode(self._model(params), ids_bs, segments_bs, cache)

  def _prefill_fn(self, params, ids_bp, lengths_b, cache):
    import jax.numpy as jnp  # noqa: PLC0415
    b, p = ids_bp.shape
    positions_bp = jnp.broadcast_to(jnp.arange(p), (b, p))
    logits_bpv, cache = self.hooks.prefill(self._model(params), ids_bp, positions_bp, cache)
    return jnp.take_along_axis(logits_bpv, (lengths_b - 1)[:, None, None], axis=1)[:, 0], cache

  def _step_fn(self, params, ids_b, positions_b, cache):
    logits_b1v, cache = self.hooks.step(self._model(params), ids_b[:, None], positions_b[:, None], cache)
    return logits_b1v[:, 0], cache

  def _full_fn(self, params, ids_bs, positions_b, encoder_inputs):
    import jax.numpy as jnp  # noqa: PLC0415
    # Causal: padding after a row's position cannot reach it.
    logits_bsv = self.hooks.forward(self._model(params), ids_bs, encoder_inputs)
    return jnp.take_along_axis(logits_bsv, positions_b[:, None, None], axis=1)[:, 0]

  def _beam_step_fn(self, params, tokens_r, positions_r, source_r, cache, scores_bk):
    """Reorders the cache rows to the surviving beams, feeds each its token and
    returns the 2K best (summed log-prob, source beam, token) per input."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    cache = jax.tree.map(lambda x: jnp.take(x, source_r, axis=0), cache)
    logits_r1v, cache = self.hooks.step(self._model(params), tokens_r[:, None], positions_r[:, None], cache)
    return (*_top_candidates(logits_r1v[:, 0], scores_bk), cache)

  # --- shared set-up ---------------------------------------------------------
  def _prepare(self, prompts, inputs, max_new_tokens: int, truncate: bool):
    """Checks and pads the prompts (and encoder inputs); returns what the decoding loops need."""
    ctx = getattr(self.cfg, "max_position_embeddings", None)  # None: relative positions, no table
    if self.encoder_decoder:
      if not inputs or any(len(x) == 0 for x in inputs):
        raise LmjaxError("An encoder-decoder needs an input (at least one token) for every output.")
      if prompts is None:
        prompts = [[self.hooks.start_id]] * len(inputs)
      if len(prompts) != len(inputs):
        raise LmjaxError(f"{len(prompts)} decoder prompts for {len(inputs)} inputs.")
    elif inputs is not None:
      raise LmjaxError("This model is a decoder only: give prompts, not encoder inputs.")
    if not prompts or any(len(p) == 0 for p in prompts):
      raise LmjaxError("Every prompt needs at least one token.")
    prompts = [list(p) for p in prompts]
    if ctx is not None:
      too_long = [i for i, p in enumerate(prompts) if len(p) >= ctx]
      if too_long and not truncate:
        i = too_long[0]
        raise LmjaxError(f"Prompt {i} has {len(prompts[i])} tokens but the model's context window is {ctx} "
                         "(model.max_position_embeddings), which leaves no room to generate. Shorten it, or pass "
                         "--truncate to keep only its last tokens.")
      if truncate:
        keep = max(1, ctx - max_new_tokens)
        prompts = [p[-keep:] if len(p) > keep else p for p in prompts]
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    new_tokens = int(max_new_tokens if ctx is None else min(max_new_tokens, ctx - lengths.max()))
    p_len = _bucket(int(lengths.max()))
    s_len = _bucket(p_len + new_tokens)
    if ctx is not None:
      p_len, s_len = min(ctx, p_len), min(ctx, s_len)
    ids = np.zeros((len(prompts), s_len), np.int32)
    for i, p in enumerate(prompts):
      ids[i, :len(p)] = p
    encoder_inputs = None
    if self.encoder_decoder:
      e_len = _bucket(max(len(x) for x in inputs))
      enc_ids = np.zeros((len(inputs), e_len), np.int32)
      enc_seg = np.zeros((len(inputs), e_len), np.int32)
      for i, x in enumerate(inputs):
        enc_ids[i, :len(x)] = x
        enc_seg[i, :len(x)] = 1
      encoder_inputs = (enc_ids, enc_seg)
    return ids, lengths, p_len, s_len, new_tokens, encoder_inputs

  def _prefill(self, ids, lengths, p_len, s_len, encoder_inputs):
    """(logits of each row's next token [B, V], the filled cache)."""
    import jax.numpy as jnp  # noqa: PLC0415
    import jax  # noqa: PLC0415
    cache = self.hooks.init_cache(self.cfg, len(ids), s_len)
    if encoder_inputs is not None:
      encode = self._compiled("encode", lambda: jax.jit(self._encode_fn, donate_argnums=3))
      cache = encode(self.params, *map(jnp.asarray, encoder_inputs), cache)
    prefill = self._compiled("prefill", lambda: jax.jit(self._prefill_fn, donate_argnums=3))
    return prefill(self.params, jnp.asarray(ids[:, :p_len]), jnp.asarray(lengths), cache)

  # --- greedy decoding and sampling --------------------------------------------
  def generate(self, prompts: list[list[int]] | None = None, sampling: Sampling = Sampling(), *,
               inputs: list[list[int]] | None = None, stop_ids: tuple[int, ...] = (), use_cache: bool = True,
               truncate: bool = False, on_step: Callable[[np.ndarray, np.ndarray], None] | None = None) -> Output:
    """Continues each prompt (a list of token ids); for an encoder-decoder, writes an
    output for each of `inputs`. `on_step(tokens [B], alive [B])` after every step."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    sampling.check()
    ids, lengths, p_len, s_len, new_tokens, encoder_inputs = self._prepare(prompts, inputs,
                                                                           sampling.max_new_tokens, truncate)
    b = len(ids)
    pick = partial(sample, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    pick = self._compiled(("sample", sampling.temperature, sampling.top_k, sampling.top_p), lambda: jax.jit(pick))
    key = jax.random.key(sampling.seed)

    t0 = time.perf_counter()
    enc = None if encoder_inputs is None else tuple(map(jnp.asarray, encoder_inputs))
    if use_cache:
      step = self._compiled("step", lambda: jax.jit(self._step_fn, donate_argnums=3))
      logits, cache = self._prefill(ids, lengths, p_len, s_len, encoder_inputs)
    else:
      full = self._compiled("full", lambda: jax.jit(self._full_fn))
      logits = full(self.params, jnp.asarray(ids), jnp.asarray(lengths - 1), enc)
    token = np.asarray(pick(logits, jax.random.fold_in(key, 0)))
    prefill_s = time.perf_counter() - t0

    out = [[] for _ in range(b)]
    alive = np.ones(b, bool)
    stopped = np.zeros(b, bool)
    stop = np.asarray(sorted(stop_ids), np.int32)
    positions = lengths.copy()  # where each row's next token goes
    t1 = time.perf_counter()
    steps = 0
    for i in range(new_tokens):
      for r in np.flatnonzero(alive):
        out[r].append(int(token[r]))
      hit = alive & np.isin(token, stop)
      stopped |= hit
      if on_step is not None:
        on_step(token, alive.copy())
      alive &= ~hit
      if not alive.any() or i == new_tokens - 1:
        break
      ids[np.arange(b), positions] = token
      if use_cache:
        logits, cache = step(self.params, jnp.asarray(token), jnp.asarray(positions), cache)
      else:
        logits = full(self.params, jnp.asarray(ids), jnp.asarray(positions), enc)
      token = np.asarray(pick(logits, jax.random.fold_in(key, i + 1)))
      positions = positions + 1
      steps += 1
    return Output(out, stopped.tolist(), prefill_s, time.perf_counter() - t1, steps, new_tokens)

  # --- beam search -------------------------------------------------------------
  def beam_search(self, prompts: list[list[int]] | None = None, search: BeamSearch = BeamSearch(), *,
                  inputs: list[list[int]] | None = None, stop_ids: tuple[int, ...] = (),
                  truncate: bool = False) -> Beams:
    """The `search.num_return_sequences` best continuations of each prompt (or outputs
    for each of `inputs`), with their scores; every beam keeps its own KV cache rows."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    search.check(getattr(self.cfg, "vocab_size", None))
    ids, lengths, p_len, s_len, new_tokens, encoder_inputs = self._prepare(prompts, inputs, search.max_new_tokens,
                                                                           truncate)
    b, k = len(ids), search.num_beams
    t0 = time.perf_counter()
    logits, cache = self._prefill(ids, lengths, p_len, s_len, encoder_inputs)
    first = self._compiled(("beam_first", k), lambda: jax.jit(
        lambda logits_bv: _top_candidates(logits_bv, jnp.zeros((logits_bv.shape[0], 1), jnp.float32), 2 * k)))
    expand = self._compiled(("beam_expand", k), lambda: jax.jit(
        lambda c: jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), c)))
    step = self._compiled("beam_step", lambda: jax.jit(self._beam_step_fn, donate_argnums=4))
    vals, src, tok = map(np.asarray, first(logits))
    cache = expand(cache)
    prefill_s = time.perf_counter() - t0

    stop = set(int(s) for s in stop_ids)
    lp = search.length_penalty
    alive = [[(0.0, [])] for _ in range(b)]  # (summed log-prob, tokens) per live beam
    finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(b)]  # (score, log-prob, tokens)
    done = np.zeros(b, bool)
    positions = np.repeat(lengths, k)
    t1 = time.perf_counter()
    steps = 0
    for i in range(new_tokens):
      last = i == new_tokens - 1
      tokens_r = np.zeros(b * k, np.int32)
      source_r = np.repeat(np.arange(b) * k, k).astype(np.int32)
      scores_bk = np.full((b, k), -np.inf, np.float32)
      for r in range(b):
        if done[r]:
          continue
        live = []
        for j in range(vals.shape[1]):
          if not np.isfinite(vals[r, j]) or len(live) == k:
            break
          logp, beam, t = float(vals[r, j]), int(src[r, j]), int(tok[r, j])
          seq = alive[r][beam][1] + [t]
          if t in stop:
            if j < k:  # as Hugging Face: an ended hypothesis counts only among the top k
              finished[r].append((logp / len(seq) ** lp, logp, seq))
          else:
            live.append((logp, beam, seq))
        finished[r] = sorted(finished[r], key=lambda h: -h[0])[:k]
        if len(finished[r]) >= k:
          if search.early_stopping:
            done[r] = True
          elif not live or live[0][0] / (i + 1) ** lp <= finished[r][-1][0]:
            done[r] = True
        if last or not live:
          done[r] = True
        if done[r]:
          if last:  # the length limit: live beams compete as they are
            finished[r] = sorted(finished[r] + [(lp_ / len(seq) ** lp, lp_, seq) for lp_, _, seq in live],
                                 key=lambda h: -h[0])[:k]
          continue
        alive[r] = [(logp, seq) for logp, _, seq in live]
        for j, (logp, beam, seq) in enumerate(live):
          tokens_r[r * k + j] = seq[-1]
          source_r[r * k + j] = r * k + beam
          scores_bk[r, j] = logp
      if done.all():
        break
      vals, src, tok, cache = step(self.params, jnp.asarray(tokens_r), jnp.asarray(positions),
                                   jnp.asarray(source_r), cache, jnp.asarray(scores_bk))
      vals, src, tok = map(np.asarray, (vals, src, tok))
      positions = positions + 1
      steps += 1
    n = search.num_return_sequences
    return Beams([[h[2] for h in f[:n]] for f in finished], [[h[0] for h in f[:n]] for f in finished],
                 [[h[1] for h in f[:n]] for f in finished], prefill_s, time.perf_counter() - t1, steps)


def _top_candidates(logits_rv, scores_bk, count: int | None = None):
  """The `count` (default 2K) best continuations of K beams per input: (summed
  log-prob [B, C], source beam [B, C], token [B, C]); rows r = b * K + beam."""
  import jax  # noqa: PLC0415
  b, k = scores_bk.shape
  logp_rv = jax.nn.log_softmax(logits_rv.astype("float32"), axis=-1)
  v = logp_rv.shape[-1]
  total_bc = (scores_bk[..., None] + logp_rv.reshape(b, k, v)).reshape(b, k * v)
  vals, idx = jax.lax.top_k(total_bc, min(count or 2 * k, k * v))
  return vals, idx // v, idx % v


# --- loading ---------------------------------------------------------------

@dataclasses.dataclass
class Loaded:
  cfg: object  # the model config (GptConfig, T5Config)
  params: dict
  tokenizer: object
  source: str  # what was loaded, for messages
  run_config: object = None  # the lmjax run's Config (None for a Hugging Face directory)


def load(workdir: str | Path, checkpoint: str = "latest", mesh: str | None = None,
         rules: str | None = None) -> Loaded:
  """A decoder (or encoder-decoder) and its tokenizer from an lmjax run or a Hugging Face directory (lmjax.runs).

  mesh: "DATA,FSDP,TENSOR" over this host's devices: the parameters stay split
  over it as `rules` (default: the run's mesh.rules, else fsdp_tp) say, and
  the Generator computes where they are; default: on the host, then one device."""
  import jax  # noqa: PLC0415

  from lmjax import models, runs  # noqa: PLC0415
  from lmjax import sharding as sh  # noqa: PLC0415

  decoders = tuple(f.name for f in models.FAMILIES.values() if f.generation is not None)
  if mesh is None:
    run = runs.open_run(workdir, checkpoint, families=decoders, needs="generation")
    return Loaded(run.model, jax.device_get(run.params), run.tokenizer, run.description, run.config)
  src = runs.inspect(workdir, families=decoders, needs="generation")
  rules = rules or (src.config.mesh.rules if src.config is not None else "fsdp_tp")
  placement = sh.ModelSharding(sh.parse_mesh(mesh, jax.local_devices()), sh.rules_for(rules))
  run = runs.open_run(workdir, checkpoint, families=decoders, needs="generation", sharding=placement)
  return Loaded(run.model, run.params, run.tokenizer, f"{run.description}, mesh {mesh} ({rules})", run.config)


def _print_beams(prompts, beams: Beams, text_of) -> None:
  for prompt, seqs, scores in zip(prompts, beams.sequences, beams.scores):
    if len(prompts) > 1 or len(seqs) > 1:
      print(f"{prompt}")
    for seq, score in zip(seqs, scores):
      print(f"{score:9.4f}\t{text_of(prompt, seq)}" if len(seqs) > 1 else text_of(prompt, seq))
    if len(prompts) > 1 or len(seqs) > 1:
      print()


@cli
def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True,
                      help="an lmjax causal-LM or seq2seq run, or a Hugging Face GPT-2 / Llama / T5 directory")
  parser.add_argument("--prompt", action="append", default=[],
                      help="a prompt (a T5 model's input; repeat for a batch)")
  parser.add_argument("--stdin", action="store_true", help="read prompts from stdin, one per line")
  parser.add_argument("--checkpoint", default="latest", help="'latest' (default), 'best' or a step number")
  parser.add_argument("--max-new-tokens", type=int, default=None,
                      help="default 64 (a seq2seq run: its decode settings)")
  parser.add_argument("--temperature", type=float, default=None,
                      help="0 = greedy; default 0.8 for a decoder, 0 for an encoder-decoder")
  parser.add_argument("--top-k", type=int, default=0)
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num-beams", type=int, default=None,
                      help="beam search with this width (default 1: no beam search; a seq2seq run: its decode.num_beams)")
  parser.add_argument("--num-return-sequences", type=int, default=1, help="print the N best beams with their scores")
  parser.add_argument("--length-penalty", type=float, default=None,
                      help="beam scores are log-prob / length ** this (default 1.0)")
  parser.add_argument("--early-stopping", action="store_true",
                      help="end an input's beam search as soon as num_beams hypotheses have ended")
  parser.add_argument("--stop", action="append", default=[],
                      help="a stop string (its token ids); the model's end-of-text token always stops")
  parser.add_argument("--truncate", action="store_true", help="cut prompts longer than the context window")
  parser.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step")
  parser.add_argument("--raw", action="store_true", help="do not apply a seq2seq run's input template")
  parser.add_argument("--mesh", help="DATA,FSDP,TENSOR: split the parameters over this host's devices as in "
                      "training, for a model that does not fit one (default: one device)")
  parser.add_argument("--rules", help="the rule set with --mesh (default: the run's mesh.rules, else fsdp_tp)")
  args = parser.parse_args(argv)
  prompts = list(args.prompt)
  if args.stdin:
    prompts += [line.rstrip("\n") for line in sys.stdin if line.strip()]
  if not prompts:
    raise LmjaxError("Nothing to continue: give --prompt TEXT (repeatable) or --stdin.")
  if args.num_beams is not None and args.num_beams < 1:
    raise LmjaxError(f"--num-beams {args.num_beams}: the beam width must be at least 1.")
  m = load(args.workdir, args.checkpoint, args.mesh, args.rules)
  from lmjax import models  # noqa: PLC0415
  encoder_decoder = models.of(m.cfg).generation.encoder_decoder
  run = m.run_config
  decode = run.decode if run is not None and encoder_decoder else None
  num_beams = args.num_beams or (decode.num_beams if decode else 1)
  max_new = args.max_new_tokens or (decode and (decode.max_new_tokens or run.data.max_target_len)) or 64
  temperature = args.temperature if args.temperature is not None else (0.0 if encoder_decoder else 0.8)
  sampling = Sampling(max_new, temperature, args.top_k, args.top_p, args.seed)
  sampling.check()
  tok = m.tokenizer
  stop_ids = set()
  if tok.eos_id is not None:
    stop_ids.add(int(tok.eos_id))
  for text in args.stop:
    ids = tok.encode([text])[0]
    if len(ids) != 1:
      raise LmjaxError(f"--stop {text!r} is {len(ids)} tokens in this tokenizer; a stop must be one token.")
    stop_ids.add(ids[0])
  gen = Generator(m.cfg, m.params)
  log(f"{m.source}, {len(prompts)} prompt(s)")
  if encoder_decoder:
    template = run.data.input_template if run is not None and not args.raw else "{input}"
    if tok.eos_id is None:
      raise LmjaxError(f"The tokenizer of {args.workdir} has no end-of-text token; T5 inputs end with one.")
    inputs = encode_inputs(tok, prompts, template)
    text_of = lambda prompt, seq: tok.decode([t for t in seq if t not in stop_ids])  # noqa: E731
    if num_beams > 1 or args.num_return_sequences > 1:
      search = BeamSearch(max(num_beams, args.num_return_sequences), args.num_return_sequences,
                          args.length_penalty if args.length_penalty is not None else
                          (decode.length_penalty if decode else 1.0),
                          args.early_stopping or bool(decode and decode.early_stopping), max_new)
      beams = gen.beam_search(inputs=inputs, search=search, stop_ids=tuple(stop_ids))
      _print_beams(prompts, beams, text_of)
    else:
      out = gen.generate(inputs=inputs, sampling=sampling, stop_ids=tuple(stop_ids), use_cache=not args.no_cache)
      for prompt, new in zip(prompts, out.tokens):
        print(text_of(prompt, new) if len(prompts) == 1 else f"{prompt}\t{text_of(prompt, new)}")
    return 0
  encoded = tok.encode_prompts(prompts)

  def continuation(prompt_ids, new_ids) -> str:
    # Decoded together with the prompt: tokenizers drop a leading space at
    # the start of a text, and a byte-level token may complete a character.
    return tok.decode(list(prompt_ids) + list(new_ids))[len(tok.decode(prompt_ids)):]

  if num_beams > 1 or args.num_return_sequences > 1:
    search = BeamSearch(max(num_beams, args.num_return_sequences), args.num_return_sequences,
                        1.0 if args.length_penalty is None else args.length_penalty, args.early_stopping, max_new)
    beams = gen.beam_search(encoded, search, stop_ids=tuple(stop_ids), truncate=args.truncate)
    by_prompt = dict(zip(prompts, encoded))
    _print_beams(prompts, beams, lambda prompt, seq: prompt + continuation(
        by_prompt[prompt], [t for t in seq if t not in stop_ids]))
    return 0
  stream = len(prompts) == 1
  shown = {"ids": [], "text": ""}

  def on_step(tokens, alive):
    if not stream or not alive[0] or int(tokens[0]) in stop_ids:
      return
    shown["ids"].append(int(tokens[0]))
    text = continuation(encoded[0], shown["ids"])
    if not text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
      sys.stdout.write(text[len(shown["text"]):])
      sys.stdout.flush()
      shown["text"] = text

  if stream:
    sys.stdout.write(prompts[0])
    sys.stdout.flush()
  out = gen.generate(encoded, sampling, stop_ids=tuple(stop_ids), use_cache=not args.no_cache,
                     truncate=args.truncate, on_step=on_step)
  if stream:
    print()
  if out.max_new_tokens < sampling.max_new_tokens:
    log(f"generated at most {out.max_new_tokens} tokens: the context window "
          f"({m.cfg.max_position_embeddings}) ends there")
  if not stream:
    for prompt, ids, new in zip(prompts, encoded, out.tokens):
      print(f"{prompt}{continuation(ids, [t for t in new if t not in stop_ids])}\n")
  n = sum(len(t) for t in out.tokens)
  log(f"{n} new tokens; prefill {out.prefill_s:.2f}s, decode {out.decode_s:.2f}s "
        f"({out.steps / max(out.decode_s, 1e-9) * len(prompts):.1f} tokens/s incl. compilation)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
