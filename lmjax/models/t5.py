"""T5: encoder-decoder Transformer with relative position buckets.

Follows Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer" (T5: pre-norm blocks with RMS layer norm
and no biases, relative position biases shared by the layers of a stack
(bidirectional buckets in the encoder, causal in the decoder), ReLU MLP,
output tied to the token embeddings and scaled by d_model^-0.5) and the
T5.1.1 checkpoints (gated-GELU MLP of Shazeer 2020, untied output, no
scaling). The two are switches of one config:

    from lmjax.models.t5 import T5Config, T5ForConditionalGeneration
    model = T5ForConditionalGeneration(T5Config.preset("t5-tiny"), rngs=nnx.Rngs(0))
    logits_btv = model(input_ids_bs, decoder_input_ids_bt, input_mask_bs)
    # generation: lmjax.generate.Generator (KV cache; greedy, sampling, beam search)

Queries are not scaled by 1/sqrt(H): T5's initialisation folds that factor
into the query weights. The head width `head_dim` is its own field (T5.1.1
small has 6 heads of 64 on a width of 512).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax import layers as L
from lmjax.errors import LmjaxError
from lmjax.models.family import Family, Generation, Workload

Array = jax.Array

_T5 = dict(vocab_size=32128, mlp="relu", tie_embeddings=True, head_dim=64)
_T511 = dict(vocab_size=32128, mlp="gated-gelu", tie_embeddings=False, head_dim=64)
PRESETS = {
    "t5-tiny": dict(_T5, vocab_size=256, hidden_size=64, num_layers=2, num_decoder_layers=2, num_heads=4, head_dim=16,
                    mlp_dim=128),
    "t5-small": dict(_T5, hidden_size=512, num_layers=6, num_decoder_layers=6, num_heads=8, mlp_dim=2048),
    "t5-base": dict(_T5, hidden_size=768, num_layers=12, num_decoder_layers=12, num_heads=12, mlp_dim=3072),
    "t5.1.1-small": dict(_T511, hidden_size=512, num_layers=8, num_decoder_layers=8, num_heads=6, mlp_dim=1024),
    "t5.1.1-base": dict(_T511, hidden_size=768, num_layers=12, num_decoder_layers=12, num_heads=12, mlp_dim=2048),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int = 32128  # T5's sentencepiece vocabulary (32,000 pieces + 100 sentinels, padded)
  hidden_size: int = 512  # d_model
  num_layers: int = 6  # encoder blocks
  num_decoder_layers: int = 6
  num_heads: int = 8
  head_dim: int = 64  # d_kv: independent of hidden_size / num_heads
  mlp_dim: int = 2048  # d_ff
  mlp: str = "relu"  # "relu" (T5) or "gated-gelu" (T5.1.1: gelu_tanh(x W_0) * x W_1)
  tie_embeddings: bool = True  # output = token embeddings, scaled by hidden_size^-0.5 (T5); False: own lm_head
  relative_buckets: int = 32  # relative position buckets per stack
  relative_max_distance: int = 128  # distances beyond this share the last bucket
  norm_eps: float = 1e-6
  dropout_rate: float = 0.1  # embeddings, residual branches, attention probabilities, MLP hidden
  init_factor: float = 1.0  # scales every initialiser (T5's initializer_factor)
  dtype: str = "float32"  # compute dtype; parameters stay float32
  # Attention kernel (lmjax.layers.ATTENTION: auto, einsum, xla, cudnn) and
  # rematerialisation of each block (lmjax.layers.REMAT: none, full, dots,
  # dots_no_batch). Neither changes the parameters.
  attention: str = "auto"
  remat: str = "none"
  # One compiled layer body for all layers (lax.scan over the layers'
  # parameters stacked in the step): compile time independent of depth. The
  # parameters and checkpoints keep their per-layer layout.
  scan_layers: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_decoder_layers", "num_heads", "head_dim", "mlp_dim",
                 "relative_buckets", "relative_max_distance"):
      if getattr(self, name) < 1:
        raise LmjaxError(f"model.{name}={getattr(self, name)} must be positive.")
    if self.mlp not in ("relu", "gated-gelu"):
      raise LmjaxError(f"model.mlp={self.mlp!r}: use 'relu' (T5) or 'gated-gelu' (T5.1.1).")
    if self.relative_buckets < 4 or self.relative_buckets % 4:
      raise LmjaxError(f"model.relative_buckets={self.relative_buckets} must be a positive multiple of 4 (the "
                       "encoder halves them by direction, and half of those are exact distances).")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise LmjaxError(f"model.dropout_rate={self.dropout_rate} must be in [0, 1).")
    L.check_attention(self.attention, self.dropout_rate)
    L.check_remat(self.remat)
    L.check_scan(self.scan_layers)

  @classmethod
  def preset(cls, name: str, **overrides) -> T5Config:
    if name not in PRESETS:
      raise LmjaxError(f"unknown T5 preset {name!r}; choose one of {', '.join(PRESETS)}")
    return cls(**{**PRESETS[name], **overrides})

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.head_dim

  def mesh_divisors(self) -> dict[str, tuple[int, str]]:
    """Sizes split over a mesh axis by the rule sets: field -> (size, axis)."""
    return {"num_heads": (self.num_heads, "tensor"), "mlp_dim": (self.mlp_dim, "tensor"),
            "vocab_size": (self.vocab_size, "tensor"), "hidden_size": (self.hidden_size, "fsdp")}

  def flops_per_token(self, workload: Workload, training: bool = True) -> float:
    """Matmul FLOPs per input (encoder) token (x3 for forward + backward when training).

    With S = workload.seq_len input tokens and T = workload.target_len target
    tokens per row: the encoder's projections, bidirectional attention and MLP
    for each input token; the decoder's self-attention projections, causal
    attention (half of T), cross-attention queries and outputs and its MLP
    for each target token, the cross-attention keys and values of every input
    token in every decoder layer, cross-attention scores and values over S,
    and the vocabulary projection at every target token; divided by S.
    """
    d, f, v, i = self.hidden_size, self.mlp_dim, self.vocab_size, self.inner_dim
    s, t = workload.seq_len, workload.target_len
    mlp = 2 * (3 if self.mlp == "gated-gelu" else 2) * d * f
    encoder = self.num_layers * s * (2 * 4 * d * i + 2 * 2 * s * i + mlp)
    decoder = self.num_decoder_layers * (
        t * (2 * 4 * d * i + 2 * 2 * t * i / 2 + 2 * 2 * d * i + 2 * 2 * s * i + mlp) + s * 2 * 2 * d * i)
    forward = (encoder + decoder + t * 2 * d * v) / s
    return 3 * forward if training else forward


def relative_position_buckets(relative_position: Array, *, bidirectional: bool, num_buckets: int,
                              max_distance: int) -> Array:
  """Bucket of each (key - query) distance, as Mesh TensorFlow's T5: half of
  the buckets are exact small distances, the rest grow logarithmically up to
  `max_distance`; bidirectional buckets split first by direction, causal ones
  treat keys after the query as distance 0."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
    n = jnp.abs(relative_position)
  else:
    n = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  scaled = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
  large = max_exact + (scaled * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(n < max_exact, n, large)


class RelativeBias(nnx.Module):
  """One learned bias per (bucket, head), shared by all layers of a stack."""

  def __init__(self, cfg: T5Config, *, bidirectional: bool, rngs: nnx.Rngs):
    self.cfg = cfg
    self.bidirectional = bidirectional
    std = cfg.init_factor * cfg.hidden_size ** -0.5
    self.table = L.param(rngs, L.normal(std), (cfg.relative_buckets, cfg.num_heads), ("buckets", "heads"))

  def __call__(self, t: int, s: int) -> Array:
    """Bias [1, N, T, S] (float32) of queries 0..T-1 over keys 0..S-1."""
    return self.at(jnp.arange(t)[None], s)

  def at(self, positions_bt: Array, s: int) -> Array:
    """Bias [B, N, T, S] (float32) of queries at `positions` (per row) over keys 0..S-1."""
    rel_bts = jnp.arange(s)[None, None, :] - positions_bt[:, :, None]
    buckets_bts = relative_position_buckets(rel_bts, bidirectional=self.bidirectional,
                                            num_buckets=self.cfg.relative_buckets,
                                            max_distance=self.cfg.relative_max_distance)
    return jnp.take(self.table[...], buckets_bts, axis=0).transpose(0, 3, 1, 2).astype(jnp.float32)


def _attention(cfg: T5Config, rngs: nnx.Rngs) -> L.Attention:
  f, d, h, n = cfg.init_factor, cfg.hidden_size, cfg.head_dim, cfg.num_heads
  return L.Attention(d, n, head_dim=h, use_bias=False, scale=False, init_std=f * d ** -0.5,
                     q_init_std=f * (d * h) ** -0.5, out_init_std=f * (n * h) ** -0.5,
                     dropout_rate=cfg.dropout_rate, implementation=cfg.attention, rngs=rngs)


def _mlp(cfg: T5Config, rngs: nnx.Rngs) -> L.Mlp:
  gated = cfg.mlp == "gated-gelu"
  return L.Mlp(cfg.hidden_size, cfg.mlp_dim, activation="gelu_tanh" if gated else "relu", gated=gated,
               use_bias=False, init_std=cfg.init_factor * cfg.hidden_size ** -0.5,
               out_init_std=cfg.init_factor * cfg.mlp_dim ** -0.5, dropout_rate=cfg.dropout_rate, rngs=rngs)


def _norm(cfg: T5Config, rngs: nnx.Rngs) -> L.RMSNorm:
  return L.RMSNorm(cfg.hidden_size, cfg.norm_eps, rngs=rngs)


class Block(nnx.Module):
  """x + attn(norm(x)) [+ cross-attn(norm(x), encoder)] + mlp(norm(x)); dropout on each branch."""

  def __init__(self, cfg: T5Config, *, cross: bool, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attention_norm = _norm(cfg, rngs)
    self.attention = _attention(cfg, rngs)
    self.cross_attention_norm = _norm(cfg, rngs) if cross else None
    self.cross_attention = _attention(cfg, rngs) if cross else None
    self.mlp_norm = _norm(cfg, rngs)
    self.mlp = _mlp(cfg, rngs)

  def __call__(self, x_btd: Array, bias: Array, enc_bsd: Array | None, cross_bias: Array | None,
               rng: Array | None, *, positions_bt: Array | None = None, cache: dict | None = None
               ) -> tuple[Array, dict | None]:
    """cache (decoding): {"self": {"k", "v"}, "cross": {"k", "v"}}; the new
    tokens' keys and values are written into "self" at `positions`, and
    cross-attention reads "cross" (the encoder output, projected once)."""
    r_attn, r1, r_cross, r2, r_mlp, r3 = L.split_rng(rng, 6)
    p = self.cfg.dropout_rate
    h_btd, self_cache = self.attention(self.attention_norm(x_btd), bias, positions_bt=positions_bt,
                                       cache=None if cache is None else cache["self"], rng=r_attn)
    x_btd = x_btd + L.dropout(h_btd, p, r1)
    if self.cross_attention is not None:
      h_btd = self.cross_attention(self.cross_attention_norm(x_btd), cross_bias, kv_bsd=enc_bsd,
                                   kv=None if cache is None else cache["cross"], rng=r_cross)[0]
      x_btd = x_btd + L.dropout(h_btd, p, r2)
    x_btd = x_btd + L.dropout(self.mlp(self.mlp_norm(x_btd), rng=r_mlp), p, r3)
    new_cache = None if cache is None else {"self": self_cache, "cross": cache["cross"]}
    return L.shard(x_btd, L.ACT_BTD), new_cache


class Stack(nnx.Module):
  """The encoder (bidirectional) or the decoder (causal, with cross-attention)."""

  def __init__(self, cfg: T5Config, *, decoder: bool, rngs: nnx.Rngs):
    self.cfg = cfg
    n = cfg.num_decoder_layers if decoder else cfg.num_layers
    self.relative_bias = RelativeBias(cfg, bidirectional=not decoder, rngs=rngs)
    self.layers = nnx.List([Block(cfg, cross=decoder, rngs=rngs) for _ in range(n)])
    self.final_norm = _norm(cfg, rngs)

  def __call__(self, x_btd: Array, mask_bias: Array, enc_bsd: Array | None, cross_bias: Array | None,
               rng: Array | None) -> Array:
    """x: embedded tokens [B, T, D]; mask_bias: padding, segment or causal mask, broadcastable to [B, N, T, T]."""
    p = self.cfg.dropout_rate
    rngs = L.split_rng(rng, len(self.layers) + 2)
    t = x_btd.shape[1]
    bias = self.relative_bias(t, t) + mask_bias  # computed once per forward, shared by every layer
    x_btd = L.shard(L.dropout(x_btd, p, rngs[0]), L.ACT_BTD)
    if self.cfg.scan_layers:
      x_btd = L.scan_blocks(self.layers, self.cfg.remat, x_btd, rngs[1:-1],
                            lambda layer, x, r: layer(x, bias, enc_bsd, cross_bias, r)[0])
    else:
      for layer, layer_rng in zip(self.layers, rngs[1:-1]):
        x_btd = L.call_block(layer, self.cfg.remat, x_btd, bias, enc_bsd, cross_bias, layer_rng)[0]
    return L.dropout(self.final_norm(x_btd), p, rngs[-1])

  def step(self, x_btd: Array, positions_bt: Array, cross_bias: Array, caches: list[dict]
           ) -> tuple[Array, list[dict]]:
    """Decoder tokens at `positions` (consecutive per row) against the cache: each
    attends to the slots up to its own position; no dropout."""
    s = caches[0]["self"]["k"].shape[1]
    allowed_b1ts = (jnp.arange(s)[None, None, :] <= positions_bt[:, :, None])[:, None]
    bias = self.relative_bias.at(positions_bt, s) + L.mask_to_bias(allowed_b1ts)
    new = []
    for layer, cache in zip(self.layers, caches):
      x_btd, cache = layer(x_btd, bias, None, cross_bias, None, positions_bt=positions_bt, cache=cache)
      new.append(cache)
    return self.final_norm(x_btd), new


class T5ForConditionalGeneration(nnx.Module):
  """Shared token embeddings -> encoder; decoder over the encoder's output -> vocabulary logits."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = L.Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), init_std=cfg.init_factor, rngs=rngs)
    self.encoder = Stack(cfg, decoder=False, rngs=rngs)
    self.decoder = Stack(cfg, decoder=True, rngs=rngs)
    # An untied head starts at std d^-0.5 (Mesh TensorFlow's fan-in scaling; Hugging Face uses 1.0,
    # which makes a fresh model's logits ~sqrt(d) wide and its first loss ~40).
    self.lm_head = (None if cfg.tie_embeddings else
                    L.param(rngs, L.normal(cfg.init_factor * cfg.hidden_size ** -0.5),
                            (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab")))

  def encode(self, ids_bs: Array, segments_bs: Array, *, rng: Array | None = None) -> Array:
    """Encoder output [B, S, D]. segments: 1 for real tokens and 0 for padding, or
    1, 2, ... per packed example (attention stays inside each)."""
    x_bsd = self.embed(ids_bs, jnp.dtype(self.cfg.dtype))
    return self.encoder(x_bsd, segment_bias(segments_bs, segments_bs), None, None, rng)

  def _logits(self, x_btd: Array) -> Array:
    if self.lm_head is None:
      logits_btv = self.embed.attend(x_btd * jnp.asarray(self.cfg.hidden_size ** -0.5, x_btd.dtype))
    else:
      logits_btv = L.matmul(x_btd, self.lm_head[...].astype(x_btd.dtype), preferred_element_type=jnp.float32)
    return logits_btv.astype(jnp.float32)

  def decode(self, ids_bt: Array, enc_bsd: Array, segments_bs: Array, decoder_segments_bt: Array | None = None, *,
             rng: Array | None = None) -> Array:
    """Logits [B, T, V] (float32) of the decoder over the encoder output (teacher
    forcing). decoder_segments: the packed example of each target token (None:
    one per row); decoder tokens attend causally inside their example and to
    the encoder tokens of the same example."""
    cfg = self.cfg
    t = ids_bt.shape[1]
    allowed_1tt = jnp.tril(jnp.ones((t, t), bool))[None]
    if decoder_segments_bt is None:
      self_bias = L.mask_to_bias(allowed_1tt[:, None])
      cross_bias = L.padding_bias(segments_bs)
    else:
      self_bias = L.mask_to_bias((allowed_1tt & (decoder_segments_bt[:, :, None] == decoder_segments_bt[:, None, :])
                                  )[:, None])
      cross_bias = segment_bias(decoder_segments_bt, segments_bs)
    x_btd = self.decoder(self.embed(ids_bt, jnp.dtype(cfg.dtype)), self_bias, enc_bsd, cross_bias, rng)
    return self._logits(x_btd)

  def __call__(self, ids_bs: Array, decoder_ids_bt: Array, segments_bs: Array | None = None,
               decoder_segments_bt: Array | None = None, *, rng: Array | None = None) -> Array:
    """Logits [B, T, V] (float32). decoder_ids are the targets shifted right, each
    example starting with the decoder start token (T5: the padding id 0);
    segments as in `encode` (None: no padding), decoder_segments as in `decode`."""
    if segments_bs is None:
      segments_bs = jnp.ones(ids_bs.shape, jnp.int32)
    r_enc, r_dec = L.split_rng(rng, 2)
    return self.decode(decoder_ids_bt, self.encode(ids_bs, segments_bs, rng=r_enc), segments_bs,
                       decoder_segments_bt, rng=r_dec)

  # --- generation (lmjax.generate) -------------------------------------------
  def start_decoding(self, ids_bs: Array, segments_bs: Array, self_cache: list[dict]) -> dict:
    """Runs the encoder once and projects its output into every decoder layer's
    cross-attention keys and values: the cache the decoding steps read."""
    enc_bsd = self.encode(ids_bs, segments_bs)
    layers = [{"self": c, "cross": layer.cross_attention.project_kv(enc_bsd)}
              for c, layer in zip(self_cache, self.decoder.layers)]
    return {"layers": layers, "cross_bias": L.padding_bias(segments_bs)}

  def decode_step(self, ids_bt: Array, positions_bt: Array, cache: dict) -> tuple[Array, dict]:
    """Logits [B, T, V] (float32) of decoder tokens at `positions`, and the updated cache."""
    x_btd = self.embed(ids_bt, jnp.dtype(self.cfg.dtype))
    x_btd, layers = self.decoder.step(x_btd, positions_bt, cache["cross_bias"], cache["layers"])
    return self._logits(x_btd), {"layers": layers, "cross_bias": cache["cross_bias"]}


def segment_bias(query_segments_bt: Array, key_segments_bs: Array) -> Array:
  """Additive bias [B, 1, T, S]: a query attends to keys of its own segment, never to padding (0)."""
  allowed = (query_segments_bt[:, :, None] == key_segments_bs[:, None, :]) & (key_segments_bs[:, None, :] > 0)
  return L.mask_to_bias(allowed[:, None])


def init_cache(cfg: T5Config, batch: int, length: int, dtype=None) -> list[dict]:
  """Zeroed decoder self-attention cache, one {"k", "v"}: [B, S, N, H] per decoder layer."""
  dt = jnp.dtype(dtype or cfg.dtype)
  shape = (batch, length, cfg.num_heads, cfg.head_dim)
  return [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(cfg.num_decoder_layers)]


FAMILY = Family(
    name="t5", config=T5Config, models={"seq2seq": T5ForConditionalGeneration},
    converter="lmjax.convert.t5", hf_model_types=("t5",),
    arch_fields=tuple(f.name for f in dataclasses.fields(T5Config)
                      if f.name not in ("dropout_rate", "init_factor", "dtype", "attention", "remat", "scan_layers")),
    generation=Generation(
        model="seq2seq", init_cache=init_cache,
        prefill=lambda model, ids_bt, positions_bt, cache: model.decode_step(ids_bt, positions_bt, cache),
        step=lambda model, ids_bt, positions_bt, cache: model.decode_step(ids_bt, positions_bt, cache),
        forward=lambda model, ids_bt, inputs: model.decode(ids_bt, model.encode(*inputs), inputs[1]),
        encode=lambda model, ids_bs, segments_bs, cache: model.start_decoding(ids_bs, segments_bs, cache),
        start_id=0))
