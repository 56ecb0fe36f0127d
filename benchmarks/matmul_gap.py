"""Do matmuls run slower inside a Transformer train step than alone? A reproducer
in plain JAX (no lmjax code), under a minute on a 2-core CPU.

  python benchmarks/matmul_gap.py            # GPT-2 small's block: B=2, T=512, D=768, 12 heads, MLP 3072
  python benchmarks/matmul_gap.py --layers 4 --batch 2 --seq 512

Times, for a stack of GPT-2-small blocks (pre-LN, causal softmax attention,
GELU MLP; float32; forward + backward), in one process, best of --repeats:

  alone      every matmul of the forward and backward pass (x @ W, g @ W^T,
             x^T @ g, Q K^T, P V and their gradients), each in its own jit, summed
  together   the same matmuls in one jitted forward + backward, without the
             elementwise work (no norms, softmax, GELU): neighbours only
  block      the real blocks' forward + backward (the matmuls plus their
             elementwise neighbours)
  peak       a 1024^3 matmul chain (what lmjax.bench calls the peak)

and prints each as matmul GFLOP/s (the same matmul FLOP count divided by each
time), so "together" vs "alone" is the in-graph matmul slowdown and "block" vs
"together" is the price of the elementwise work.

"together" and "block" are measured twice: with the weight projections written
as einsums over [B, T, D] activations (`btd,df->btf`, as lmjax wrote them until
2026-12-04) and as 2-D matmuls of the activations reshaped to [B*T, D]
(`*_flat`, what `lmjax.layers.matmul` does on the CPU). On XLA:CPU the einsum
form's backward pass makes a transposed copy of each output gradient for the
weight gradient; the flat form makes none. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp


def best(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  out = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out = min(out, time.perf_counter() - t)
  return out


def layer_norm(x):
  m = x.mean(-1, keepdims=True)
  return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5)


def project(x, w, contract: int, flat: bool):
  """x [..., *c] @ w [*c, *o]: an einsum (flat=False) or one 2-D matmul of the reshaped operands."""
  lead, c = x.shape[:x.ndim - contract], math.prod(x.shape[x.ndim - contract:])
  if flat:
    return (x.reshape(-1, c) @ w.reshape(c, -1)).reshape(*lead, *w.shape[contract:])
  return jax.lax.dot_general(x, w, ((tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract))), ((), ())))


def block(p, x, with_elementwise: bool, flat: bool = False):
  b, t, d = x.shape
  n = p["q"].shape[1]
  h = x if not with_elementwise else layer_norm(x)
  q = project(h, p["q"], 1, flat)
  k = project(h, p["k"], 1, flat)
  v = project(h, p["v"], 1, flat)
  s = jnp.einsum("btnh,bsnh->bnts", q, k)
  if with_elementwise:
    s = jax.nn.softmax(s / math.sqrt(q.shape[-1]) + jnp.where(jnp.tril(jnp.ones((t, t), bool)), 0.0, -1e9), -1)
  o = jnp.einsum("bnts,bsnh->btnh", s, v)
  x = x + project(o, p["o"], 2, flat)
  h = x if not with_elementwise else layer_norm(x)
  u = project(h, p["up"], 1, flat)
  if with_elementwise:
    u = jax.nn.gelu(u)
  return x + project(u, p["down"], 1, flat) * (1 / n if not with_elementwise else 1.0)


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--seq", type=int, default=512)
  ap.add_argument("--width", type=int, default=768)
  ap.add_argument("--heads", type=int, default=12)
  ap.add_argument("--repeats", type=int, default=5)
  a = ap.parse_args()
  b, t, d, n, f = a.batch, a.seq, a.width, a.heads, 4 * a.width
  hd = d // n
  keys = iter(jax.random.split(jax.random.key(0), 8 * a.layers + 64))
  rnd = lambda *s: jax.random.normal(next(keys), s, jnp.float32) * 0.02  # noqa: E731
  params = [{"q": rnd(d, n, hd), "k": rnd(d, n, hd), "v": rnd(d, n, hd), "o": rnd(n, hd, d), "up": rnd(d, f),
             "down": rnd(f, d)} for _ in range(a.layers)]
  x = rnd(b, t, d)

  def loss(params, x, with_elementwise, flat):
    for p in params:
      x = block(p, x, with_elementwise, flat)
    return jnp.sum(x * x)

  steps = {(e, f): jax.jit(jax.grad(lambda p, x, e=e, f=f: loss(p, x, e, f), argnums=(0, 1)))
           for e in (False, True) for f in (False, True)}

  # Every matmul of one block's forward and backward, as [M, K] x [K, N] (or batched) products.
  bt = b * t
  proj = [(bt, d, d)] * 4 + [(bt, d, f), (bt, f, d)]  # q, k, v, out, up, down
  plain = []
  for m, k, nn in proj:  # forward y = x W; backward dx = g W^T, dW = x^T g
    plain += [(m, k, nn), (m, nn, k), (k, m, nn)]
  attn = [(t, hd, t), (t, t, hd)]  # Q K^T and P V per (batch, head)
  batched = []
  for m, k, nn in attn:
    batched += [(m, k, nn), (m, nn, k), (k, m, nn)]
  flops = a.layers * (sum(2 * m * k * nn for m, k, nn in plain) + b * n * sum(2 * m * k * nn for m, k, nn in batched))

  alone = 0.0
  mm = jax.jit(lambda u, w: u @ w)
  for m, k, nn in plain:
    alone += best(mm, rnd(m, k), rnd(k, nn), repeats=a.repeats)
  bmm = jax.jit(lambda u, w: jnp.einsum("zmk,zkn->zmn", u, w))
  for m, k, nn in batched:
    alone += best(bmm, rnd(b * n, m, k), rnd(b * n, k, nn), repeats=a.repeats)
  alone *= a.layers
  times = {key: best(fn, params, x, repeats=a.repeats) for key, fn in steps.items()}
  s = 1024
  chain = jax.jit(lambda u, w: jnp.tanh(jnp.tanh(jnp.tanh(jnp.tanh(u @ w) @ w) @ w) @ w))
  t_peak = best(chain, rnd(s, s), rnd(s, s), repeats=a.repeats)
  rates = {"alone": flops / alone, "together": flops / times[False, False], "together_flat": flops / times[False, True],
           "block": flops / times[True, False], "block_flat": flops / times[True, True], "peak": 4 * 2 * s**3 / t_peak}
  for name, r in rates.items():
    print(f"{name:13s} {r / 1e9:7.1f} GFLOP/s")
  print(json.dumps({"layers": a.layers, "batch": b, "seq": t, "width": d, "heads": n, "matmul_gflop": flops / 1e9,
                    "jax": jax.__version__, "devices": str(jax.devices()[0].device_kind),
                    **{f"{k}_gflops": round(v / 1e9, 1) for k, v in rates.items()},
                    "together_vs_alone": round(alone / times[False, False], 3),
                    "together_flat_vs_alone": round(alone / times[False, True], 3),
                    "block_vs_together": round(times[False, False] / times[True, False], 3),
                    "block_flat_vs_block": round(times[True, False] / times[True, True], 3)}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
