"""Where the runs and prepared datasets are, and what each is doing: the rows of ``python -m alexnet_jax.runs``
and of the dashboard's home page, read from status files only.

``find_runs(dirs)`` searches each folder recursively for

* runs: a folder with ``status.json`` (train, sweep, evaluate: ``status.py``), or made by an older
  version without one, ``config.json`` with ``checkpoints/`` or ``metrics.jsonl`` (status *unknown*; what
  can be told comes from the last 64 KiB of ``metrics.jsonl``), or ``sweep_summary.json``;
* prepared datasets: ``stats.json`` with ``labels.txt`` (kind *dataset*), and prepares still running or
  that failed, from ``<parent>/.<name>.status.json`` (kind *prepare*, named after their output).

It never descends into ``checkpoints/``, ``eval/``, ``plots/``, ``synthetic/``, ``contact_sheets/``,
``tensorboard/`` or hidden folders. The status is the recorded one, except **interrupted** for a run
recorded as running whose process is gone (same host; pid and process start time, so a reused pid is not
mistaken for it). It never reads a checkpoint and imports no JAX (500 runs in ~0.3 s:
``benchmarks/runs_listing.py``). Sizes are disk usage (allocated blocks), links not followed, each inode
counted once. ``format_table(rows)`` is how ``runs`` prints them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import socket
import time
from typing import Any, Optional, Sequence

from alexnet_jax.runtime import fileio
from alexnet_jax.runtime import progress
from alexnet_jax.runtime import status as status_lib

STATUS_FILE = status_lib.STATUS_FILE
METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
SWEEP_SUMMARY = 'sweep_summary.json'
SKIP_DIRS = frozenset({'checkpoints', 'eval', 'plots', 'synthetic', 'contact_sheets', 'tensorboard',
                       'listing_cache', 'profile'})
TAIL_BYTES = 64 * 1024
_SIBLING_STATUS = re.compile(r'^\.(?P<name>.+)\.status\.json$')
STATUSES = ('running', 'done', 'failed', 'stopped', 'interrupted', 'unknown')
ROW_KEYS = ('name', 'path', 'kind', 'status', 'recorded_state', 'progress', 'eta_seconds', 'best_val_top1',
            'best_epoch', 'best_step', 'train_loss', 'elapsed_seconds', 'size_bytes', 'started',
            'updated', 'updated_unix', 'step', 'total_steps', 'epoch', 'num_epochs', 'images_per_sec',
            'command', 'cwd', 'error', 'pid', 'host', 'status_file')


# ---- Reading one folder ----------------------------------------------------------------------------

def _number(value: Any) -> Optional[float]:
  """A JSON number as it is (ints stay ints), None for anything else or a non-finite one."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return value if math.isfinite(value) else None


def _int(value: Any) -> Optional[int]:
  return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mtime(path: str) -> Optional[float]:
  try:
    return os.stat(path).st_mtime
  except OSError:
    return None


def _tail_lines(path: str, nbytes: int = TAIL_BYTES) -> list[bytes]:
  """The complete lines among the last ``nbytes`` of a file (a line cut by the window is dropped)."""
  try:
    with open(path, 'rb') as f:
      size = f.seek(0, os.SEEK_END)
      start = max(0, size - nbytes)
      f.seek(start)
      data = f.read(nbytes)
  except OSError:
    return []
  lines = data.split(b'\n')
  if start > 0:
    lines = lines[1:]                       # began mid-line
  return [line for line in lines if line.strip()]


def _parse(line: bytes) -> Optional[dict[str, Any]]:
  try:
    record = json.loads(line)
  except ValueError:
    return None                             # a line torn by a killed writer
  return record if isinstance(record, dict) else None


def read_metrics_tail(path: str, nbytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
  """The complete records among the last ``nbytes`` of a metrics.jsonl, in file order."""
  return [r for r in map(_parse, _tail_lines(path, nbytes)) if r is not None]


def _derive_from_metrics(row: dict[str, Any], folder: str) -> None:
  """Fills train loss, best validation top-1, step and epoch of a run without status.json.

  Only the last 64 KiB of metrics.jsonl are read (thousands of records): the best validation top-1 is
  the best among them, and only the lines that can matter are parsed (the validation ones and the last
  train one), so 500 old runs still list in a blink.
  """
  lines = _tail_lines(os.path.join(folder, METRICS_FILE))
  last = next((r for r in map(_parse, reversed(lines)) if r is not None), None)
  if last is not None:
    row['step'] = _int(last.get('step'))
    row['epoch'] = _number(last.get('epoch'))
  for line in reversed(lines):
    if b'"train"' in line:
      r = _parse(line)
      if r is not None and r.get('split') == 'train' and _number(r.get('loss')) is not None:
        row['train_loss'] = _number(r['loss'])
        break
  best = None
  for line in lines:
    if b'"val"' in line:
      r = _parse(line)
      if r is not None and r.get('split') == 'val' and _number(r.get('top1')) is not None:
        if best is None or r['top1'] > best['top1']:
          best = r
  if best is not None:
    row['best_val_top1'] = float(best['top1'])
    row['best_epoch'] = _number(best.get('epoch'))
    row['best_step'] = _int(best.get('step'))
  config = fileio.read_json(os.path.join(folder, CONFIG_FILE), max_bytes=4 * 2**20)
  if isinstance(config, dict):
    row['num_epochs'] = _number(config.get('num_epochs'))
    if row.get('num_epochs') and row.get('epoch') is not None:
      row['progress'] = min(1.0, row['epoch'] / row['num_epochs'])
  updated = max((t for t in (_mtime(os.path.join(folder, METRICS_FILE)),
                             _mtime(os.path.join(folder, CONFIG_FILE))) if t is not None), default=None)
  if updated is not None:
    row['updated_unix'] = updated


def _derive_from_sweep(row: dict[str, Any], folder: str) -> None:
  summary = fileio.read_json(os.path.join(folder, SWEEP_SUMMARY), max_bytes=4 * 2**20)
  if not isinstance(summary, dict) or not isinstance(summary.get('points'), list):
    return
  points = [p for p in summary['points'] if isinstance(p, dict)]
  finished = sum(1 for p in points if p.get('status') in ('done', 'skipped'))
  if points:
    row['progress'] = finished / len(points)
  ranked = [p for p in points if _number(p.get('best_val_top1')) is not None]
  if ranked:
    best = max(ranked, key=lambda p: p['best_val_top1'])
    row['best_val_top1'] = float(best['best_val_top1'])
    row['best_epoch'] = _number(best.get('best_epoch'))
    row['best_step'] = _int(best.get('best_step'))
  row['updated_unix'] = _mtime(os.path.join(folder, SWEEP_SUMMARY))


def _empty_row(name: str, path: str, kind: str) -> dict[str, Any]:
  row = dict.fromkeys(ROW_KEYS)
  row.update(name=name, path=path, kind=kind, status='unknown')
  return row


def _from_status(row: dict[str, Any], record: dict[str, Any], now: float) -> None:
  """Fills a row from a status.json record (module docstring of runtime/status.py)."""
  state = status_lib.effective_state(record)
  row['recorded_state'] = record.get('state')
  row['status'] = state if state in STATUSES else 'unknown'
  if record.get('state') == status_lib.UNREADABLE:
    row['error'] = record.get('error')
    return
  for key in ('step', 'total_steps', 'best_step', 'pid'):
    row[key] = _int(record.get(key))
  for key in ('epoch', 'num_epochs', 'images_per_sec', 'best_val_top1', 'best_epoch', 'updated_unix'):
    row[key] = _number(record.get(key))
  for key in ('command', 'cwd', 'host', 'started', 'updated', 'error'):
    value = record.get(key)
    row[key] = value if isinstance(value, str) else None
  train = record.get('train')
  if isinstance(train, dict):
    row['train_loss'] = _number(train.get('loss'))
  progress = _number(record.get('progress'))
  if progress is None:
    for done, total in (('step', 'total_steps'), ('done', 'total'), ('epoch', 'num_epochs')):
      d, t = _number(record.get(done)), _number(record.get(total))
      if d is not None and t:
        progress = d / t
        break
  if progress is None and record.get('state') == 'done':
    progress = 1.0
  row['progress'] = None if progress is None else min(max(progress, 0.0), 1.0)
  started, updated = _number(record.get('started_unix')), _number(record.get('updated_unix'))
  if row['status'] == 'running':
    eta = _number(record.get('eta_seconds'))
    if eta is not None and updated is not None:
      eta = max(0.0, eta - max(0.0, now - updated))   # the record may be a few seconds old
    row['eta_seconds'] = eta
    if started is not None:
      row['elapsed_seconds'] = max(0.0, now - started)
  elif started is not None:
    end = _number(record.get('finished_unix')) or updated
    row['elapsed_seconds'] = None if end is None else max(0.0, end - started)


def _folder_row(folder: str, name: str, names: set[str], now: float) -> Optional[dict[str, Any]]:
  """The row of a folder, or None if it is neither a run nor a prepared dataset."""
  is_dataset = 'stats.json' in names and 'labels.txt' in names
  record = status_lib.read_status(os.path.join(folder, STATUS_FILE)) if STATUS_FILE in names else None
  if record is not None and record.get('state') != status_lib.UNREADABLE:
    kind = record.get('kind')
    kind = 'dataset' if is_dataset else kind if isinstance(kind, str) and kind else 'train'
    row = _empty_row(name, folder, kind)
    row['status_file'] = os.path.join(folder, STATUS_FILE)
    _from_status(row, record, now)
    return row
  if is_dataset:
    row = _empty_row(name, folder, 'dataset')
    row.update(status='done', progress=1.0, updated_unix=_mtime(os.path.join(folder, 'stats.json')))
  elif SWEEP_SUMMARY in names:
    row = _empty_row(name, folder, 'sweep')
    _derive_from_sweep(row, folder)
  elif CONFIG_FILE in names and ('checkpoints' in names or METRICS_FILE in names):
    row = _empty_row(name, folder, 'train')
    _derive_from_metrics(row, folder)
  elif record is not None:                # an unreadable status.json and nothing else
    row = _empty_row(name, folder, 'train')
  else:
    return None
  if record is not None:                  # unreadable: say why, next to what could be derived
    row['error'] = record.get('error')
    row['status_file'] = os.path.join(folder, STATUS_FILE)
  return row


def _prepare_row(parent: str, output: str, name: str, now: float) -> Optional[dict[str, Any]]:
  """The row of a prepare making ``<parent>/<output>``, from its status beside it (``.<output>.status.json``)."""
  status_name = f'.{output}.status.json'
  record = status_lib.read_status(os.path.join(parent, status_name))
  if record is None:
    return None                             # removed between the listing and now: it just finished
  row = _empty_row(name, os.path.join(parent, output), 'prepare')
  row['status_file'] = os.path.join(parent, status_name)
  _from_status(row, record, now)
  row['kind'] = 'prepare'
  return row


# ---- Walking folders ---------------------------------------------------------------------------------

class _Walk:
  """One pass over a tree: finds rows, and measures the disk usage of the folders that are rows."""

  def __init__(self, max_depth: int, now: float):
    self.max_depth = max_depth
    self.now = now
    self.rows: list[dict[str, Any]] = []
    self._inodes: set[tuple[int, int]] = set()
    self._seen_rows: set[str] = set()

  def _usage(self, st: os.stat_result) -> int:
    if st.st_nlink > 1:
      key = (st.st_dev, st.st_ino)
      if key in self._inodes:
        return 0
      self._inodes.add(key)
    blocks = getattr(st, 'st_blocks', None)
    return blocks * 512 if blocks is not None else st.st_size

  def measure(self, path: str) -> int:
    """Disk usage of a folder tree (links not followed)."""
    return self.scan(path, '', 0, detect=False, measure=True)

  def scan(self, path: str, name: str, depth: int, *, detect: bool, measure: bool) -> int:
    """Looks for rows in ``path`` (when ``detect``) and returns its disk usage (when ``measure``, else 0)."""
    try:
      with os.scandir(path) as it:
        entries = list(it)
    except OSError:
      return 0
    names = {e.name for e in entries}
    row = _folder_row(path, name, names, self.now) if detect else None
    if row is not None:
      measure = True
    size = 0
    hidden_dirs: dict[str, os.DirEntry] = {}
    for e in entries:
      try:
        is_dir = e.is_dir(follow_symlinks=False)
        if is_dir:
          sub_detect = (detect and depth < self.max_depth and not e.name.startswith('.')
                        and e.name not in SKIP_DIRS and (row is None or row['kind'] != 'dataset'))
          if e.name.startswith('.'):
            hidden_dirs[e.name] = e
          if sub_detect or measure:
            size += self.scan(e.path, os.path.join(name, e.name) if name else e.name, depth + 1,
                              detect=sub_detect, measure=measure)
        if measure:
          size += self._usage(e.stat(follow_symlinks=False))
      except OSError:
        continue
    if detect:
      for entry_name in sorted(n for n in names if n.endswith('.status.json') and n.startswith('.')):
        match = _SIBLING_STATUS.match(entry_name)
        if not match:
          continue
        out = match.group('name')
        display = os.path.join(name, out) if name else out
        prow = _prepare_row(path, out, display, self.now)
        if prow is None:
          continue
        prefix = f'.{out}.tmp-{prow.get("pid")}-'
        prow['size_bytes'] = sum(self.measure(d.path) for n, d in hidden_dirs.items() if n.startswith(prefix))
        self._add(prow)
    if row is not None:
      row['size_bytes'] = size
      self._add(row)
    return size

  def _add(self, row: dict[str, Any]) -> None:
    key = f'{row["kind"] == "prepare"}:{os.path.realpath(row["path"])}'
    if key not in self._seen_rows:
      self._seen_rows.add(key)
      self.rows.append(row)


def _sort_key(row: dict[str, Any]):
  return (row['status'] != 'running', -(row.get('updated_unix') or 0.0), row['name'])


def find_runs(dirs: Sequence[str | os.PathLike] = ('.',), *, max_depth: int = 6,
              now: Optional[float] = None) -> list[dict[str, Any]]:
  """Every run and prepared dataset under ``dirs``, running ones first, then the latest updated.

  Args:
    dirs: folders to search (each may itself be a run or a dataset). A DIR that does not exist but
      has a prepare running for it (``<parent>/.<name>.status.json``) shows that prepare.
    max_depth: how many folder levels below each DIR to look into.
    now: the time to measure elapsed time and ETA against (default: now).

  Returns:
    One dict per row with the keys ``ROW_KEYS``: ``name`` (relative to its DIR), ``path``, ``kind``
    (train | prepare | sweep | evaluate | dataset), ``status`` (running | done | failed | stopped |
    interrupted | unknown), ``recorded_state``, ``progress`` (0..1), ``eta_seconds`` (running rows),
    ``best_val_top1`` (0..1) with ``best_epoch`` / ``best_step``, ``train_loss``, ``elapsed_seconds``,
    ``size_bytes``, ``started`` / ``updated`` (ISO 8601), ``updated_unix``, ``step``, ``total_steps``,
    ``epoch``, ``num_epochs``, ``images_per_sec``, ``command`` and ``cwd`` (how to rerun it), ``error``,
    ``pid``, ``host``, ``status_file``; None where unknown.

  Raises:
    FileNotFoundError: a DIR is neither a folder nor the output of a prepare with a status.
  """
  now = time.time() if now is None else now
  walk = _Walk(max_depth, now)
  for d in dirs:
    d = os.fspath(d)
    shown = os.path.normpath(d)
    parent, base = os.path.split(os.path.abspath(d))
    found_sibling = False
    if os.path.isfile(os.path.join(parent, f'.{base}.status.json')):
      prow = _prepare_row(parent, base, shown, now)
      if prow is not None:
        prefix = f'.{base}.tmp-{prow.get("pid")}-'
        try:
          names = os.listdir(parent)
        except OSError:
          names = []
        prow['size_bytes'] = sum(walk.measure(os.path.join(parent, n)) for n in names if n.startswith(prefix))
        walk._add(prow)  # pylint: disable=protected-access
        found_sibling = True
    if os.path.isdir(d):
      walk.scan(os.path.abspath(d), '', 0, detect=True, measure=False)
      for row in walk.rows:
        if row['name'] == '':
          row['name'] = shown
    elif not found_sibling:
      raise FileNotFoundError(f'{d}: no such folder')
  rows = walk.rows
  for row in rows:
    for key in ('eta_seconds', 'elapsed_seconds'):
      if row.get(key) is not None:
        row[key] = round(row[key], 1)
  rows.sort(key=_sort_key)
  return rows


# ---- Cells, as the listing and the dashboard show them ----------------------------------------------

def format_seconds(seconds: Optional[float]) -> str:
  """``progress.format_seconds`` (01:02, 1:02:03), '-' when unknown."""
  return '-' if seconds is None else progress.format_seconds(seconds)


def format_size(nbytes: Optional[int]) -> str:
  if nbytes is None:
    return '-'
  value = float(nbytes)
  for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
    if value < 1024 or unit == 'TiB':
      return f'{int(value)} B' if unit == 'B' else f'{value:.1f} {unit}'
    value /= 1024
  return '-'


# ---- Showing them (python -m alexnet_jax.runs) -------------------------------------------------------

def _format_best(row: dict[str, Any]) -> str:
  top1 = row.get('best_val_top1')
  if top1 is None:
    return '-'
  text = f'{100 * top1:.2f}%'
  if row.get('best_epoch') is not None:
    text += f' (ep {row["best_epoch"]:g})'
  elif row.get('best_step') is not None:
    text += f' (step {row["best_step"]})'
  return text


def resume_command(row: dict[str, Any], cwd: Optional[str] = None) -> Optional[str]:
  """The row's command, prefixed with ``cd <its folder> &&`` when it was started from another folder."""
  command = row.get('command')
  if not command:
    return None
  cwd = os.getcwd() if cwd is None else cwd
  where = row.get('cwd')
  if where and os.path.normpath(where) != os.path.normpath(cwd):
    return f'cd {shlex.quote(where)} && {command}'
  return command


HEADER = ('NAME', 'KIND', 'STATUS', 'PROGRESS', 'ETA', 'BEST VAL TOP-1', 'TRAIN LOSS', 'ELAPSED', 'SIZE')


def format_table(rows: Sequence[dict[str, Any]], *, cwd: Optional[str] = None) -> str:
  """The rows as an aligned text table; interrupted and stopped rows add their resume command, failed
  ones their error, rows of another host that host."""
  if not rows:
    return 'no runs or datasets found'
  cells = []
  for r in rows:
    cells.append((r['name'], r['kind'], r['status'],
                  '-' if r.get('progress') is None else f'{100 * r["progress"]:.1f}%',
                  format_seconds(r.get('eta_seconds')) if r['status'] == 'running' else '-',
                  _format_best(r),
                  '-' if r.get('train_loss') is None else f'{r["train_loss"]:.4g}',
                  format_seconds(r.get('elapsed_seconds')), format_size(r.get('size_bytes'))))
  widths = [max(len(str(c[i])) for c in [HEADER, *cells]) for i in range(len(HEADER))]

  def line(values):
    return '  '.join(str(v).ljust(w) for v, w in zip(values, widths)).rstrip()

  here = socket.gethostname()
  out = [line(HEADER)]
  for r, c in zip(rows, cells):
    out.append(line(c))
    if r['status'] in ('interrupted', 'stopped'):
      command = resume_command(r, cwd)
      if command:
        out.append(f'  resume: {command}')
    elif r['status'] == 'failed' and r.get('error'):
      out.append(f'  error: {r["error"]}')
    elif r['status'] == 'unknown' and r.get('error'):
      out.append(f'  note: {r["error"]}')
    if r['status'] == 'running' and r.get('host') and r['host'] != here:
      out.append(f'  on host {r["host"]} (pid {r.get("pid")}): not checked from here')
  return '\n'.join(out)
