"""A run's finished snapshots, as the model page and the trained-model routes list and choose them.

DIGITS lists a model's snapshots by epoch ("Epoch #30"); the trainer keeps them by step
(``checkpoints/<step>``). ``snapshot_table`` joins the two through metrics.jsonl, and ``choose_step``
turns what a request names (``step``: a number, best, latest; or DIGITS' ``snapshot_epoch``) into a step.
"""

from __future__ import annotations

import math
import os
from typing import Any

from alexnet_jax.run import listing as listing_lib
from alexnet_jax.dashboard.errors import refused

# What a run must have written before its network can be built from it (bundle.read_model_files);
# config.json first.
RUN_MODEL_FILES = ('config.json', 'labels.txt', 'mean.npy', 'preprocess.json')


def snapshot_table(workdir: str) -> dict[str, Any]:
  """The finished snapshots of a run: ``[{step, epoch, val_top1}]`` oldest first, and the best one.

  Finished = a plain ``checkpoints/<step>`` folder (orbax's temporary folders and the trainer's
  ``<step>.damaged`` have other names). The epoch and validation top-1 come from metrics.jsonl's
  validation records of that step; the best is the highest validation top-1, else the latest.
  """
  try:
    steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  except OSError:
    steps = []
  val, epochs = {}, {}
  for r in listing_lib.read_metrics_tail(os.path.join(workdir, 'metrics.jsonl'), 8 * 2**20):
    if not isinstance(r, dict) or not isinstance(r.get('step'), int):
      continue
    if isinstance(r.get('epoch'), (int, float)):
      epochs[r['step']] = float(r['epoch'])
    if r.get('split') == 'val' and isinstance(r.get('top1'), (int, float)):
      val[r['step']] = float(r['top1'])
  per_step = None
  if epochs:
    last = max(epochs)
    per_step = epochs[last] / last if last else None
  rows = []
  for s in steps:
    epoch = epochs.get(s, None if per_step is None else s * per_step)
    rows.append({'step': s, 'epoch': None if epoch is None else round(epoch, 4), 'val_top1': val.get(s)})
  best = None
  scored = [r for r in rows if r['val_top1'] is not None]
  if scored:
    best = max(scored, key=lambda r: (r['val_top1'], r['step']))['step']
  elif rows:
    best = rows[-1]['step']
  return {'snapshots': rows, 'best': best, 'latest': rows[-1]['step'] if rows else None}


def choose_step(table: dict[str, Any], *, epoch: str = '', step: str = '') -> int:
  """The step a request means: ``step`` (a number, best, latest), else ``snapshot_epoch``; default best."""
  rows = table['snapshots']
  if not rows:
    raise refused('snapshot_epoch', 'this model has no finished snapshot yet')
  steps = [r['step'] for r in rows]
  text = (step or '').strip().lower()
  if text in ('', 'best') and not (epoch or '').strip():
    return table['best']
  if text == 'latest':
    return table['latest']
  if text:
    if not text.isdigit() or int(text) not in steps:
      raise refused('step', f'step {step!r} is not a finished snapshot; choose one of {steps}')
    return int(text)
  try:
    wanted = float(epoch)
  except ValueError:
    raise refused('snapshot_epoch', f'snapshot_epoch={epoch!r} is not a number') from None
  for r in rows:
    if r['epoch'] is not None and math.isclose(r['epoch'], wanted, rel_tol=0, abs_tol=1e-3):
      return r['step']
  epochs = [r['epoch'] for r in rows if r['epoch'] is not None]
  raise refused('snapshot_epoch', f'no snapshot at epoch {epoch}; the snapshots are at epochs {epochs}')


def classes(workdir: str) -> list[str]:
  """The run's class names (``labels.txt``, written when training starts)."""
  try:
    with open(os.path.join(workdir, 'labels.txt'), encoding='utf-8') as f:
      return [line.strip() for line in f if line.strip()]
  except OSError:
    raise refused('job_id', 'this model has no labels.txt yet (it has not started training)') from None
