"""What every ``python -m alexnet_jax.<tool>`` shares: user errors end the program with one clear line.

It also keeps freed host memory in the process before the tool starts (``--retain_host_memory``, on by
default; see host_memory.py).

A wrong flag, a missing file, an unusable dataset or a full disk is the user's to fix, not a bug: it is
reported as ``error: <message>`` on stderr with exit status 2, without a traceback (``--verbose`` adds
it, for diagnosing); an unknown flag or a bad flag value too, and ``--help`` exits 0. Anything else is
a bug and keeps its traceback (exit status 1). A tool's ``main`` may return an exit status: the trainer
returns ``STOPPED_EXIT_STATUS`` when a signal stopped it.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import threading
import traceback
from typing import Callable

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from alexnet_jax.runtime import host_memory
from alexnet_jax.runtime import process

flags.DEFINE_bool('verbose', False, 'Print the traceback of user errors too (for bug reports).')
flags.DEFINE_bool('retain_host_memory', True,
                  'Keep freed host memory for reuse instead of returning it to the OS between steps '
                  '(glibc mallopt; alexnet_jax/runtime/host_memory.py): no page faults on every step\'s buffers. '
                  'Off: glibc\'s defaults.')

# Libraries whose INFO lines (dozens per checkpoint) would bury the run's own progress lines; JAX's
# backend probe says at every start that a CPU machine has no TPU.
QUIET_LIBRARIES = ('/orbax/', '/grain/', '/etils/', '/jax/_src/xla_bridge.py')

ASYNCIO_BASE_EVENTS = os.path.join('asyncio', 'base_events.py')
STOPPED_EXIT_STATUS = process.EXIT_STOPPED   # 75: stopped by a signal after a snapshot (the commands' name)


class _QuietLibraries(std_logging.Filter):
  """Their INFO lines are dropped; their warnings and errors kept, with one line instead of a
  traceback unless ``--verbose`` (a failed snapshot read is reported by us, in words)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.pathname.endswith(ASYNCIO_BASE_EVENTS) and not flags.FLAGS.verbose:
      return not _is_abandoned_work(record.getMessage())   # "exception was never retrieved"
    if not any(part in record.pathname for part in QUIET_LIBRARIES):
      return True
    if record.levelno < std_logging.WARNING:
      return False
    if record.exc_info and not flags.FLAGS.verbose:
      record.exc_info, record.exc_text = None, None
    return True


# Background work of the checkpoint libraries that a failed read or an exit abandons (tensorstore
# coroutines never awaited, callbacks onto an event loop already closed) reports itself as "Exception
# ignored in ..." with pages of traceback, after our own one-line message said what happened.
_ABANDONED = ('tensorstore', 'orbax', '_read_array', 'Event loop is closed')


def _is_abandoned_work(text: str) -> bool:
  return any(marker in text for marker in _ABANDONED)


def _quiet_abandoned_work() -> None:
  """Drops those reports unless ``--verbose`` (real errors of ours are never reported this way)."""
  default_unraisable, default_thread = sys.unraisablehook, threading.excepthook

  def unraisable(info):
    if flags.FLAGS.verbose or not _is_abandoned_work(f'{info.object!r} {info.exc_value!r}'):
      default_unraisable(info)

  def thread_error(args):
    if flags.FLAGS.verbose or not _is_abandoned_work(f'{args.exc_value!r} {args.thread!r}'):
      default_thread(args)
  sys.unraisablehook, threading.excepthook = unraisable, thread_error


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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag reported as a user error (one line, exit status 2) and a help
  flag (``--help``, ``--helpfull``: absl prints the usage, then exits 1) answering with exit status 0."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = ' '.join(line.strip() for line in str(e).splitlines() if line.strip())
    print(f'error: {message} (--help lists the flags)', file=sys.stderr)
    sys.exit(process.EXIT_USER_ERROR)
  except SystemExit as e:
    # Only the help flags exit during parsing (a bad value raises flags.Error, above).
    sys.exit(process.EXIT_OK if e.code == 1 else e.code)


def experiment(flag: str = 'config'):
  """The experiment of a ``config_flags`` flag (``--config=experiments/NAME.py``), read as the command
  starts: a file that cannot be loaded (missing, or failing to import) is reported in one line naming it,
  where the lazily loaded flag would raise a multi-line OSError at its first use."""
  config = getattr(flags.FLAGS, flag)
  try:
    config.keys()
  except OSError as e:
    reason = ([line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__])[-1]
    raise FileNotFoundError(f'--{flag}={config_flags.get_config_filename(flags.FLAGS[flag])}: cannot '
                            f'load the experiment file ({reason})') from None
  return config


def run(main: Callable[[list[str]], None]) -> None:
  """``absl.app.run(main)``, with user errors printed as one line and exit status 2 (a bad flag too)."""
  def wrapped(argv):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    _quiet_abandoned_work()
    if flags.FLAGS.retain_host_memory:
      host_memory.retain_freed_memory()   # before main starts XLA's threads
    try:
      exit_status = main(argv)
    except process.USER_ERRORS as e:
      if flags.FLAGS.verbose:
        traceback.print_exc()
      print(f'error: {user_message(e)}', file=sys.stderr)
      _exit(process.EXIT_USER_ERROR)
    except Exception:  # pylint: disable=broad-except
      if not _in_multiprocess_run():
        raise
      traceback.print_exc()
      _exit(process.EXIT_FAILED)
    if exit_status:
      _exit(int(exit_status))
  _usage_from(main)
  app.run(wrapped, flags_parser=parse_flags)


def _usage_from(main: Callable) -> None:
  """``--help`` prints ``__main__``'s docstring (absl's usage). Run as a console script
  (``alexnet-train``), ``__main__`` is setuptools' wrapper, which has none: the command's own docstring is
  lent to it, so ``alexnet-train --help`` says what ``python -m alexnet_jax.train --help`` says."""
  entry = sys.modules.get('__main__')
  command = sys.modules.get(getattr(main, '__module__', ''))
  if entry is not None and command is not None and not entry.__doc__ and command.__doc__:
    entry.__doc__ = command.__doc__
