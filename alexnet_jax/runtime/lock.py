"""One writer per workdir: an OS file lock on ``WORKDIR/.lock``, with the holder named when it is taken.

What it is for: two trainers on one workdir would interleave their checkpoints and metrics, and two
prepares of one output would race to rename their folders into place. Every writing tool takes the
workdir's lock first and stops at once, naming who holds it, when another process does:

    with lock.WorkdirLock(workdir, what='train'):
      ...                                   # the only writer of workdir

    error: runs/demo is in use by process 4242 on host gpu1 (python -m alexnet_jax.train
    --config=experiments/demo.py --workdir=runs/demo); stop it first or use another --workdir

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)``: the kernel releases it when the process dies, however
it dies (SIGKILL, OOM, a power cut of a network client), so a stale lock never blocks. The file stays on
release -- deleting it would let a newcomer lock a fresh file while another process still holds the old
one -- and only its contents (pid, host, process start time, command, time taken) say who held it last.
Readers (``runs``, the dashboard, evaluate) take no lock: status.json and the files they read are
replaced atomically.

Not re-entrant: a second ``WorkdirLock`` of the same workdir, even in the same process, is refused
(flock belongs to an open file, not to a process). A child made with a bare ``fork()`` (without exec)
shares the open file and keeps the lock until it exits too.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import time
from typing import Any, Optional

from alexnet_jax.runtime import fileio
from alexnet_jax.runtime import process

LOCK_FILE = '.lock'
_READ_RETRIES = 10              # the holder truncates then writes: give it a moment to finish


class WorkdirBusyError(ValueError):
  """Another process holds the workdir's lock; the message names it (a user error: one line, exit 2).

  Attributes:
    workdir: the workdir as given.
    holder: what the lock file says of its holder (pid, host, command, ...), or {} if it says nothing.
  """

  def __init__(self, message: str, workdir: str, holder: dict[str, Any]):
    super().__init__(message)
    self.workdir = workdir
    self.holder = holder


def read_holder(path: str | os.PathLike) -> Optional[dict[str, Any]]:
  """The last holder recorded in a lock file (or ``WORKDIR/.lock`` of a folder); None if none/unreadable."""
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, LOCK_FILE)
  try:
    with open(path, 'rb') as f:
      data = f.read(1 << 20)
    holder = json.loads(data.decode('utf-8'))
  except (OSError, ValueError):
    return None
  return holder if isinstance(holder, dict) else None


def describe_holder(holder: Optional[dict[str, Any]]) -> str:
  """'process 4242 on host gpu1 (python -m ...)', or 'another process' when the file names none."""
  if not holder or not holder.get('pid'):
    return 'another process'
  text = f'process {holder["pid"]}'
  if holder.get('pid') == os.getpid() and process.process_alive(holder):
    text += ' (this process)'
  if holder.get('host'):
    text += f' on host {holder["host"]}'
  if holder.get('command'):
    text += f' ({holder["command"]})'
  return text


class WorkdirLock:
  """An exclusive, non-blocking lock of a workdir; a context manager (``acquire``/``release`` also work).

  Args:
    workdir: the folder to own (created if missing, unless ``lock_file`` puts the lock elsewhere).
    what: the tool taking it ('train', 'prepare', 'sweep', 'evaluate'); recorded in the lock file.
    lock_file: where the lock lives (default ``WORKDIR/.lock``). The prepare tool locks
      ``<parent>/.<name>.lock`` because its output folder does not exist until the end.
    flag: the flag to name in the busy message (default ``--output`` for prepare, else ``--workdir``).
    argv: the command line to record (default ``sys.argv``).

  Raises (from ``acquire`` / entering):
    WorkdirBusyError: another process holds it.

  Keep a reference while you need the lock: like a file, it is released when the object is collected.
  """

  def __init__(self, workdir: str | os.PathLike, *, what: str = 'train',
               lock_file: Optional[str | os.PathLike] = None, flag: Optional[str] = None,
               argv: Optional[list[str]] = None):
    self.workdir = os.fspath(workdir)
    self.what = what
    self.path = os.path.abspath(os.fspath(lock_file) if lock_file is not None
                                else os.path.join(self.workdir, LOCK_FILE))
    self.flag = flag or ('--output' if what == 'prepare' else '--workdir')
    self.argv = argv
    self._fd: Optional[int] = None
    self._owner: Optional[int] = None

  @property
  def locked(self) -> bool:
    return self._fd is not None

  def acquire(self) -> 'WorkdirLock':
    """Takes the lock now or raises WorkdirBusyError; records this process as the holder."""
    if self._fd is not None:
      raise RuntimeError(f'{self.path}: already acquired by this WorkdirLock')
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0), 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise self._busy() from None
    except BaseException:
      os.close(fd)
      raise
    try:
      self._write_holder(fd)
    except BaseException as e:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
      if isinstance(e, OSError):   # a full disk at start: say where, in words
        raise fileio.write_error(e, self.path) from e
      raise
    self._fd, self._owner = fd, os.getpid()
    return self

  def _write_holder(self, fd: int) -> None:
    holder = process.process_identity(self.argv)
    now = time.time()
    holder.update(what=self.what, workdir=os.path.abspath(self.workdir),
                  acquired=datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(
                      timespec='seconds'),
                  acquired_unix=round(now, 3))
    data = (json.dumps(holder, indent=1) + '\n').encode('utf-8')
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)

  def _busy(self) -> WorkdirBusyError:
    holder: dict[str, Any] = {}
    for attempt in range(_READ_RETRIES):
      holder = read_holder(self.path) or {}
      if holder.get('pid'):
        break
      time.sleep(0.02 * (attempt + 1))      # just taken: the holder is writing its name
    message = (f'{self.workdir} is in use by {describe_holder(holder)}; '
               f'stop it first or use another {self.flag}')
    return WorkdirBusyError(message, self.workdir, holder)

  def release(self) -> None:
    """Unlocks and closes the file (it stays on disk, see the module docstring). Idempotent."""
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      if os.getpid() == self._owner:      # a forked child must not unlock its parent's lock
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

  def __del__(self):
    try:
      self.release()
    except Exception:  # pylint: disable=broad-except
      pass
