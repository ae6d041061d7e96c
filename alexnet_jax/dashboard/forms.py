"""The New Dataset and New Model forms: DIGITS' field names in, field errors or tool argv lists out.

Both forms accept DIGITS' own field names (so a script written against DIGITS' REST API keeps working)
and map each field to one flag of the tool that runs the job -- ``alexnet_jax.prepare`` for datasets,
``alexnet_jax.train`` (``--config.FIELD=VALUE``) for models. Nothing of the form reaches a shell or
Python: values are checked and converted here, paths are confined to the server's data roots
(``security.confine``), and the argv is a list.

Errors are collected per field -- ``{'folder_train': 'no such folder', ...}`` -- and a form with any
error starts nothing. The model form's settings are also checked by the library itself in the worker
(``config_checks.problems`` and ``check_network``), whose ``--config.x=v: message`` lines are mapped
back to the DIGITS field that set ``x``.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from alexnet_jax.runtime import confinement
from alexnet_jax.data import lists as image_lists
from alexnet_jax.dashboard import security

# ---- Limits -----------------------------------------------------------------------------------------

MAX_SIZE = 4096                # image width / height
MAX_WIDTH = 4.0                # the network's width multiplier (1 = the paper's; 4x is ~16x the weights)
MAX_SWEEP = 32                 # jobs one sweep may start
MAX_TEXT = 4000                # characters of a name / notes field
MAX_LIST_LINES = 2_000_000     # lines of an uploaded or local list file
MAX_UPLOAD_BYTES = 64 * 2**20  # one uploaded list file
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.ppm', '.pgm', '.tif', '.tiff', '.webp')

ENCODINGS = {'jpg': 'jpg', 'png': 'png', 'raw': 'raw', 'none': 'raw'}   # DIGITS said 'none' for raw
RESIZE_MODES = ('squash', 'crop', 'fill', 'half_crop')
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
}
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


class FormErrors(ValueError):
  """Field errors of a form: ``errors`` maps a field name to its message."""

  def __init__(self, errors: Mapping[str, str]):
    super().__init__('; '.join(f'{k}: {v}' for k, v in errors.items()))
    self.errors = dict(errors)


class _Reader:
  """Typed access to form fields that records an error per bad field instead of raising."""

  def __init__(self, form: Mapping[str, Any]):
    self.form = form
    self.errors: dict[str, str] = {}

  def raw(self, name: str, default: str = '') -> str:
    value = self.form.get(name)
    if value is None:
      return default
    if not isinstance(value, str):
      self.errors[name] = 'expected text'
      return default
    value = value.strip()
    if len(value) > MAX_TEXT:
      self.errors[name] = f'too long: {len(value)} characters; at most {MAX_TEXT}'
      return default
    return value

  def flag(self, name: str) -> bool:
    return self.raw(name).lower() in ('1', 'true', 'on', 'yes', 'y')

  def integer(self, name: str, default: Optional[int], lo: Optional[int] = None, hi: Optional[int] = None,
              blank: Optional[int] = None) -> Optional[int]:
    text = self.raw(name)
    if text == '':
      return blank if blank is not None else default
    try:
      value = int(text)
    except ValueError:
      self.errors[name] = f'{text!r} is not a whole number'
      return default
    if (lo is not None and value < lo) or (hi is not None and value > hi):
      self.errors[name] = _range_text(lo, hi, 'whole number')
      return default
    return value

  def number(self, name: str, default: Optional[float], lo: Optional[float] = None,
             hi: Optional[float] = None) -> Optional[float]:
    text = self.raw(name)
    if text == '':
      return default
    try:
      value = float(text)
    except ValueError:
      self.errors[name] = f'{text!r} is not a number'
      return default
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
      self.errors[name] = _range_text(lo, hi, 'number')
      return default
    return value

  def choice(self, name: str, choices: Sequence[str] | Mapping[str, str], default: str) -> str:
    text = self.raw(name).lower() or default
    if text not in choices:
      self.errors[name] = f'{text!r}: choose one of {", ".join(choices)}'
      return default
    return choices[text] if isinstance(choices, Mapping) else text

  def path(self, name: str, roots: Sequence[Path], want: str) -> Optional[Path]:
    try:
      return security.confine(self.raw(name), roots, want=want)
    except security.PathError as e:
      self.errors[name] = str(e)
      return None


def _range_text(lo, hi, what: str) -> str:
  if lo is not None and hi is not None:
    return f'must be a {what} from {lo:g} to {hi:g}'
  if lo is not None:
    return f'must be a {what} >= {lo:g}'
  return f'must be a {what} <= {hi:g}'


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return repr(value) if value != int(value) or abs(value) >= 1e15 else f'{value:.1f}'
  return str(value)


# ---- New Dataset -------------------------------------------------------------------------------------

def class_folders(folder: Path, limit: int = 100_000) -> dict[str, int]:
  """Class sub-folders of an image folder with the number of image files in each (not recursive into
  sub-sub-folders beyond one level; enough to refuse a folder of one class before any job starts)."""
  out: dict[str, int] = {}
  try:
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
  except OSError:
    return out
  for entry in entries:
    if entry.name.startswith('.') or not entry.is_dir():
      continue
    count = 0
    try:
      for root, dirs, files in os.walk(entry.path):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        count += sum(1 for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
        if count >= limit:
          break
    except OSError:
      pass
    out[entry.name] = count
  return out


def _list_lines_of(source: Path | bytes):
  """The text lines of a list file on disk or uploaded (undecodable bytes kept as surrogate escapes)."""
  if isinstance(source, bytes):
    return iter(image_lists.split_lines(source.decode('utf-8', errors='surrogateescape')))
  return open(source, encoding='utf-8', errors='surrogateescape')  # pylint: disable=consider-using-with


def _check_list(path: Path | bytes, image_root: Optional[Path], roots: Sequence[Path], field: str,
                errors: dict[str, str]) -> int:
  """Checks a DIGITS list file ("path label" lines, read by ``data.lists``, the one list parser), local
  or uploaded (bytes): size, every line's label, and every image path inside the roots
  (``confinement.leads_outside``: links resolved; the message is the same whether an outside path exists
  or not). The label range is checked by prepare, which reads the labels file.

  Returns the number of entries. A relative path is taken from ``image_root`` (else the list's folder).
  """
  base = image_root or (path.parent if isinstance(path, Path) else roots[0])
  n = 0
  try:
    lines = _list_lines_of(path)
    try:
      for found in image_lists.iter_lines(lines, num_classes=None, base=str(base), labelled=True):
        n += 1
        if n > MAX_LIST_LINES:
          errors[field] = f'more than {MAX_LIST_LINES} lines'
          return n
        if isinstance(found, image_lists.Problem):
          errors[field] = f"line {found.line}: {found.reason}, got '{confinement.printable(found.text)}'"
          return n
        if confinement.leads_outside(Path(found.path), roots):
          errors[field] = f'line {found.line}: {confinement.printable(found.name)}: {confinement.OUTSIDE}'
          return n
    finally:
      if hasattr(lines, 'close'):
        lines.close()
  except OSError as e:
    errors[field] = f'cannot read it: {e.strerror or e}'
  return n


def _links_outside(folder: Path, roots: Sequence[Path], limit: int = 3) -> list[str]:
  """Image files under ``folder`` (as prepare walks it: links followed) that resolve outside the roots,
  named relative to ``folder`` (never where they lead)."""
  bad: list[str] = []
  seen: set[str] = set()
  for root, dirs, files in os.walk(folder, followlinks=True):
    real = os.path.realpath(root)
    if real in seen:                  # a link loop (ln -s .. loop): each folder once
      dirs[:] = []
      continue
    seen.add(real)
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    images = [os.path.join(root, name) for name in files
              if not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)]
    # confinement.outside resolves this folder once, then a file only where it is itself a link.
    bad += [os.path.relpath(full, folder) for full in confinement.outside(images, roots)]
    if len(bad) >= limit:
      return bad[:limit]
  return bad


def parse_dataset_form(form: Mapping[str, Any], roots: Sequence[Path], *,
                       uploads: Optional[Mapping[str, bytes]] = None) -> dict[str, Any]:
  """Checks a New Dataset form and returns the prepare options it maps to.

  Returns:
    ``{'name', 'group', 'notes', 'options': {prepare flag: value}, 'form': {...the clean fields},
    'uploads': {field: bytes}, 'classes': {...}}``.

  Raises:
    FormErrors: with one message per bad field.
  """
  r = _Reader(form)
  method = r.choice('method', ('folder', 'textfile'), 'folder')
  width = r.integer('resize_width', 256, 1, MAX_SIZE)
  height = r.integer('resize_height', 256, 1, MAX_SIZE)
  channels = r.integer('resize_channels', 3)
  if channels not in (1, 3):
    r.errors['resize_channels'] = 'must be 3 (color) or 1 (grayscale)'
  resize_mode = r.choice('resize_mode', RESIZE_MODES, 'squash')
  encoding = r.choice('encoding', ENCODINGS, 'jpg')
  name = r.raw('dataset_name')
  if not name and 'dataset_name' not in r.errors:      # (too long is its own error, not "required")
    r.errors['dataset_name'] = 'required'
  group = r.raw('group_name')
  notes = r.raw('notes')
  options: dict[str, Any] = {'image_size': f'{width},{height}', 'resize_mode': resize_mode,
                             'channels': channels, 'encoding': encoding}
  clean: dict[str, Any] = {'method': method, 'resize_width': width, 'resize_height': height,
                           'resize_channels': channels, 'resize_mode': resize_mode, 'encoding': encoding,
                           'dataset_name': name, 'group_name': group}
  classes: dict[str, int] = {}
  uploads = dict(uploads or {})
  if method == 'folder':
    pct_val = r.number('folder_pct_val', 25.0, 0, 100)
    pct_test = r.number('folder_pct_test', 0.0, 0, 100)
    low = r.integer('folder_train_min_per_class', 2, 0)
    high = r.integer('folder_train_max_per_class', 0, 0, blank=0)
    has_val, has_test = r.flag('has_val_folder'), r.flag('has_test_folder')
    train = r.path('folder_train', roots, 'dir')
    val = r.path('folder_val', roots, 'dir') if has_val else None
    test = r.path('folder_test', roots, 'dir') if has_test else None
    used_val = 0.0 if has_val else (pct_val or 0.0)
    used_test = 0.0 if has_test else (pct_test or 0.0)
    if used_val + used_test >= 100 and 'folder_pct_val' not in r.errors and 'folder_pct_test' not in r.errors:
      message = (f'{used_val:g}% for validation + {used_test:g}% for testing = {used_val + used_test:g}%: '
                 'leaves no images for training (they must add up to less than 100)')
      r.errors['folder_pct_val'] = message
      r.errors['folder_pct_test'] = message
    if high and low and high < low:
      r.errors['folder_train_max_per_class'] = (f'{high} is less than the minimum per class ({low}): '
                                                'every class would be dropped')
    for field, folder in (('folder_train', train), ('folder_val', val), ('folder_test', test)):
      escaped = _links_outside(folder, roots) if folder is not None else []
      if escaped:
        r.errors[field] = (f'links in it lead outside the allowed folders: {", ".join(escaped)}; '
                           'copy those images into the folder instead')
    if train is not None and 'folder_train' not in r.errors:
      classes = class_folders(train)
      usable = {c: n for c, n in classes.items() if n >= max(1, low or 0)}
      if len(usable) < 2:
        if not classes:
          why = 'it has no class sub-folders (expected FOLDER/<class>/<image>)'
        elif len(classes) == 1:
          why = f'it has one class ({next(iter(classes))}); a classifier needs at least 2'
        else:
          why = (f'only {len(usable)} of its {len(classes)} class folders have at least '
                 f'{max(1, low or 0)} images; a classifier needs at least 2 classes')
        r.errors['folder_train'] = why
    options.update(source=str(train) if train else '', val_percent=used_val, test_percent=used_test,
                   min_per_class=low, max_per_class=high)
    if val is not None:
      options['val_source'] = str(val)
    if test is not None:
      options['test_source'] = str(test)
    clean.update(folder_train=str(train or form.get('folder_train') or ''), folder_pct_val=pct_val,
                 folder_pct_test=pct_test, folder_train_min_per_class=low,
                 folder_train_max_per_class=high, has_val_folder=has_val,
                 folder_val=str(val or ''), has_test_folder=has_test, folder_test=str(test or ''))
  else:
    prefix = r.path('textfile_train_folder', roots, 'dir') if r.raw('textfile_train_folder') else None
    low = r.integer('folder_train_min_per_class', 2, 0)
    high = r.integer('folder_train_max_per_class', 0, 0, blank=0)
    local = r.flag('textfile_use_local_files') or not uploads
    lists: dict[str, Any] = {}
    for split, field, upload in (('train', 'textfile_local_train_images', 'textfile_train_images'),
                                 ('val', 'textfile_local_val_images', 'textfile_val_images'),
                                 ('test', 'textfile_local_test_images', 'textfile_test_images')):
      if upload in uploads:
        lists[split] = ('upload', upload)
      elif local and r.raw(field):
        p = r.path(field, roots, 'file')
        if p is not None:
          lists[split] = ('local', p)
          _check_list(p, prefix, roots, field, r.errors)
    if 'textfile_labels_file' in uploads:
      labels: Any = ('upload', 'textfile_labels_file')
    elif r.raw('textfile_local_labels_file'):
      labels = ('local', r.path('textfile_local_labels_file', roots, 'file'))
    else:
      labels = None
    if 'train' not in lists and 'textfile_local_train_images' not in r.errors:
      r.errors['textfile_local_train_images'] = 'required: the training list ("path label" lines)'
    if labels is None:
      r.errors['textfile_local_labels_file'] = 'required: labels.txt (one class name per line)'
    for field, data in uploads.items():
      if len(data) > MAX_UPLOAD_BYTES:
        r.errors[field] = f'larger than {MAX_UPLOAD_BYTES // 2**20} MiB'
      elif data.count(b'\n') > MAX_LIST_LINES:
        r.errors[field] = f'more than {MAX_LIST_LINES} lines'
      elif field != 'textfile_labels_file' and prefix is not None:   # an uploaded list: as a local one
        _check_list(data, prefix, roots, field, r.errors)
    if uploads and prefix is None and 'textfile_train_folder' not in r.errors:
      r.errors['textfile_train_folder'] = 'required with uploaded lists: the folder their paths start from'
    options.update(min_per_class=low, max_per_class=high, val_percent=0.0, test_percent=0.0,
                   image_root=str(prefix or ''), lists=lists, labels=labels)
    clean.update(textfile_train_folder=str(prefix or ''), folder_train_min_per_class=low,
                 folder_train_max_per_class=high,
                 **{k: r.raw(k) for k in ('textfile_local_train_images', 'textfile_local_val_images',
                                          'textfile_local_test_images', 'textfile_local_labels_file')})
  if r.errors:
    raise FormErrors(r.errors)
  return {'name': name, 'group': group, 'notes': notes, 'options': options, 'form': clean,
          'uploads': uploads, 'classes': classes}


def prepare_argv(options: Mapping[str, Any], output: str) -> list[str]:
  """``python -m alexnet_jax.prepare`` with one flag per option."""
  argv = ['python', '-m', 'alexnet_jax.prepare', f'--source={options["source"]}', f'--output={output}',
          f'--image_size={options["image_size"]}', f'--resize_mode={options["resize_mode"]}',
          f'--channels={options["channels"]}', f'--encoding={options["encoding"]}',
          f'--val_percent={options.get("val_percent", 0.0):g}',
          f'--test_percent={options.get("test_percent", 0.0):g}',
          f'--min_per_class={options.get("min_per_class", 2)}',
          f'--max_per_class={options.get("max_per_class", 0)}']
  for key in ('val_source', 'test_source', 'image_root', 'labels_file'):
    if options.get(key):
      argv.append(f'--{key}={options[key]}')
  return argv


# ---- New Model ---------------------------------------------------------------------------------------

def _split_list(text: str) -> list[str]:
  return [p.strip() for p in text.split(',') if p.strip()]


def parse_model_form(form: Mapping[str, Any], *, datasets: Mapping[str, dict[str, Any]],
                     previous: Mapping[str, str], experiments: Sequence[str]) -> dict[str, Any]:
  """Checks a New Model form (the cheap checks; the library's own come after, in the worker).

  Args:
    datasets: dataset job id -> {'state', 'image_size': [w, h], 'channels', 'resize_mode', 'output',
      'num_classes'} of the dataset jobs that exist.
    previous: model job id -> its workdir, for ``method=previous``.
    experiments: the installed experiment names.

  Returns:
    ``{'name', 'group', 'notes', 'dataset', 'experiment', 'points': [overrides...] (one per sweep
    point, each a list of --config.x=v), 'labels': [...] (the sweep values of each point), 'form'}``.
  """
  r = _Reader(form)
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
    overrides.append(f'--config.{MODEL_FIELDS[field]}={_fmt(value)}')
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
  crop = r.integer('crop_size', None, 1, MAX_SIZE)
  if crop is not None:
    add('crop_size', crop)
  else:   # DIGITS: blank = no cropping, the whole W x H image is the input (the form keeps the blank)
    overrides.append(f'--config.{MODEL_FIELDS["crop_size"]}=0')
  add('use_mean', r.choice('use_mean', MEAN_MODES, 'image'))
  method = r.choice('method', ('standard', 'previous'), 'standard')
  add('standard_networks', r.choice('standard_networks', NETWORKS, 'alexnet'))
  width = r.number('width', 1.0, 0, MAX_WIDTH)
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
  clean['learning_rate'] = ','.join(_fmt(v) for v in rates)
  if r.errors:
    raise FormErrors(r.errors)
  sweep = len(points) > 1
  return {
      'name': name, 'group': group or (name if sweep else ''), 'notes': notes, 'dataset': dataset_id,
      'experiment': experiment, 'form': clean,
      'points': [overrides + [f'--config.batch_size={b}', f'--config.learning_rate={_fmt(lr)}']
                 for b, lr in points],
      'labels': [f'batch_size={b}, learning_rate={_fmt(lr)}' if sweep else '' for b, lr in points],
      'num_classes': (dataset or {}).get('num_classes') or 2,
  }


_PROBLEM = re.compile(r'--config\.([A-Za-z0-9_.]+)=')


def map_problems(problems: Sequence[str]) -> dict[str, str]:
  """The library's ``--config.x=v: message`` lines as DIGITS field errors (the first flag named wins)."""
  errors: dict[str, str] = {}
  for line in problems:
    m = _PROBLEM.search(line)
    field = CONFIG_TO_FIELD.get(m.group(1), 'config') if m else 'config'
    errors[field] = (errors[field] + '; ' + line) if field in errors else line
  return errors


def train_argv(experiment_path: str, workdir: str, overrides: Sequence[str]) -> list[str]:
  return ['python', '-m', 'alexnet_jax.train', f'--config={experiment_path}', f'--workdir={workdir}',
          *overrides]
