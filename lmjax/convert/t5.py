"""Hugging Face T5 / T5.1.1 <-> lmjax T5, through config.json + model.safetensors.

No torch at run time (`safetensors.numpy`). torch Linear weights are [out, in]
with heads flattened: q/k/v [N*H, D] -> [D, N, H], o [D, N*H] -> [N, H, D].
The relative attention bias lives in block 0 of each stack. T5 vs T5.1.1 is
read from `feed_forward_proj` ("relu" / "gated-gelu") and
`tie_word_embeddings` (absent or true: tied output scaled by d_model^-0.5;
false: an own lm_head, no scaling).

    cfg, params = load_pretrained("path/to/hf_t5")        # {lmjax path: array}
    save_pretrained("out_dir", cfg, params_dict)          # T5ForConditionalGeneration
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmjax.convert.common import Map, export_maps, load_maps, read_hf_dir
from lmjax.errors import LmjaxError
from lmjax.models.t5 import T5Config

_FEED_FORWARD = {"relu": "relu", "gated-gelu": "gated-gelu"}


def config_from_hf(hf: dict) -> T5Config:
  if hf.get("model_type") != "t5":
    raise LmjaxError(f"config.json describes a {hf.get('model_type')!r} model, not T5.")
  ff = hf.get("feed_forward_proj", "relu")
  if ff not in _FEED_FORWARD:
    raise LmjaxError(f"T5 feed_forward_proj={ff!r} is not supported; lmjax implements 'relu' (T5) and 'gated-gelu' "
                     "(T5.1.1).")
  return T5Config(
      vocab_size=hf["vocab_size"], hidden_size=hf["d_model"], num_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"], num_heads=hf["num_heads"],
      head_dim=hf["d_kv"], mlp_dim=hf["d_ff"], mlp=_FEED_FORWARD[ff],
      tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
      relative_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_max_distance=hf.get("relative_attention_max_distance", 128),
      norm_eps=hf.get("layer_norm_epsilon", 1e-6), dropout_rate=hf.get("dropout_rate", 0.1),
      init_factor=hf.get("initializer_factor", 1.0))


def config_to_hf(cfg: T5Config) -> dict:
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": cfg.vocab_size,
      "d_model": cfg.hidden_size, "d_kv": cfg.head_dim, "d_ff": cfg.mlp_dim, "num_layers": cfg.num_layers,
      "num_decoder_layers": cfg.num_decoder_layers, "num_heads": cfg.num_heads,
      "relative_attention_num_buckets": cfg.relative_buckets,
      "relative_attention_max_distance": cfg.relative_max_distance, "layer_norm_epsilon": cfg.norm_eps,
      "dropout_rate": cfg.dropout_rate, "initializer_factor": cfg.init_factor, "feed_forward_proj": cfg.mlp,
      "tie_word_embeddings": cfg.tie_embeddings, "is_encoder_decoder": True, "pad_token_id": 0,
      "eos_token_id": 1, "decoder_start_token_id": 0,
  }


def _attention(hf: str, path: tuple, cfg: T5Config) -> list[Map]:
  d, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  maps = [Map(f"{hf}.{short}.weight", path + (name,), lambda w, c: w.T.reshape(d, n, h),
              lambda w, c: w.reshape(d, -1).T) for short, name in (("q", "q_dnh"), ("k", "k_dkh"), ("v", "v_dkh"))]
  maps.append(Map(f"{hf}.o.weight", path + ("out_nhd",), lambda w, c: w.T.reshape(n, h, d),
                  lambda w, c: w.reshape(-1, d).T))
  return maps


def _mlp(hf: str, path: tuple, cfg: T5Config) -> list[Map]:
  t = lambda w, c: w.T  # noqa: E731  (torch Linear [out, in] <-> lmjax [in, out])
  names = (("wi_0", "gate"), ("wi_1", "up")) if cfg.mlp == "gated-gelu" else (("wi", "up"),)
  return [Map(f"{hf}.{src}.weight", path + (dst, "kernel"), t, t) for src, dst in (*names, ("wo", "down"))]


def _maps(cfg: T5Config) -> list[Map]:
  maps = [Map("shared.weight", ("embed", "embedding"))]
  for stack, n_layers in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
    maps += [Map(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 (stack, "relative_bias", "table")),
             Map(f"{stack}.final_layer_norm.weight", (stack, "final_norm", "scale"))]
    for i in range(n_layers):
      hf, p = f"{stack}.block.{i}.layer", (stack, "layers", i)
      maps += _attention(f"{hf}.0.SelfAttention", p + ("attention",), cfg)
      maps.append(Map(f"{hf}.0.layer_norm.weight", p + ("attention_norm", "scale")))
      ff = 1
      if stack == "decoder":
        maps += _attention(f"{hf}.1.EncDecAttention", p + ("cross_attention",), cfg)
        maps.append(Map(f"{hf}.1.layer_norm.weight", p + ("cross_attention_norm", "scale")))
        ff = 2
      maps += _mlp(f"{hf}.{ff}.DenseReluDense", p + ("mlp",), cfg)
      maps.append(Map(f"{hf}.{ff}.layer_norm.weight", p + ("mlp_norm", "scale")))
  if not cfg.tie_embeddings:
    maps.append(Map("lm_head.weight", ("lm_head",), lambda w, c: w.T, lambda w, c: w.T))
  return maps


def load_pretrained(model_dir: str | Path) -> tuple[T5Config, dict[tuple, np.ndarray]]:
  """Reads a Hugging Face T5 / T5.1.1 directory into (config, {lmjax path: array})."""
  root, hf, tensors = read_hf_dir(model_dir)
  cfg = config_from_hf(hf)
  flavour = "T5.1.1" if cfg.mlp == "gated-gelu" else "T5"
  return cfg, load_maps(_maps(cfg), tensors, cfg, "", root / "model.safetensors",
                        f"a {cfg.num_layers}+{cfg.num_decoder_layers}-layer {flavour} model")


EXPORTS = {"seq2seq": "T5ForConditionalGeneration"}


def save_pretrained(model_dir: str | Path, cfg: T5Config, params: dict, *, kind: str = "seq2seq",
                    labels: tuple[str, ...] = ()) -> Path:
  """Writes a T5ForConditionalGeneration directory (config.json + model.safetensors)."""
  from safetensors.numpy import save_file  # noqa: PLC0415

  del labels
  if kind not in EXPORTS:
    raise LmjaxError(f"A T5 {kind!r} model has no Hugging Face counterpart; exportable: {', '.join(EXPORTS)}.")
  root = Path(model_dir)
  root.mkdir(parents=True, exist_ok=True)
  tensors = export_maps(_maps(cfg), params, cfg)
  save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
  (root / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
  return root
