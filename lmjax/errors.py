"""The one exception type users see.

Anything the user can fix (a config key, a path, a file's encoding, a mesh
shape) raises `LmjaxError` with a message that says what is wrong and how to
fix it. `train.py` prints such errors as one paragraph without a traceback;
everything else is a bug and keeps its traceback.
"""


class LmjaxError(Exception):
  """A problem with the user's input, configuration or files."""


# Storage that is full or not writable: no space, file too large, quota, read-only, permission.
_STORAGE_ERRORS = (28, 27, 122, 30, 13, 1)


def cli(main):
  """Wraps a command's main(argv) -> exit code: an LmjaxError becomes one
  `error: ...` paragraph on stderr and exit code 2, Ctrl-C exit code 130.
  Applies `lmjax.host.tune()` (CPU-backend settings) before the command runs."""
  import functools  # noqa: PLC0415
  import sys  # noqa: PLC0415

  @functools.wraps(main)
  def wrapped(argv: list[str] | None = None) -> int:
    from lmjax import host  # noqa: PLC0415

    host.tune()
    try:
      return main(argv)
    except LmjaxError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    except OSError as e:
      if e.errno not in _STORAGE_ERRORS:
        raise
      what = f"writing {e.filename}" if e.filename else "writing a file"
      print(f"error: {what} failed: {e.strerror} (errno {e.errno}). Free space or fix the permissions (or give "
            "another --workdir / $LMJAX_DATA_DIR), then run the same command: a run resumes from its last "
            "checkpoint, which a failed write leaves intact.", file=sys.stderr)
      return 2
    except KeyboardInterrupt:
      return 130
  return wrapped
