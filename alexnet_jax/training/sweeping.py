"""Hyperparameter grids: the library behind ``python -m alexnet_jax.sweep`` (``sweep.py`` has the
command and what it writes). ``run_sweep`` trains every point of the grid one after another, each in its
own resumable sub-workdir, keeps the sweep's ``status.json``, and writes the summary table.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
from typing import Any, Sequence

import jax
import ml_collections
from absl import logging

from alexnet_jax import data
from alexnet_jax.run import plots
from alexnet_jax.runtime import fileio
from alexnet_jax.training import trainer
from alexnet_jax.run import metrics_writer
from alexnet_jax.runtime import process
from alexnet_jax.runtime import status as status_lib

SUMMARY_JSON = 'sweep_summary.json'
SUMMARY_PNG = 'sweep_summary.png'
POINT_FILE = 'sweep_point.json'
_UNSAFE = re.compile(r'[^A-Za-z0-9._+\-]')
_TRUE, _FALSE = ('true', 'yes', '1'), ('false', 'no', '0')


@dataclasses.dataclass(frozen=True)
class Axis:
  """One ``--grid`` flag: a config field (dotted, without ``config.``) and its values, as typed and
  as converted to the field's type."""
  key: str
  texts: tuple[str, ...]
  values: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of the sweep: its sub-workdir name, its grid values and its full config."""
  name: str
  values: dict[str, Any]
  config: ml_collections.ConfigDict


# ---- The grid -------------------------------------------------------------------------------------------

def _field(config: ml_collections.ConfigDict, key: str, flag: str) -> tuple[Any, str]:
  """(the ConfigDict holding ``key``'s last part, that part), or ValueError naming ``flag``."""
  *path, leaf = key.split('.')
  node = config
  for part in path:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ValueError(f'{flag}: the config has no field {key!r}')
    node = node[part]
  if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
    raise ValueError(f'{flag}: the config has no field {key!r} (a grid sweeps one value field)')
  return node, leaf


def _convert(text: str, like: Any, flag: str) -> Any:
  """``text`` as a value of ``like``'s type (bool, int, float or str)."""
  try:
    if isinstance(like, bool):
      if text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
      raise ValueError
    if isinstance(like, int):
      return int(text)
    if isinstance(like, float):
      return float(text)
    if isinstance(like, str):
      return text
  except ValueError:
    raise ValueError(f'{flag}: {text!r} is not a valid {type(like).__name__} (the type of the '
                     f'field)') from None
  raise ValueError(f'{flag}: fields of type {type(like).__name__} cannot be swept')


def _image_size(text: str, flag: str) -> tuple[int, int]:
  """A grid value of ``data.image_size``: ``300x200`` (W x H) or ``256`` -> (width, height)."""
  try:
    return data.parse_image_size(text)
  except ValueError as e:
    raise ValueError(f'{flag}: {e}; in a grid write a rectangle as WIDTHxHEIGHT, e.g. '
                     '--grid=config.data.image_size=256,300x200') from None


def parse_grid(entries: Sequence[str], config: ml_collections.ConfigDict) -> list[Axis]:
  """``['config.learning_rate=0.01,0.001', ...]`` -> one ``Axis`` per entry, checked against ``config``.

  Raises ValueError (naming the ``--grid`` flag) for a malformed entry, an unknown field, a value of the
  wrong type, an empty or repeated value, or a field given twice.
  """
  if not entries:
    raise ValueError('--grid: give at least one, e.g. --grid=config.learning_rate=0.01,0.001')
  axes: list[Axis] = []
  for entry in entries:
    flag = f'--grid={entry}'
    key, sep, rest = entry.partition('=')
    key = key.strip().removeprefix('config.')
    if not sep or not key:
      raise ValueError(f'{flag}: the form is config.FIELD=VALUE1,VALUE2,...')
    texts = tuple(t.strip() for t in rest.split(','))
    if not rest.strip() or any(not t for t in texts):
      raise ValueError(f'{flag}: empty value; the form is config.FIELD=VALUE1,VALUE2,...')
    if len(set(texts)) != len(texts):
      raise ValueError(f'{flag}: a value is repeated')
    if any(a.key == key for a in axes):
      raise ValueError(f'{flag}: config.{key} is already swept by another --grid; give its values once')
    node, leaf = _field(config, key, flag)
    if key == 'data.image_size':   # WxH (commas separate the grid's values) or one number, as DIGITS
      values = tuple(_image_size(t, flag) for t in texts)
    else:
      values = tuple(_convert(t, node[leaf], flag) for t in texts)
    axes.append(Axis(key, texts, values))
  return axes


def point_name(axes: Sequence[Axis], indices: Sequence[int]) -> str:
  """The sub-workdir of one combination: ``learning_rate=0.01,batch_size=64`` (the fields' dotted names
  and the values as typed, characters other than letters, digits and ``._+-`` replaced by ``_``)."""
  return ','.join(f'{axis.key}={_UNSAFE.sub("_", axis.texts[i])}' for axis, i in zip(axes, indices))


def make_points(config: ml_collections.ConfigDict, axes: Sequence[Axis]) -> list[Point]:
  """The Cartesian product of the axes, in the order given (the last axis varies fastest)."""
  points = []
  for indices in itertools.product(*(range(len(a.values)) for a in axes)):
    # The values go into the plain dict before it becomes a ConfigDict: data.image_size may change
    # from a number to a (W, H) pair, which a typed ConfigDict field would refuse.
    point_dict = config.to_dict()
    values = {}
    for axis, i in zip(axes, indices):
      *path, leaf = axis.key.split('.')
      node = point_dict
      for part in path:
        node = node[part]
      node[leaf] = axis.values[i]
      values[axis.key] = axis.values[i]
    point_config = ml_collections.ConfigDict(point_dict)
    points.append(Point(point_name(axes, indices), values, point_config))
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ValueError('--grid: two combinations give the same sub-workdir name once unsafe characters '
                     f'are replaced ({sorted(n for n in names if names.count(n) > 1)[0]}); change a value')
  return points


# ---- Running ---------------------------------------------------------------------------------------------

def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def finished_record(point_dir: str) -> dict[str, Any] | None:
  """What ``sweep_point.json`` says about a point that finished, or None."""
  path = os.path.join(point_dir, POINT_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def best_validation(point_dir: str) -> dict[str, Any]:
  """The best and the last validation records of a run (from its ``metrics.jsonl``)."""
  records = [r for r in metrics_writer.read_metrics(point_dir, split='val')
             if isinstance(r.get('top1'), (int, float)) and math.isfinite(r['top1'])]
  if not records:
    return {'best_val_top1': None, 'best_val_top5': None, 'best_step': None, 'best_epoch': None,
            'final_val_top1': None}
  best = max(records, key=lambda r: r['top1'])  # the first of equal values: the earliest
  return {'best_val_top1': best['top1'], 'best_val_top5': best.get('top5'), 'best_step': best['step'],
          'best_epoch': best.get('epoch'), 'final_val_top1': records[-1]['top1']}


def summarize(workdir: str, axes: Sequence[Axis], points: Sequence[Point],
              status: dict[str, str]) -> dict[str, Any]:
  """Writes ``sweep_summary.json`` and ``sweep_summary.png`` in ``workdir``; returns the summary."""
  rows = []
  for p in points:
    point_dir = os.path.join(workdir, p.name)  # absent until the point starts: no records
    rows.append({'name': p.name, 'values': p.values, 'status': status.get(p.name, 'pending'),
                 **best_validation(point_dir)})
  ranked = [r for r in rows if r['best_val_top1'] is not None]
  best = max(ranked, key=lambda r: r['best_val_top1']) if ranked else None
  summary = {'grid': {a.key: list(a.values) for a in axes}, 'metric': 'best validation top-1',
             'best': None if best is None else best['name'], 'points': rows}
  fileio.write_json(os.path.join(workdir, SUMMARY_JSON), summary, indent=2)
  if ranked:
    plots.plot_bar([r['best_val_top1'] for r in ranked], [r['name'] for r in ranked],
                   os.path.join(workdir, SUMMARY_PNG), title='sweep: best validation top-1',
                   xlabel='best validation top-1 (%)', percent=True)
  return summary


def format_table(summary: dict[str, Any]) -> str:
  """The summary as a text table, one row per point, in grid order."""
  keys = list(summary['grid'])
  header = [*keys, 'best val top-1', 'at epoch', 'final val top-1', 'status']

  def pct(v):
    return '-' if v is None else f'{100 * v:.2f}%'

  rows = [[str(r['values'][k]) for k in keys]
          + [pct(r['best_val_top1']),
             '-' if r.get('best_epoch') is None else f'{r["best_epoch"]:.2f}',
             pct(r['final_val_top1']), r['status']] for r in summary['points']]
  widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
  lines = ['  '.join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
           for line in [header, *rows]]
  return '\n'.join(lines[:1] + ['  '.join('-' * w for w in widths)] + lines[1:])


def run_sweep(config: ml_collections.ConfigDict, workdir: str, grid: Sequence[str]) -> dict[str, Any]:
  """Runs (or resumes) every point of ``grid`` over ``config`` in ``workdir``; returns the summary.

  Args:
    config: the base experiment (every point starts from it).
    workdir: the sweep's folder; each point trains in ``workdir/<its name>``.
    grid: ``--grid`` values, e.g. ``['config.learning_rate=0.01,0.001', 'config.batch_size=64,128']``.

  Returns:
    The summary written to ``sweep_summary.json``: ``grid``, ``best`` (the name of the point with the
    highest best validation top-1), and ``points`` (per point: ``name``, ``values``, ``status`` --
    ``done``, ``skipped`` (finished earlier), ``stopped`` or ``pending`` --, ``best_val_top1``,
    ``best_step``, ``best_epoch``, ``final_val_top1``), plus ``interrupted`` when a signal stopped it.
  """
  axes = parse_grid(grid, config)
  return run_sweep_points(workdir, axes, make_points(config, axes))


def run_sweep_points(workdir: str, axes: Sequence[Axis], points: Sequence[Point]) -> dict[str, Any]:
  """``run_sweep`` on a grid already parsed (``parse_grid``, ``make_points``): what the command calls,
  having parsed the grid to choose the devices before JAX starts."""
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  with status_lib.StatusWriter(workdir, 'sweep', enabled=is_main) as live:
    live.start(total_points=len(points), points_done=0)
    summary = _run_points(workdir, axes, points, is_main, live)
    live.finish('stopped' if summary.get('interrupted') else 'done', best=summary.get('best'),
                exit_status=process.EXIT_STOPPED if summary.get('interrupted') else process.EXIT_OK)
  return summary


def _run_points(workdir, axes, points, is_main, live) -> dict[str, Any]:
  status: dict[str, str] = {}
  interrupted = None
  for number, point in enumerate(points, 1):
    live.update(force=True, point=point.name, points_done=number - 1,
                progress=(number - 1) / len(points))
    point_dir = os.path.join(workdir, point.name)
    wanted = _config_json(point.config)
    record = finished_record(point_dir)
    if record is not None and record.get('config') == wanted:
      status[point.name] = 'skipped'
      logging.info('sweep point %d/%d %s: finished earlier, skipped', number, len(points), point.name)
      continue
    logging.info('sweep point %d/%d: %s', number, len(points), point.name)
    results = trainer.train_and_evaluate(point.config, point_dir)
    stopped = results.get('stopped') or ''
    if stopped.startswith(('SIGTERM', 'SIGINT')):
      status[point.name] = 'stopped'
      interrupted = point.name
      break
    status[point.name] = 'done'
    if is_main:
      fileio.write_json(os.path.join(point_dir, POINT_FILE),
                        {'values': point.values, 'config': wanted, 'step': results['step'],
                         'val': results.get('val'), 'stopped': results.get('stopped')},
                        indent=2)
      summarize(workdir, axes, points, status)
  summary = summarize(workdir, axes, points, status) if is_main else {'points': []}
  if interrupted:
    summary['interrupted'] = interrupted
  return summary
