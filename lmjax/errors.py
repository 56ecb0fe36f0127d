"""The one exception type users see.

Anything the user can fix (a config key, a path, a file's encoding, a mesh
shape) raises `LmjaxError` with a message that says what is wrong and how to
fix it. `train.py` prints such errors as one paragraph without a traceback;
everything else is a bug and keeps its traceback.
"""


class LmjaxError(Exception):
  """A problem with the user's input, configuration or files."""


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
    except KeyboardInterrupt:
      return 130
  return wrapped
