"""Plain text -> documents of sentences.

A document is a list of sentences. Paragraphs are blank-line separated; a
paragraph's lines are joined and split into sentences after '.', '!' or '?'.
Long works are cut into documents of about `DOC_SENTENCES` sentences at
paragraph breaks, so next-sentence prediction can draw "another document"
from elsewhere in the corpus and the held-out split is spread over all works.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

from lmjax.errors import LmjaxError

DOC_SENTENCES = 128
# Documents whose id hashes below this share of the range are held out.
EVAL_FRACTION = 0.05

# A sentence ends after . ! or ? and any closing quotes or brackets, before whitespace.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)")
_BLANK_LINES = re.compile(r"\n\s*\n")


def decode(data: bytes, name: str, on_error: str = "error") -> str | None:
  """UTF-8 (a BOM is dropped); a bad file raises, or is skipped with a warning."""
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    where = f"{name} is not valid UTF-8: byte offset {e.start} holds 0x{data[e.start]:02x}"
    if on_error == "skip":
      warnings.warn(f"skipping {where} (data.on_decode_error=skip)", stacklevel=2)
      return None
    raise LmjaxError(f"{where}. Convert it (for example `iconv -f latin1 -t utf-8`), or set "
                     "data.on_decode_error=skip to leave such files out with a warning.") from None


def sentences(paragraph: str) -> list[str]:
  text = " ".join(paragraph.split())
  out, start = [], 0
  for match in _SENTENCE_END.finditer(text):
    out.append(text[start:match.end()].strip())
    start = match.end()
  out.append(text[start:].strip())
  return [s for s in out if s]


def paragraphs(text: str) -> list[str]:
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  return [p for p in _BLANK_LINES.split(text) if p.strip()]


def documents(text: str, split: str = "chunks") -> list[list[str]]:
  """'chunks': ~DOC_SENTENCES-sentence documents; 'blank_line': one per
  paragraph; 'file': the whole text is one document."""
  paras = [sentences(p) for p in paragraphs(text)]
  paras = [p for p in paras if p]
  if split == "blank_line":
    return paras
  if split == "file":
    return [[s for p in paras for s in p]] if paras else []
  docs, current = [], []
  for p in paras:
    current.extend(p)
    if len(current) >= DOC_SENTENCES:
      docs.append(current)
      current = []
  if current:
    docs.append(current)
  return docs


def is_eval(doc_id: str) -> bool:
  digest = hashlib.sha256(doc_id.encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < EVAL_FRACTION


def split_documents(docs: list[tuple[str, list[str]]]) -> dict[str, list[tuple[str, list[str]]]]:
  """Train/validation by a hash of each document id (stable across runs).

  A corpus too small to hold any document out by hash gives its last
  document (by hash order) to validation, so both splits exist with >= 2 docs.
  """
  train = [d for d in docs if not is_eval(d[0])]
  validation = [d for d in docs if is_eval(d[0])]
  if not validation and len(docs) >= 2:
    last = max(docs, key=lambda d: hashlib.sha256(d[0].encode()).digest())
    validation = [last]
    train = [d for d in docs if d is not last]
  return {"train": train, "validation": validation}


def list_text_files(directory: str) -> list[Path]:
  """The .txt files under a directory, with clear errors when there are none."""
  if not directory:
    raise LmjaxError("data.dataset=text_dir needs data.text_dir: set --set data.text_dir=/path/to/texts "
                     "(a directory of .txt files).")
  root = Path(directory).expanduser()
  if not root.exists():
    raise LmjaxError(f"Corpus directory {root} does not exist. Point data.text_dir at a directory of .txt files.")
  if not root.is_dir():
    raise LmjaxError(f"data.text_dir={root} is a file, not a directory of .txt files.")
  files = sorted(p for p in root.rglob("*.txt") if p.is_file())
  if not files:
    raise LmjaxError(f"Corpus directory {root} holds no .txt files. Add UTF-8 text files ending in .txt.")
  return files
