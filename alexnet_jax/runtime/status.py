"""The live ``status.json`` of a long tool's workdir: what it is doing now, and whether it is still alive.

What it is for: DIGITS' home page (``python -m alexnet_jax.runs``, the dashboard) must say of every job
whether it is *running*, *done*, *failed*, *stopped* or *interrupted* (killed, the machine rebooted), how
far it is and when it will finish -- without importing JAX and without reading checkpoints. A tool keeps
that in one small JSON file that it rewrites atomically now and then:

    with status.StatusWriter(workdir, 'train', enabled=jax.process_index() == 0) as st:
      st.update(step=0, total_steps=3000, num_epochs=30)        # throttled: at most every 2 s
      ...
      st.update(step=step, progress=step / 3000, eta_seconds=eta, train={'loss': 0.41, 'top1': 0.8})
      st.update(force=True, val={'top1': 0.78}, best_val_top1=0.78, best_epoch=3)   # written now
    # leaving the block: 'done'; an exception: 'failed' + its one-line message; Ctrl-C: 'stopped'

The file, ``WORKDIR/status.json``::

    {"version": 1, "kind": "train", "state": "running",
     "pid": 4242, "host": "gpu1", "process_start_ticks": 1234567, "boot_id": "5c0e...",
     "argv": [...], "command": "python -m alexnet_jax.train --config=... --workdir=runs/demo",
     "cwd": "/home/me/alexnet", "workdir": "/home/me/alexnet/runs/demo", "attempt": 2,
     "started": "2025-01-01T12:00:00+00:00", "started_unix": 1735732800.0, "first_started": ...,
     "updated": "...", "updated_unix": ..., "elapsed_seconds": 62.0,
     "step": 1260, "total_steps": 3000, "progress": 0.42, "eta_seconds": 85.0, ...}

and ``"finished"``, ``"finished_unix"``, ``"exit_status"`` and ``"error"`` once it has ended.

*Is it alive?* The record holds the writer's identity (``process.process_identity``: pid, host, start
time, boot id); ``effective_state`` turns a 'running' record whose process is gone
(``process.process_alive``) into 'interrupted'.

Writes are atomic (a temporary file in the same folder, renamed over the old one), so a reader never sees
half a file; the new file keeps the mode of the one it replaces (``fileio``), so a status.json made
group-readable (0640) stays so. Non-finite numbers are written as ``null``: the file must
be plain JSON for a browser's ``JSON.parse``. ``read_status`` never raises on bad content.

The tool's log lines are copied to ``WORKDIR/train.log`` by ``logs.py``; who the process is and the exit
statuses are ``process.py``'s.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sys
import threading
import time
from typing import Any, Optional, Sequence

from alexnet_jax.runtime import fileio
from alexnet_jax.runtime import process

STATUS_FILE = 'status.json'
VERSION = 1
KINDS = ('train', 'prepare', 'sweep', 'evaluate', 'classify')
RUNNING = 'running'
FINAL_STATES = ('done', 'failed', 'stopped')
STATES = (RUNNING,) + FINAL_STATES
INTERRUPTED = 'interrupted'    # never written: what a reader concludes of a 'running' record without a process
UNREADABLE = 'unreadable'      # never written: what read_status returns for a file it cannot parse

_log = logging.getLogger(__name__)

_ERROR_CHARS = 500             # a one-line error message is cut to this length


# ---- Small helpers ----------------------------------------------------------------------------------

def _iso(unix: float) -> str:
  return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).isoformat(timespec='seconds')


def one_line_error(exc: BaseException) -> str:
  """``'TypeName: first line of the message'``, cut to a few hundred characters."""
  text = str(exc).strip().splitlines()
  message = text[0] if text else ''
  line = f'{type(exc).__name__}: {message}' if message else type(exc).__name__
  return line if len(line) <= _ERROR_CHARS else line[:_ERROR_CHARS - 3] + '...'


def effective_state(record: Optional[dict[str, Any]]) -> str:
  """The recorded state, except 'interrupted' for a 'running' record whose process is gone (this host).

  A 'running' record from another host stays 'running' (it cannot be checked from here); no record is
  'unknown'.
  """
  if not isinstance(record, dict):
    return 'unknown'
  state = record.get('state')
  if not isinstance(state, str) or not state:
    return 'unknown'
  if state == RUNNING and process.process_alive(record) is False:
    return INTERRUPTED
  return state


# ---- Reading --------------------------------------------------------------------------------------

def status_path(path_or_workdir: str | os.PathLike) -> str:
  """``WORKDIR/status.json`` for a folder, the path itself for a file."""
  path = os.fspath(path_or_workdir)
  return os.path.join(path, STATUS_FILE) if os.path.isdir(path) else path


def read_status(path_or_workdir: str | os.PathLike) -> Optional[dict[str, Any]]:
  """The status of a workdir (or a status file), tolerant of anything on disk.

  Returns:
    None when there is no status file; the record as a dict; or, for a file that is truncated, not
    JSON or not a JSON object, ``{'state': 'unreadable', 'error': '<path>: <why>'}``. Never raises
    for bad content (an unreadable folder counts as no file).
  """
  path = status_path(path_or_workdir)
  try:
    with open(path, 'rb') as f:
      data = f.read(16 * 2**20)
  except FileNotFoundError:
    return None
  except IsADirectoryError:
    return {'state': UNREADABLE, 'error': f'{path}: is a folder'}
  except OSError as e:
    if isinstance(e, NotADirectoryError):
      return None
    return {'state': UNREADABLE, 'error': f'{path}: {e.strerror or e}'}
  try:
    record = json.loads(data.decode('utf-8'))
  except (UnicodeDecodeError, ValueError) as e:
    why = 'empty file' if not data.strip() else f'not valid JSON ({e})'
    return {'state': UNREADABLE, 'error': f'{path}: {why}'}
  if not isinstance(record, dict):
    return {'state': UNREADABLE, 'error': f'{path}: not a JSON object'}
  return record


# ---- Writing --------------------------------------------------------------------------------------

class StatusWriter:
  """Keeps ``WORKDIR/status.json`` of one tool's run (module docstring).

  Args:
    workdir: the run's folder (created at the first write if missing).
    kind: 'train', 'prepare', 'sweep' or 'evaluate'.
    argv: the command line to record (default: ``sys.argv``); ``command`` is its rerun form.
    enabled: False writes nothing (the non-zero processes of a multi-process run); every method still
      works.
    min_interval_s: ``update`` writes at most this often unless forced.
    filename: the file's name in ``workdir`` (default ``status.json``; the prepare tool keeps its live
      status beside the output it is making, ``.<name>.status.json``).

  ``start`` writes 'running'; ``update`` merges fields; ``finish`` writes the final state. As a context
  manager it starts on entry (unless started already) and, on exit, finishes 'done', or 'failed' with the
  exception's one-line message (re-raised), or 'stopped' on KeyboardInterrupt -- unless ``finish`` was
  called inside the block. Thread-safe.
  """

  def __init__(self, workdir: str | os.PathLike, kind: str, *, argv: Optional[Sequence[str]] = None,
               enabled: bool = True, min_interval_s: float = 2.0, filename: str = STATUS_FILE):
    if kind not in KINDS:
      raise ValueError(f'status kind {kind!r}: expected one of {"|".join(KINDS)}')
    self.workdir = os.path.abspath(os.fspath(workdir))
    self.path = os.path.join(self.workdir, filename)
    self.kind = kind
    self.argv = [str(a) for a in (sys.argv if argv is None else argv)]
    self.enabled = enabled
    self.min_interval_s = float(min_interval_s)
    self.writes = 0                         # files written (tests, benchmarks)
    self._doc: dict[str, Any] = {}
    self._started = False
    self._finished = False
    self._dirty = False
    self._last_write = -math.inf
    self._warned = False
    self._lock = threading.RLock()

  # -- State ----------------------------------------------------------------------------------------

  @property
  def started(self) -> bool:
    return self._started

  @property
  def finished(self) -> bool:
    return self._finished

  @property
  def state(self) -> Optional[str]:
    return self._doc.get('state')

  def snapshot(self, state: Optional[str] = None, **fields: Any) -> dict[str, Any]:
    """A copy of the record with ``fields`` merged (and ``state``, if given), timestamped now; writes nothing.

    The prepare tool uses it to put the final record inside the folder it is about to rename into place.
    """
    with self._lock:
      doc = dict(self._doc)
      doc.update(fileio.plain(fields))
      if state is not None:
        doc['state'] = state
      self._stamp(doc, time.time(), final=state in FINAL_STATES)
      return doc

  def _stamp(self, doc: dict[str, Any], now: float, final: bool = False) -> None:
    doc['updated'], doc['updated_unix'] = _iso(now), round(now, 3)
    if 'started_unix' in doc:
      doc['elapsed_seconds'] = round(now - doc['started_unix'], 3)
    if final:
      doc['finished'], doc['finished_unix'] = doc['updated'], doc['updated_unix']

  def _write(self, strict: bool = False) -> None:
    """Writes the record. Only ``start`` is ``strict``: a later failure (a full disk) is logged once and
    the run goes on -- a status file is not worth a training run, nor may it hide the exception that
    ended one."""
    self._stamp(self._doc, time.time(), final=self._doc.get('state') in FINAL_STATES)
    self._last_write = time.monotonic()
    self._dirty = False
    if not self.enabled:
      return
    try:
      write_status(self.path, self._doc)
    except OSError as e:
      if strict:
        raise
      if not self._warned:
        self._warned = True
        _log.warning('cannot update %s (%s); the run goes on without it', self.path, e)
      return
    self.writes += 1

  # -- The life of a run --------------------------------------------------------------------------

  def start(self, **fields: Any) -> 'StatusWriter':
    """Writes state 'running' with this process's identity, the command and the start time; returns self.

    A run resumed in the same workdir counts its ``attempt`` on from the previous record and keeps its
    ``first_started`` time. Called again while running, it merges ``fields`` and writes at once.
    """
    with self._lock:
      if self._started and not self._finished:
        self._doc.update(fileio.plain(fields))
        self._write()
        return self
      now = time.time()
      previous = read_status(self.path) if self.enabled else None
      previous = previous if isinstance(previous, dict) and previous.get('state') != UNREADABLE else {}
      attempt = previous.get('attempt')
      identity = process.process_identity(self.argv)
      self._doc = {
          'version': VERSION,
          'kind': self.kind,
          'state': RUNNING,
          **identity,
          'workdir': self.workdir,
          'attempt': attempt + 1 if isinstance(attempt, int) and not isinstance(attempt, bool) else 1,
          'started': _iso(now),
          'started_unix': round(now, 3),
          'first_started': previous.get('first_started') or previous.get('started') or _iso(now),
          'first_started_unix': (previous.get('first_started_unix') or previous.get('started_unix')
                                 or round(now, 3)),
      }
      self._doc.update(fileio.plain(fields))
      self._started, self._finished = True, False
      self._write(strict=True)
      return self

  def update(self, force: bool = False, **fields: Any) -> bool:
    """Merges ``fields`` (top level: a ``train={...}`` replaces the previous ``train``) into the record.

    Writes when ``force`` or when ``min_interval_s`` has passed since the last write; otherwise the
    fields wait for the next write (``flush`` writes them). A final ``state=`` is ``finish(state)``, always
    written. Starts the record if it was not. Returns whether it wrote.
    """
    with self._lock:
      if self._finished:
        return False
      state = fields.pop('state', None)
      if state is not None and state not in STATES:
        raise ValueError(f'status state {state!r}: expected one of {"|".join(STATES)}')
      if state in FINAL_STATES:
        if not self._started:
          self.start()
        self.finish(state, **fields)        # a state change is always written
        return True
      if not self._started:
        self.start(**fields)
        return True
      if not fields and not force:
        return False
      self._doc.update(fileio.plain(fields))
      self._dirty = True
      if force or time.monotonic() - self._last_write >= self.min_interval_s:
        self._write()
        return True
      return False

  def flush(self) -> None:
    """Writes fields that ``update`` held back, if any."""
    with self._lock:
      if self._started and not self._finished and self._dirty:
        self._write()

  def finish(self, state: str = 'done', *, error: Optional[str] = None, exit_status: Optional[int] = None,
             **fields: Any) -> None:
    """Writes the final ``state`` (done | failed | stopped) with ``finished`` time, ``error`` and ``exit_status``.

    A writer never started writes nothing; a second finish does nothing either.
    """
    if state not in FINAL_STATES:
      raise ValueError(f'final status state {state!r}: expected one of {"|".join(FINAL_STATES)}')
    with self._lock:
      if not self._started or self._finished:
        return
      self._doc.update(fileio.plain(fields))
      self._doc['state'] = state
      if error is not None:
        self._doc['error'] = str(error)
      if exit_status is None:
        exit_status = (process.EXIT_OK if state == 'done' else process.EXIT_FAILED if state == 'failed'
                       else None)
      if exit_status is not None:
        self._doc['exit_status'] = int(exit_status)
      self._finished = True
      self._write()

  def record_exception(self, exc: BaseException) -> None:
    """Finishes as the exception says: KeyboardInterrupt 'stopped', SystemExit by its code, else 'failed'."""
    if isinstance(exc, KeyboardInterrupt):
      self.finish('stopped', error='KeyboardInterrupt: interrupted', exit_status=process.EXIT_INTERRUPTED)
    elif isinstance(exc, SystemExit):
      code = exc.code
      if code is None or code == 0:
        self.finish('done', exit_status=process.EXIT_OK)
      else:
        self.finish('failed', error=code if isinstance(code, str) else f'exit status {code}',
                    exit_status=code if isinstance(code, int) else process.EXIT_FAILED)
    else:   # a user error exits 2 (cli.run), a bug 1: the record says what the shell saw
      self.finish('failed', error=one_line_error(exc),
                  exit_status=process.EXIT_USER_ERROR if isinstance(exc, process.USER_ERRORS)
                  else process.EXIT_FAILED)

  def discard(self) -> None:
    """Removes this writer's file and writes nothing more (its record was published elsewhere)."""
    with self._lock:
      self._started = self._finished = True
      if self.enabled:
        try:
          os.unlink(self.path)
        except FileNotFoundError:
          pass

  def __enter__(self) -> 'StatusWriter':
    if not self._started:
      self.start()
    return self

  def __exit__(self, exc_type, exc, tb) -> bool:
    if exc is None:
      self.finish('done')
    else:
      self.record_exception(exc)
    return False


def write_status(path: str | os.PathLike, record: dict[str, Any]) -> str:
  """Writes a status record (e.g. ``StatusWriter.snapshot``'s) to ``path`` atomically, keeping its mode.

  ``fileio.write_json``: a temporary file renamed over the old one, which keeps the replaced file's
  permission bits; plain JSON (NaN/inf become null).
  """
  return fileio.write_json(path, fileio.plain(record), indent=1, allow_nan=False)
