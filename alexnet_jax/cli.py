"""What every ``python -m alexnet_jax.<tool>`` shares: user errors end the program with one clear line.

It also keeps freed host memory in the process before the tool starts (``--retain_host_memory``, on by
default; see host_memory.py).

A wrong flag, a missing file or an unusable dataset is the user's to fix, not a bug: it is reported as
``error: <message>`` on stderr with exit status 2, without a traceback. Anything else is a bug and keeps
its traceback.
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

flags.DEFINE_bool('retain_host_memory', True,
                  'Keep freed host memory for reuse instead of returning it to the OS between steps '
                  '(glibc mallopt; alexnet_jax/host_memory.py): no page faults on every step\'s buffers. '
                  'Off: glibc\'s defaults.')

# Libraries whose INFO lines (dozens per checkpoint) would bury the run's own progress lines.
QUIET_LIBRARIES = ('/orbax/', '/grain/', '/etils/')


class _QuietLibraries(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in QUIET_LIBRARIES)

USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError,
               FloatingPointError, KeyError)


def _in_multiprocess_run() -> bool:
  jax = sys.modules.get('jax')
  try:
    return jax is not None and jax.process_count() > 1
  except Exception:  # pylint: disable=broad-except
    return False


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
      main(argv)
    except USER_ERRORS as e:
      message = e.args[0] if isinstance(e, KeyError) and e.args else e
      print(f'error: {message}', file=sys.stderr)
      _exit(2)
    except Exception:  # pylint: disable=broad-except
      if not _in_multiprocess_run():
        raise
      traceback.print_exc()
      _exit(1)
  app.run(wrapped)
