"""One long-lived helper process spoken to in JSON lines: both halves of the dashboard's workers.

The web process never imports JAX, so whatever needs the library runs in a child process that reads one
JSON request per line on stdin and writes one JSON answer per line on stdout: ``config_worker.py`` (settings
checks, for ``config_client.py``) and ``inference_worker.py`` (classify, export, census, for
``inference_client.py``).

* ``WorkerProcess`` is the web side: it starts the child (lazily, or ``start()`` in the background),
  sends one request at a time (a lock: one pipe, one conversation), waits for the answer with a timeout,
  kills a child that overran it or died, and starts a new one at the next request. It imports nothing
  heavy.
* ``serve(answer)`` is the child side: the loop, with the protocol kept apart from stray output --
  Python's ``print`` and anything a C library writes to file descriptor 1 go to stderr, and only the
  answers go to the real stdout -- and an exception in ``answer`` turned into ``{"error": ...}``, so a
  bad request never ends the process.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional

_log = logging.getLogger(__name__)

LOG_LIMIT_BYTES = 2 * 2**20   # a worker's stderr log is rotated (one old copy) past this size


class WorkerError(RuntimeError):
  """The worker could not answer (it died, timed out or said so)."""


# ---- The web side ---------------------------------------------------------------------------------------

class WorkerProcess:
  """``python -m <module>`` as a request/answer service, restarted when it dies.

  Args:
    module: the worker's module (``alexnet_jax.dashboard.workers.config_worker``).
    python: the interpreter that runs it.
    timeout_s: the default wait for an answer (and for the child to say it is ready).
    env: extra environment variables for the child (over this process's).
    log_path: where the child's stderr goes (appended, rotated past ``LOG_LIMIT_BYTES``); None: nowhere.
    args: extra command-line arguments for the child.
    error: the exception class raised (a subclass of ``WorkerError``).
  """

  def __init__(self, module: str, *, python: str = sys.executable, timeout_s: float = 60.0,
               env: Optional[dict[str, str]] = None, log_path: Optional[str] = None,
               args: tuple[str, ...] = (), error: type[WorkerError] = WorkerError):
    self.module = module
    self.python = python
    self.timeout_s = timeout_s
    self.env = dict(env or {})
    self.log_path = log_path
    self.args = tuple(args)
    self.error = error
    self.ready_info: dict[str, Any] = {}   # what the child said when it was ready
    self.starts = 0                        # how many children were started (restarts included)
    self._proc: Optional[subprocess.Popen] = None
    self._lines: 'queue.Queue[Optional[str]]' = queue.Queue()
    self._lock = threading.Lock()
    self._closed = False

  @property
  def pid(self) -> Optional[int]:
    """The running child's pid, or None."""
    proc = self._proc
    return proc.pid if proc is not None and proc.poll() is None else None

  def _stderr(self):
    if not self.log_path:
      return subprocess.DEVNULL
    try:
      os.makedirs(os.path.dirname(self.log_path) or '.', exist_ok=True)
      if os.path.getsize(self.log_path) > LOG_LIMIT_BYTES:
        os.replace(self.log_path, self.log_path + '.1')
    except OSError:
      pass
    try:
      return open(self.log_path, 'ab')   # pylint: disable=consider-using-with  # the child keeps it
    except OSError:
      return subprocess.DEVNULL

  def _spawn(self, timeout: float) -> None:
    env = dict(os.environ)
    env.update(self.env)
    stderr = self._stderr()
    try:
      self._proc = subprocess.Popen(
          [self.python, '-m', self.module, *self.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
          stderr=stderr, text=True, encoding='utf-8', bufsize=1, env=env, close_fds=True)
    except OSError as e:
      raise self.error(f'cannot start the worker ({e})') from None
    finally:
      if stderr is not subprocess.DEVNULL:
        stderr.close()
    self.starts += 1
    self._lines = queue.Queue()
    proc, lines = self._proc, self._lines

    def pump():
      for line in proc.stdout:
        lines.put(line)
      lines.put(None)

    threading.Thread(target=pump, name=f'{self.module}-pipe', daemon=True).start()
    first = self._next_line(timeout)
    if not first.get('ready'):
      self._kill()
      raise self.error('the worker did not start')
    self.ready_info = first

  def _next_line(self, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
      try:
        line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        self._kill()
        raise self.error(f'the worker did not answer within {timeout:.0f} s') from None
      if line is None:
        raise self.error(f'the worker exited{self._exit_status()}')
      try:
        value = json.loads(line)
      except ValueError:
        _log.warning('%s: not a JSON line: %.200s', self.module, line)
        continue
      if isinstance(value, dict):
        return value

  def _exit_status(self) -> str:
    """' (exit status N)' of a child that ended (it is reaped, and forgotten), else ''."""
    proc, self._proc = self._proc, None
    if proc is None:
      return ''
    try:
      code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
      proc.kill()
      return ''
    return f' (killed by signal {-code})' if code < 0 else f' (exit status {code})'

  def _kill(self) -> None:
    proc, self._proc = self._proc, None
    if proc is not None and proc.poll() is None:
      proc.kill()
      try:
        proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        pass

  def _alive(self) -> bool:
    return self._proc is not None and self._proc.poll() is None

  def ask(self, request: dict, timeout: Optional[float] = None) -> dict:
    """One request, one answer (an ``{"error": ...}`` answer is returned as it is).

    Waits at most ``timeout`` (default ``timeout_s``) for its turn and as long again for the answer;
    raises ``self.error`` when the worker cannot answer (it is then killed, and the next request
    starts a new one).
    """
    timeout = self.timeout_s if timeout is None else timeout
    if self._closed:
      raise self.error('the dashboard is shutting down')
    if not self._lock.acquire(timeout=timeout):
      raise self.error(f'the worker is busy (waited {timeout:.0f} s for an earlier request)')
    try:
      if self._closed:
        raise self.error('the dashboard is shutting down')
      line = json.dumps(request) + '\n'
      if not self._send(line, timeout):   # it died before reading anything: once more, afresh
        self._kill()
        if not self._send(line, timeout):
          self._kill()
          raise self.error('the worker exited')
      return self._next_line(timeout)
    finally:
      self._lock.release()

  def _send(self, line: str, timeout: float) -> bool:
    if not self._alive():
      self._spawn(max(timeout, self.timeout_s))
    try:
      self._proc.stdin.write(line)
      self._proc.stdin.flush()
      return True
    except (OSError, ValueError, AttributeError):
      return False

  def start(self) -> None:
    """Starts the child in a background thread (a request meanwhile waits for it)."""

    def warm():
      try:
        with self._lock:
          if not self._closed and not self._alive():
            self._spawn(self.timeout_s)
          if self._closed:   # closed while it was starting
            self._kill()
      except Exception as e:  # pylint: disable=broad-except  # the next request says it again
        _log.warning('%s: %s', self.module, e)

    threading.Thread(target=warm, name=f'{self.module}-start', daemon=True).start()

  def close(self) -> None:
    """Ends the child: stdin closed (it exits after its current request), killed after 3 s."""
    self._closed = True
    proc = self._proc
    if proc is None:
      return
    try:
      proc.stdin.close()
    except (OSError, ValueError):
      pass
    try:
      proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
      self._kill()


# ---- The worker side ------------------------------------------------------------------------------------

def one_line(e: BaseException) -> str:
  """The first line of an exception's message (its type's name when it has none)."""
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__


def serve(answer: Callable[[dict], dict], ready: Optional[Callable[[], dict]] = None) -> int:
  """The worker's loop: a JSON request per line on stdin -> ``answer(request)`` as one line on stdout.

  ``ready()`` runs first (the slow imports) and its dict is sent with ``{"ready": true}``. File
  descriptor 1 is pointed at stderr before it runs, so nothing but the answers reaches the pipe.
  """
  sys.stdout.flush()
  out = os.fdopen(os.dup(1), 'w', encoding='utf-8', buffering=1)
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  info = ready() if ready is not None else {}
  out.write(json.dumps({'ready': True, **info}) + '\n')
  out.flush()
  for line in sys.stdin:
    line = line.strip()
    if not line:
      continue
    try:
      request = json.loads(line)
      reply = answer(request) if isinstance(request, dict) else {'error': 'a request is a JSON object'}
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      reply = {'error': one_line(e)}
    out.write(json.dumps(reply) + '\n')
    out.flush()
  return 0
