"""The web side of ``worker.py``: one long-lived helper process that answers the library's questions.

``Checker.start()`` launches ``python -m alexnet_jax.dashboard.worker`` in the background (it imports
JAX, ~3 s on 2 cores, while the web server is already answering), and asks it for the tables once
(layouts with the devices each needs, networks, solvers, LR policies, mean and resize modes, the
installed experiments). The tables are also kept in ``<jobs_dir>/.dashboard/tables.json``, so the next
start shows the New Model page at once, before its worker is ready. ``check`` and ``lr_curve`` send one
request each; they are serialized (one worker, one pipe) and time out rather than hang a request.
A worker that died is started again at the next request.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
from typing import Any, Optional

_log = logging.getLogger(__name__)

TABLES_FILE = 'tables.json'


class WorkerError(RuntimeError):
  """The worker could not answer (it died, timed out or said so)."""


class Checker:
  def __init__(self, state_dir: str, *, python: str = sys.executable, timeout_s: float = 60.0):
    self.state_dir = state_dir
    self.python = python
    self.timeout_s = timeout_s
    self._proc: Optional[subprocess.Popen] = None
    self._lines: 'queue.Queue[Optional[str]]' = queue.Queue()
    self._lock = threading.Lock()
    self._tables: Optional[dict] = None
    self._tables_ready = threading.Event()
    self._closed = False
    cached = self._read_cached()
    if cached is not None:
      self._tables = cached

  # -- Process --------------------------------------------------------------------------------------

  def _read_cached(self) -> Optional[dict]:
    try:
      with open(os.path.join(self.state_dir, TABLES_FILE), encoding='utf-8') as f:
        value = json.load(f)
      return value if isinstance(value, dict) and 'layouts' in value else None
    except (OSError, ValueError):
      return None

  def _spawn(self) -> None:
    env = dict(os.environ)
    env.setdefault('JAX_PLATFORMS', 'cpu')
    self._proc = subprocess.Popen(
        [self.python, '-m', 'alexnet_jax.dashboard.worker'], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env,
        close_fds=True)
    self._lines = queue.Queue()
    proc, lines = self._proc, self._lines

    def pump():
      for line in proc.stdout:
        lines.put(line)
      lines.put(None)

    threading.Thread(target=pump, name='dashboard-worker-pipe', daemon=True).start()
    first = self._next_line(self.timeout_s)
    if not first.get('ready'):
      raise WorkerError('the worker did not start')

  def _next_line(self, timeout: float) -> dict:
    try:
      line = self._lines.get(timeout=timeout)
    except queue.Empty:
      self._kill()
      raise WorkerError(f'the worker did not answer within {timeout:.0f} s') from None
    if line is None:
      self._kill()
      raise WorkerError('the worker exited')
    return json.loads(line)

  def _kill(self) -> None:
    proc, self._proc = self._proc, None
    if proc is not None and proc.poll() is None:
      proc.kill()
      try:
        proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        pass

  def ask(self, request: dict, timeout: Optional[float] = None) -> dict:
    """One request, one answer; raises WorkerError when the worker cannot answer."""
    if self._closed:
      raise WorkerError('the dashboard is shutting down')
    with self._lock:
      if self._proc is None or self._proc.poll() is not None:
        self._spawn()
      try:
        self._proc.stdin.write(json.dumps(request) + '\n')
        self._proc.stdin.flush()
      except (OSError, ValueError):
        self._kill()
        raise WorkerError('the worker exited') from None
      reply = self._next_line(timeout or self.timeout_s)
    if 'error' in reply:
      raise WorkerError(reply['error'])
    return reply

  def start(self) -> None:
    """Starts the worker and fetches the tables, in a background thread."""

    def warm():
      try:
        tables = self.ask({'op': 'tables'})
      except Exception as e:  # pylint: disable=broad-except
        _log.warning('dashboard worker: %s', e)
        self._tables_ready.set()
        return
      self._tables = tables
      try:
        os.makedirs(self.state_dir, exist_ok=True)
        tmp = os.path.join(self.state_dir, f'{TABLES_FILE}.tmp-{os.getpid()}')
        with open(tmp, 'w', encoding='utf-8') as f:
          json.dump(tables, f)
        os.replace(tmp, os.path.join(self.state_dir, TABLES_FILE))
      except OSError:
        pass
      self._tables_ready.set()

    threading.Thread(target=warm, name='dashboard-worker-start', daemon=True).start()

  def close(self) -> None:
    self._closed = True
    proc = self._proc
    if proc is not None:
      try:
        proc.stdin.close()
      except OSError:
        pass
      try:
        proc.wait(timeout=3)
      except subprocess.TimeoutExpired:
        self._kill()

  # -- Questions -------------------------------------------------------------------------------------

  def tables(self, wait_s: float = 30.0) -> dict[str, Any]:
    """The tables (cached from an earlier start while the worker warms up); {} if none yet."""
    if self._tables is None:
      self._tables_ready.wait(wait_s)
    return self._tables or {}

  def check(self, experiment: str, overrides: list[str], num_classes: int) -> dict:
    return self.ask({'op': 'check', 'experiment': experiment, 'overrides': overrides,
                     'num_classes': num_classes})

  def lr_curve(self, experiment: str, overrides: list[str], steps_per_epoch: int) -> dict:
    return self.ask({'op': 'lr_curve', 'experiment': experiment, 'overrides': overrides,
                     'steps_per_epoch': steps_per_epoch})

