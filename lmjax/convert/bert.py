"""Hugging Face BERT <-> lmjax BERT, through config.json + model.safetensors.

No torch at run time: tensors are read and written with `safetensors.numpy`.
Names follow `transformers`' BertForPreTraining (`bert.` prefix, `cls.` heads);
checkpoints of a bare BertModel (no prefix, no heads, e.g. sentence-transformers
models such as all-MiniLM-L6-v2) load too, and then only the encoder and pooler
are filled.

    cfg, params = load_pretrained("path/to/hf_model")   # params: {path: array}
    state = merge_into(nnx.to_pure_dict(nnx.state(model)), params)

Weights files that need unpickling (pytorch_model.bin, *.pt, *.ckpt, *.pth)
are refused: they can run arbitrary code when loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmjax.convert.common import Map as _Map
from lmjax.convert.common import check_not_pickle as _check_not_pickle  # noqa: F401
from lmjax.convert.common import convert as _convert
from lmjax.convert.common import get as _get
from lmjax.convert.common import load_maps, read_hf_dir
from lmjax.convert.common import merge_into  # noqa: F401  (re-exported)
from lmjax.errors import LmjaxError
from lmjax.models.bert import BertConfig



def config_from_hf(hf: dict) -> BertConfig:
  if hf.get("model_type", "bert") != "bert":
    raise LmjaxError(f"config.json describes a {hf.get('model_type')!r} model, not BERT.")
  act = hf.get("hidden_act", "gelu")
  if act != "gelu":
    raise LmjaxError(f"hidden_act={act!r} is not supported; lmjax BERT uses the exact (erf) GELU.")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise LmjaxError("Only absolute position embeddings are supported.")
  return BertConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
      max_position_embeddings=hf["max_position_embeddings"], type_vocab_size=hf.get("type_vocab_size", 2),
      dropout_rate=hf.get("hidden_dropout_prob", 0.1),
      attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12), init_std=hf.get("initializer_range", 0.02))


def config_to_hf(cfg: BertConfig) -> dict:
  return {
      "architectures": ["BertForPreTraining"], "model_type": "bert", "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.mlp_dim, "max_position_embeddings": cfg.max_position_embeddings,
      "type_vocab_size": cfg.type_vocab_size, "hidden_act": "gelu", "hidden_dropout_prob": cfg.dropout_rate,
      "attention_probs_dropout_prob": cfg.attention_dropout_rate, "layer_norm_eps": cfg.layer_norm_eps,
      "initializer_range": cfg.init_std, "position_embedding_type": "absolute", "pad_token_id": 0,
  }


def _dense(hf: str, path: tuple) -> list[_Map]:
  # torch Linear stores [out, in]; lmjax kernels are [in, out].
  return [_Map(f"{hf}.weight", path + ("kernel",), lambda w, c: w.T, lambda w, c: w.T),
          _Map(f"{hf}.bias", path + ("bias",))]


def _norm(hf: str, path: tuple) -> list[_Map]:
  return [_Map(f"{hf}.weight", path + ("scale",)), _Map(f"{hf}.bias", path + ("bias",))]


def _heads(c: BertConfig) -> tuple[int, int]:
  return c.num_heads, c.hidden_size // c.num_heads


def _encoder_maps(cfg: BertConfig) -> list[_Map]:
  maps = [
      _Map("embeddings.word_embeddings.weight", ("embeddings", "word", "embedding")),
      _Map("embeddings.position_embeddings.weight", ("embeddings", "position", "embedding")),
      _Map("embeddings.token_type_embeddings.weight", ("embeddings", "token_type", "embedding")),
      *_norm("embeddings.LayerNorm", ("embeddings", "norm")),
      *_dense("pooler.dense", ("pooler",)),
  ]
  for i in range(cfg.num_layers):
    hf, path = f"encoder.layer.{i}", ("layers", i)
    for name, weight in (("query", "q_dnh"), ("key", "k_dkh"), ("value", "v_dkh")):
      short = weight[0]
      maps += [
          # [N*H, D] -> [D, N, H]
          _Map(f"{hf}.attention.self.{name}.weight", path + ("attention", weight),
               lambda w, c: w.T.reshape(c.hidden_size, *_heads(c)), lambda w, c: w.reshape(c.hidden_size, -1).T),
          _Map(f"{hf}.attention.self.{name}.bias", path + ("attention", f"{short}_bias"),
               lambda b, c: b.reshape(_heads(c)), lambda b, c: b.reshape(-1)),
      ]
    maps += [
        # [D, N*H] -> [N, H, D]
        _Map(f"{hf}.attention.output.dense.weight", path + ("attention", "out_nhd"),
             lambda w, c: w.T.reshape(*_heads(c), c.hidden_size), lambda w, c: w.reshape(-1, c.hidden_size).T),
        _Map(f"{hf}.attention.output.dense.bias", path + ("attention", "out_bias")),
        *_norm(f"{hf}.attention.output.LayerNorm", path + ("attention_norm",)),
        *_dense(f"{hf}.intermediate.dense", path + ("mlp", "up")),
        *_dense(f"{hf}.output.dense", path + ("mlp", "down")),
        *_norm(f"{hf}.output.LayerNorm", path + ("mlp_norm",)),
    ]
  return maps


def _head_maps() -> list[_Map]:
  return [*_dense("cls.predictions.transform.dense", ("mlm_transform",)),
          *_norm("cls.predictions.transform.LayerNorm", ("mlm_norm",)),
          _Map("cls.predictions.bias", ("mlm_bias",)),
          *_dense("cls.seq_relationship", ("nsp",))]


def load_pretrained(model_dir: str | Path) -> tuple[BertConfig, dict[tuple, np.ndarray]]:
  """Reads a Hugging Face BERT directory into {lmjax path: array}.

  Paths are relative to BertForPreTraining: ("bert", "layers", 0, ...) for the
  encoder, ("mlm_transform", ...) etc. for the heads when the file has them.
  """
  root, hf, tensors = read_hf_dir(model_dir)
  cfg = config_from_hf(hf)
  prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""
  encoder = load_maps(_encoder_maps(cfg), tensors, cfg, prefix, root / "model.safetensors",
                      f"a {cfg.num_layers}-layer BERT")
  out = {("bert",) + path: value for path, value in encoder.items()}
  if all(m.hf in tensors for m in _head_maps()):
    for m in _head_maps():
      out[m.path] = _convert(tensors[m.hf], m.to_lmjax, cfg)
  return cfg, out


# lmjax model kind -> the transformers class its export loads into.
EXPORTS = {"pretraining": "BertForPreTraining", "classification": "BertForSequenceClassification",
           "token_classification": "BertForTokenClassification"}


def save_pretrained(model_dir: str | Path, cfg: BertConfig, params: dict, *, kind: str = "pretraining",
                    labels: tuple[str, ...] = ()) -> Path:
  """Writes a Hugging Face directory (config.json + model.safetensors) of the
  class `EXPORTS[kind]`: the encoder with the MLM + NSP heads, or with the
  sequence / token classifier (`labels` become id2label)."""
  from safetensors.numpy import save_file  # noqa: PLC0415

  if cfg.pre_ln:
    raise LmjaxError("Hugging Face BERT is post-LN; a pre_ln=True model has no equivalent to export.")
  if kind not in EXPORTS:
    raise LmjaxError(f"A BERT {kind!r} model has no Hugging Face counterpart; exportable: {', '.join(EXPORTS)}.")
  root = Path(model_dir)
  root.mkdir(parents=True, exist_ok=True)
  tensors = {}
  for m in _encoder_maps(cfg):
    if kind == "token_classification" and m.hf.startswith("pooler."):
      continue  # transformers' tagger has no pooler (add_pooling_layer=False)
    tensors["bert." + m.hf] = _get(params, ("bert",) + m.path, m.to_hf, cfg)
  hf_cfg = config_to_hf(cfg)
  hf_cfg["architectures"] = [EXPORTS[kind]]
  if kind == "pretraining":
    for m in _head_maps():
      tensors[m.hf] = _get(params, m.path, m.to_hf, cfg)
    # transformers ties the decoder to the word embeddings; it expects both names.
    tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
    tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
  else:
    for m in _dense("classifier", ("classifier",)):
      tensors[m.hf] = _get(params, m.path, m.to_hf, cfg)
    names = list(labels) or [f"LABEL_{i}" for i in range(cfg.num_labels)]
    if len(names) != cfg.num_labels:
      raise LmjaxError(f"{len(names)} label names for a classifier of {cfg.num_labels} classes.")
    hf_cfg.update(num_labels=cfg.num_labels, id2label={str(i): n for i, n in enumerate(names)},
                  label2id={n: i for i, n in enumerate(names)}, classifier_dropout=None)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(root / "model.safetensors"),
            metadata={"format": "pt"})
  (root / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
  return root
