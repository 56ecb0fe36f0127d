"""Tokenizers: sentencepiece models trained by lmjax, and the WordPiece
tokenizers that come with Hugging Face BERT checkpoints.

Both kinds expose the same small interface (`encode` without special tokens,
`vocab_size`, `pad_id`, `cls_id`, `sep_id`), and a run keeps its tokenizer in
the workdir as `tokenizer.model` (sentencepiece) or `tokenizer.json`
(Hugging Face `tokenizers`); `load_for_run` finds whichever is there.

sentencepiece tokenizers are trained on the training split.

Special ids are fixed so that models and data agree without a lookup:
  0 [PAD]   1 [UNK]   2 [CLS]   3 [SEP]   4 [MASK]
The trained model is cached (by corpus, vocabulary size and seed) and copied
into the run's workdir as `tokenizer.model`; a resumed run uses the workdir's.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import numpy as np
import sentencepiece as spm

from lmjax.errors import LmjaxError
from lmjax.metrics import log

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
NUM_SPECIAL = 5


@dataclasses.dataclass
class Tokenizer:
  sp: spm.SentencePieceProcessor
  path: Path

  @classmethod
  def load(cls, path: Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
      raise LmjaxError(f"Tokenizer file {path} not found.")
    sp = spm.SentencePieceProcessor()
    try:
      sp.Load(str(path))
    except (OSError, RuntimeError) as e:
      raise LmjaxError(f"{path} is not a sentencepiece model ({e}).") from None
    pieces = [sp.IdToPiece(i) for i in range(NUM_SPECIAL)]
    if pieces != ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]:
      raise LmjaxError(f"{path} does not have lmjax's special tokens at ids 0-4 (found {pieces}).")
    return cls(sp, path)

  pad_id, cls_id, sep_id = PAD, CLS, SEP
  # lmjax's sentencepiece models have no separate end-of-text piece: [SEP]
  # closes every document in causal-LM packing, so generation stops on it.
  eos_id = SEP

  @property
  def vocab_size(self) -> int:
    return self.sp.GetPieceSize()

  def encode(self, texts: list[str], threads: int = 2) -> list[list[int]]:
    return self.sp.Encode(texts, out_type=int, num_threads=threads)

  def encode_prompts(self, texts: list[str]) -> list[list[int]]:
    """Prompts for a decoder: lmjax's own models start documents without a marker."""
    return self.encode(texts)

  def decode(self, ids) -> str:
    """Text of `ids`; an id the model has but the tokenizer does not (a vocabulary padded past the
    tokenizer's pieces, a sentinel) reads as the unknown piece instead of stopping the decode."""
    n = self.sp.GetPieceSize()
    return self.sp.Decode([i if 0 <= i < n else UNK for i in map(int, ids)])


MODEL_TYPES = ("unigram", "char")


def train(sentences: list[str], vocab_size: int, out_path: Path, *, seed: int, max_sentences: int,
          model_type: str = "unigram") -> Tokenizer:
  """Trains a sentencepiece model on `sentences` (sampled if too many):
  "unigram" sub-words, or "char": one piece per character (the most frequent
  characters up to `vocab_size`, the rest [UNK]) and no word-start marker, so
  a text's pieces are its characters and per-character tags stay aligned."""
  if model_type not in MODEL_TYPES:
    raise LmjaxError(f"data.tokenizer_model={model_type!r}: use one of {', '.join(MODEL_TYPES)}.")
  if vocab_size <= NUM_SPECIAL + 1:
    raise LmjaxError(f"model.vocab_size={vocab_size} is too small for a tokenizer; use at least a few hundred.")
  if max_sentences and len(sentences) > max_sentences:
    rng = np.random.default_rng(seed)
    sentences = [sentences[i] for i in sorted(rng.choice(len(sentences), max_sentences, replace=False))]
  log(f"training a sentencepiece {model_type} tokenizer (vocabulary {vocab_size}) on {len(sentences):,} sentences")
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  spm.SentencePieceTrainer.Train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type=model_type,
      add_dummy_prefix=model_type != "char",
      pad_id=PAD, unk_id=UNK, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]",
      user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
      # A small corpus may not support the requested size: take what it has.
      hard_vocab_limit=False, character_coverage=0.9995, num_threads=2,
      max_sentence_length=1 << 14, minloglevel=2)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_path.with_suffix(".tmp")
  tmp.write_bytes(model.getvalue())
  tmp.replace(out_path)
  return Tokenizer.load(out_path)


def for_run(workdir: Path, cache_path: Path, sentences_fn, vocab_size: int, *, seed: int,
            max_sentences: int, model_type: str = "unigram") -> Tokenizer:
  """The run's tokenizer: the workdir's if present, else cached or trained."""
  workdir.mkdir(parents=True, exist_ok=True)
  run_path = workdir / "tokenizer.model"
  if run_path.exists():
    tok = Tokenizer.load(run_path)
  else:
    if not cache_path.exists():
      train(sentences_fn(), vocab_size, cache_path, seed=seed, max_sentences=max_sentences, model_type=model_type)
    shutil.copyfile(cache_path, run_path)
    tok = Tokenizer.load(run_path)
  if tok.vocab_size > vocab_size:
    raise LmjaxError(
        f"The tokenizer in {run_path} has {tok.vocab_size} pieces but model.vocab_size is {vocab_size}. "
        f"Set --set model.vocab_size={tok.vocab_size} (or larger), or use a fresh --workdir.")
  return tok


@dataclasses.dataclass
class HfTokenizer:
  """A Hugging Face tokenizer (`tokenizer.json`, read by the `tokenizers`
  library: GPT-2's byte-level BPE, Llama's, BERT's WordPiece), used without
  its own truncation, padding or special tokens: lmjax adds those itself."""
  tok: object  # tokenizers.Tokenizer
  path: Path

  # End-of-text tokens by convention, in the order they are looked for.
  EOS_TOKENS = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")

  @classmethod
  def load(cls, path: Path):
    from tokenizers import Tokenizer as _Tokenizers  # noqa: PLC0415

    path = Path(path)
    try:
      tok = _Tokenizers.from_file(str(path))
    except Exception as e:  # noqa: BLE001  (tokenizers raises plain Exception)
      raise LmjaxError(f"{path} is not a Hugging Face tokenizer.json ({e}).") from None
    tok.no_truncation()
    tok.no_padding()
    return cls(tok, path)

  @classmethod
  def from_bpe_files(cls, vocab_json: Path, merges_txt: Path):
    """GPT-2's byte-level BPE from vocab.json + merges.txt, built in memory (the directory is not written)."""
    from tokenizers import ByteLevelBPETokenizer  # noqa: PLC0415
    from tokenizers import Tokenizer as _Tokenizers  # noqa: PLC0415

    try:
      bpe = ByteLevelBPETokenizer(str(vocab_json), str(merges_txt), add_prefix_space=False)
    except Exception as e:  # noqa: BLE001
      raise LmjaxError(f"{vocab_json} / {merges_txt} are not a byte-level BPE vocabulary ({e}).") from None
    if bpe.token_to_id("<|endoftext|>") is not None:  # GPT-2's one special token, as transformers treats it
      bpe.add_special_tokens(["<|endoftext|>"])
    return cls(_Tokenizers.from_str(bpe.to_str()), Path(vocab_json))

  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size()

  @property
  def eos_id(self) -> int | None:
    for name in self.EOS_TOKENS:
      if self.tok.token_to_id(name) is not None:
        return self.tok.token_to_id(name)
    return None

  def encode(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def encode_prompts(self, texts: list[str]) -> list[list[int]]:
    """Prompts for a decoder, as the checkpoint's own tokenizer makes them:
    with the special tokens its post-processor adds in front (Llama's `<s>`;
    none for GPT-2), as transformers' `tokenizer(text)` does, but never an
    end-of-text token after the prompt (the model is to continue it)."""
    out = []
    for e in self.tok.encode_batch(list(texts), add_special_tokens=True):
      ids = list(e.ids)
      while ids and self.eos_id is not None and ids[-1] == self.eos_id and e.special_tokens_mask[len(ids) - 1]:
        ids.pop()
      out.append(ids)
    return out

  def decode(self, ids) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


class WordPiece(HfTokenizer):
  """BERT's WordPiece tokenizer; classification needs its [PAD], [CLS] and [SEP]."""

  SPECIALS = ("[PAD]", "[CLS]", "[SEP]")

  @classmethod
  def load(cls, path: Path) -> WordPiece:
    out = super().load(path)
    for name in cls.SPECIALS:
      if out.tok.token_to_id(name) is None:
        raise LmjaxError(f"{path} has no {name} token; lmjax classification needs BERT's special tokens.")
    return out

  @classmethod
  def from_vocab(cls, vocab: Path, out_path: Path, *, lowercase: bool) -> WordPiece:
    """Builds BERT's WordPiece tokenizer from a vocab.txt and saves it as tokenizer.json."""
    from tokenizers import BertWordPieceTokenizer  # noqa: PLC0415

    tok = BertWordPieceTokenizer(str(vocab), lowercase=lowercase)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_path))
    return cls.load(out_path)

  @property
  def pad_id(self) -> int:
    return self.tok.token_to_id("[PAD]")

  @property
  def cls_id(self) -> int:
    return self.tok.token_to_id("[CLS]")

  @property
  def sep_id(self) -> int:
    return self.tok.token_to_id("[SEP]")


RUN_FILES = ("tokenizer.model", "tokenizer.json")


def load_for_run(workdir: Path) -> Tokenizer | HfTokenizer:
  """The tokenizer a run (or a Hugging Face model directory) keeps, whichever kind it is."""
  workdir = Path(workdir)
  if (workdir / "tokenizer.model").exists() and not (workdir / "tokenizer.json").exists():
    return Tokenizer.load(workdir / "tokenizer.model")
  if (workdir / "tokenizer.json").exists():
    tok = HfTokenizer.load(workdir / "tokenizer.json")
    if all(tok.tok.token_to_id(name) is not None for name in WordPiece.SPECIALS):
      return WordPiece(tok.tok, tok.path)  # BERT's: the same file, read once
    return tok
  if (workdir / "vocab.json").exists() and (workdir / "merges.txt").exists():  # a GPT-2 directory
    return HfTokenizer.from_bpe_files(workdir / "vocab.json", workdir / "merges.txt")
  raise LmjaxError(f"{workdir} has no tokenizer ({' or '.join(RUN_FILES)}); is it an lmjax run directory?")


def sentencepiece_as_hf(path: Path):
  """lmjax's sentencepiece model as a `tokenizers.Tokenizer` that cuts text
  the same way: the Unigram model with sentencepiece's own pieces and scores,
  its normalisation (the precompiled NFKC map, whitespace trimmed and
  collapsed), the word-start marker only where the model adds one (a "char"
  model does not), and [CLS] / [SEP] / [MASK] kept whole."""
  from sentencepiece import sentencepiece_model_pb2  # noqa: PLC0415
  from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers  # noqa: PLC0415
  from tokenizers import Tokenizer as _Tokenizers  # noqa: PLC0415

  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(Path(path).read_bytes())
  spec = proto.normalizer_spec
  tok = _Tokenizers(models.Unigram([(p.piece, p.score) for p in proto.pieces], proto.trainer_spec.unk_id,
                                   proto.trainer_spec.byte_fallback))
  steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
  if spec.remove_extra_whitespaces:
    steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
  tok.normalizer = normalizers.Sequence(steps)
  scheme = "always" if spec.add_dummy_prefix else "never"
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme)
  tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=scheme)
  from tokenizers import AddedToken  # noqa: PLC0415
  tok.add_special_tokens([AddedToken(p, special=True) for p in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")])
  return tok


def save_for_transformers(tok, out_dir: Path, *, encoder: bool, model_max_length: int) -> None:
  """Writes tokenizer.json + tokenizer_config.json that `transformers.AutoTokenizer`
  loads (as PreTrainedTokenizerFast) and that cut text as `tok` does; with
  `encoder`, `tokenizer(text)` adds [CLS] ... [SEP] (and a pair's segment ids)."""
  import json  # noqa: PLC0415

  from tokenizers import processors  # noqa: PLC0415

  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if isinstance(tok, Tokenizer):
    hf = sentencepiece_as_hf(tok.path)
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "mask_token": "[MASK]"}
    if encoder:
      hf.post_processor = processors.TemplateProcessing(
          single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
          special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)])
    else:
      specials["eos_token"] = "[SEP]"
  else:
    from tokenizers import Tokenizer as _Tokenizers  # noqa: PLC0415
    hf = _Tokenizers.from_str(tok.tok.to_str())  # a copy: the run's tokenizer keeps its settings
    specials = {}
    for key, name in (("pad_token", "[PAD]"), ("unk_token", "[UNK]"), ("cls_token", "[CLS]"),
                      ("sep_token", "[SEP]"), ("mask_token", "[MASK]")):
      if hf.token_to_id(name) is not None:
        specials[key] = name
    if not encoder and tok.eos_id is not None:
      specials["eos_token"] = hf.id_to_token(tok.eos_id)
  hf.save(str(out_dir / "tokenizer.json"))
  settings = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length, **specials}
  (out_dir / "tokenizer_config.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
