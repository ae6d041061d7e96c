"""Running one command as several JAX processes on this machine: the library behind
``python -m alexnet_jax.launch`` (``launch.py`` says what it is for and how to call it).

``launch`` picks a free local port for the coordinator, starts the processes with the ``ALEXNET_*``
variables that ``runtime/distributed.py`` reads, streams their output prefixed ``[p<i>]``, forwards
SIGTERM/SIGINT to them, and when one fails says which and how, stops the others and returns that first
failure's status.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

from alexnet_jax.runtime import process

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# The trainer's exit status after a signal stopped it with a snapshot: not a failure, since the processes
# stop together, one after the other, and the last ones must not be disturbed while they finish the snapshot.
STOPPED_EXIT_STATUS = process.EXIT_STOPPED


def free_port() -> int:
  """A TCP port that is free on this machine now (for the coordinator)."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def describe_exit(returncode: int) -> tuple[str, int]:
  """How a process ended, in words, and the status a shell would report for it.

  Args:
    returncode: ``Popen.returncode``: the exit status, or minus the number of the killing signal.

  Returns:
    ``('exited with status 3', 3)``, or ``('was killed by SIGKILL', 137)`` (128 + the signal).
  """
  if returncode >= 0:
    return f'exited with status {returncode}', returncode
  try:
    name = signal.Signals(-returncode).name
  except ValueError:
    name = f'signal {-returncode}'
  return f'was killed by {name}', 128 - returncode


class _Output:
  """Whole lines to ``out`` from several threads (the streams and the launcher's own messages)."""

  def __init__(self, out):
    self._out = out
    # Reentrant: the signal handler writes too, and may interrupt the main thread inside a write.
    self._lock = threading.RLock()

  def write(self, text: str) -> None:
    with self._lock:
      self._out.write(text)
      self._out.flush()


def _stream(proc: subprocess.Popen, prefix: str, out: _Output) -> None:
  for line in iter(proc.stdout.readline, b''):
    out.write(prefix + line.decode(errors='replace'))


def launch(command: list[str], num_processes: int, devices_per_process: int, *,
           heartbeat_timeout_seconds: int = 30, grace_seconds: float = 10.0, out=None) -> int:
  """Runs ``command`` as ``num_processes`` processes until all of them end.

  When one fails, the launcher prints which one and how, sends SIGTERM to the others and, after
  ``grace_seconds``, SIGKILL. SIGTERM and SIGINT received by the launcher (from the main thread's
  handlers) are forwarded to every process's group.

  Args:
    command: the program and its arguments, run once per process.
    num_processes: how many processes to start.
    devices_per_process: CPU host devices each process forces (``ALEXNET_DEVICES_PER_PROCESS``).
    heartbeat_timeout_seconds: how long survivors of a dead process wait before failing.
    grace_seconds: how long the others may take to stop after a failure before being killed.
    out: where the prefixed output and the launcher's messages go (default: stdout).

  Returns:
    The status of the first process to fail (128 + the signal's number when a signal killed it);
    else ``STOPPED_EXIT_STATUS`` (75) when a process stopped on a signal after a snapshot; else 130
    after a forwarded SIGINT; else 0.
  """
  out = _Output(out or sys.stdout)
  address = f'localhost:{free_port()}'
  procs: list[subprocess.Popen] = []
  streams: list[threading.Thread] = []
  exits: queue.Queue = queue.Queue()  # (process index, returncode), in the order they end
  forwarded: list[int] = []

  def stop_all(sig: int) -> None:
    for p in procs:
      if p.returncode is None:
        try:
          os.killpg(p.pid, sig)  # the group: also reaches the process's own workers
        except (ProcessLookupError, PermissionError):
          pass

  def forward(signum, frame) -> None:
    del frame
    forwarded.append(signum)
    out.write(f'[launch] {signal.Signals(signum).name} received: forwarding it to the processes\n')
    stop_all(signum)

  previous = {}
  if threading.current_thread() is threading.main_thread():
    for sig in FORWARDED_SIGNALS:  # before the first start: no process may miss a signal
      previous[sig] = signal.signal(sig, forward)
  first_failure = None
  stopped = False
  try:
    for i in range(num_processes):
      if forwarded:  # stopped while starting: the others would wait for the missing ones
        break
      env = dict(os.environ,
                 ALEXNET_COORDINATOR_ADDRESS=address, ALEXNET_NUM_PROCESSES=str(num_processes),
                 ALEXNET_PROCESS_ID=str(i), ALEXNET_DEVICES_PER_PROCESS=str(devices_per_process),
                 ALEXNET_HEARTBEAT_TIMEOUT_SECONDS=str(heartbeat_timeout_seconds),
                 JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'), PYTHONUNBUFFERED='1')
      env.pop('XLA_FLAGS', None)  # each process forces its own share of host devices
      proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
      procs.append(proc)
      stream = threading.Thread(target=_stream, args=(proc, f'[p{i}] ', out), daemon=True)
      stream.start()
      streams.append(stream)
      threading.Thread(target=lambda i=i, p=proc: exits.put((i, p.wait())), daemon=True).start()
    if len(procs) < num_processes:
      stop_all(signal.SIGKILL)

    kill_at = None
    for _ in procs:
      while True:
        try:
          i, returncode = exits.get(timeout=0.1)
          break
        except queue.Empty:
          if kill_at is not None and time.monotonic() > kill_at:
            stop_all(signal.SIGKILL)
            kill_at = float('inf')
      if returncode in (0, STOPPED_EXIT_STATUS):
        stopped = stopped or returncode == STOPPED_EXIT_STATUS
        continue
      streams[i].join(timeout=1.0)  # its last lines first
      how, status = describe_exit(returncode)
      if first_failure is None:
        first_failure = status
        running = any(p.returncode is None for p in procs)
        out.write(f'[launch] process {i} {how}' + ('; stopping the others\n' if running else '\n'))
        stop_all(signal.SIGTERM)
        kill_at = time.monotonic() + grace_seconds
      else:
        out.write(f'[launch] process {i} {how}\n')
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    if any(p.poll() is None for p in procs):  # only on an error in the launcher itself
      stop_all(signal.SIGKILL)
    for p in procs:
      p.wait()
  for stream in streams:  # let the streams drain
    stream.join(timeout=5.0)
  if first_failure is not None:
    return first_failure
  if stopped:
    return STOPPED_EXIT_STATUS
  return process.EXIT_INTERRUPTED if signal.SIGINT in forwarded else process.EXIT_OK
