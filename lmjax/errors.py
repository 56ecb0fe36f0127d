"""The one exception type users see.

Anything the user can fix (a config key, a path, a file's encoding, a mesh
shape) raises `LmjaxError` with a message that says what is wrong and how to
fix it. `train.py` prints such errors as one paragraph without a traceback;
everything else is a bug and keeps its traceback.
"""


class LmjaxError(Exception):
  """A problem with the user's input, configuration or files."""
