"""Who a process is, whether it is still alive, and the exit statuses every command ends with.

What it is for: a status file (``status.py``), a workdir lock (``lock.py``) and a dashboard job all name
the process that holds them, and readers later ask "is that process still the one running?". A pid alone
is not enough: after the process dies the kernel may give its pid to another program. So a record holds
the process's start time (field 22 of ``/proc/PID/stat``, clock ticks since boot) and the boot id
(``/proc/sys/kernel/random/boot_id``); ``process_alive`` requires the same host, the same boot, a live pid
and the same start time.

``/proc/PID/stat`` is parsed here only (``proc_stat``): its second field, the command name in
parentheses, may hold spaces and parentheses, so the fields are counted from the last ``)``.

The exit statuses are defined here once; the commands (``cli.run``), the status record, the launcher and
the dashboard all use these names:

    0   EXIT_OK           done
    1   EXIT_FAILED       a bug (with its traceback)
    2   EXIT_USER_ERROR   a user's error, reported in one line (``USER_ERRORS``)
    75  EXIT_STOPPED      stopped by SIGTERM/SIGINT after saving a snapshot: resumable, not finished
                          (sysexits.h EX_TEMPFAIL, "try again later"), so a scheduler can tell it from 0
    130 EXIT_INTERRUPTED  interrupted by Ctrl-C without a snapshot (128 + SIGINT, as a shell reports it)
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
from typing import Any, Optional, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_STOPPED = 75
EXIT_INTERRUPTED = 130
# What the commands report as a user's error (one line, EXIT_USER_ERROR) rather than a bug (cli.run).
USER_ERRORS = (OSError, ValueError, FloatingPointError, KeyError)


# ---- /proc -------------------------------------------------------------------------------------------

def proc_stat(pid: Optional[int] = None) -> Optional[list[str]]:
  """Fields 3.. of ``/proc/PID/stat`` (default: this process), as strings; None without it.

  ``fields[0]`` is field 3 of proc(5) (the state letter), so field N is ``fields[N - 3]``: utime and stime
  (14, 15) are ``fields[11]`` and ``fields[12]``, the start time (22) ``fields[19]``.
  """
  try:
    with open(f'/proc/{os.getpid() if pid is None else int(pid)}/stat', 'rb') as f:
      data = f.read().decode('ascii', 'replace')
  except (OSError, ValueError):
    return None
  close = data.rfind(')')
  return data[close + 2:].split() if close >= 0 else None


def _field(fields: Optional[list[str]], index: int) -> Optional[int]:
  try:
    return int(fields[index]) if fields else None
  except (IndexError, ValueError):
    return None


def process_start_ticks(pid: Optional[int] = None) -> Optional[int]:
  """When process ``pid`` (default: this one) started, in clock ticks since boot; None without /proc."""
  return _field(proc_stat(pid), 19)


def cpu_ticks(pid: Optional[int] = None) -> Optional[int]:
  """User + system CPU time of process ``pid`` (default: this one), in clock ticks; None without /proc."""
  fields = proc_stat(pid)
  user, system = _field(fields, 11), _field(fields, 12)
  return None if user is None or system is None else user + system


def boot_id() -> Optional[str]:
  """This boot's random id (Linux), so that a record from before a reboot never looks alive."""
  try:
    with open('/proc/sys/kernel/random/boot_id', encoding='ascii') as f:
      return f.read().strip() or None
  except OSError:
    return None


# ---- The command line --------------------------------------------------------------------------------

def _python_word() -> str:
  """'python' when that is the interpreter running now (a venv on PATH), else sys.executable."""
  exe = sys.executable or 'python'
  found = shutil.which('python')
  try:
    if found and os.path.realpath(found) == os.path.realpath(exe):
      return 'python'
  except OSError:
    pass
  return exe


def command_argv(argv: Optional[Sequence[str]] = None) -> list[str]:
  """The argv that reruns this tool, in its ``python -m alexnet_jax.<tool>`` form.

  ``argv[0]`` as Python sets it for ``python -m alexnet_jax.train`` (``.../alexnet_jax/train.py``) or a
  console script (``.../bin/alexnet-train``) becomes ``python -m alexnet_jax.train``; another script
  ``x.py`` becomes ``python x.py``; anything else is kept as it is.
  """
  argv = list(sys.argv if argv is None else argv)
  if not argv:
    return []
  head, args = str(argv[0]), [str(a) for a in argv[1:]]
  python = _python_word()
  parts = os.path.normpath(os.path.abspath(head)).split(os.sep)
  if head.endswith('.py') and 'alexnet_jax' in parts[:-1]:
    at = len(parts) - 1 - parts[::-1].index('alexnet_jax')
    names = parts[at:]
    names[-1] = names[-1][:-3]
    if names[-1] == '__main__':
      names.pop()
    return [python, '-m', '.'.join(names), *args]
  base = os.path.basename(head)
  if base.startswith('alexnet-') and not base.endswith('.py'):
    return [python, '-m', 'alexnet_jax.' + base[len('alexnet-'):].replace('-', '_'), *args]
  if head.endswith('.py'):
    return [python, head, *args]
  return [head, *args]


def command_string(argv: Optional[Sequence[str]] = None) -> str:
  """``shlex.join(command_argv(argv))``: a line to paste into a shell."""
  return shlex.join(command_argv(argv))


# ---- Identity and liveness ---------------------------------------------------------------------------

def process_identity(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """pid, host, process start time, boot id, argv, command and cwd of this process."""
  argv = list(sys.argv if argv is None else argv)
  return {
      'pid': os.getpid(),
      'host': socket.gethostname(),
      'process_start_ticks': process_start_ticks(),
      'boot_id': boot_id(),
      'argv': [str(a) for a in argv],
      'command': command_string(argv),
      'cwd': os.getcwd(),
  }


def process_alive(record: Optional[dict[str, Any]]) -> Optional[bool]:
  """Whether the process a status (or lock holder) record names is still the one running.

  Returns:
    True: same host, same boot, the pid exists and started when the record says (where /proc tells).
    False: on this host, the pid is gone (or a zombie), the machine rebooted, or the pid now belongs
      to a process started at another time (reuse).
    None: unknown -- the record is from another host, or has no pid.
  """
  if not isinstance(record, dict):
    return None
  host = record.get('host')
  if host and host != socket.gethostname():
    return None
  pid = record.get('pid')
  if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
    return None
  recorded_boot, current_boot = record.get('boot_id'), boot_id()
  if recorded_boot and current_boot and recorded_boot != current_boot:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass                                    # exists, owned by someone else
  except OSError:
    return None
  fields = proc_stat(pid)
  if fields is None:
    return None if os.path.isdir('/proc/self') else True   # raced with its exit / no /proc at all
  if fields and fields[0] in ('Z', 'X'):
    return False                            # a zombie: dead, not yet reaped by its parent
  recorded = record.get('process_start_ticks')
  if isinstance(recorded, int) and not isinstance(recorded, bool):
    started = _field(fields, 19)
    return True if started is None else started == recorded
  return True
