"""Files written whole or not at all: through a temporary file beside the target, renamed onto it when complete.

A run killed or failing in the middle of a write leaves the previous file (or none), never half of a new one, so a
rerun never reads a torn config, result or picture.
"""

import contextlib
import json
import os


@contextlib.contextmanager
def replaced(path: str):
  """Yields a temporary path beside `path` to write to; renamed onto `path` when the block ends, removed if it
  raises."""
  tmp = path + '.tmp'
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str):
  with replaced(path) as tmp, open(tmp, 'w') as f:
    f.write(text)


def write_json(path: str, obj, indent: int = 1):
  """`obj` as JSON in `path`, its folder made if missing."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  write_text(path, json.dumps(obj, indent=indent))
