"""A run's directory: its config, its dataset and its parameters, for the trainer and for every reader.

    WORKDIR/config.json         the resolved experiment (written by the trainer, read by everyone)
    WORKDIR/labels.txt ...      the preprocessing contract (data/contract.py)
    WORKDIR/checkpoints/<step>  snapshots (checkpoints.py)
    WORKDIR/metrics.jsonl       the record of the run (metrics_writer.py)
    WORKDIR/status.json         what the run is doing now (status.py)

The trainer writes ``config.json`` once per start, after checking that a resume would reproduce the run
(``check_resume_compatible``). Readers -- evaluate, classify, export, visualize, fine-tuning -- use
``read_config`` (one place, one set of messages) and ``restore_params``, which opens the snapshots
read-only and reads the parameters alone: evaluating a run needs neither its solver nor a lock, and never
disturbs a trainer that is saving.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_collections

from alexnet_jax import data, models
from alexnet_jax.data import demo as demo_data
from alexnet_jax.models import trees
from alexnet_jax.runtime import fileio
from alexnet_jax.parallel import layouts, step as step_lib
from alexnet_jax.run import checkpoints

CONFIG_FILE = 'config.json'
SYNTHETIC_SOURCE = 'synthetic'

# Fields that may differ when a run resumes: they change neither the numbers nor the order of batches.
RESUMABLE_CHANGES = ('num_epochs', 'log_every_steps', 'keep_snapshots', 'snapshot_interval',
                     'data.num_threads', 'data.worker_count', 'data.prefetch',
                     'data.device_prefetch', 'profile_steps')
# Fields added after runs existed, with the value that reproduces a run whose config.json lacks them.
# (data.augment_on is *not* resumable: the host and device draws differ.)
VALUES_BEFORE_FIELDS_EXISTED = {'data.augment_on': 'host', 'bias_lr_mult': 1.0, 'finetune.freeze': '',
                                'finetune.lr_mult': '', 'finetune.preset': ''}


# ---- config.json ------------------------------------------------------------------------------------

def check_resume_compatible(saved: dict, current: dict) -> None:
  """Raises ValueError naming every field that differs and would change the results."""
  old, new = ({**VALUES_BEFORE_FIELDS_EXISTED, **trees.flatten(d, '.')} for d in (saved, current))
  for d in (old, new):   # 256, [256, 256] and '256,256' are one size
    try:
      d['data.image_size'] = list(data.parse_image_size(d['data.image_size']))
    except (KeyError, ValueError):
      pass
  changed = sorted(k for k in set(old) | set(new)
                   if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
  if new.get('num_epochs', 0) < old.get('num_epochs', 0):
    changed.append('num_epochs')
  if changed:
    detail = ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in changed)
    raise ValueError(
        f'the workdir holds a run with a different config ({detail}). Resuming would not reproduce '
        f'it: use the same values (only {", ".join(RESUMABLE_CHANGES)} may change, num_epochs only '
        f'upwards) or a new --workdir')


def read_config_dict(workdir: str) -> dict[str, Any]:
  """``WORKDIR/config.json`` as a dict; errors name the file and what to do."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except FileNotFoundError:
    raise FileNotFoundError(f'{workdir} has no {CONFIG_FILE}: give the --workdir of a training run '
                            f'(or a bundle written by python -m alexnet_jax.export)') from None
  except UnicodeDecodeError:
    raise ValueError(f'{path} is not text (binary garbage): restore it from a copy, or start a new '
                     f'--workdir') from None
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); it was '
                     f'truncated or edited by hand: restore it, or start a new --workdir') from None
  if not isinstance(value, dict):
    raise ValueError(f'{path} holds {type(value).__name__}, not a config object: restore it, or '
                     f'start a new --workdir')
  return value


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's resolved config (``config.json``) as a ConfigDict."""
  return ml_collections.ConfigDict(read_config_dict(workdir))


def write_config(config: ml_collections.ConfigDict, workdir: str, *, resuming: bool) -> None:
  """Checks the config against the run's (when resuming) and writes ``config.json`` atomically."""
  current = json.loads(config.to_json_best_effort())
  if resuming and os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    check_resume_compatible(read_config_dict(workdir), current)
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, CONFIG_FILE), current, indent=2, sort_keys=True)


# ---- The run's dataset and devices ------------------------------------------------------------------

def data_config_for(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """``config.data`` with ``'synthetic'`` resolved to the demo folder inside the workdir."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  if data_config.source == SYNTHETIC_SOURCE:
    root = os.path.join(workdir, 'synthetic')
    if jax.process_index() == 0:
      demo_data.make_demo_folder(root, seed=config.seed)
    sync('demo data')
    data_config.source = root
  elif not data_config.source:
    raise ValueError('--config.data.source is empty: give a folder of class subfolders, a DIGITS '
                     'list file, tfds:NAME[:split], a prepared dataset, or "synthetic"')
  return data_config


def load_run_dataset(config: ml_collections.ConfigDict, workdir: str):
  """The run's dataset (its listing and mean image are cached in the workdir, so a resume does not
  list or decode the source again)."""
  return data.load_dataset(data_config_for(config, workdir), seed=config.seed, metadata_dir=workdir)


def sync(name: str) -> None:
  """A barrier across the processes of a multi-process run (nothing in a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def devices_needed(config: ml_collections.ConfigDict) -> int:
  """Devices the run's layout needs for its network (``parallel.layouts`` owns the rule)."""
  towers = models.build(config.model, 2).num_towers   # a description only: nothing is allocated
  return layouts.devices_needed(config.layout, towers, mesh_data=config.mesh.data,
                                mesh_model=config.mesh.model)


# ---- Snapshots ----------------------------------------------------------------------------------------

def resolve_step(ckpt: checkpoints.Checkpointer, step: str | int) -> Optional[int]:
  """``latest`` -> None (the newest snapshot that restores), ``best`` | N -> that step, or an error
  listing the available ones."""
  available = ckpt.all_steps()
  if not available:
    raise FileNotFoundError(f'no checkpoints in {ckpt.directory}: train first (or wait for the '
                            f'first snapshot)')
  step = str(step)
  if step == 'latest':
    return None
  if step == 'best':
    best = ckpt.best_step()
    if best is None:
      raise FileNotFoundError(f'no checkpoint in {ckpt.directory} was saved with validation '
                              f'metrics; available steps: {available}')
    return best
  try:
    value = int(step)
  except ValueError:
    raise ValueError(f'--step={step!r}: use latest, best or a step number') from None
  if value not in available:
    raise FileNotFoundError(f'--step={value}: no such checkpoint; available steps: {available}')
  return value


def image_shape_of(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """The network input's [height, width, channels]: the square crop, or the whole W x H image when
  ``config.data.crop_size`` is 0 (DIGITS' crop "none")."""
  width, height = data.parse_image_size(config.data.image_size)
  return (*data.input_hw(width, height, config.data.crop_size), config.data.channels)


def restore_params(workdir: str, config: ml_collections.ConfigDict, step: str | int,
                   network: models.TowerNetwork, layout: layouts.Layout, mesh
                   ) -> tuple[Any, int, Optional[dict[str, Any]]]:
  """(params in ``layout``'s shardings, the step, the metrics saved with it) of snapshot ``step``.

  ``step`` is 'latest' (the newest snapshot that restores: a damaged one is skipped with a warning),
  'best' or a number. The snapshots are opened read-only, and only the parameters are read.
  """
  with checkpoints.Checkpointer(workdir, read_only=True) as ckpt:
    number = resolve_step(ckpt, step)
    target = step_lib.abstract_params(network, layout, mesh, image_shape=image_shape_of(config))
    params, number = ckpt.restore_params(number, target)
    saved_metrics = ckpt.metrics(number)
  return params, number, saved_metrics
