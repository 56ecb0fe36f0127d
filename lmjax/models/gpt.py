"""Decoder-only Transformer language models: GPT-2 and Llama-style, one family.

Follows Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners" (GPT-2: pre-LN LayerNorm, learned absolute positions, tanh-GELU
MLP, biases, output tied to the token embeddings, residual projections
initialised with std / sqrt(2 x layers)) and Touvron et al. 2023, "LLaMA"
(RMSNorm, rotary positions of Su et al. 2021, SwiGLU MLP of Shazeer 2020, no
biases, untied output) with grouped-query attention (Ainslie et al. 2023,
`num_kv_heads` < `num_heads`). The two are switches of one config, not two
model files:

    from lmjax.models.gpt import GptConfig, GptForCausalLM
    model = GptForCausalLM(GptConfig.preset("llama-tiny"), rngs=nnx.Rngs(0))
    logits_btv = model(ids_bt)                        # training / scoring
    cache = init_cache(cfg, batch=4, length=256)      # generation
    logits_btv, cache = model.decode(ids_bt, positions_bt, cache)

Packed rows (several documents per row) pass `segment_ids` (1, 2, ... per
document, 0 for padding) and per-document `positions`: attention never
crosses a document boundary.
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

# Presets: name -> fields. gpt2 / gpt2-medium are OpenAI's sizes; the llama
# sizes are small Llama-architecture models (llama-1b is TinyLlama-1.1B's
# shape: 22 layers, hidden 2048, 32 heads sharing 4 kv heads).
_GPT2 = dict(position="learned", norm="layernorm", mlp="gelu", use_bias=True, tie_embeddings=True, norm_eps=1e-5)
_LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=False, norm_eps=1e-5,
              dropout_rate=0.0, attention_dropout_rate=0.0)
PRESETS = {
    "tiny": dict(_GPT2, hidden_size=128, num_layers=2, num_heads=2, mlp_dim=512, max_position_embeddings=256),
    "gpt2": dict(_GPT2, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "gpt2-medium": dict(_GPT2, hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    "llama-tiny": dict(_LLAMA, vocab_size=32000, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                       mlp_dim=352, max_position_embeddings=256),
    "llama-100m": dict(_LLAMA, vocab_size=32000, hidden_size=768, num_layers=10, num_heads=12, num_kv_heads=4,
                       mlp_dim=2048, max_position_embeddings=2048),
    "llama-1b": dict(_LLAMA, vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4,
                     mlp_dim=5632, max_position_embeddings=2048),
}


@dataclasses.dataclass(frozen=True)
class GptConfig:
  vocab_size: int = 50257  # GPT-2's byte-level BPE; runs here use their own sentencepiece size
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  # Key/value heads shared by groups of query heads; 0 = num_heads (plain
  # multi-head attention). Fewer kv heads shrink the generation cache.
  num_kv_heads: int = 0
  mlp_dim: int = 3072
  max_position_embeddings: int = 1024  # the context window
  position: str = "learned"  # "learned" table (GPT-2) or "rope" (Llama)
  rope_theta: float = 10000.0
  norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama)
  norm_eps: float = 1e-5
  mlp: str = "gelu"  # "gelu" (tanh approximation, as GPT-2) or "swiglu" (Llama; mlp_dim is the gate width)
  use_bias: bool = True  # biases in attention and MLP projections
  tie_embeddings: bool = True  # output projection = token embedding table
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  init_std: float = 0.02
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
  # Causal-LM loss in chunks of this many positions (layers.chunked_cross_entropy):
  # [B, T, V] float32 logits never exist at once. 0 = all positions at once.
  loss_chunk: int = 0

  def __post_init__(self):
    choices = {"position": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu")}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise LmjaxError(f"model.{name}={getattr(self, name)!r}: use one of {', '.join(allowed)}.")
    if self.hidden_size % self.num_heads:
      raise LmjaxError(f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}.")
    if self.num_heads % self.kv_heads:
      raise LmjaxError(f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads={self.num_kv_heads}: "
                       "each key/value head serves a whole group of query heads. Choose a divisor of num_heads.")
    if self.position == "rope" and self.head_dim % 2:
      raise LmjaxError(f"Rotary positions need an even head width; hidden_size / num_heads = {self.head_dim}.")
    L.check_attention(self.attention, self.attention_dropout_rate)
    L.check_remat(self.remat)
    L.check_scan(self.scan_layers)
    if self.loss_chunk < 0:
      raise LmjaxError(f"model.loss_chunk={self.loss_chunk} must be 0 (no chunks) or a number of positions.")

  @classmethod
  def preset(cls, name: str, **overrides) -> GptConfig:
    if name not in PRESETS:
      raise LmjaxError(f"unknown decoder preset {name!r}; choose one of {', '.join(PRESETS)}")
    return cls(**{**PRESETS[name], **overrides})

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def mesh_divisors(self) -> dict[str, tuple[int, str]]:
    """Sizes split over a mesh axis by the rule sets: field -> (size, axis)."""
    return {"num_heads": (self.num_heads, "tensor"), "num_kv_heads": (self.kv_heads, "tensor"),
            "mlp_dim": (self.mlp_dim, "tensor"), "vocab_size": (self.vocab_size, "tensor"),
            "hidden_size": (self.hidden_size, "fsdp")}

  def flops_per_token(self, workload: Workload, training: bool = True) -> float:
    """Matmul FLOPs per token (x3 for forward + backward when training).

    Q and output projections (2 x 2 D^2), K and V (2 x 2 D K H), attention
    scores and values with the causal half (2 x 2 x T D / 2), the MLP (two
    matrices, three for SwiGLU), and the vocabulary projection at every
    position (or at `workload.predictions_per_seq` of them per row).
    """
    d, t, f, v = self.hidden_size, workload.seq_len, self.mlp_dim, self.vocab_size
    p = t if workload.predictions_per_seq is None else workload.predictions_per_seq
    kv = self.kv_heads * self.head_dim
    mlp_mats = 3 if self.mlp == "swiglu" else 2
    per_layer = 2 * 2 * d * d + 2 * 2 * d * kv + 2 * 2 * t * d / 2 + 2 * mlp_mats * d * f
    forward = self.num_layers * per_layer + 2 * d * v * p / t
    return 3 * forward if training else forward


def _norm(cfg: GptConfig, rngs: nnx.Rngs) -> nnx.Module:
  cls = L.LayerNorm if cfg.norm == "layernorm" else L.RMSNorm
  return cls(cfg.hidden_size, cfg.norm_eps, rngs=rngs)


class Block(nnx.Module):
  """Pre-LN decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: GptConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)  # residual projections (GPT-2)
    self.attention_norm = _norm(cfg, rngs)
    self.attention = L.Attention(cfg.hidden_size, cfg.num_heads, kv_heads=cfg.kv_heads, use_bias=cfg.use_bias,
                                 rope_theta=cfg.rope_theta if cfg.position == "rope" else 0.0,
                                 init_std=cfg.init_std, out_init_std=out_std,
                                 dropout_rate=cfg.attention_dropout_rate, implementation=cfg.attention,
                                 rngs=rngs)
    self.mlp_norm = _norm(cfg, rngs)
    swiglu = cfg.mlp == "swiglu"
    self.mlp = L.Mlp(cfg.hidden_size, cfg.mlp_dim, activation="silu" if swiglu else "gelu_tanh", gated=swiglu,
                     use_bias=cfg.use_bias, init_std=cfg.init_std, out_init_std=out_std, rngs=rngs)

  def __call__(self, x_btd, positions_bt, bias_b1ts, cache, rng):
    """Without a cache (training, scoring) attention is causal on top of `bias`
    (packed segments, or None); with one, `bias` alone masks the cache slots."""
    r_attn, r1, r2 = L.split_rng(rng, 3)
    p = self.cfg.dropout_rate
    h_btd, cache = self.attention(self.attention_norm(x_btd), bias_b1ts, causal=cache is None,
                                  positions_bt=positions_bt, cache=cache, rng=r_attn)
    x_btd = x_btd + L.dropout(h_btd, p, r1)
    x_btd = x_btd + L.dropout(self.mlp(self.mlp_norm(x_btd)), p, r2)
    # The residual stream's gradient is materialised here once per layer (see L.grad_boundary).
    return L.cpu_grad_boundary(x_btd, L.ACT_BTD), cache


class GptForCausalLM(nnx.Module):
  """Token embeddings -> decoder blocks -> final norm -> vocabulary logits."""

  def __init__(self, cfg: GptConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = L.Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), init_std=cfg.init_std, rngs=rngs)
    self.position = (L.Embed(cfg.max_position_embeddings, cfg.hidden_size, ("position", "embed"),
                             init_std=cfg.init_std / 2, rngs=rngs) if cfg.position == "learned" else None)
    self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = _norm(cfg, rngs)
    self.lm_head = (None if cfg.tie_embeddings else
                    L.param(rngs, L.normal(cfg.init_std), (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab")))

  def output_matrix(self) -> Array:
    """The vocabulary projection [D, V] in the compute dtype (the token embeddings when tied)."""
    dt = jnp.dtype(self.cfg.dtype)
    return (self.embed.embedding[...].T if self.lm_head is None else self.lm_head[...]).astype(dt)

  def _forward(self, ids_bt, positions_bt, bias_b1ts, caches, rng, *, project: bool = True):
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    rngs = L.split_rng(rng, cfg.num_layers + 1)
    x_btd = self.embed(ids_bt, dt)
    if self.position is not None:
      x_btd = x_btd + self.position(positions_bt, dt)
    x_btd = L.shard(L.dropout(x_btd, cfg.dropout_rate, rngs[0]), L.ACT_BTD)
    new_caches = []
    if caches is None and cfg.scan_layers:  # training and full forwards; cached decoding stays unrolled
      x_btd = L.scan_blocks(self.layers, cfg.remat, x_btd, rngs[1:],
                            lambda layer, x, r: layer(x, positions_bt, bias_b1ts, None, r)[0])
      new_caches = [None] * cfg.num_layers
    else:
      for i, layer in enumerate(self.layers):
        if caches is None:
          x_btd, c = L.call_block(layer, cfg.remat, x_btd, positions_bt, bias_b1ts, None, rngs[i + 1])
        else:
          x_btd, c = layer(x_btd, positions_bt, bias_b1ts, caches[i], rngs[i + 1])
        new_caches.append(c)
    x_btd = self.final_norm(x_btd)
    if not project:
      return x_btd, None
    if self.lm_head is None:
      logits_btv = self.embed.attend(x_btd)
    else:
      logits_btv = L.matmul(x_btd, self.lm_head[...].astype(dt), preferred_element_type=jnp.float32)
    return logits_btv.astype(jnp.float32), (None if caches is None else new_caches)

  def __call__(self, ids_bt: Array, positions_bt: Array | None = None, segment_ids_bt: Array | None = None, *,
               rng: Array | None = None) -> Array:
    """Logits [B, T, V] (float32) for every position.

    positions: int [B, T] (default 0..T-1); segment_ids: int [B, T], 1, 2, ...
    per packed document and 0 for padding (default: one document per row).
    """
    return self.hidden(ids_bt, positions_bt, segment_ids_bt, rng=rng, project=True)

  def hidden(self, ids_bt: Array, positions_bt: Array | None = None, segment_ids_bt: Array | None = None, *,
             rng: Array | None = None, project: bool = False) -> Array:
    """The final norm's output [B, T, D] (project=False; the vocabulary
    projection is `output_matrix`), or the logits as __call__ (project=True)."""
    b, t = ids_bt.shape
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(t), (b, t))
    # The causal mask is added inside attention; packed rows add their segment mask here.
    bias_b1ts = (None if segment_ids_bt is None else
                 L.mask_to_bias((segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])[:, None]))
    out, _ = self._forward(ids_bt, positions_bt, bias_b1ts, None, rng, project=project)
    return out

  def decode(self, ids_bt: Array, positions_bt: Array, cache: list[dict]) -> tuple[Array, list[dict]]:
    """Incremental forward: tokens at `positions` (consecutive per row) are
    written into the cache and attend to every slot up to their own position.

    Prefill passes whole (right-padded) prompts at positions 0..T-1; each
    decoding step passes one token per row at that row's next position.
    Returns (logits [B, T, V] float32, the updated cache).
    """
    s = cache[0]["k"].shape[1]
    allowed_bts = jnp.arange(s)[None, None, :] <= positions_bt[:, :, None]
    return self._forward(ids_bt, positions_bt, L.mask_to_bias(allowed_bts[:, None]), cache, None)


def init_cache(cfg: GptConfig, batch: int, length: int, dtype=None) -> list[dict]:
  """Zeroed key/value cache, one {"k", "v"}: [B, S, K, H] per layer."""
  dt = jnp.dtype(dtype or cfg.dtype)
  shape = (batch, length, cfg.kv_heads, cfg.head_dim)
  return [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(cfg.num_layers)]


FAMILY = Family(
    name="gpt", config=GptConfig, models={"pretraining": GptForCausalLM},
    converter="lmjax.convert.gpt", hf_model_types=("gpt2", "llama"),
    arch_fields=tuple(f.name for f in dataclasses.fields(GptConfig)
                      if f.name not in ("dropout_rate", "attention_dropout_rate", "init_std", "dtype", "attention",
                                        "remat", "scan_layers", "loss_chunk")),
    generation=Generation(
        model="pretraining", init_cache=init_cache,
        prefill=lambda model, ids_bt, positions_bt, cache: model.decode(ids_bt, positions_bt, cache),
        step=lambda model, ids_bt, positions_bt, cache: model.decode(ids_bt, positions_bt, cache),
        forward=lambda model, ids_bs, encoder_inputs: model(ids_bs)))
