"""Hugging Face GPT-2 / Llama <-> lmjax decoder, through config.json + model.safetensors.

No torch at run time (`safetensors.numpy`). GPT-2 checkpoints store Conv1D
weights as [in, out] and fuse Q, K, V into one `c_attn`; Llama stores torch
Linear weights as [out, in] with Q and K already in the half-split rotary
layout that `lmjax.layers.rope` uses, so no permutation is needed.

    cfg, params = load_pretrained("path/to/hf_model")    # {lmjax path: array}
    save_pretrained("out_dir", cfg, params_dict)         # GPT2LMHeadModel / LlamaForCausalLM
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmjax.convert.common import Map, export_maps, load_maps, merge_into, read_hf_dir  # noqa: F401  (merge_into re-exported)
from lmjax.errors import LmjaxError
from lmjax.models.gpt import GptConfig

_GPT2_ACTS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def config_from_hf(hf: dict) -> GptConfig:
  kind = hf.get("model_type")
  if kind == "gpt2":
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT2_ACTS:
      raise LmjaxError(f"GPT-2 activation_function={act!r} is not supported; lmjax uses the tanh GELU (gelu_new).")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
      if hf.get(flag):
        raise LmjaxError(f"GPT-2 config sets {flag}; lmjax's decoder does not implement it.")
    d = hf["n_embd"]
    return GptConfig(
        vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["n_layer"], num_heads=hf["n_head"],
        mlp_dim=hf.get("n_inner") or 4 * d, max_position_embeddings=hf["n_positions"], position="learned",
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu", use_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True), dropout_rate=hf.get("resid_pdrop", 0.1),
        attention_dropout_rate=hf.get("attn_pdrop", 0.1), init_std=hf.get("initializer_range", 0.02))
  if kind == "llama":
    if hf.get("hidden_act", "silu") != "silu":
      raise LmjaxError(f"Llama hidden_act={hf.get('hidden_act')!r} is not supported (lmjax: SwiGLU with silu).")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
      raise LmjaxError(f"Llama rope scaling {rope.get('rope_type', rope.get('type'))!r} is not supported; lmjax "
                       "implements plain rotary positions (rope_type 'default').")
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
      raise LmjaxError("This Llama config has attention_bias != mlp_bias; lmjax has one use_bias switch for both.")
    heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
      raise LmjaxError(f"Llama head_dim={hf['head_dim']} differs from hidden_size / num_attention_heads; "
                       "lmjax derives the head width from those.")
    return GptConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads, mlp_dim=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"], position="rope",
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", use_bias=bool(hf.get("attention_bias", False)),
        tie_embeddings=hf.get("tie_word_embeddings", False), dropout_rate=0.0,
        attention_dropout_rate=hf.get("attention_dropout", 0.0), init_std=hf.get("initializer_range", 0.02))
  raise LmjaxError(f"config.json describes a {kind!r} model; lmjax's decoder imports 'gpt2' and 'llama'.")


def flavour(cfg: GptConfig) -> str:
  """Which Hugging Face architecture an lmjax decoder config corresponds to."""
  gpt2 = (cfg.position, cfg.norm, cfg.mlp, cfg.use_bias, cfg.kv_heads) == (
      "learned", "layernorm", "gelu", True, cfg.num_heads)
  if gpt2:
    return "gpt2"
  if (cfg.position, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu"):
    return "llama"
  raise LmjaxError("This decoder mixes GPT-2 and Llama switches (position / norm / mlp / use_bias / num_kv_heads); "
                   "Hugging Face has no architecture to export it to.")


def config_to_hf(cfg: GptConfig, eos_token_id: int | None = None) -> dict:
  if flavour(cfg) == "gpt2":
    out = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
        "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": cfg.mlp_dim,
        "n_positions": cfg.max_position_embeddings, "n_ctx": cfg.max_position_embeddings,
        "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout_rate,
        "embd_pdrop": cfg.dropout_rate, "attn_pdrop": cfg.attention_dropout_rate,
        "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings,
    }
  else:
    out = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads, "intermediate_size": cfg.mlp_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.use_bias, "mlp_bias": cfg.use_bias, "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std, "head_dim": cfg.head_dim,
    }
  if eos_token_id is not None:
    out["eos_token_id"] = out["bos_token_id"] = int(eos_token_id)
  return out


def _gpt2_maps(cfg: GptConfig) -> list[Map]:
  d, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  maps = [Map("wte.weight", ("embed", "embedding")), Map("wpe.weight", ("position", "embedding")),
          Map("ln_f.weight", ("final_norm", "scale")), Map("ln_f.bias", ("final_norm", "bias"))]
  for i in range(cfg.num_layers):
    hf, p = f"h.{i}", ("layers", i)
    for j, short in enumerate("qkv"):
      name = f"{short}_dnh" if short == "q" else f"{short}_dkh"
      maps += [Map(f"{hf}.attn.c_attn.weight", p + ("attention", name), lambda w, c: w.reshape(d, n, h),
                   lambda w, c: w.reshape(d, -1), part=(j, 3)),
               Map(f"{hf}.attn.c_attn.bias", p + ("attention", f"{short}_bias"), lambda b, c: b.reshape(n, h),
                   lambda b, c: b.reshape(-1), part=(j, 3))]
    maps += [
        Map(f"{hf}.attn.c_proj.weight", p + ("attention", "out_nhd"), lambda w, c: w.reshape(n, h, d),
            lambda w, c: w.reshape(-1, d)),
        Map(f"{hf}.attn.c_proj.bias", p + ("attention", "out_bias")),
        Map(f"{hf}.ln_1.weight", p + ("attention_norm", "scale")), Map(f"{hf}.ln_1.bias", p + ("attention_norm", "bias")),
        Map(f"{hf}.ln_2.weight", p + ("mlp_norm", "scale")), Map(f"{hf}.ln_2.bias", p + ("mlp_norm", "bias")),
        Map(f"{hf}.mlp.c_fc.weight", p + ("mlp", "up", "kernel")), Map(f"{hf}.mlp.c_fc.bias", p + ("mlp", "up", "bias")),
        Map(f"{hf}.mlp.c_proj.weight", p + ("mlp", "down", "kernel")),
        Map(f"{hf}.mlp.c_proj.bias", p + ("mlp", "down", "bias")),
    ]
  return maps


def _llama_maps(cfg: GptConfig) -> list[Map]:
  d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.head_dim
  t = lambda w, c: w.T  # noqa: E731  (torch Linear [out, in] <-> lmjax [in, out])
  maps = [Map("model.embed_tokens.weight", ("embed", "embedding")), Map("model.norm.weight", ("final_norm", "scale"))]
  if not cfg.tie_embeddings:
    maps.append(Map("lm_head.weight", ("lm_head",), t, t))
  for i in range(cfg.num_layers):
    hf, p = f"model.layers.{i}", ("layers", i)
    for short, heads in (("q", n), ("k", k), ("v", k)):
      name = f"{short}_dnh" if short == "q" else f"{short}_dkh"
      maps.append(Map(f"{hf}.self_attn.{short}_proj.weight", p + ("attention", name),
                      lambda w, c, m=heads: w.T.reshape(d, m, h), lambda w, c: w.reshape(d, -1).T))
      if cfg.use_bias:
        maps.append(Map(f"{hf}.self_attn.{short}_proj.bias", p + ("attention", f"{short}_bias"),
                        lambda b, c, m=heads: b.reshape(m, h), lambda b, c: b.reshape(-1)))
    maps += [Map(f"{hf}.self_attn.o_proj.weight", p + ("attention", "out_nhd"), lambda w, c: w.T.reshape(n, h, d),
                 lambda w, c: w.reshape(-1, d).T),
             Map(f"{hf}.input_layernorm.weight", p + ("attention_norm", "scale")),
             Map(f"{hf}.post_attention_layernorm.weight", p + ("mlp_norm", "scale"))]
    if cfg.use_bias:
      maps.append(Map(f"{hf}.self_attn.o_proj.bias", p + ("attention", "out_bias")))
    for proj, name in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
      maps.append(Map(f"{hf}.mlp.{proj}.weight", p + ("mlp", name, "kernel"), t, t))
      if cfg.use_bias:
        maps.append(Map(f"{hf}.mlp.{proj}.bias", p + ("mlp", name, "bias")))
  return maps


def _maps(cfg: GptConfig) -> list[Map]:
  return _gpt2_maps(cfg) if flavour(cfg) == "gpt2" else _llama_maps(cfg)


def load_pretrained(model_dir: str | Path) -> tuple[GptConfig, dict[tuple, np.ndarray]]:
  """Reads a Hugging Face GPT-2 or Llama directory into (config, {lmjax path: array})."""
  root, hf, tensors = read_hf_dir(model_dir)
  cfg = config_from_hf(hf)
  prefix = ""
  if flavour(cfg) == "gpt2" and any(k.startswith("transformer.") for k in tensors):
    prefix = "transformer."  # GPT2LMHeadModel.save_pretrained; OpenAI's own files have no prefix
  what = f"a {cfg.num_layers}-layer {hf['model_type']} model"
  out = load_maps(_maps(cfg), tensors, cfg, prefix, root / "model.safetensors", what)
  if flavour(cfg) == "gpt2" and not cfg.tie_embeddings:
    if "lm_head.weight" not in tensors:
      raise LmjaxError(f"{root / 'model.safetensors'} has no lm_head.weight but config.json unties it.")
    out[("lm_head",)] = np.ascontiguousarray(np.asarray(tensors["lm_head.weight"], np.float32).T)
  return cfg, out


EXPORTS = {"pretraining": "GPT2LMHeadModel or LlamaForCausalLM"}


def save_pretrained(model_dir: str | Path, cfg: GptConfig, params: dict, *, eos_token_id: int | None = None,
                    kind: str = "pretraining", labels: tuple[str, ...] = ()) -> Path:
  """Writes a GPT2LMHeadModel or LlamaForCausalLM directory (config.json + model.safetensors)."""
  from safetensors.numpy import save_file  # noqa: PLC0415

  del labels
  if kind not in EXPORTS:
    raise LmjaxError(f"A decoder {kind!r} model has no Hugging Face counterpart; exportable: {', '.join(EXPORTS)}.")
  root = Path(model_dir)
  root.mkdir(parents=True, exist_ok=True)
  gpt2 = flavour(cfg) == "gpt2"
  tensors = export_maps(_maps(cfg), params, cfg, prefix="transformer." if gpt2 else "")
  if gpt2 and not cfg.tie_embeddings:
    tensors["lm_head.weight"] = np.ascontiguousarray(np.asarray(params["lm_head"], np.float32).T)
  save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
  (root / "config.json").write_text(json.dumps(config_to_hf(cfg, eos_token_id), indent=2) + "\n")
  return root
