"""Training metrics on disk: `WORKDIR/metrics.jsonl` (the record) and TensorBoard event files (to watch).

What it is for: the trainer (`training/trainer.py`) calls `writer.write('train', step, epoch, loss=..., top1=..., lr=...)` at
each log step and `writer.write('val', ...)` after each validation. Every call appends one JSON object
per line, flushed at once, in the form

    {"step": 300, "epoch": 2.0, "split": "val", "loss": 0.61, "top1": 0.78, "top5": 0.97}

`read_metrics` reads it back (plots.py draws DIGITS' training graph from it), and the same scalars go to
TensorBoard as `split/metric` (`val/top1`) under `WORKDIR/tensorboard/`.

Resume: records written after the restored snapshot describe steps that will be recomputed, so
`truncate_after(restored_step)` drops every record with step > restored_step (an atomic rewrite) and
starts the next TensorBoard event file with a purge marker for those steps (what tensorboardX's
`SummaryWriter(purge_step=)` writes). A resumed run's metrics.jsonl is then line-for-line the file
of a run never interrupted. A line half-written by a killed process is dropped when the writer opens
the file.

Only process 0 should write in a multi-process run: pass `enabled=(jax.process_index() == 0)`.
"""

from __future__ import annotations

import json
import numbers
import os
import time
from typing import Any, Iterable, Optional

from absl import logging

from alexnet_jax.runtime import fileio

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def _repair_tail(path: str) -> None:
  """Cuts a trailing partial line (a process killed in the middle of a write)."""
  try:
    size = os.path.getsize(path)
  except FileNotFoundError:
    return
  if size == 0:
    return
  with open(path, 'rb+') as f:
    f.seek(-1, os.SEEK_END)
    if f.read(1) == b'\n':
      return
    f.seek(0)
    data = f.read()
    cut = data.rfind(b'\n') + 1  # 0 when there is no complete line
    f.truncate(cut)


def _parse_each(lines: Iterable[str], *, path: str = METRICS_FILE) -> list[Optional[dict[str, Any]]]:
  """One record per line, None for a line that is not a JSON object with a step.

  A torn last line (a killed writer) is expected and dropped quietly by ``_repair_tail``; any other
  bad line -- a bare ``42``, binary garbage, a hand edit -- is skipped with a warning naming the file and
  the line, so the rest of the record is still read.
  """
  out = []
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if not isinstance(record, dict) or not isinstance(record.get('step', 0), numbers.Integral):
      shown = line.strip()[:40]
      logging.warning('%s line %d is not a metrics record (%r); skipping it (delete the line to '
                      'silence this)', path, number, shown)
      record = None
    out.append(record)
  return out


def _read_lines(path: str) -> list[str]:
  """The non-blank lines of ``path``, undecodable bytes replaced (they are then reported, not raised)."""
  with open(path, encoding='utf-8', errors='replace') as f:
    return [line for line in f if line.strip()]


def read_metrics(workdir: str | os.PathLike, split: Optional[str] = None) -> list[dict[str, Any]]:
  """The records of `WORKDIR/metrics.jsonl` in file order (only `split`'s if given); [] if absent."""
  path = os.path.join(os.fspath(workdir), METRICS_FILE)
  try:
    lines = _read_lines(path)
  except FileNotFoundError:
    return []
  records = [r for r in _parse_each(lines, path=path) if r is not None]
  if split is not None:
    records = [r for r in records if r.get('split') == split]
  return records


class MetricsWriter:
  """Appends metric records to `WORKDIR/metrics.jsonl` and to TensorBoard.

  Args:
    workdir: the run directory (created if missing).
    enabled: False makes every method a no-op (non-zero processes).
    tensorboard: also write TensorBoard event files under `WORKDIR/tensorboard`.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, METRICS_FILE)
    self.enabled = enabled
    self.tensorboard = tensorboard
    self._tb = None
    self._purge_step: Optional[int] = None
    if enabled:
      os.makedirs(self.workdir, exist_ok=True)
      _repair_tail(self.path)

  def write(self, split: str, step: int, epoch: float, **metrics: Any) -> dict[str, Any]:
    """Appends `{"step", "epoch", "split", **metrics}` and flushes both outputs; returns the record.

    Numeric scalars also go to TensorBoard as `split/name`; other JSON-able values (lists, dicts,
    strings) only to the JSON line. NaN/inf are written as JSON's NaN/Infinity (Python reads them).
    """
    record: dict[str, Any] = {'step': int(step), 'epoch': fileio.plain(epoch, finite=False),
                              'split': str(split)}
    for name, value in metrics.items():
      if name in record:
        raise ValueError(f'metric name {name!r} clashes with a record field')
      record[name] = fileio.plain(value, finite=False)
    if not self.enabled:
      return record
    line = json.dumps(record, separators=(', ', ': '))
    with open(self.path, 'a', encoding='utf-8') as f:
      f.write(line + '\n')
      f.flush()
    if self.tensorboard:
      values = [(f'{split}/{name}', value) for name, value in record.items()
                if name not in ('step', 'epoch', 'split') and not isinstance(value, bool)
                and isinstance(value, (int, float))]
      if values:
        self._events().add_scalars(record['step'], values)
    return record

  def _events(self) -> '_EventFile':
    if self._tb is None:
      self._tb = _EventFile(os.path.join(self.workdir, TENSORBOARD_DIR), self._purge_step)
      self._purge_step = None
    return self._tb

  def truncate_after(self, step: int) -> int:
    """Drops the records with step > `step` (resume from snapshot `step`); returns how many.

    The file is rewritten atomically (temp file + os.replace). TensorBoard events cannot be edited in
    place, so the next event file is opened with `purge_step=step + 1`, which tells TensorBoard to hide
    the older files' events from that step on.
    """
    if not self.enabled:
      return 0
    step = int(step)
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self._purge_step = step + 1
    if not os.path.exists(self.path):
      return 0
    lines = _read_lines(self.path)
    # Lines are kept verbatim (not re-serialized), so what survives is byte-identical.
    kept = [line for line, r in zip(lines, _parse_each(lines, path=self.path))
            if r is not None and int(r.get('step', 0)) <= step]
    removed = len(lines) - len(kept)
    # Atomic, and the file keeps its permissions (fileio.atomic_write).
    with fileio.atomic_write(self.path, 'w') as f:
      for line in kept:
        f.write(line if line.endswith('\n') else line + '\n')
    return removed

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> 'MetricsWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()



class _EventFile:
  """A TensorBoard event file written synchronously (tensorboardX's record format, no threads).

  tensorboardX's SummaryWriter queues events to a background thread and its flush() does not wait for
  the queue, so "flushed at each write" needs its lower-level EventsWriter. A unique suffix keeps two
  writers opened in the same second (a quick resume) from sharing a file name.
  """

  def __init__(self, logdir: str, purge_step: Optional[int]):
    # pylint: disable=g-import-not-at-top
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2
    from tensorboardX.proto import summary_pb2
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    os.makedirs(logdir, exist_ok=True)
    suffix = f'.{os.getpid()}.{time.time_ns()}'
    self._writer = EventsWriter(os.path.join(logdir, 'events'), suffix)
    if purge_step is not None:
      # TensorBoard hides events with step >= purge_step from older files (as SummaryWriter(purge_step)).
      self._writer.write_event(event_pb2.Event(
          wall_time=time.time(), step=purge_step,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    self._writer.flush()

  def add_scalars(self, step: int, values: list[tuple[str, float]]) -> None:
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values])
    self._writer.write_event(self._event_pb2.Event(wall_time=time.time(), step=step,
                                                   summary=summary))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
