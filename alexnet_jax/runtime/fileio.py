"""Atomic file writes: a reader (or a crash) never sees half a file.

Everything the tools write -- configs, metrics summaries, plots, bundles -- goes to a temporary file in
the destination folder and is renamed over the destination when complete (``os.replace`` is atomic on
one filesystem). A new file gets the usual permissions (0666 less the umask), not ``mkstemp``'s 0600; a
file that is replaced keeps its own permissions (a ``chmod 640 metrics.jsonl`` survives a resume).

When writing fails (a full disk, a read-only filesystem, a folder we may not write to) the error is an
``OSError`` of the same kind (``PermissionError``, ...) whose message names the file the caller asked
for, not the hidden temporary file, and says why in words::

    cannot write runs/demo/config.json: no space left on device

The temporary file is removed, and the destination is left as it was.

The JSON files of the package are read with ``read_json`` (None for a missing or broken file) and written
with ``write_json``; ``plain`` turns numpy / jax values, paths and non-finite numbers into plain JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import numbers
import os
import shutil
import stat
import tempfile
from typing import Any, Iterator


def umask() -> int:
  """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status).

  ``os.umask`` can only be read by setting it; between the two calls another thread (an async
  checkpoint writer, say) would create its files with umask 0, world-writable.
  """
  try:
    with open('/proc/self/status', encoding='ascii') as f:
      for line in f:
        if line.startswith('Umask:'):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _cause(e: OSError) -> str:
  """'no space left on device' for ENOSPC: the OS's words, first letter lowercase."""
  words = e.strerror or (os.strerror(e.errno) if e.errno else '') or str(e) or type(e).__name__
  return words[:1].lower() + words[1:]


def _write_error(e: OSError, target: str, detail: str = '') -> OSError:
  """An OSError of ``e``'s kind, saying ``cannot write TARGET: [DETAIL: ]CAUSE``.

  Made from the message alone (so that ``str()`` is exactly that message), with ``errno`` copied.
  """
  message = f'cannot write {target}: ' + (f'{detail}: ' if detail else '') + _cause(e)
  try:
    error = type(e)(message)
  except Exception:  # pylint: disable=broad-except  # a subclass with another constructor
    error = OSError(message)
  error.errno = e.errno
  error.fileio_target = target   # marks it as ours: an outer atomic_write leaves it alone
  return error


def _non_folder_ancestor(directory: str) -> str | None:
  """The nearest existing ancestor of ``directory`` (itself included) that is not a folder."""
  path = directory
  while path and not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      return None
    path = parent
  return path if path and not os.path.isdir(path) else None


def _make_folder(directory: str, target: str) -> None:
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    blocker = _non_folder_ancestor(directory)
    if blocker is not None:
      error = NotADirectoryError(f'cannot write {target}: {blocker} is a file, not a folder')
      error.errno = errno.ENOTDIR
      error.fileio_target = target
      raise error from e
    raise _write_error(e, target, f'cannot create the folder {directory}') from e


def _mode_for(path: str) -> int:
  """The permission bits the finished file gets: those of the file it replaces, else 0666 - umask."""
  try:
    st = os.stat(path)
  except OSError:
    return 0o666 & ~umask()
  return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~umask()


def _is_ours(e: OSError, tmp: str) -> bool:
  """True for an error about writing the temporary file (not about some other file the body opened).

  Errors on a file object (``write``, ``flush``: a full disk) carry no file name; errors about other
  files do, and pass through unchanged, as do errors an inner ``atomic_write`` already rephrased.
  """
  return not hasattr(e, 'fileio_target') and e.filename in (None, tmp)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'wb', *, fsync: bool = False,
                 **open_kwargs: Any) -> Iterator[Any]:
  """``with atomic_write(path, 'w') as f: ...`` writes ``path`` whole or not at all.

  Args:
    path: the destination; its folder is created if needed.
    mode: ``'wb'`` or ``'w'`` (text mode is UTF-8 unless ``encoding=`` says otherwise).
    fsync: also flush the file to the disk before the rename (a record that must survive a power cut,
      e.g. how a dashboard job ended).
    **open_kwargs: passed to ``open`` (``encoding``, ``errors``, ``newline``).

  Raises:
    OSError: of the kind the OS reported, with a message naming ``path`` and the cause
      (``cannot write PATH: no space left on device``); the temporary file is removed.
  """
  target = os.fspath(path)
  path = os.path.abspath(target)
  directory = os.path.dirname(path)
  if 'b' not in mode:
    open_kwargs.setdefault('encoding', 'utf-8')
  _make_folder(directory, target)
  try:
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=directory)
  except OSError as e:
    raise _write_error(e, target, f'cannot create a file in {directory}') from e
  try:
    try:
      f = os.fdopen(fd, mode, **open_kwargs)
    except BaseException:
      os.close(fd)
      raise
    try:
      with f:
        yield f
        if fsync:
          f.flush()
          os.fsync(f.fileno())
      # Closing flushed the last buffer: a full disk may only show here.
      os.chmod(tmp, _mode_for(path))
      os.replace(tmp, path)
    except OSError as e:
      if not _is_ours(e, tmp):
        raise
      raise _write_error(e, target) from e
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
  """Writes ``data`` to ``path`` atomically; returns ``path``."""
  with atomic_write(path, 'wb') as f:
    f.write(data)
  return os.fspath(path)


# ---- JSON ---------------------------------------------------------------------------------------------

def plain(value: Any, *, finite: bool = True) -> Any:
  """Python, numpy or jax values as plain JSON: numbers, strings, lists and dicts (with string keys).

  numpy / jax scalars become Python numbers (exact: a float32 becomes the same value as a float), arrays
  and tuples lists, paths and other objects their ``str``, dataclasses dicts. With ``finite`` (the
  default) NaN and infinities become None, as a browser's ``JSON.parse`` refuses them; ``finite=False``
  keeps them for files only Python reads back (``metrics.jsonl``, a checkpoint's metrics).
  """
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    value = float(value)
    return value if math.isfinite(value) or not finite else None
  if isinstance(value, dict):
    return {str(k): plain(v, finite=finite) for k, v in value.items()}
  if isinstance(value, (list, tuple, set, frozenset)):
    return [plain(v, finite=finite) for v in value]
  if hasattr(value, 'tolist'):              # numpy / jax arrays and scalars
    return plain(value.tolist(), finite=finite)
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return plain(dataclasses.asdict(value), finite=finite)
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  return str(value)


def read_json(path: str | os.PathLike, max_bytes: int = 8 * 2**20) -> Any:
  """The JSON document in ``path`` (its first ``max_bytes``), or None if it is missing or not JSON."""
  try:
    with open(path, 'rb') as f:
      return json.loads(f.read(max_bytes).decode('utf-8'))
  except (OSError, ValueError):
    return None


def write_json(path: str | os.PathLike, obj: Any, *, fsync: bool = False, **kwargs) -> str:
  """Writes ``obj`` as JSON (``json.dump``'s ``kwargs``) to ``path`` atomically; returns ``path``.

  ``fsync`` also flushes it to the disk before the rename (``atomic_write``). Pass ``plain(obj)`` for
  values that are not JSON already.
  """
  with atomic_write(path, 'w', fsync=fsync) as f:
    json.dump(obj, f, **kwargs)
  return os.fspath(path)


# ---- Folders put in place whole ----------------------------------------------------------------------

def make_staging_dir(output: str) -> str:
  """A fresh temporary folder beside ``output`` (same filesystem, so renames are atomic).

  Raises an OSError naming ``output`` (not the hidden folder) when the place cannot be written.
  """
  parent = os.path.dirname(os.path.abspath(output))
  _make_folder(parent, output)
  try:
    return tempfile.mkdtemp(prefix='.' + os.path.basename(output) + '.', suffix='.tmp', dir=parent)
  except OSError as e:
    raise _write_error(e, output) from e


def write_error(e: OSError, target: str) -> OSError:
  """``e`` as ``cannot write TARGET: <cause>`` (unchanged when it already names its target): for
  writers that assemble files themselves, e.g. an archive in a staging folder."""
  return e if hasattr(e, 'fileio_target') else _write_error(e, target)


def replace_dir(new: str, output: str) -> None:
  """Moves the finished folder ``new`` to ``output``; an old ``output`` is swapped out only once ``new`` is
  complete, and deleted after (``new`` must be on the same filesystem, e.g. a temp folder beside it)."""
  if not os.path.lexists(output):
    os.rename(new, output)
    return
  old = output + '.old-' + str(os.getpid())
  os.rename(output, old)
  try:
    os.rename(new, output)
  except BaseException:
    os.rename(old, output)
    raise
  if os.path.isdir(old) and not os.path.islink(old):
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.unlink(old)
