"""What every ``python -m alexnet_jax.<tool>`` shares: user errors end the program with one clear line.

It also keeps freed host memory in the process before the tool starts (``--retain_host_memory``, on by
default; see host_memory.py).

A wrong flag, a missing file, an unusable dataset or a full disk is the user's to fix, not a bug: it is
reported as ``error: <message>`` on stderr with exit status 2, without a traceback (``--verbose`` adds
it, for diagnosing). Anything else is a bug and keeps its traceback (exit status 1). A tool's ``main``
may return an exit status: the trainer returns ``STOPPED_EXIT_STATUS`` when a signal stopped it.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import traceback
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from alexnet_jax import host_memory
from alexnet_jax.run import status

flags.DEFINE_bool('verbose', False, 'Print the traceback of user errors too (for bug reports).')
flags.DEFINE_bool('retain_host_memory', True,
                  'Keep freed host memory for reuse instead of returning it to the OS between steps '
                  '(glibc mallopt; alexnet_jax/host_memory.py): no page faults on every step\'s buffers. '
                  'Off: glibc\'s defaults.')

# Libraries whose INFO lines (dozens per checkpoint) would bury the run's own progress lines; JAX's
# backend probe says at every start that a CPU machine has no TPU.
QUIET_LIBRARIES = ('/orbax/', '/grain/', '/etils/', '/jax/_src/xla_bridge.py')

STOPPED_EXIT_STATUS = status.STOPPED_EXIT_STATUS   # 75: stopped by a signal after a snapshot


class _QuietLibraries(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in QUIET_LIBRARIES)

USER_ERRORS = (OSError, ValueError, FloatingPointError, KeyError)


def _in_multiprocess_run() -> bool:
  """True in a jax.distributed run; never starts a backend just to find out."""
  jax = sys.modules.get('jax')
  try:
    return jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1
  except Exception:  # pylint: disable=broad-except
    return False


def user_message(error: BaseException) -> str:
  """The one line a user error is reported with: the path and the cause for an OSError."""
  if isinstance(error, KeyError) and error.args:
    return str(error.args[0])
  if isinstance(error, OSError) and error.strerror and not isinstance(error, FileNotFoundError):
    where = error.filename if error.filename is not None else ''
    text = str(error)
    # Our own messages already name the path; the OS's ('[Errno 28] No space left ...: path') do not
    # read as a sentence.
    if text.startswith('[Errno'):
      return f'cannot write or read {where}: {error.strerror.lower()}' if where else error.strerror
    return text
  return str(error)


def _exit(status: int) -> None:
  """Exits; in a multi-process run at once, skipping jax.distributed's shutdown barrier, which would
  hold this process (and the collectives of the others) until its timeout. The survivors then see
  the connection drop and stop within their heartbeat timeout."""
  if _in_multiprocess_run():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
  sys.exit(status)


def run(main: Callable[[list[str]], None]) -> None:
  """``absl.app.run(main)``, with user errors printed as one line and exit status 2."""
  def wrapped(argv):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if flags.FLAGS.retain_host_memory:
      host_memory.retain_freed_memory()   # before main starts XLA's threads
    try:
      status = main(argv)
    except USER_ERRORS as e:
      if flags.FLAGS.verbose:
        traceback.print_exc()
      print(f'error: {user_message(e)}', file=sys.stderr)
      _exit(2)
    except Exception:  # pylint: disable=broad-except
      if not _in_multiprocess_run():
        raise
      traceback.print_exc()
      _exit(1)
    if status:
      _exit(int(status))
  app.run(wrapped)
