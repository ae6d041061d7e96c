"""The New Dataset form, and the typed field reader both forms use: DIGITS' field names in, field errors
or tool argv lists out (the New Model form is ``model_form.py``).

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

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from alexnet_jax.data import lists as image_lists
from alexnet_jax.runtime import confinement
from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import security

# ---- Limits -----------------------------------------------------------------------------------------

MAX_SIZE = 4096                # image width / height
MAX_TEXT = 4000                # characters of a name / notes field
MAX_LIST_LINES = 2_000_000     # lines of an uploaded or local list file
MAX_UPLOAD_BYTES = 64 * 2**20  # one uploaded list file
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.ppm', '.pgm', '.tif', '.tiff', '.webp')

ENCODINGS = {'jpg': 'jpg', 'png': 'png', 'raw': 'raw', 'none': 'raw'}   # DIGITS said 'none' for raw
RESIZE_MODES = ('squash', 'crop', 'fill', 'half_crop')


class Reader:
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
      self.errors[name] = range_text(lo, hi, 'whole number')
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
      self.errors[name] = range_text(lo, hi, 'number')
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


def range_text(lo, hi, what: str) -> str:
  if lo is not None and hi is not None:
    return f'must be a {what} from {lo:g} to {hi:g}'
  if lo is not None:
    return f'must be a {what} >= {lo:g}'
  return f'must be a {what} <= {hi:g}'


def fmt(value: Any) -> str:
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
    errors.DashboardError: with one message per bad field.
  """
  r = Reader(form)
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
    raise errors_lib.DashboardError(r.errors)
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
