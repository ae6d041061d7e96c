"""Atomic file writes: a reader (or a crash) never sees half a file.

Everything the tools write -- configs, metrics summaries, plots, bundles -- goes to a temporary file in
the destination folder and is renamed over the destination when complete (``os.replace`` is atomic on
one filesystem). Files get the usual permissions (0666 less the umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator


def umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'wb') -> Iterator[Any]:
  """``with atomic_write(path, 'w') as f: ...`` writes ``path`` whole or not at all."""
  path = os.path.abspath(os.fspath(path))
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
  with atomic_write(path, 'wb') as f:
    f.write(data)
  return os.fspath(path)


def write_json(path: str | os.PathLike, obj: Any, **kwargs) -> str:
  with atomic_write(path, 'w') as f:
    json.dump(obj, f, **kwargs)
  return os.fspath(path)
