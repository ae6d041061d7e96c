"""Progress of long loops: a one-line bar on a terminal, a periodic log line otherwise.

What it is for: the training loop, evaluation, classification and dataset preparation show how far they
are and when they will finish, without a new dependency (no tqdm):

    with Progress(total=num_steps, desc='train', initial=start_step) as p:
      for step in range(start_step, num_steps):
        ...
        p.update(1, epoch=f'{epoch:.2f}', loss=loss, top1=top1, lr=lr)

* stderr is a TTY: `train  42%|########          | 1260/3000 [01:02<01:25, 20.3 step/s] loss=0.41`,
  redrawn in place at most every `redraw_secs`.
* otherwise (a log file, a CI job, a notebook's captured stderr): one absl `logging.info` line every
  `log_every_secs` seconds and/or `log_every_steps` steps, plus one at the end:
  `train: 1260/3000 (42.0%), 20.3 step/s, elapsed 01:02, ETA 01:25, loss=0.41`. A tool that writes its
  progress to a stream it was given rather than to the log (dataset preparation: lines that survive
  `tee` and CI output) passes `tty=False, log_fn=print_to(stream)`.

Durations read 01:02 under an hour and 1:02:03 from one hour on (`format_seconds`), everywhere: the bar,
the log lines, `python -m alexnet_jax.runs` and the dashboard's tables.

The rate is measured over the recent updates (a window of 64), so the first step's compilation and a
resume's restore do not distort the ETA for long; `initial` counts steps done before a resume, which
are in the fraction but not in the rate.
"""

from __future__ import annotations

import collections
import math
import numbers
import shutil
import sys
import time
from typing import Any, Callable, Optional, TextIO

from absl import logging


def format_seconds(seconds: float) -> str:
  """1:02 / 1:02:03 style; '?' for unknown."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes:02d}:{secs:02d}'


def print_to(stream: Optional[TextIO] = None) -> Callable[..., None]:
  """A `log_fn` that prints each line to `stream` (default: the current sys.stderr), flushed at once."""
  def log(fmt: str, *args: Any) -> None:
    print(fmt % args, file=stream if stream is not None else sys.stderr, flush=True)
  return log


def _format_value(value: Any) -> str:
  """Integers as is, other numbers (Python, numpy or jax scalars) with 4 significant digits."""
  if isinstance(value, (bool, str)):
    return str(value)
  if isinstance(value, numbers.Integral) or 'int' in str(getattr(value, 'dtype', '')):
    return str(int(value))
  try:
    return f'{float(value):.4g}'
  except (TypeError, ValueError):
    return str(value)


class Progress:
  """A progress reporter; use as a context manager and call `update(n, **postfix)`.

  Args:
    total: the number of steps when done (None: unknown, no percent or ETA).
    desc: a short label ('train', 'eval val', ...).
    initial: steps already done (a resumed run).
    unit: the rate's unit ('step', 'img', 'batch').
    log_every_secs: non-TTY: log at most this often (None: only by steps).
    log_every_steps: non-TTY: also log every this many steps.
    stream: where the bar goes; defaults to sys.stderr.
    tty: force bar (True) or log lines (False); default: `stream.isatty()`.
    redraw_secs: TTY: minimum time between redraws.
    clock: injectable for tests (time.monotonic); `start` is its reading when the progress began.
    log_fn: where non-TTY lines go (absl logging.info; `print_to(stream)` prints them).
  """

  def __init__(self, total: Optional[int], desc: str = '', initial: int = 0, unit: str = 'step',
               log_every_secs: Optional[float] = 30.0, log_every_steps: Optional[int] = None,
               stream: Optional[TextIO] = None, tty: Optional[bool] = None,
               redraw_secs: float = 0.1, clock: Callable[[], float] = time.monotonic,
               log_fn: Callable[..., None] = logging.info):
    self.total = None if total is None else int(total)
    self.desc = desc
    self.n = int(initial)
    self.initial = int(initial)
    self.unit = unit
    self.log_every_secs = log_every_secs
    self.log_every_steps = log_every_steps
    self.stream = stream if stream is not None else sys.stderr
    if tty is None:
      isatty = getattr(self.stream, 'isatty', None)
      tty = bool(isatty and isatty())
    self.tty = tty
    self.redraw_secs = redraw_secs
    self._clock = clock
    self._log = log_fn
    self.postfix: dict[str, Any] = {}
    self.start = clock()
    self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
    self._samples.append((self.start, self.n))
    self._last_draw = -math.inf
    self._last_log_time = self.start
    self._last_log_step = self.n
    self._closed = False
    self._last_width = 0

  # ---- Numbers ------------------------------------------------------------------------------------

  @property
  def elapsed(self) -> float:
    return self._clock() - self.start

  @property
  def rate(self) -> Optional[float]:
    """Steps per second over the recent window (None before two distinct samples)."""
    (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
    if t1 <= t0 or n1 == n0:
      return None
    return (n1 - n0) / (t1 - t0)

  @property
  def eta(self) -> Optional[float]:
    rate = self.rate
    if self.total is None or not rate:
      return None
    return max(self.total - self.n, 0) / rate

  # ---- Updates -------------------------------------------------------------------------------------

  def update(self, n: int = 1, **postfix: Any) -> None:
    """Advances by `n` steps and merges `postfix` (shown as name=value) into the display."""
    self.n += int(n)
    self.postfix.update(postfix)
    now = self._clock()
    self._samples.append((now, self.n))
    if self.tty:
      if now - self._last_draw >= self.redraw_secs or self._finished():
        self._draw(now)
    else:
      due_time = (self.log_every_secs is not None
                  and now - self._last_log_time >= self.log_every_secs)
      due_step = (self.log_every_steps is not None
                  and self.n - self._last_log_step >= self.log_every_steps)
      if due_time or due_step:
        self._log_line(now)

  def set_postfix(self, **postfix: Any) -> None:
    self.postfix.update(postfix)

  def write(self, message: str) -> None:
    """Prints a message without garbling the bar (TTY), or logs it."""
    if self.tty:
      self.stream.write('\r' + ' ' * self._last_width + '\r' + message + '\n')
      self._last_draw = -math.inf
      self._draw(self._clock())
    else:
      self._log('%s', message)

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    now = self._clock()
    if self.tty:
      self._draw(now)
      self.stream.write('\n')
      self.stream.flush()
    elif self.n != self._last_log_step or self.n == self.initial:
      self._log_line(now)

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # ---- Rendering -----------------------------------------------------------------------------------

  def _finished(self) -> bool:
    return self.total is not None and self.n >= self.total

  def _postfix_text(self) -> str:
    return ' '.join(f'{k}={_format_value(v)}' for k, v in self.postfix.items())

  def _rate_text(self) -> str:
    rate = self.rate
    return f'{rate:.3g} {self.unit}/s' if rate else f'? {self.unit}/s'

  def summary(self) -> str:
    """The log-line form: 'desc: n/total (p%) rate, elapsed, ETA, postfix'."""
    count = f'{self.n}/{self.total} ({100.0 * self.n / max(self.total, 1):.1f}%)' if self.total \
        else f'{self.n}'
    parts = [f'{self.desc}: {count}' if self.desc else count, self._rate_text(),
             f'elapsed {format_seconds(self.elapsed)}']
    if self.total is not None:
      parts.append(f'ETA {format_seconds(0 if self._finished() else self.eta)}')
    text = ', '.join(parts)
    post = self._postfix_text()
    return f'{text}, {post}' if post else text

  def _log_line(self, now: float) -> None:
    self._last_log_time = now
    self._last_log_step = self.n
    self._log('%s', self.summary())

  def _draw(self, now: float) -> None:
    self._last_draw = now
    width = shutil.get_terminal_size((100, 20)).columns
    elapsed = format_seconds(now - self.start)
    if self.total:
      frac = min(max(self.n / self.total, 0.0), 1.0)
      eta = format_seconds(0 if self._finished() else self.eta)
      stats = f' {self.n}/{self.total} [{elapsed}<{eta}, {self._rate_text()}]'
      head = f'{self.desc} {100 * frac:3.0f}%|' if self.desc else f'{100 * frac:3.0f}%|'
    else:
      frac = None
      stats = f' {self.n} [{elapsed}, {self._rate_text()}]'
      head = f'{self.desc}:' if self.desc else ''
    post = self._postfix_text()
    tail = stats + (' ' + post if post else '')
    if frac is not None:
      bar_width = max(width - len(head) - len(tail) - 2, 10)
      filled = int(round(frac * bar_width))
      line = head + '#' * filled + ' ' * (bar_width - filled) + '|' + tail
    else:
      line = head + tail
    line = line[:max(width - 1, 20)]
    pad = max(self._last_width - len(line), 0)
    self.stream.write('\r' + line + ' ' * pad)
    self.stream.flush()
    self._last_width = len(line)
