"""A tool's log lines copied to ``WORKDIR/train.log``: the raw log DIGITS showed on a job's page.

``attach_log_file`` adds a handler to the root logger that writes every record (absl and Python logging)
in the console's format (``I0101 12:00:00.123456 4242 train.py:300] ...``), with the console handler's
filters, so the file reads as the terminal did. A full disk turns the copy off with one line on stderr;
the run goes on.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from absl import logging as absl_logging

LOG_FILE = 'train.log'


class _WorkdirLog(logging.FileHandler):
  """A file handler appending to WORKDIR/<filename>; ``detach()`` removes it from the root logger.

  A write that fails (a full disk) turns the copy off with one line on stderr instead of logging's
  ``--- Logging error ---`` traceback for every later record: the console still has every line.
  """

  def detach(self) -> None:
    detach_log_file(self)

  def handleError(self, record: logging.LogRecord) -> None:
    del record
    error = sys.exc_info()[1]
    self.setLevel(logging.CRITICAL + 1)   # nothing more goes to the file
    print(f'warning: stopped copying the log to {self.baseFilename} ({error})', file=sys.stderr)


def attach_log_file(workdir: str | os.PathLike, filename: str = LOG_FILE) -> logging.Handler:
  """Appends every log record (absl and Python logging) to ``WORKDIR/<filename>``, as the console shows it.

  Attaching the same file twice returns the handler already attached, so no line is written twice. The
  handler takes the console handler's filters (e.g. the quieted libraries of ``cli.run``) and the absl
  line format (``I0101 12:00:00.123456 4242 train.py:300] ...``).

  Returns:
    The handler; pass it to ``detach_log_file`` (or call its ``detach()``) to stop.
  """
  path = os.path.abspath(os.path.join(os.fspath(workdir), filename))
  root = logging.getLogger()
  for handler in root.handlers:
    if isinstance(handler, logging.FileHandler) and os.path.abspath(handler.baseFilename) == path:
      return handler
  os.makedirs(os.path.dirname(path), exist_ok=True)
  handler = _WorkdirLog(path, mode='a', encoding='utf-8')
  handler.setFormatter(absl_logging.PythonFormatter())
  absl_handler = absl_logging.get_absl_handler()
  for console in root.handlers:
    if console is absl_handler or isinstance(console, logging.StreamHandler) and not isinstance(
        console, logging.FileHandler):
      for f in console.filters:
        handler.addFilter(f)
      break
  root.addHandler(handler)
  return handler


def detach_log_file(handle: Optional[logging.Handler]) -> None:
  """Stops and closes a handler from ``attach_log_file`` (None: nothing to do)."""
  if handle is None:
    return
  logging.getLogger().removeHandler(handle)
  handle.close()
