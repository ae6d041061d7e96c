"""The New Model form: DIGITS' model fields in, field errors or one ``--config.x=v`` list per job out.

One form field sets one config field (``MODEL_FIELDS``); a comma list in batch size or learning rate is a
sweep, one job per combination. The cheap checks are here; the library's own (``config_checks.problems``
and ``check_network``) run in the config worker (``workers/config_worker.py``), and ``map_problems``
maps its ``--config.x=v: message`` lines back to the DIGITS field that set ``x``.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Mapping, Sequence

from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import forms

MAX_WIDTH = 4.0                # the network's width multiplier (1 = the paper's; 4x is ~16x the weights)
MAX_SWEEP = 32                 # jobs one sweep may start

NETWORKS = {'lenet': 'lenet', 'alexnet': 'alexnet', 'alexnet_owt': 'alexnet_owt', 'googlenet': 'googlenet'}
# A blank batch size means DIGITS' "network defaults": the training batch of the network's prototxt
# (digits/standard-networks/caffe/*.prototxt); alexnet_owt, not a DIGITS network, takes AlexNet's.
NETWORK_BATCH_SIZES = {'lenet': 64, 'alexnet': 128, 'alexnet_owt': 128, 'googlenet': 32}
SOLVERS = {'sgd': 'sgd', 'nesterov': 'nesterov', 'adagrad': 'adagrad', 'rmsprop': 'rmsprop',
           'adadelta': 'adadelta', 'adam': 'adam', 'adamw': 'adamw'}
LAYOUTS = ('single', 'model', 'data', 'hybrid', 'weird_trick', 'auto')
MEAN_MODES = ('none', 'image', 'pixel')
DEFAULT_EXPERIMENT = 'digits_exercise'

# DIGITS model field -> config field (one form field, one --config.x=v).
MODEL_FIELDS = {
    'train_epochs': 'num_epochs',
    'snapshot_interval': 'snapshot_interval',
    'val_interval': 'val_interval',
    'random_seed': 'seed',
    'batch_accumulation': 'batch_accumulation',
    'solver_type': 'optimizer',
    'lr_policy': 'lr.policy',
    'lr_step_size': 'lr.step_percent',
    'lr_step_gamma': 'lr.gamma',
    'lr_multistep_values': 'lr.multistep_percents',
    'lr_multistep_gamma': 'lr.multistep_gamma',
    'lr_exp_gamma': 'lr.exp_gamma',
    'lr_inv_gamma': 'lr.inv_gamma',
    'lr_inv_power': 'lr.inv_power',
    'lr_poly_power': 'lr.poly_power',
    'lr_sigmoid_step': 'lr.sigmoid_step_percent',
    'lr_sigmoid_gamma': 'lr.sigmoid_gamma',
    'lr_warmup_epochs': 'lr.warmup_epochs',
    'crop_size': 'data.crop_size',
    'use_mean': 'data.mean',
    'standard_networks': 'model.name',
    'width': 'model.width',
    'layout': 'layout',
    'batch_size': 'batch_size',
    'learning_rate': 'learning_rate',
    'previous_networks': 'init_from',
    'finetune_freeze': 'finetune.freeze',
    'finetune_lr_mult': 'finetune.lr_mult',
    'finetune_preset': 'finetune.preset',
}
FINETUNE_PRESETS = ('', 'head')     # training/finetune_controls.py's PRESETS, and none
CONFIG_TO_FIELD = {v: k for k, v in MODEL_FIELDS.items()}
CONFIG_TO_FIELD.update({'data.image_size': 'dataset', 'data.source': 'dataset', 'data.channels': 'dataset',
                        'data.resize_mode': 'dataset', 'mesh.data': 'layout', 'mesh.model': 'layout',
                        'optimizer': 'solver_type', 'momentum': 'solver_type'})
LR_POLICY_FIELDS = {
    'fixed': (), 'step': ('lr_step_size', 'lr_step_gamma'),
    'multistep': ('lr_multistep_values', 'lr_multistep_gamma'), 'exp': ('lr_exp_gamma',),
    'inv': ('lr_inv_gamma', 'lr_inv_power'), 'poly': ('lr_poly_power',),
    'sigmoid': ('lr_sigmoid_step', 'lr_sigmoid_gamma'), 'plateau': ('lr_step_gamma',),
    'cosine': ('lr_warmup_epochs',),
}


# ---- New Model ---------------------------------------------------------------------------------------

def _split_list(text: str) -> list[str]:
  return [p.strip() for p in text.split(',') if p.strip()]


def parse_model_form(form: Mapping[str, Any], *, datasets: Mapping[str, dict[str, Any]],
                     previous: Mapping[str, str], experiments: Sequence[str],
                     pretrained: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
  """Checks a New Model form (the cheap checks; the library's own come after, in the worker).

  Args:
    datasets: dataset job id -> {'state', 'image_size': [w, h], 'channels', 'resize_mode', 'output',
      'num_classes'} of the dataset jobs that exist.
    previous: model job id -> its workdir, for ``method=previous``.
    pretrained: pretrained model id -> ``{'bundle', 'network', 'width', 'lrn', 'crop_size', ...}``
      (``pretrained_store.Store.for_form``), for ``method=pretrained``: the run starts from the bundle
      (``init_from``) and takes its network, width and (when the crop is blank) its crop.
    experiments: the installed experiment names.

  Returns:
    ``{'name', 'group', 'notes', 'dataset', 'experiment', 'points': [overrides...] (one per sweep
    point, each a list of --config.x=v), 'labels': [...] (the sweep values of each point), 'form'}``.
  """
  r = forms.Reader(form)
  name = r.raw('model_name')
  if not name and 'model_name' not in r.errors:        # (too long is its own error, not "required")
    r.errors['model_name'] = 'required'
  group, notes = r.raw('group_name'), r.raw('notes')
  experiment = r.raw('experiment') or DEFAULT_EXPERIMENT
  if experiment not in experiments:
    r.errors['experiment'] = f'{experiment!r}: choose one of {", ".join(experiments)}'
  dataset_id = r.raw('dataset')
  dataset = datasets.get(dataset_id)
  if not dataset_id:
    r.errors['dataset'] = 'required: choose a dataset'
  elif dataset is None:
    r.errors['dataset'] = f'{dataset_id}: no such dataset job'
  elif dataset.get('state') in ('failed', 'stopped', 'interrupted'):
    r.errors['dataset'] = f'{dataset_id} is {dataset["state"]}: resume it or choose another'
  overrides: list[str] = []
  clean: dict[str, Any] = {'dataset': dataset_id, 'experiment': experiment, 'model_name': name,
                           'group_name': group}

  def add(field: str, value: Any) -> None:
    overrides.append(f'--config.{MODEL_FIELDS[field]}={forms.fmt(value)}')
    clean[field] = value

  if dataset is not None:
    w, h = dataset['image_size']   # any W x H, as DIGITS: the networks size fc6 from the input
    overrides += [f'--config.data.source={dataset["output"]}', f'--config.data.image_size={w},{h}',
                  f'--config.data.channels={dataset["channels"]}',
                  f'--config.data.resize_mode={dataset["resize_mode"]}']
  epochs = r.integer('train_epochs', 30, 1, 100000)
  add('train_epochs', epochs)
  for field, default in (('snapshot_interval', 1.0), ('val_interval', 1.0)):
    value = r.number(field, default, 0)
    if value is not None and value <= 0:
      r.errors[field] = 'must be > 0 (epochs)'
    add(field, value)
  seed = r.integer('random_seed', 0, 0, 2**31 - 1, blank=0)
  add('random_seed', seed)
  add('batch_accumulation', r.integer('batch_accumulation', 1, 1, 1024, blank=1))
  add('solver_type', r.choice('solver_type', SOLVERS, 'sgd'))
  policy = r.choice('lr_policy', tuple(LR_POLICY_FIELDS), 'step')
  add('lr_policy', policy)
  for field in LR_POLICY_FIELDS[policy]:
    if r.raw(field):
      if field == 'lr_multistep_values':
        values = _split_list(r.raw(field))
        try:
          [float(v) for v in values]
          add(field, ','.join(values))
        except ValueError:
          r.errors[field] = 'a comma-separated list of percents, e.g. 50,75'
      else:
        add(field, r.number(field, None))
  method = r.choice('method', ('standard', 'previous', 'pretrained'), 'standard')
  chosen = None
  if method == 'pretrained':   # DIGITS' "Pretrained Networks" tab: the network is the bundle's
    chosen = (pretrained or {}).get(r.raw('pretrained_networks'))
    if chosen is None:
      r.errors['pretrained_networks'] = (f'{r.raw("pretrained_networks")!r}: choose a pretrained model '
                                         '(upload one on the Pretrained Models page)')
    elif dataset is not None and chosen.get('channels') and dataset.get('channels') and \
        int(chosen['channels']) != int(dataset['channels']):
      r.errors['pretrained_networks'] = (f'{chosen["name"]} takes {chosen["channels"]}-channel images, the '
                                         f'dataset has {dataset["channels"]}: choose a dataset of the same '
                                         'image type')
  crop = r.integer('crop_size', None, 1, forms.MAX_SIZE)
  if crop is None and chosen and chosen.get('crop_size'):
    crop = int(chosen['crop_size'])   # fc6 takes what the convolutions leave of the crop: keep the bundle's
  if crop is not None:
    add('crop_size', crop)
  else:   # DIGITS: blank = no cropping, the whole W x H image is the input (the form keeps the blank)
    overrides.append(f'--config.{MODEL_FIELDS["crop_size"]}=0')
  add('use_mean', r.choice('use_mean', MEAN_MODES, 'image'))
  add('standard_networks', chosen['network'] if chosen and chosen.get('network') in NETWORKS else
      r.choice('standard_networks', NETWORKS, 'alexnet'))
  width = float(chosen['width']) if chosen and chosen.get('width') else r.number('width', 1.0, 0, MAX_WIDTH)
  if width is not None and width <= 0:
    r.errors['width'] = 'must be > 0 (1 is the paper\'s network)'
  add('width', width)
  add('layout', r.choice('layout', LAYOUTS, 'model'))
  clean['method'] = method
  if method == 'previous':
    prev = r.raw('previous_networks')
    if prev not in previous:
      r.errors['previous_networks'] = f'{prev!r}: choose a model job with snapshots'
    else:
      snap = r.raw('previous_snapshot')
      if snap and not re.fullmatch(r'\d+|latest|best', snap):
        r.errors['previous_snapshot'] = 'a step number, latest or best'
      init = previous[prev] + (f':{snap}' if snap and snap != 'latest' else '')
      overrides.append(f'--config.init_from={init}')
      clean.update(previous_networks=prev, previous_snapshot=snap)
  elif chosen is not None:
    overrides.append(f'--config.init_from={chosen["bundle"]}')
    if chosen.get('lrn') in ('paper', 'caffe', 'none'):   # Caffe's LRN for a Caffe import: same numbers
      overrides.append(f'--config.model.lrn={chosen["lrn"]}')
    clean['pretrained_networks'] = r.raw('pretrained_networks')
  if method != 'standard':
    _finetune_controls(r, add)

  # Sweeps: a comma list in batch_size or learning_rate is one job per combination.
  sizes: list[int] = []
  default_batch = NETWORK_BATCH_SIZES[clean['standard_networks']]
  for text in _split_list(r.raw('batch_size') or str(default_batch)):
    try:
      value = int(text)
      if not 1 <= value <= 1_000_000:
        raise ValueError
      sizes.append(value)
    except ValueError:
      r.errors['batch_size'] = f'{text!r}: a whole number >= 1, or a comma list of them (a sweep)'
  rates: list[float] = []
  for text in _split_list(r.raw('learning_rate') or '0.01'):
    try:
      value = float(text)
      if not (math.isfinite(value) and value > 0):
        raise ValueError
      rates.append(value)
    except ValueError:
      r.errors['learning_rate'] = f'{text!r}: a number > 0, or a comma list of them (a sweep)'
  points = list(itertools.product(sizes or [default_batch], rates or [0.01]))
  if len(points) > MAX_SWEEP:
    r.errors['learning_rate'] = f'a sweep of {len(points)} jobs; at most {MAX_SWEEP}'
  clean['batch_size'] = ','.join(str(s) for s in sizes)
  clean['learning_rate'] = ','.join(forms.fmt(v) for v in rates)
  if r.errors:
    raise errors_lib.DashboardError(r.errors)
  sweep = len(points) > 1
  return {
      'name': name, 'group': group or (name if sweep else ''), 'notes': notes, 'dataset': dataset_id,
      'experiment': experiment, 'form': clean,
      'points': [overrides + [f'--config.batch_size={b}', f'--config.learning_rate={forms.fmt(lr)}']
                 for b, lr in points],
      'labels': [f'batch_size={b}, learning_rate={forms.fmt(lr)}' if sweep else '' for b, lr in points],
      'num_classes': (dataset or {}).get('num_classes') or 2,
  }


def _finetune_controls(r: forms.Reader, add) -> None:
  """The fine-tuning controls (``config.finetune``): their syntax here, for clear field errors before
  anything starts; the config worker checks them against the network's parameters too."""
  freeze = r.raw('finetune_freeze')
  if freeze:
    try:
      re.compile(freeze)
      add('finetune_freeze', freeze)
    except re.error as e:
      r.errors['finetune_freeze'] = f'{freeze!r} is not a regular expression ({e})'
  lr_mult = r.raw('finetune_lr_mult')
  if lr_mult:
    for item in _split_list(lr_mult):
      pattern, sep, mult = item.rpartition(':')
      try:
        if not sep or not pattern:
          raise ValueError
        re.compile(pattern)
        value = float(mult)
        if not (math.isfinite(value) and value >= 0):
          raise ValueError
      except (ValueError, re.error):
        r.errors['finetune_lr_mult'] = (f'{item!r}: write REGEX:MULT (MULT a number >= 0), comma-separated, '
                                        'e.g. fc8:10,conv:0.1')
        break
    else:
      add('finetune_lr_mult', lr_mult)
  preset = r.raw('finetune_preset')
  if preset not in FINETUNE_PRESETS:
    r.errors['finetune_preset'] = f'{preset!r}: choose head (only the last classifier learns) or none'
  elif preset:
    add('finetune_preset', preset)


_PROBLEM = re.compile(r'--config\.([A-Za-z0-9_.]+)=')


def map_problems(problems: Sequence[str], method: str = 'standard') -> dict[str, str]:
  """The library's ``--config.x=v: message`` lines as DIGITS field errors (the first flag named wins);
  with ``method='pretrained'`` what the pretrained model set (init_from, the network) is its field's."""
  errors: dict[str, str] = {}
  mapping = dict(CONFIG_TO_FIELD)
  if method == 'pretrained':
    mapping.update({k: 'pretrained_networks' for k in ('init_from', 'model.name', 'model.width', 'model.lrn')})
  for line in problems:
    m = _PROBLEM.search(line)
    field = mapping.get(m.group(1), 'config') if m else 'config'
    errors[field] = (errors[field] + '; ' + line) if field in errors else line
  return errors


def train_argv(experiment_path: str, workdir: str, overrides: Sequence[str]) -> list[str]:
  return ['python', '-m', 'alexnet_jax.train', f'--config={experiment_path}', f'--workdir={workdir}',
          *overrides]
