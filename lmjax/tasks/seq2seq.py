"""Sequence-to-sequence fine-tuning (text-to-text): an encoder-decoder reads the
input and is taught, with teacher forcing, to write the target.

Each pair becomes encoder tokens `template(input) </s>` (data.input_template,
e.g. "translate English to German: {input}") and decoder targets
`target </s>`; the decoder's inputs are the targets shifted right behind the
start token. The loss is cross-entropy on target tokens only. Rows hold one
example padded to data.max_seq_len / data.max_target_len, or with
data.pack_examples several short examples, kept apart by segment ids in
both stacks.

Evaluation: held-out loss and token accuracy, then the whole validation split
decoded with the configured search (`decode`: greedy or beam search) and
scored against every reference of its input: exact_match, and per data set
wer / per (G2P: word and phoneme error rates, as fractions), bleu / chrf
(sacrebleu, 0-100) or accuracy. The final test report uses the best
checkpoint (checkpoint.best_metric, default exact_match or bleu).

Where the model comes from: from scratch (a sentencepiece vocabulary is
trained on the training pairs), or `train.init_from`: an lmjax T5 run (e.g.
span-corruption pretraining) or a Hugging Face T5 directory, whose
architecture, tokenizer and parameters are used.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.generate import encode_inputs
from lmjax.metrics import log
from lmjax.models.family import Workload
from lmjax.tasks import base
from lmjax.tasks.base import BatchField

METRICS = ("exact_match", "wer", "per", "bleu", "chrf", "accuracy")


@dataclasses.dataclass
class EncodedPairs:
  """A split as token lists (end-of-text included), with its texts."""
  inputs: list[np.ndarray]
  targets: list[np.ndarray]
  input_texts: list[str]
  target_texts: list[str]

  def __len__(self) -> int:
    return len(self.inputs)


def encode_pairs(tok, split, template: str, max_input: int, max_target: int, truncation: str,
                 name: str) -> EncodedPairs:
  """Tokenizes one split; too-long inputs or targets are cut (counted) or refused."""
  eos = tok.eos_id
  inputs = encode_inputs(tok, split.inputs, template)
  targets = [list(t) + [eos] for t in tok.encode(split.targets)]
  long_in = sum(len(x) > max_input for x in inputs)
  long_out = sum(len(y) > max_target for y in targets)
  for count, what, key, limit in ((long_in, "inputs", "max_seq_len", max_input),
                                  (long_out, "targets", "max_target_len", max_target)):
    if count:
      msg = (f"{count} of {len(inputs)} {what} in the {name!r} split are longer than data.{key}={limit} tokens "
             "(end-of-text included)")
      if truncation == "error":
        raise LmjaxError(f"{msg}. Raise data.{key}, or set data.truncation=warn to cut them.")
      log(f"warning: {msg}; they were truncated (data.truncation=warn).")
  cut = lambda ids, n: np.asarray(ids[:n - 1] + [eos] if len(ids) > n else ids, np.int32)  # noqa: E731
  return EncodedPairs([cut(x, max_input) for x in inputs], [cut(y, max_target) for y in targets],
                      list(split.inputs), list(split.targets))


class Seq2SeqExamples:
  """The training stream: example k of the global stream, fixed by (seed, epoch, index).

  Unpacked, row k is pair perm_epoch[k % n]. Packed, each epoch's permutation
  is cut greedily into rows (pairs are added while both the inputs and the
  targets fit), so the rows of epoch e, and with them every later batch,
  follow from (seed, e) alone.
  """

  def __init__(self, pairs: EncodedPairs, input_len: int, target_len: int, seed: int, pack: bool = False,
               shuffle: bool = True, start_id: int = 0):
    self.pairs, self.input_len, self.target_len = pairs, input_len, target_len
    self.pack, self.start_id = pack, start_id
    from lmjax.data.stream import EpochShuffle  # noqa: PLC0415
    self.order = EpochShuffle(len(pairs), seed, salt=11, shuffle=shuffle)
    self._rows: dict[int, list[list[int]]] = {}

  def _epoch_rows(self, epoch: int) -> list[list[int]]:
    if epoch not in self._rows:
      if len(self._rows) > 4:
        self._rows.clear()
      perm = self.order.permutation(epoch) if self.order.shuffle else np.arange(len(self.pairs))
      rows, row, used_in, used_out = [], [], 0, 0
      for i in perm:
        n_in, n_out = len(self.pairs.inputs[i]), len(self.pairs.targets[i])
        if row and (used_in + n_in > self.input_len or used_out + n_out > self.target_len):
          rows.append(row)
          row, used_in, used_out = [], 0, 0
        row.append(int(i))
        used_in, used_out = used_in + n_in, used_out + n_out
      rows.append(row)
      self._rows[epoch] = rows
    return self._rows[epoch]

  def __len__(self) -> int:
    return len(self._epoch_rows(0)) if self.pack else len(self.pairs)

  def row_members(self, k: int) -> list[int]:
    """The pairs in row k of the stream."""
    if not self.pack:
      return [self.order(k)[1]]
    epoch = 0
    while k >= len(self._epoch_rows(epoch)):
      k -= len(self._epoch_rows(epoch))
      epoch += 1
    return self._epoch_rows(epoch)[k]

  def make_row(self, members: list[int]) -> dict[str, np.ndarray]:
    s, t = self.input_len, self.target_len
    out = {"input_ids": np.zeros(s, np.int32), "input_segments": np.zeros(s, np.int32),
           "decoder_input_ids": np.zeros(t, np.int32), "target_ids": np.zeros(t, np.int32),
           "target_segments": np.zeros(t, np.int32), "target_weights": np.zeros(t, np.float32)}
    at_in = at_out = 0
    for seg, i in enumerate(members, 1):
      x, y = self.pairs.inputs[i], self.pairs.targets[i]
      out["input_ids"][at_in:at_in + len(x)] = x
      out["input_segments"][at_in:at_in + len(x)] = seg
      out["target_ids"][at_out:at_out + len(y)] = y
      out["decoder_input_ids"][at_out] = self.start_id
      out["decoder_input_ids"][at_out + 1:at_out + len(y)] = y[:-1]
      out["target_segments"][at_out:at_out + len(y)] = seg
      out["target_weights"][at_out:at_out + len(y)] = 1.0
      at_in, at_out = at_in + len(x), at_out + len(y)
    return out

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    return self.make_row(self.row_members(k))


# --- metrics ---------------------------------------------------------------------

def edit_distance(a: list[str], b: list[str]) -> int:
  from rapidfuzz.distance import Levenshtein  # noqa: PLC0415
  return int(Levenshtein.distance(a, b))


def seq2seq_report(predictions: list[str], references: list[list[str]], metrics: tuple[str, ...]) -> dict:
  """exact_match (against any reference) and the requested metrics, over distinct inputs.

  wer: share of inputs whose output matches no reference (G2P's word error
  rate); per: edit distance in space-separated symbols to the closest
  reference, over the total length of those references; cer: the same in
  characters; bleu / chrf: sacrebleu corpus scores (all references);
  accuracy: exact_match (for text-to-text classification).
  """
  n = len(predictions)
  exact = np.asarray([p.strip() in {r.strip() for r in refs} for p, refs in zip(predictions, references)])
  out = {"exact_match": float(exact.mean()) if n else 0.0, "examples": n}
  for name in ("per", "cer"):
    if name in metrics:
      errors = total = 0
      for p, refs in zip(predictions, references):
        split = (lambda s: s.split()) if name == "per" else (lambda s: list(s.strip()))
        d, ref = min((edit_distance(split(p), split(r)), r) for r in refs)
        errors, total = errors + d, total + len(split(ref))
      out[name] = errors / max(total, 1)
  if "wer" in metrics:
    out["wer"] = 1.0 - out["exact_match"]
  if "accuracy" in metrics:
    out["accuracy"] = out["exact_match"]
  if "bleu" in metrics or "chrf" in metrics:
    import sacrebleu  # noqa: PLC0415
    width = max(len(r) for r in references)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    if "bleu" in metrics:
      out["bleu"] = float(sacrebleu.corpus_bleu(predictions, streams).score)
    if "chrf" in metrics:
      out["chrf"] = float(sacrebleu.corpus_chrf(predictions, streams).score)
  return out


def grouped(pairs: EncodedPairs) -> tuple[list[np.ndarray], list[str], list[list[str]]]:
  """Distinct inputs in order of first appearance: (tokens, text, every reference)."""
  first: dict[str, int] = {}
  refs: list[list[str]] = []
  tokens, texts = [], []
  for x, text, target in zip(pairs.inputs, pairs.input_texts, pairs.target_texts):
    if text not in first:
      first[text] = len(texts)
      tokens.append(x)
      texts.append(text)
      refs.append([])
    refs[first[text]].append(target)
  return tokens, texts, refs


def decode_all(gen, inputs: list[np.ndarray], decode_cfg, max_new_tokens: int, batch_size: int,
               stop_id: int) -> list[list[int]]:
  """The best output of every input (token ids, end-of-text dropped); inputs are
  decoded in order of length, in batches of one size (the last one padded)."""
  from lmjax.generate import BeamSearch, Sampling  # noqa: PLC0415
  order = np.argsort([len(x) for x in inputs], kind="stable")
  out: list[list[int]] = [[] for _ in inputs]
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    batch = [list(inputs[i]) for i in idx]
    batch += [batch[-1]] * (batch_size - len(batch))
    if decode_cfg.num_beams > 1:
      search = BeamSearch(decode_cfg.num_beams, 1, decode_cfg.length_penalty, decode_cfg.early_stopping,
                          max_new_tokens)
      best = [seqs[0] for seqs in gen.beam_search(inputs=batch, search=search, stop_ids=(stop_id,)).sequences]
    else:
      best = gen.generate(inputs=batch, sampling=Sampling(max_new_tokens, 0.0), stop_ids=(stop_id,)).tokens
    for i, seq in zip(idx, best):
      out[i] = [t for t in seq if t != stop_id]
  return out


class Seq2Seq(base.Task):
  name = "seq2seq"
  model = "seq2seq"
  families = ("t5",)
  loss_terms = ("lm_loss",)
  data_groups = ("labelled", "seq2seq")
  fine_tuning = True  # init_from is optional: from scratch works too

  def _target_len(self, cfg) -> int:
    return cfg.data.max_target_len

  def batch(self, cfg) -> dict[str, BatchField]:
    s, t, v = cfg.data.max_seq_len, self._target_len(cfg), cfg.model.vocab_size
    return {
        "input_ids": BatchField((s,), np.int32, ("seq",), base.random_ids(5, v)),
        "input_segments": BatchField((s,), np.int32, ("seq",), base.constant(1, np.int32)),
        "decoder_input_ids": BatchField((t,), np.int32, ("seq",), base.random_ids(5, v)),
        "target_ids": BatchField((t,), np.int32, ("seq",), base.random_ids(5, v)),
        "target_segments": BatchField((t,), np.int32, ("seq",), base.constant(1, np.int32)),
        "target_weights": BatchField((t,), np.float32, ("seq",), base.constant(1.0, np.float32)),
    }

  def workload(self, cfg) -> Workload:
    return Workload(cfg.data.max_seq_len, target_len=self._target_len(cfg))

  def check(self, cfg) -> None:
    d = cfg.data
    if "{input}" not in d.input_template:
      raise LmjaxError(f"data.input_template={d.input_template!r} has no '{{input}}' where the text goes, e.g. "
                       "'translate English to German: {input}'.")
    if d.max_target_len < 2:
      raise LmjaxError(f"data.max_target_len={d.max_target_len}: a target needs at least one token and the "
                       "end-of-text token.")
    if d.truncation not in ("warn", "error"):
      raise LmjaxError(f"data.truncation={d.truncation!r}: use 'warn' or 'error'.")
    unknown = [m for m in d.metrics if m not in METRICS + ("cer",)]
    if unknown:
      raise LmjaxError(f"data.metrics has unknown metric {unknown[0]!r}; choose from "
                       f"{', '.join(METRICS + ('cer',))}.")
    dc = cfg.decode
    if dc.num_beams < 1 or dc.num_beams > cfg.model.vocab_size:
      raise LmjaxError(f"decode.num_beams={dc.num_beams} must be between 1 and the vocabulary size "
                       f"({cfg.model.vocab_size}).")
    if dc.batch_size < 1:
      raise LmjaxError(f"decode.batch_size={dc.batch_size} must be positive.")
    if dc.max_new_tokens < 0:
      raise LmjaxError(f"decode.max_new_tokens={dc.max_new_tokens} must be >= 0 (0 = data.max_target_len).")

  def configure(self, cfg, workdir: Path | None, resumed: bool):
    return base.configure_from_init(self, cfg, workdir, resumed)

  def open(self, cfg, workdir: Path, mesh, resumed: bool) -> base.TaskData:
    from lmjax import models  # noqa: PLC0415
    from lmjax.data import pairs  # noqa: PLC0415

    d = cfg.data
    src = base.init_source(self, cfg, resumed)
    data = pairs.load_pairs(d)
    workdir = Path(workdir)
    train = data.splits["train"]  # from scratch: sentencepiece on the training inputs and targets
    tok = base.fine_tuning_tokenizer(cfg, workdir, src, data.identity + "-pairs", lambda: train.inputs + train.targets)
    if tok.eos_id is None:
      raise LmjaxError(f"The tokenizer in {workdir} has no end-of-text token; seq2seq needs one to end targets.")
    start_id = models.of(cfg.model).generation.start_id
    splits = [d.eval_split] + ([d.test_split] if d.test_split in data.splits else [])
    if d.test_split not in data.splits:
      log(f"{data.identity} has no {d.test_split!r} split: there will be no final test report")
    for split in ("train", *splits):
      if split not in data.splits:
        raise LmjaxError(f"Data set {data.identity} has no {split!r} split (it has {', '.join(data.splits)}); set "
                         "data.eval_split / data.test_split.")
      if not len(data.splits[split]):
        raise LmjaxError(f"The {split!r} split of {data.identity} is empty.")
    encoded = {split: encode_pairs(tok, data.splits[split], d.input_template, d.max_seq_len, d.max_target_len,
                                   d.truncation, split) for split in dict.fromkeys(("train", *splits))}
    row = lambda split, shuffle: Seq2SeqExamples(encoded[split], d.max_seq_len, d.max_target_len,  # noqa: E731
                                                 cfg.train.seed, d.pack_examples, shuffle, start_id)
    train_rows = row("train", True)
    max_new = cfg.decode.max_new_tokens or d.max_target_len
    from lmjax.generate import Generator  # noqa: PLC0415  (jax: imported when a run opens)
    gen = Generator(cfg.model, None)  # built here, outside the run's mesh; evaluations set its parameters

    def report(split: str, with_loss: bool):
      held = row(split, False) if with_loss else None

      def evaluate(ctx: base.EvalContext, params) -> dict:
        out = base.held_out(self, ctx, params, held, cfg.train.eval_batches) if held is not None else {}
        gen.params = params
        tokens, texts, refs = grouped(encoded[split])
        outputs = decode_all(gen, tokens, cfg.decode, max_new, cfg.decode.batch_size, tok.eos_id)
        predictions = [tok.decode(o) for o in outputs]
        out.update(seq2seq_report(predictions, refs, data.metrics))
        if "bleu" in data.metrics or "chrf" in data.metrics:  # the copy-the-input baseline, for scale
          copied = seq2seq_report(list(texts), refs, tuple(m for m in data.metrics if m in ("bleu", "chrf")))
          out.update({f"copy_{m}": copied[m] for m in ("bleu", "chrf") if m in copied})
        return out
      return evaluate

    pretrained = base.pretrained_encoder(src, resumed, "model")
    return base.TaskData(cfg, train_rows, report(d.eval_split, True),
                         report(d.test_split, False) if d.test_split in data.splits else None,
                         best_metric=cfg.checkpoint.best_metric or data.best_metric, pretrained=pretrained)

  def denominators(self, batch: dict) -> dict:
    return {"lm": jnp.maximum(batch["target_weights"].astype(jnp.float32).sum(), 1.0)}

  def loss(self, model, batch: dict, rng, denominators: dict):
    logits_btv = model(batch["input_ids"], batch["decoder_input_ids"], batch["input_segments"],
                       batch["target_segments"], rng=rng)
    ce, correct, count = base.weighted_ce(logits_btv, batch["target_ids"], batch["target_weights"].astype(jnp.float32))
    return ce / denominators["lm"], {"lm_loss": (ce, count), "accuracy_tokens": (correct, count)}

  def derived(self, metrics: dict) -> dict:
    return {"perplexity": base.perplexity(metrics["lm_loss"])}

  def format_report(self, report: dict, title: str) -> str:
    keys = [k for k in ("exact_match", "wer", "per", "cer", "bleu", "chrf", "copy_bleu", "copy_chrf", "accuracy")
            if k in report]
    return f"{title}: {report['examples']} distinct inputs\n" + "  ".join(f"{k}={report[k]:.4f}" for k in keys)
