"""Text generation with a decoder and a KV cache (any family whose record has
`generation` hooks: lmjax.models.family.Generation).

  python -m lmjax.generate --workdir runs/gpt_tiny --prompt "To be, or not to be"
  python -m lmjax.generate --workdir path/to/hf_gpt2 --prompt "Hello" --temperature 0.8 --top-p 0.9

--workdir is an lmjax causal-LM run (config.json, checkpoints/, tokenizer) or
a Hugging Face GPT-2 / Llama directory (config.json, model.safetensors,
tokenizer.json or vocab.json + merges.txt). Several --prompt flags (or lines
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


class Generator:
  """A decoder's parameters with compiled prefill / decode steps."""

  def __init__(self, cfg, params: dict):
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
    self.params = jax.tree.map(jax.numpy.asarray, params)
    self._fns: dict = {}

  def _model(self, params):
    from flax import nnx  # noqa: PLC0415
    return nnx.merge(self.graphdef, params)

  def _compiled(self, name: str, build: Callable):
    if name not in self._fns:
      self._fns[name] = build()
    return self._fns[name]

  # --- the three jitted pieces -------------------------------------------
  def _prefill_fn(self, params, ids_bp, lengths_b, cache):
    import jax.numpy as jnp  # noqa: PLC0415
    b, p = ids_bp.shape
    positions_bp = jnp.broadcast_to(jnp.arange(p), (b, p))
    logits_bpv, cache = self.hooks.prefill(self._model(params), ids_bp, positions_bp, cache)
    return jnp.take_along_axis(logits_bpv, (lengths_b - 1)[:, None, None], axis=1)[:, 0], cache

  def _step_fn(self, params, ids_b, positions_b, cache):
    logits_b1v, cache = self.hooks.step(self._model(params), ids_b[:, None], positions_b[:, None], cache)
    return logits_b1v[:, 0], cache

  def _full_fn(self, params, ids_bs, positions_b):
    import jax.numpy as jnp  # noqa: PLC0415
    logits_bsv = self.hooks.forward(self._model(params), ids_bs)  # causal: padding after a row's position cannot reach it
    return jnp.take_along_axis(logits_bsv, positions_b[:, None, None], axis=1)[:, 0]

  def generate(self, prompts: list[list[int]], sampling: Sampling = Sampling(), *, stop_ids: tuple[int, ...] = (),
               use_cache: bool = True, truncate: bool = False,
               on_step: Callable[[np.ndarray, np.ndarray], None] | None = None) -> Output:
    """Continues each prompt (a list of token ids); `on_step(tokens [B], alive [B])` after every step."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    sampling.check()
    ctx = self.cfg.max_position_embeddings
    if not prompts or any(len(p) == 0 for p in prompts):
      raise LmjaxError("Every prompt needs at least one token.")
    prompts = [list(p) for p in prompts]
    too_long = [i for i, p in enumerate(prompts) if len(p) >= ctx]
    if too_long and not truncate:
      i = too_long[0]
      raise LmjaxError(f"Prompt {i} has {len(prompts[i])} tokens but the model's context window is {ctx} "
                       "(model.max_position_embeddings), which leaves no room to generate. Shorten it, or pass "
                       "--truncate to keep only its last tokens.")
    if truncate:
      keep = max(1, ctx - sampling.max_new_tokens)
      prompts = [p[-keep:] if len(p) > keep else p for p in prompts]
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    new_tokens = int(min(sampling.max_new_tokens, ctx - lengths.max()))
    b = len(prompts)
    p_len = min(ctx, -(-int(lengths.max()) // PROMPT_BUCKET) * PROMPT_BUCKET)
    s_len = min(ctx, -(-(p_len + new_tokens) // PROMPT_BUCKET) * PROMPT_BUCKET)
    ids = np.zeros((b, s_len), np.int32)
    for i, p in enumerate(prompts):
      ids[i, :len(p)] = p
    pick = partial(sample, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    pick = self._compiled(("sample", sampling.temperature, sampling.top_k, sampling.top_p), lambda: jax.jit(pick))
    key = jax.random.key(sampling.seed)

    t0 = time.perf_counter()
    if use_cache:
      prefill = self._compiled("prefill", lambda: jax.jit(self._prefill_fn, donate_argnums=3))
      step = self._compiled("step", lambda: jax.jit(self._step_fn, donate_argnums=3))
      cache = self.hooks.init_cache(self.cfg, b, s_len)
      logits, cache = prefill(self.params, jnp.asarray(ids[:, :p_len]), jnp.asarray(lengths), cache)
    else:
      full = self._compiled("full", lambda: jax.jit(self._full_fn))
      logits = full(self.params, jnp.asarray(ids), jnp.asarray(lengths - 1))
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
        logits = full(self.params, jnp.asarray(ids), jnp.asarray(positions))
      token = np.asarray(pick(logits, jax.random.fold_in(key, i + 1)))
      positions = positions + 1
      steps += 1
    return Output(out, stopped.tolist(), prefill_s, time.perf_counter() - t1, steps, new_tokens)


# --- loading ---------------------------------------------------------------

@dataclasses.dataclass
class Loaded:
  cfg: object  # GptConfig
  params: dict
  tokenizer: object
  source: str  # what was loaded, for messages


def load(workdir: str | Path, checkpoint: str = "latest") -> Loaded:
  """A decoder and its tokenizer from an lmjax run or a Hugging Face directory (lmjax.runs)."""
  from lmjax import models, runs  # noqa: PLC0415

  decoders = tuple(f.name for f in models.FAMILIES.values() if f.generation is not None)
  run = runs.open_run(workdir, checkpoint, families=decoders, needs="generation")
  import jax  # noqa: PLC0415
  return Loaded(run.model, jax.device_get(run.params), run.tokenizer, run.description)


@cli
def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="an lmjax causal-LM run or a Hugging Face GPT-2/Llama dir")
  parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
  parser.add_argument("--stdin", action="store_true", help="read prompts from stdin, one per line")
  parser.add_argument("--checkpoint", default="latest", help="'latest' (default), 'best' or a step number")
  parser.add_argument("--max-new-tokens", type=int, default=64)
  parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  parser.add_argument("--top-k", type=int, default=0)
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--stop", action="append", default=[],
                      help="a stop string (its token ids); the model's end-of-text token always stops")
  parser.add_argument("--truncate", action="store_true", help="cut prompts longer than the context window")
  parser.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step")
  args = parser.parse_args(argv)
  prompts = list(args.prompt)
  if args.stdin:
    prompts += [line.rstrip("\n") for line in sys.stdin if line.strip()]
  if not prompts:
    raise LmjaxError("Nothing to continue: give --prompt TEXT (repeatable) or --stdin.")
  sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
  sampling.check()  # before the (slow) model load
  m = load(args.workdir, args.checkpoint)
  tok = m.tokenizer
  stop_ids = set()
  if tok.eos_id is not None:
    stop_ids.add(int(tok.eos_id))
  for text in args.stop:
    ids = tok.encode([text])[0]
    if len(ids) != 1:
      raise LmjaxError(f"--stop {text!r} is {len(ids)} tokens in this tokenizer; a stop must be one token.")
    stop_ids.add(ids[0])
  encoded = tok.encode(prompts)
  gen = Generator(m.cfg, m.params)
  log(f"{m.source}, {len(prompts)} prompt(s)")
  stream = len(prompts) == 1
  shown = {"ids": [], "text": ""}

  def continuation(prompt_ids, new_ids) -> str:
    # Decoded together with the prompt: tokenizers drop a leading space at
    # the start of a text, and a byte-level token may complete a character.
    return tok.decode(list(prompt_ids) + list(new_ids))[len(tok.decode(prompt_ids)):]

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
