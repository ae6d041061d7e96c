r"""The tiny process that runs one dashboard job and writes down how it ended.

    python -m alexnet_jax.dashboard.workers.runner JOBDIR -- python -m alexnet_jax.train --config=... --workdir=JOBDIR

The dashboard starts this with ``start_new_session=True``, so the runner and the tool it runs form a
process group of their own: they outlive the dashboard (a restart re-attaches them, ``jobs.py``) and
Abort is one ``killpg(SIGTERM)`` that reaches the tool. The runner itself ignores SIGTERM, SIGINT and
SIGHUP (with a handler, not ``SIG_IGN``, so the tool it execs gets the default dispositions back): it
waits for the tool -- which snapshots and exits 75 on SIGTERM -- and then writes

    JOBDIR/exit.json   {"exit_status": 75, "signal": null, "finished_unix": ..., "runner_pid": ...,
                        "runner_start_ticks": ...}

atomically. That record is how a dashboard that was not the tool's parent (it restarted) learns the
exit status; ``runner_pid`` / ``runner_start_ticks`` tie it to one attempt, so a stale record of an
earlier attempt is never mistaken for this one's. An Abort that lands while the runner is still
starting the tool is passed on to the tool once it exists, so no tool runs on after an Abort. The
tool's stdout and stderr are appended to ``JOBDIR/output.log`` (the log the Dataset job page shows;
the trainer also keeps ``train.log``).

Only the standard library (and ``runtime.process``, ``runtime.fileio``, which import nothing else) is
imported: the runner must start in milliseconds and never import JAX.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from alexnet_jax.runtime import fileio
from alexnet_jax.runtime import process

EXIT_FILE = 'exit.json'
OUTPUT_LOG = 'output.log'


_early_signals: list[int] = []   # signals taken before the tool was started (see ``main``)
_tool_started = False


def _ignore(signum, frame):  # pylint: disable=unused-argument
  """The group's SIGTERM is for the tool; the runner stays to record its exit."""
  if not _tool_started:
    _early_signals.append(signum)


def main(argv: list[str]) -> int:
  global _tool_started  # pylint: disable=global-statement
  if len(argv) < 4 or argv[2] != '--':
    print('usage: python -m alexnet_jax.dashboard.workers.runner JOBDIR -- COMMAND...', file=sys.stderr)
    return process.EXIT_USER_ERROR
  jobdir, command = argv[1], argv[3:]
  for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, _ignore)
  if command[0] == 'python':
    command = [sys.executable, *command[1:]]   # the interpreter the dashboard runs (its venv)
  started = time.time()
  with open(os.path.join(jobdir, OUTPUT_LOG), 'ab') as log:
    log.write(f'--- {time.strftime("%Y-%m-%d %H:%M:%S")} runner {os.getpid()}: '
              f'{" ".join(command)}\n'.encode('utf-8', 'replace'))
    log.flush()
    try:
      child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               close_fds=True)
    except OSError as e:
      log.write(f'runner: cannot start the command: {e}\n'.encode('utf-8', 'replace'))
      status, child_pid = 127, None
    else:
      _tool_started = True
      child_pid = child.pid
      # An Abort that came before the tool existed (or between its fork and exec, where the signal is
      # caught by this handler's copy and lost at exec) never reached it: pass it on, or the tool
      # would run to its end. The tool has only just exec'd, so a second copy of a signal it did get
      # falls on a process that is already dying from the first (it has no handler yet).
      if _early_signals:
        child.send_signal(_early_signals[0])
      status = child.wait()        # PEP 475: retried across the ignored signals
  record = {
      'exit_status': status if status >= 0 else None,
      'signal': -status if status < 0 else None,
      'started_unix': round(started, 3),
      'finished_unix': round(time.time(), 3),
      'runner_pid': os.getpid(),
      'runner_start_ticks': process.process_start_ticks(),
      'child_pid': child_pid,
  }
  fileio.write_json(os.path.join(jobdir, EXIT_FILE), record, indent=1, fsync=True)
  return status if status >= 0 else 128 - status


if __name__ == '__main__':
  sys.exit(main(sys.argv))
