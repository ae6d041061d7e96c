"""Progress lines with a rate and an ETA, for long jobs (dataset preparation, mean passes).

Lines rather than a redrawn bar: they survive `tee`, log files and CI output. One line at most every
`interval_s` seconds, plus a final one.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
  """'0:03:27' style; '?' when unknown."""
  if seconds != seconds or seconds == float('inf') or seconds < 0:  # NaN, inf
    return '?'
  s = int(round(seconds))
  return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


class Progress:
  """Counts work done and prints `label: done/total (pct), rate/s, elapsed, ETA` now and then."""

  def __init__(self, total: int, label: str, *, unit: str = 'img', interval_s: float = 2.0,
               stream: TextIO | None = None):
    self.total, self.label, self.unit, self.interval_s = total, label, unit, interval_s
    self.stream = stream if stream is not None else sys.stderr
    self.done = 0
    self.start = time.monotonic()
    self._last = self.start

  def update(self, n: int = 1) -> None:
    self.done += n
    now = time.monotonic()
    if now - self._last >= self.interval_s:
      self._last = now
      self._print(now)

  def finish(self) -> None:
    self._print(time.monotonic(), final=True)

  def line(self, now: float | None = None, final: bool = False) -> str:
    now = time.monotonic() if now is None else now
    elapsed = now - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    pct = 100.0 * self.done / self.total if self.total else 100.0
    eta = (self.total - self.done) / rate if rate > 0 else float('nan')
    tail = f'done in {format_duration(elapsed)}' if final else f'ETA {format_duration(eta)}'
    return (f'{self.label}: {self.done}/{self.total} {self.unit} ({pct:.1f}%), {rate:.0f} {self.unit}/s, '
            f'elapsed {format_duration(elapsed)}, {tail}')

  def _print(self, now: float, final: bool = False) -> None:
    print(self.line(now, final), file=self.stream, flush=True)
