"""Shared Transformer blocks (Flax NNX).

Axis legend, used in einsum strings and name suffixes throughout lmjax:
  B batch   T query length   S key length   D model width   N heads
  K kv heads   H head width   F MLP width   V vocabulary   P predicted positions

Every parameter is created with its logical axis names (`out_sharding=` metadata);
`lmjax.sharding` maps those names onto the device mesh. Activations are
constrained only at block boundaries, through `shard`.

Dropout takes an explicit PRNG key (None = deterministic), so modules hold no
RNG state and a train step is a pure function of (params, batch, key).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax import sharding as sh
from lmjax.errors import LmjaxError

Array = jax.Array

# Logical names of activations at block boundaries.
ACT_BTD = ("batch", "seq", "act_embed")


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str, ...]) -> nnx.Param:
  """A float32 parameter carrying its logical axis names."""
  assert len(shape) == len(axes), (shape, axes)
  # eager_sharding=False: models can be built without a mesh; shardings are
  # applied by the trainer's jitted init (see lmjax.sharding).
  return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=axes, eager_sharding=False)


def normal(stddev: float):
  return nnx.initializers.normal(stddev)


zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


def shard(x: Array, axes: tuple[str | None, ...]) -> Array:
  """Constrains an activation to the logical axes under the active rules."""
  return sh.constrain(x, axes)


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
  """Inverted dropout: zeroes each element with probability `rate` and scales the
  rest by 1 / (1 - rate). Identity when `rng` is None (evaluation) or the rate is 0.
  The mask comes from `keep_mask`, not from `jax.random.bernoulli`."""
  if rng is None or rate == 0.0:
    return x
  keep = keep_mask(rng, rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _mix32(x: Array) -> Array:
  # "lowbias32" (Chris Wellons' hash prospector): a bijection on uint32 whose
  # output bits each flip with probability ~1/2 when any input bit flips.
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def key_words(rng: Array) -> Array:
  """A PRNG key (typed or raw) as its uint32 words: what `keep_mask` hashes."""
  words = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  return words.reshape(-1).astype(jnp.uint32)


def keep_mask(rng: Array, rate: float, shape: tuple[int, ...]) -> Array:
  """Which elements of an array of `shape` dropout keeps: True with probability
  1 - rate, independently per element and per key.

  A counter-based hash of (key, element position) rather than threefry bits:
  the row (all dimensions but the last, as one index) and the column each pass
  through a 32-bit integer mixer together with one word of the key. It is a few
  integer operations per element that XLA fuses into the mask's consumer, so a
  training step neither materialises random bits nor carries threefry's 20
  rounds at every dropout site. On the MiniLM classifier's step (batch 32,
  seq 64, 2-core CPU) it was 4-7% faster than threefry lowered unrolled and
  ~22% faster than JAX's default lowering; the step compiled in 8.6 s instead
  of 12.5 s and its program holds ~75 MB instead of ~110 MB
  (docs/performance.md, "Dropout bits").
  Positions are global indices (`iota`), so the mask is the same on any mesh
  and a run resumed on another mesh keeps its masks."""
  words = key_words(rng)
  out_shape = tuple(shape)
  shape = out_shape or (1,)
  row = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for d in range(len(shape) - 2, -1, -1):
    row = row + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2**32)
    stride *= shape[d]
  col = jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1)
  h = _mix32(row ^ words[0])
  h = _mix32((h + col * jnp.uint32(0x9E3779B9)) ^ words[-1])
  return (h >= jnp.uint32(min(round(rate * 2**32), 2**32 - 1))).reshape(out_shape)


def gelu(x: Array) -> Array:
  """Exact GELU, x * Phi(x), written with erf as the original BERT and Hugging
  Face's "gelu" compute it. `jax.nn.gelu(approximate=False)` uses erfc, which
  XLA's CPU backend evaluates through exp: this form made the BERT-base step
  ~1.4% faster there (same values to float32 rounding)."""
  return x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(1 / math.sqrt(2), x.dtype)))


def _materialize(g: Array) -> Array:
  # One trip of a while loop that XLA cannot see through: the trip count comes
  # from the data (1 unless g's first element is not finite, then 0) and the
  # body multiplies by that count as a float (1.0, exact), so the value is
  # returned bit for bit, but the compiler must hold it in one buffer.
  n = jnp.isfinite(g[(0,) * g.ndim]).astype(jnp.int32)
  one = n.astype(g.dtype)
  return jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] * one), (jnp.int32(0), g))[1]


def _materialize_per_shard(g: Array, layout) -> Array:
  # Under a mesh, each device runs the loop on its own shard, with a trip count
  # from its own first element: g[0, ...] of the global array would be one
  # broadcast from the device holding it, a collective per layer.
  if layout is None:
    return _materialize(g)
  mesh, spec = layout
  return jax.shard_map(_materialize, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def grad_boundary(x: Array, layout=None) -> Array:
  """Identity; in the backward pass, on XLA's CPU backend, the cotangent is
  computed once into its own buffer instead of being fused into its users.

  Pre-LN blocks carry the gradient of the residual stream through every layer
  as a sum of elementwise terms. XLA:CPU's loop fusion may duplicate a
  producer into each of its consumers, and with GPT-2's LayerNorm blocks
  nothing unfusible lay on that path, so the sum was never materialised:
  every layer's backward re-evaluated the whole chain from the top layer
  down, dropout masks (then threefry bits) included, an O(layers^2) cost. In GPT-2
  small at seq 512 the fusions doing this took ~20% of the step's thread
  time, and placing this at each block's output made the step 1.3x faster
  (2-core CPU, 2026-11-30). A Llama-style model (RMSNorm, no dropout) showed
  no such fusion and ran the same with and without it.
  `jax.lax.optimization_barrier` does not help there: the CPU compiler expands
  it before fusion. GPU and TPU lower this to the identity: a data-dependent
  loop would cost a device-to-host sync per layer there, and the duplication
  was found (and measured) on the CPU backend only.

  `layout` is (mesh, PartitionSpec) of x, or None: with it the loop runs per
  shard (`jax.shard_map`), so a sharded cotangent adds no collective.
  """
  return x


def _grad_boundary_fwd(x, layout):
  return x, None


def _grad_boundary_bwd(layout, _, g):
  return (jax.lax.platform_dependent(g, cpu=lambda g: _materialize_per_shard(g, layout), default=lambda g: g),)


grad_boundary.defvjp(_grad_boundary_fwd, _grad_boundary_bwd)


def cpu_grad_boundary(x: Array, axes: tuple[str | None, ...]) -> Array:
  """x constrained to the logical `axes` (`shard`), then `grad_boundary` where
  the program is traced for the CPU: a custom_vjp has no forward-mode rule, so
  on GPUs and TPUs (where it would do nothing) it stays out of the way of
  jax.jvp, jacfwd and hessian."""
  x = shard(x, axes)
  if jax.default_backend() != "cpu":
    return x
  return grad_boundary(x, sh.layout(axes))


# Rematerialisation of each block in the backward pass (`model.remat`):
#   none           keep what the backward pass needs (fastest, most memory)
#   full           keep each block's input only; recompute the block in the backward pass
#   dots           keep every matmul's output (projections and attention scores);
#                  recompute the elementwise work (norms, activations, softmax, dropout masks)
#   dots_no_batch  keep the outputs of matmuls without batch dimensions (the weight
#                  projections); recompute attention and the elementwise work
REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(policy: str) -> None:
  if policy not in REMAT:
    raise LmjaxError(f"model.remat={policy!r} is not a rematerialisation policy; use one of {', '.join(REMAT)}.")


def call_block(block: nnx.Module, remat: str, *args):
  """block(*args), rematerialised under the policy `remat` (see REMAT)."""
  if remat == "none":
    return block(*args)
  return nnx.remat(lambda m, *a: m(*a), policy=REMAT[remat])(block, *args)


def scan_blocks(blocks, remat: str, x: Array, rngs: list, apply) -> Array:
  """x through each block in turn, x = apply(block, x, rng) with the block's
  dropout key, with one compiled body for all blocks (`model.scan_layers`):
  their parameters are stacked along a new leading axis inside the step and
  `lax.scan` walks it, so compile time no longer grows with depth. The
  parameters keep their per-layer layout (`layers/0/...`): checkpoints and
  Hugging Face files do not depend on the switch. The stacked copy costs one
  more set of the blocks' parameters in the step's memory. Each block is
  rematerialised under `remat`; the results equal the unrolled loop's."""
  graphdef, _ = nnx.split(blocks[0])
  stacked = jax.tree.map(lambda *ws: jnp.stack(ws), *[nnx.state(b) for b in blocks])
  keys = None if rngs[0] is None else jnp.stack(rngs)

  def body(x, layer):
    state, rng = layer
    return apply(nnx.merge(graphdef, state), x, rng), None
  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT[remat], prevent_cse=False)
  return jax.lax.scan(body, x, (stacked, keys))[0]


def check_scan(scan_layers) -> None:
  if not isinstance(scan_layers, bool):
    raise LmjaxError(f"model.scan_layers={scan_layers!r}: use true or false.")


def split_rng(rng: Array | None, n: int) -> list[Array | None]:
  if rng is None:
    return [None] * n
  return list(jax.random.split(rng, n))


def matmul(x: Array, w: Array, contract: int = 1, *, w_transposed: bool = False, preferred_element_type=None,
           flatten: bool | None = None) -> Array:
  """x [..., *c] times a weight w [*c, *o] -> [..., *o], contracting x's last
  `contract` dimensions with w's first; `w_transposed`: w is [*o, *c] (a tied
  embedding table [V, D]).

  On XLA's CPU backend (`flatten` None, traced for the CPU; or True) this is
  one 2-D matmul [M, C] x [C, O] of the reshaped operands: the backward pass of
  an einsum with several free dimensions on x (`BTD,DF->BTF`) computes the
  weight gradient as a dot that XLA:CPU feeds with a transposed copy of the
  output gradient, a slow strided write into which it fuses the elementwise
  work before it (activation, dropout mask), done a second time for the input
  gradient. With 2-D operands both gradients read one buffer and no copy is
  made. A T5-small-shaped MLP's forward and backward ([2048, 512] x
  [512, 2048] and back, ReLU, dropout) ran 1.9x faster (2-core CPU,
  docs/performance.md "Matmul operand shapes"). Elsewhere (GPU, TPU) it is
  the einsum, whose layouts those compilers choose well. Same values either
  way up to float32 rounding (the same dot products; the kernel may block the
  sums differently)."""
  if flatten is None:
    flatten = jax.default_backend() == "cpu"
  lead = x.shape[:x.ndim - contract]
  out = w.shape[contract:] if not w_transposed else w.shape[:w.ndim - contract]
  if flatten:
    c = math.prod(x.shape[x.ndim - contract:])
    w2 = w.reshape((c, -1) if not w_transposed else (-1, c))
    y = jax.lax.dot_general(x.reshape(-1, c), w2, (((1,), (1 if w_transposed else 0,)), ((), ())),
                            preferred_element_type=preferred_element_type)
    return y.reshape(*lead, *out)
  w_contracted = tuple(range(contract)) if not w_transposed else tuple(range(w.ndim - contract, w.ndim))
  return jax.lax.dot_general(x, w, ((tuple(range(x.ndim - contract, x.ndim)), w_contracted), ((), ())),
                             preferred_element_type=preferred_element_type)


class Embed(nnx.Module):
  """A lookup table [num, D]; `attend` projects back onto it (tied output)."""

  def __init__(self, num: int, dim: int, axes: tuple[str, str], *, init_std: float, rngs: nnx.Rngs):
    self.num = num
    self.embedding = param(rngs, normal(init_std), (num, dim), axes)

  def __call__(self, ids: Array, dtype) -> Array:
    return jnp.take(self.embedding[...].astype(dtype), ids, axis=0)

  def attend(self, x_bpd: Array) -> Array:
    """Logits [..., V], accumulated and returned in float32 whatever the compute dtype."""
    return matmul(x_bpd, self.embedding[...].astype(x_bpd.dtype), w_transposed=True,
                  preferred_element_type=jnp.float32)


class Dense(nnx.Module):
  """x @ W + b for a [in, out] kernel with logical axes."""

  def __init__(self, d_in: int, d_out: int, axes: tuple[str, str], *, init_std: float,
               use_bias: bool = True, rngs: nnx.Rngs):
    self.kernel = param(rngs, normal(init_std), (d_in, d_out), axes)
    self.bias = param(rngs, zeros, (d_out,), (axes[1],)) if use_bias else None

  def __call__(self, x: Array) -> Array:
    y = matmul(x, self.kernel[...].astype(x.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    return y


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32, returned in the input dtype."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param(rngs, ones, (dim,), ("norm",))
    self.bias = param(rngs, zeros, (dim,), ("norm",))

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class RMSNorm(nnx.Module):
  """Root-mean-square norm (Zhang & Sennrich 2019; Llama): no mean, no bias; float32 inside."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param(rngs, ones, (dim,), ("norm",))

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


def rope(x_btnh: Array, positions_bt: Array, theta: float) -> Array:
  """Rotary position embedding (Su et al. 2021) in the half-split layout of
  GPT-NeoX and Hugging Face Llama: feature i pairs with i + H/2. float32 inside."""
  h = x_btnh.shape[-1]
  inv_freq_h2 = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  angle_bth2 = positions_bt[..., None].astype(jnp.float32) * inv_freq_h2
  sin, cos = jnp.sin(angle_bth2)[:, :, None, :], jnp.cos(angle_bth2)[:, :, None, :]
  x = x_btnh.astype(jnp.float32)
  x1, x2 = x[..., :h // 2], x[..., h // 2:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_btnh.dtype)


class Attention(nnx.Module):
  """Dot-product attention for every family: self- or cross-attention, N query
  heads sharing K key/value heads (K = N multi-head, K = 1 multi-query),
  optional biases, optional rotary positions, an optional KV cache.

  Masks and position biases arrive as one additive float32 `bias`
  broadcastable to [B, N, T, S]: padding ([B, 1, 1, S], `padding_bias`),
  causal and packed-segment masks ([B, 1, T, S], `mask_to_bias`), or a
  per-head relative position bias ([1, N, T, S]) added to either.
  `causal=True` adds the causal mask on top (built inside `attend`, so the
  cuDNN kernel can skip the masked blocks instead of reading a bias).
  Softmax in float32. Queries are scaled by 1/sqrt(H) unless `scale=False`
  (T5, whose initialisation folds that factor into the query weights).
  The head width H is dim / num_heads unless `head_dim` sets it.
  `implementation` picks the kernel (`ATTENTION`, see `attend`).
  """

  def __init__(self, dim: int, num_heads: int, *, kv_heads: int = 0, head_dim: int = 0, use_bias: bool = True,
               rope_theta: float = 0.0, scale: bool = True, init_std: float, q_init_std: float | None = None,
               out_init_std: float | None = None, dropout_rate: float = 0.0, implementation: str = "auto",
               rngs: nnx.Rngs):
    check_attention(implementation, dropout_rate)
    k = kv_heads or num_heads
    if not head_dim and dim % num_heads:
      raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
    if num_heads % k:
      raise ValueError(f"num_heads {num_heads} is not divisible by kv_heads {k}")
    n, h = num_heads, head_dim or dim // num_heads
    self.num_heads, self.kv_heads, self.head_dim = n, k, h
    self.rope_theta = rope_theta  # 0 = no rotary positions
    self.scale = scale
    self.dropout_rate = dropout_rate
    self.implementation = implementation
    init = normal(init_std)
    self.q_dnh = param(rngs, init if q_init_std is None else normal(q_init_std), (dim, n, h), ("embed", "heads", "kv"))
    self.k_dkh = param(rngs, init, (dim, k, h), ("embed", "kv_heads", "kv"))
    self.v_dkh = param(rngs, init, (dim, k, h), ("embed", "kv_heads", "kv"))
    if use_bias:
      self.q_bias = param(rngs, zeros, (n, h), ("heads", "kv"))
      self.k_bias = param(rngs, zeros, (k, h), ("kv_heads", "kv"))
      self.v_bias = param(rngs, zeros, (k, h), ("kv_heads", "kv"))
    else:
      self.q_bias = self.k_bias = self.v_bias = None
    out_std = init_std if out_init_std is None else out_init_std
    self.out_nhd = param(rngs, normal(out_std), (n, h, dim), ("heads", "kv", "embed"))
    self.out_bias = param(rngs, zeros, (dim,), ("norm",)) if use_bias else None

  @staticmethod
  def _project(x_btd, w, b):
    y = matmul(x_btd, w[...].astype(x_btd.dtype))
    return y if b is None else y + b[...].astype(x_btd.dtype)

  def project_kv(self, kv_bsd: Array) -> dict:
    """Keys and values {"k", "v"}: [B, S, K, H] of a sequence, e.g. the encoder
    output that cross-attention reads at every decoding step (computed once)."""
    return {"k": self._project(kv_bsd, self.k_dkh, self.k_bias),
            "v": self._project(kv_bsd, self.v_dkh, self.v_bias)}

  def __call__(self, x_btd: Array, bias: Array | None, *, causal: bool = False, kv_bsd: Array | None = None,
               positions_bt: Array | None = None, cache: dict | None = None, kv: dict | None = None,
               rng: Array | None = None) -> tuple[Array, dict | None]:
    """Returns (output [B, T, D], the updated cache or None).

    kv_bsd: keys and values come from here (cross-attention); default x.
    kv: keys and values already projected ({"k", "v"} from `project_kv`),
      used as they are instead of kv_bsd (cached cross-attention).
    positions_bt: token positions, for rotary positions and the cache.
    cache: {"k", "v"}: [B, S, K, H]; the new keys and values are written at
      `positions` (each row's own offset) and the queries attend over all S
      slots; `bias` masks the slots not yet written.
    """
    q_btnh = self._project(x_btd, self.q_dnh, self.q_bias)
    if kv is None:
      kv = self.project_kv(x_btd if kv_bsd is None else kv_bsd)
    k_bskh, v_bskh = kv["k"], kv["v"]
    if self.rope_theta:
      q_btnh = rope(q_btnh, positions_bt, self.rope_theta)
      k_bskh = rope(k_bskh, positions_bt, self.rope_theta)
    if self.scale:
      q_btnh = q_btnh * jnp.asarray(1.0 / math.sqrt(self.head_dim), q_btnh.dtype)
    if cache is not None:
      write = jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice(c, u.astype(c.dtype), (i, 0, 0)))
      k_bskh = write(cache["k"], k_bskh, positions_bt[:, 0])
      v_bskh = write(cache["v"], v_bskh, positions_bt[:, 0])
      cache = {"k": k_bskh, "v": v_bskh}
    out_btnh = attend(q_btnh, k_bskh.astype(q_btnh.dtype), v_bskh.astype(q_btnh.dtype), bias, causal=causal,
                      implementation=self.implementation, dropout_rate=self.dropout_rate, rng=rng)
    y_btd = matmul(out_btnh, self.out_nhd[...].astype(x_btd.dtype), 2)
    if self.out_bias is not None:
      y_btd = y_btd + self.out_bias[...].astype(x_btd.dtype)
    return y_btd, cache


# Attention kernels (`model.attention`):
#   einsum  two einsums around a float32 softmax, written out here: materialises
#           the [B, N, T, S] scores; the only one with attention dropout
#   xla     jax.nn.dot_product_attention(implementation="xla")
#   cudnn   jax.nn.dot_product_attention(implementation="cudnn"): cuDNN's fused
#           flash attention (NVIDIA GPUs, bfloat16/float16, head width <= 256)
#   auto    cudnn on a GPU in bfloat16/float16 in calls without attention
#           dropout, else einsum (on CPU the faster of einsum and xla, measured
#           in docs/architecture.md)
ATTENTION = ("auto", "einsum", "xla", "cudnn")


def check_attention(implementation: str, dropout_rate: float) -> None:
  if implementation not in ATTENTION:
    raise LmjaxError(f"model.attention={implementation!r} is not an attention implementation; use one of "
                     f"{', '.join(ATTENTION)}.")
  if implementation in ("xla", "cudnn") and dropout_rate > 0:
    raise LmjaxError(f"model.attention={implementation!r} (jax.nn.dot_product_attention) has no attention dropout, "
                     f"but the attention dropout rate is {dropout_rate}: set model.attention_dropout_rate=0 "
                     "(model.dropout_rate for T5), or use model.attention=einsum or auto (auto uses einsum "
                     "wherever dropout applies).")


def pick_attention(implementation: str, dtype, dropping: bool) -> str:
  """The kernel `attend` runs for `model.attention=implementation` in this
  dtype, with (`dropping`) or without attention dropout."""
  if implementation != "auto":
    return implementation
  if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and not dropping:
    return "cudnn"
  return "einsum"


def causal_bias(t: int, s: int) -> Array:
  """[1, 1, T, S] additive mask: query i (the last T of S positions) sees keys up to its own position."""
  q = jnp.arange(t)[:, None] + (s - t)
  return mask_to_bias(q >= jnp.arange(s)[None, :])[None, None]


def attend(q_btnh: Array, k_bskh: Array, v_bskh: Array, bias: Array | None, *, causal: bool = False,
           implementation: str = "einsum", dropout_rate: float = 0.0, rng: Array | None = None,
           cpu_vjp: bool | None = None) -> Array:
  """Softmax attention of pre-scaled queries; N query heads share K key/value
  heads (N = K x G). `bias`: additive float32 or None, broadcastable to
  [B, N, T, S]; `causal` adds the causal mask. Returns [B, T, N, H].

  The einsum kernel's backward pass: where the program is traced for the CPU
  (`cpu_vjp` None) or `cpu_vjp=True`, `_softmax_attention`'s, written so that
  XLA:CPU transposes no [B, N, T, S] array; elsewhere autodiff's (a
  custom_vjp has no forward-mode rule, so GPUs and TPUs keep jax.jvp)."""
  dropping = rng is not None and dropout_rate > 0
  impl = pick_attention(implementation, q_btnh.dtype, dropping)
  b, t, n, h = q_btnh.shape
  s, k = k_bskh.shape[1], k_bskh.shape[2]
  if impl != "einsum":
    if dropping:  # check_attention refuses this combination when the model is configured
      raise LmjaxError(f"attention implementation {impl!r} has no dropout")
    if causal and t != s:  # jax's is_causal aligns the first query with the first key; ours, the last
      bias, causal = (causal_bias(t, s) if bias is None else bias + causal_bias(t, s)), False
    if bias is not None:
      bias = jnp.broadcast_to(bias, (bias.shape[0], bias.shape[1], t, s))
      if impl == "cudnn":  # in the inputs' dtype, above the most negative value (cuDNN mishandles it, says JAX)
        bias = jnp.maximum(bias, -(2.0 ** 41)).astype(q_btnh.dtype)
    return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, bias=bias, scale=1.0, is_causal=causal,
                                        implementation=impl)
  if causal:
    bias = causal_bias(t, s) if bias is None else bias + causal_bias(t, s)
  if bias is None:
    bias = jnp.zeros((1, 1, 1, 1), jnp.float32)
  # the key as uint32 words: an ordinary array argument of the custom_vjp (no cotangent)
  words = key_words(rng) if dropping else None
  rate = float(dropout_rate) if dropping else 0.0
  if cpu_vjp is None:
    cpu_vjp = jax.default_backend() == "cpu"
  fn = _softmax_attention if cpu_vjp else _softmax_attention_fwd_only
  if k == n:  # multi-head: no group axis
    return fn(q_btnh, k_bskh, v_bskh, bias, rate, words)
  g = n // k
  bias_bkgts = bias[:, :, None] if bias.shape[1] == 1 else bias.reshape(bias.shape[0], k, g, *bias.shape[2:])
  return fn(q_btnh.reshape(b, t, k, g, h), k_bskh, v_bskh, bias_bkgts, rate, words).reshape(b, t, n, h)


def _specs(q):
  # einsum subscripts of (queries, keys/values, scores, K and V gradients transposed):
  # multi-head [B, T, N, H] queries, or grouped [B, T, K, G, H] (N = K x G query heads per kv head)
  if q.ndim == 4:
    return "BTNH", "BSNH", "BNTS", "BNHS"
  return "BTKGH", "BSKH", "BKGTS", "BKHS"


def _attention_probs(q, k, bias):
  qs, ks, ps, _ = _specs(q)
  logits = jnp.einsum(f"{qs},{ks}->{ps}", q, k, preferred_element_type=jnp.float32)
  return jax.nn.softmax(logits + bias, axis=-1)  # float32


def _softmax_attention_fwd_only(q, k, v, bias, rate, words):
  return _softmax_attention_fwd(q, k, v, bias, rate, words)[0]  # the residuals are dead code to XLA


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _softmax_attention(q, k, v, bias, rate, words):
  """`_softmax_attention_fwd_only` with a backward pass written for XLA:CPU.

  Autodiff of the two einsums computes dV = P^T dO and dK = dS^T Q: products
  that contract the [B, N, T, S] probabilities and score gradients on their
  T axis, and XLA:CPU feeds its dot with a transposed copy of those large
  arrays. Here the same gradients come transposed, dV^T = dO^T P and
  dK^T = Q^T dS ([B, N, H, S] results), so that only arrays of the size of
  Q, K and V get transposed. The dropout mask is recomputed from its hash,
  and the gradient of `bias` (T5's trained relative position bias) is the
  score gradient summed over the axes the bias broadcasts along. Same
  gradients as autodiff up to float32 rounding (`tests/test_layers.py`)."""
  return _softmax_attention_fwd_only(q, k, v, bias, rate, words)


def _softmax_attention_fwd(q, k, v, bias, rate, words):
  qs, ks, ps, _ = _specs(q)
  p = _attention_probs(q, k, bias)
  out = jnp.einsum(f"{ps},{ks}->{qs}", dropout(p.astype(q.dtype), rate, words), v)
  return out, (q, k, v, bias, p, words)


def _softmax_attention_bwd(rate, res, d_out):
  q, k, v, bias, p, words = res
  qs, ks, ps, kts = _specs(q)
  to_bskh = (0, 3, 1, 2)  # [B, K, H, S] -> [B, S, K, H]
  dv = jnp.einsum(f"{qs},{ps}->{kts}", d_out, dropout(p.astype(q.dtype), rate, words)).transpose(to_bskh)
  dp = dropout(jnp.einsum(f"{qs},{ks}->{ps}", d_out, v, preferred_element_type=jnp.float32), rate, words)
  ds = (p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))).astype(q.dtype)  # softmax backward
  dq = jnp.einsum(f"{ps},{ks}->{qs}", ds, k)
  dk = jnp.einsum(f"{qs},{ps}->{kts}", q, ds).transpose(to_bskh)
  summed = tuple(i for i, (a, c) in enumerate(zip(bias.shape, ds.shape)) if a == 1 and c != 1)
  d_bias = jnp.sum(ds.astype(jnp.float32), axis=summed, keepdims=True).astype(bias.dtype)
  return dq, dk.astype(k.dtype), dv.astype(v.dtype), d_bias, None


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def chunked_cross_entropy(x_btd: Array, w_dv: Array, labels_bt: Array, weights_bt: Array, chunk: int
                          ) -> tuple[Array, Array, Array]:
  """Sums of weighted cross-entropy, of weighted correct argmax predictions and
  of the weights, for logits = x @ w, without [B, T, V] logits ever existing:
  the sequence is cut into chunks of `chunk` positions (the last one padded
  with weight 0), each chunk's float32 logits are made, reduced and dropped
  (`lax.map`), and the backward pass makes them again chunk by chunk
  (`jax.checkpoint`). Equal to the plain computation up to float32 summation order."""
  b, t, d = x_btd.shape
  n = -(-t // chunk)
  pad = n * chunk - t
  if pad:
    x_btd = jnp.pad(x_btd, ((0, 0), (0, pad), (0, 0)))
    labels_bt = jnp.pad(labels_bt, ((0, 0), (0, pad)))
    weights_bt = jnp.pad(weights_bt, ((0, 0), (0, pad)))
  # [n, B, chunk, ...]: chunks lead, for lax.map
  xs = (x_btd.reshape(b, n, chunk, d).swapaxes(0, 1), labels_bt.reshape(b, n, chunk).swapaxes(0, 1),
        weights_bt.astype(jnp.float32).reshape(b, n, chunk).swapaxes(0, 1))

  @jax.checkpoint
  def one(args):
    x_bcd, labels_bc, weights_bc = args
    logits_bcv = matmul(x_bcd, w_dv.astype(x_bcd.dtype), preferred_element_type=jnp.float32)
    label_logit = jnp.take_along_axis(logits_bcv, labels_bc[..., None], axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits_bcv, axis=-1) - label_logit
    correct = (jnp.argmax(logits_bcv, -1) == labels_bc).astype(jnp.float32)
    return (ce * weights_bc).sum(), (correct * weights_bc).sum()

  ce, correct = jax.lax.map(one, xs)
  return ce.sum(), correct.sum(), xs[2].sum()


ACTIVATIONS = {
    "gelu": gelu,  # exact (erf): BERT
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2, T5.1.1's gated-GELU
    "relu": jax.nn.relu,  # T5
    "silu": jax.nn.silu,  # Llama's SwiGLU
}


class Mlp(nnx.Module):
  """Position-wise feed-forward block for every family: D -> F, activation, F -> D;
  gated (`gated=True`: act(x W_gate) * x W_up, as SwiGLU with silu or
  gated-GELU with gelu_tanh) or not. `dropout_rate` drops the F-wide hidden
  activations (T5) when a key is given."""

  def __init__(self, dim: int, mlp_dim: int, *, activation: str = "gelu", gated: bool = False,
               use_bias: bool = True, init_std: float, out_init_std: float | None = None, dropout_rate: float = 0.0,
               rngs: nnx.Rngs):
    if activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    self.activation = activation
    self.dropout_rate = dropout_rate
    out_std = init_std if out_init_std is None else out_init_std
    self.gate = Dense(dim, mlp_dim, ("embed", "mlp"), init_std=init_std, use_bias=use_bias, rngs=rngs) if gated else None
    self.up = Dense(dim, mlp_dim, ("embed", "mlp"), init_std=init_std, use_bias=use_bias, rngs=rngs)
    self.down = Dense(mlp_dim, dim, ("mlp", "embed"), init_std=out_std, use_bias=use_bias, rngs=rngs)

  def __call__(self, x_btd: Array, rng: Array | None = None) -> Array:
    act = ACTIVATIONS[self.activation]
    h_btf = act(self.gate(x_btd)) * self.up(x_btd) if self.gate is not None else act(self.up(x_btd))
    return self.down(dropout(h_btf, self.dropout_rate, rng))


NEG_INF = float(jnp.finfo(jnp.float32).min)


def mask_to_bias(allowed: Array) -> Array:
  """Boolean "may attend" -> additive float32 bias (0 or the most negative float)."""
  return jnp.where(allowed, 0.0, NEG_INF).astype(jnp.float32)


def padding_bias(mask_bs: Array) -> Array:
  """[B, S] 1/0 key mask -> additive float32 bias [B, 1, 1, S]."""
  return jnp.where(mask_bs[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
