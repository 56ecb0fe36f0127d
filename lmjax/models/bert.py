"""BERT: bidirectional Transformer encoder with masked-LM and next-sentence heads.

Follows Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding" (post-LN encoder layers, learned
absolute positions, segment embeddings, tanh pooler over [CLS], MLM head tied
to the word embeddings), and Turc et al. 2019, "Well-Read Students Learn
Better" for the small sizes (tiny .. medium). `pre_ln=True` switches to the
pre-LN layer of Xiong et al. 2020 (more stable at large learning rates).

Parameter names follow the structure of Hugging Face's BertForPreTraining
closely enough that `lmjax.convert` maps them one to one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax import layers as L
from lmjax.errors import LmjaxError
from lmjax.models.family import Family, Workload

Array = jax.Array

# name -> (layers, hidden): the published BERT sizes; heads = hidden / 64,
# MLP width = 4 x hidden.
PRESETS = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522  # WordPiece uncased; runs here use their own sentencepiece size
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_position_embeddings: int = 512  # longest sequence the position table takes
  type_vocab_size: int = 2  # segment A / segment B
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  pre_ln: bool = False  # False = original post-LN BERT
  init_std: float = 0.02  # truncated-normal range in the original; normal here
  dtype: str = "float32"  # compute dtype; parameters stay float32
  num_labels: int = 2  # classes of the sequence-classification head (fine-tuning only)
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
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "max_position_embeddings",
                 "type_vocab_size", "num_labels"):
      if getattr(self, name) < 1:
        raise LmjaxError(f"model.{name}={getattr(self, name)} must be positive.")
    if self.hidden_size % self.num_heads:
      raise LmjaxError(f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}.")
    for name in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise LmjaxError(f"model.{name}={getattr(self, name)} must be in [0, 1).")
    L.check_attention(self.attention, self.attention_dropout_rate)
    L.check_remat(self.remat)
    L.check_scan(self.scan_layers)

  @classmethod
  def preset(cls, name: str, **overrides) -> BertConfig:
    if name not in PRESETS:
      raise LmjaxError(f"unknown BERT preset {name!r}; choose one of {', '.join(PRESETS)}")
    num_layers, hidden = PRESETS[name]
    fields = dict(hidden_size=hidden, num_layers=num_layers, num_heads=hidden // 64, mlp_dim=4 * hidden)
    return cls(**{**fields, **overrides})

  def mesh_divisors(self) -> dict[str, tuple[int, str]]:
    """Sizes split over a mesh axis by the rule sets: field -> (size, axis)."""
    return {"num_heads": (self.num_heads, "tensor"), "mlp_dim": (self.mlp_dim, "tensor"),
            "vocab_size": (self.vocab_size, "tensor"), "hidden_size": (self.hidden_size, "fsdp")}

  def flops_per_token(self, workload: Workload, training: bool = True) -> float:
    """Matmul FLOPs per input token (x3 for forward + backward when training).

    Counts QKV and output projections, attention scores and values (full,
    not causal), the MLP, the pooler and NSP head per sequence, and the MLM
    transform + vocabulary projection only at the predicted positions
    (`workload.predictions_per_seq`; None = every position, 0 = none).
    """
    d, f, v, t = self.hidden_size, self.mlp_dim, self.vocab_size, workload.seq_len
    p = t if workload.predictions_per_seq is None else workload.predictions_per_seq
    per_layer = 2 * 4 * d * d + 2 * 2 * d * f + 2 * 2 * t * d
    mlm = (p / t) * (2 * d * d + 2 * d * v)
    per_sequence = (2 * d * d + 2 * d * 2) / t
    forward = self.num_layers * per_layer + mlm + per_sequence
    return 3 * forward if training else forward


class Embeddings(nnx.Module):

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    std = cfg.init_std
    self.word = L.Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), init_std=std, rngs=rngs)
    self.position = L.Embed(cfg.max_position_embeddings, cfg.hidden_size, ("position", "embed"),
                            init_std=std, rngs=rngs)
    self.token_type = L.Embed(cfg.type_vocab_size, cfg.hidden_size, ("type", "embed"), init_std=std, rngs=rngs)
    self.norm = L.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)

  def __call__(self, ids_bt: Array, type_ids_bt: Array, rng: Array | None) -> Array:
    dt = jnp.dtype(self.cfg.dtype)
    t = ids_bt.shape[1]
    x_btd = self.word(ids_bt, dt) + self.token_type(type_ids_bt, dt) + self.position(jnp.arange(t), dt)[None]
    x_btd = self.norm(x_btd)
    return L.dropout(x_btd, self.cfg.dropout_rate, rng)


class EncoderLayer(nnx.Module):

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attention = L.Attention(cfg.hidden_size, cfg.num_heads, init_std=cfg.init_std,
                                 dropout_rate=cfg.attention_dropout_rate, implementation=cfg.attention,
                                 rngs=rngs)
    self.attention_norm = L.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
    self.mlp = L.Mlp(cfg.hidden_size, cfg.mlp_dim, activation="gelu", init_std=cfg.init_std, rngs=rngs)
    self.mlp_norm = L.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)

  def __call__(self, x_btd: Array, bias_b1ts: Array, rng: Array | None) -> Array:
    r_attn, r1, r2 = L.split_rng(rng, 3)
    p = self.cfg.dropout_rate
    if self.cfg.pre_ln:
      x_btd = x_btd + L.dropout(self.attention(self.attention_norm(x_btd), bias_b1ts, rng=r_attn)[0], p, r1)
      x_btd = x_btd + L.dropout(self.mlp(self.mlp_norm(x_btd)), p, r2)
    else:
      x_btd = self.attention_norm(x_btd + L.dropout(self.attention(x_btd, bias_b1ts, rng=r_attn)[0], p, r1))
      x_btd = self.mlp_norm(x_btd + L.dropout(self.mlp(x_btd), p, r2))
    return L.shard(x_btd, L.ACT_BTD)


class BertModel(nnx.Module):
  """Encoder + pooler. Returns (hidden [B, T, D], pooled [B, D])."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = L.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs) if cfg.pre_ln else None
    self.pooler = L.Dense(cfg.hidden_size, cfg.hidden_size, ("embed", "mlp"), init_std=cfg.init_std, rngs=rngs)

  def __call__(self, ids_bt: Array, type_ids_bt: Array, mask_bt: Array, *, rng: Array | None = None):
    """ids, type_ids: int [B, T]; mask: 1 for real tokens, 0 for padding."""
    rngs = L.split_rng(rng, self.cfg.num_layers + 1)
    x_btd = L.shard(self.embeddings(ids_bt, type_ids_bt, rngs[0]), L.ACT_BTD)
    bias_b1ts = L.padding_bias(mask_bt)
    if self.cfg.scan_layers:
      x_btd = L.scan_blocks(self.layers, self.cfg.remat, x_btd, rngs[1:],
                            lambda layer, x, r: layer(x, bias_b1ts, r))
    else:
      for layer, layer_rng in zip(self.layers, rngs[1:]):
        x_btd = L.call_block(layer, self.cfg.remat, x_btd, bias_b1ts, layer_rng)
    if self.final_norm is not None:
      x_btd = self.final_norm(x_btd)
    pooled_bd = jnp.tanh(self.pooler(x_btd[:, 0]))
    return x_btd, pooled_bd


class BertForPreTraining(nnx.Module):
  """BERT with the masked-LM head (at gathered positions) and the NSP head."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.bert = BertModel(cfg, rngs=rngs)
    self.mlm_transform = L.Dense(cfg.hidden_size, cfg.hidden_size, ("embed", "mlp"),
                                 init_std=cfg.init_std, rngs=rngs)
    self.mlm_norm = L.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
    self.mlm_bias = L.param(rngs, L.zeros, (cfg.vocab_size,), ("vocab",))
    self.nsp = L.Dense(cfg.hidden_size, 2, ("embed", "classes"), init_std=cfg.init_std, rngs=rngs)

  def mlm_logits(self, hidden_btd: Array, positions_bp: Array) -> Array:
    """Vocabulary logits [B, P, V] (float32) at the given positions only."""
    x_bpd = jnp.take_along_axis(hidden_btd, positions_bp[..., None], axis=1)
    x_bpd = self.mlm_norm(L.gelu(self.mlm_transform(x_bpd)))
    logits_bpv = self.bert.embeddings.word.attend(x_bpd)
    return logits_bpv.astype(jnp.float32) + self.mlm_bias[...]

  def __call__(self, ids_bt: Array, type_ids_bt: Array, mask_bt: Array, positions_bp: Array, *,
               rng: Array | None = None):
    """Returns (MLM logits [B, P, V], NSP logits [B, 2]), both float32.

    NSP label 0 = segment B follows segment A, 1 = B is a random segment
    (the convention of the original BERT and Hugging Face).
    """
    hidden_btd, pooled_bd = self.bert(ids_bt, type_ids_bt, mask_bt, rng=rng)
    nsp_b2 = self.nsp(pooled_bd).astype(jnp.float32)
    return self.mlm_logits(hidden_btd, positions_bp), nsp_b2


class BertForSequenceClassification(nnx.Module):
  """BERT + a linear classifier over the pooled [CLS] output (Devlin et al. 2019, sec. 4.1).

  Fine-tuning starts from a pretrained `bert` subtree (an lmjax pretraining
  checkpoint or a Hugging Face model); the classifier is new.
  """

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.bert = BertModel(cfg, rngs=rngs)
    self.classifier = L.Dense(cfg.hidden_size, cfg.num_labels, ("embed", "classes"), init_std=cfg.init_std,
                              rngs=rngs)

  def __call__(self, ids_bt: Array, type_ids_bt: Array, mask_bt: Array, *, rng: Array | None = None) -> Array:
    """Class logits [B, num_labels], float32."""
    r_bert, r_out = L.split_rng(rng, 2)
    _, pooled_bd = self.bert(ids_bt, type_ids_bt, mask_bt, rng=r_bert)
    pooled_bd = L.dropout(pooled_bd, self.cfg.dropout_rate, r_out)
    return self.classifier(pooled_bd).astype(jnp.float32)


class BertForTokenClassification(nnx.Module):
  """BERT + a linear tagger over every position's hidden state (Devlin et al. 2019, sec. 5.3).

  The encoder keeps its pooler (unused here) so the `bert` subtree is the
  same as in the other BERT models and moves between them unchanged."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.bert = BertModel(cfg, rngs=rngs)
    self.classifier = L.Dense(cfg.hidden_size, cfg.num_labels, ("embed", "classes"), init_std=cfg.init_std,
                              rngs=rngs)

  def __call__(self, ids_bt: Array, type_ids_bt: Array, mask_bt: Array, *, rng: Array | None = None) -> Array:
    """Tag logits [B, T, num_labels], float32."""
    r_bert, r_out = L.split_rng(rng, 2)
    hidden_btd, _ = self.bert(ids_bt, type_ids_bt, mask_bt, rng=r_bert)
    hidden_btd = L.dropout(hidden_btd, self.cfg.dropout_rate, r_out)
    return self.classifier(hidden_btd).astype(jnp.float32)


FAMILY = Family(
    name="bert", config=BertConfig,
    models={"pretraining": BertForPreTraining, "classification": BertForSequenceClassification,
            "token_classification": BertForTokenClassification},
    converter="lmjax.convert.bert", hf_model_types=("bert",),
    arch_fields=("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "max_position_embeddings",
                 "type_vocab_size", "layer_norm_eps", "pre_ln"),
    backbone="bert")
