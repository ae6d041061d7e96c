"""Where labelled images come from: a folder, a DIGITS list file, a tfds dataset or a prepared dataset.

`open_source(spec)` returns a `Listing` -- class names, one key and one label per example, and a `Store`
that reads the bytes (or pixels) behind a key -- without decoding any image, so that listing ImageNet's
1.28M files costs seconds. Which kind a spec is:

* ``tfds:NAME[:SPLIT]`` -- a dataset prepared by tensorflow-datasets in ArrayRecord format, read through
  `tfds.data_source` (no TensorFlow needed; API_NOTES.md §8). SPLIT defaults to ``train`` and may use tfds'
  slicing syntax (``train[:80%]``). Class names come from the ``label`` feature.
* a directory holding ``stats.json`` and ``*.array_record`` -- the output of ``python -m alexnet_jax.prepare``;
  it brings its own splits and mean image.
* another directory -- a **folder** source, ``root/<class>/**/<image>`` as DIGITS and torchvision's
  ImageFolder expect: one sub-folder per class, class names sorted as strings (label i is the i-th name),
  images found recursively with the extensions of `decode.IMAGE_EXTENSIONS` in any case. Hidden files and
  folders (a leading dot) and other extensions are ignored; symbolic links are followed, each directory
  visited once (no loops); a dangling link with an image extension is reported in `Listing.skipped`.
  DIGITS displayed ``_`` as a space in class names; we keep the folder name as the label (`display_name`
  gives DIGITS' spelling).
* a file -- a **DIGITS list**: one ``path label`` line per image (``re.match(r'(.+)\\s+(\\d+)\\s*$')``, DIGITS'
  own pattern, so paths may hold spaces), blank lines and ``#`` comments ignored. Relative paths are taken
  against `image_root`, else against the list file's folder. Label names come from `labels_file`, else from
  ``labels.txt`` beside the list (line i = name of label i). A malformed line or an out-of-range label is an
  error that names the file and the line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
from typing import Any

import numpy as np

from alexnet_jax.data import decode as decode_lib
from alexnet_jax.data import errors
from alexnet_jax.data import records

log = logging.getLogger(__name__)

_LIST_LINE = re.compile(r'(.+)\s+(\d+)\s*$')
TFDS_PREFIX = 'tfds:'
PREPARED_SPLITS = ('train', 'val', 'test')


def display_name(label: str) -> str:
  """DIGITS' way of showing a class folder name: underscores as spaces."""
  return label.replace('_', ' ')


# ---- Stores: random access to the raw content behind a key -----------------------------------------------

class Store:
  """Reads the content of one example: encoded bytes, or a decoded uint8 array. Picklable (for workers).

  `prepared` is True when `read` returns pixels already resized to the dataset's image size.
  """
  prepared = False

  def read(self, key: Any):
    raise NotImplementedError

  def describe(self, key: Any) -> str:
    return str(key)


class FileStore(Store):
  """Keys are file paths."""

  def read(self, key: str) -> bytes:
    return decode_lib.read_bytes(key)

  def __repr__(self):
    return 'FileStore()'


class _LazySource(Store):
  """A Store over a random-access source that is opened on first use in each process (and not pickled)."""

  def __init__(self):
    self._src = None
    self._lock = threading.Lock()

  def _open(self):
    raise NotImplementedError

  @property
  def source(self):
    if self._src is None:
      with self._lock:
        if self._src is None:
          self._src = self._open()
    return self._src

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_src'] = None
    state['_lock'] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()


class TfdsStore(_LazySource):
  """Keys are record indices of a `tfds.data_source`; `read` returns encoded bytes when tfds allows it."""

  def __init__(self, name: str, split: str, data_dir: str | None):
    super().__init__()
    self.name, self.split, self.data_dir = name, split, data_dir
    self.raw_bytes = True

  def _open(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # 0.5 s; only when used
    kwargs = dict(split=self.split, data_dir=self.data_dir)
    if self.raw_bytes:
      # Undecoded JPEG bytes let us decode with Pillow's draft mode in our own threads. The offline mock
      # (tfds.testing.mock_data) cannot skip decoding without TensorFlow, so fall back to decoded arrays.
      try:
        src = tfds.data_source(self.name, decoders={'image': tfds.decode.SkipDecoding()}, **kwargs)
        if len(src):
          src[0]
        return src
      except Exception:  # pylint: disable=broad-except
        self.raw_bytes = False
    return tfds.data_source(self.name, **kwargs)

  def read(self, key: int):
    image = self.source[int(key)]['image']
    if isinstance(image, (bytes, bytearray)):
      return bytes(image)
    return np.asarray(image)

  def label(self, key: int) -> int:
    return int(self.source[int(key)]['label'])

  def describe(self, key: int) -> str:
    return f'tfds:{self.name}:{self.split}#{key}'

  def __repr__(self):
    return f'TfdsStore({self.name!r}, {self.split!r})'


class PreparedStore(_LazySource):
  """Keys are record indices of one split's ArrayRecord file; `read` returns resized uint8 pixels."""
  prepared = True

  def __init__(self, path: str):
    super().__init__()
    self.path = path

  def _open(self):
    return records.open_source(self.path)

  def read(self, key: int) -> np.ndarray:
    return records.decode_record(self.source[int(key)]).image

  def describe(self, key: int) -> str:
    return f'{self.path}#{key}'

  def __repr__(self):
    return f'PreparedStore({self.path!r})'


# ---- Listings -----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Listing:
  """The labelled examples of one source, before any split.

  Attributes:
    classes: class names; label i is classes[i].
    keys: one key per example, as `store.read` takes it (a path, or a record index).
    labels: int32 [len(keys)].
    store: reads the content behind a key.
    skipped: examples rejected while listing, as {'path', 'reason'} (dangling links, unreadable folders).
    description: what was listed, for messages.
  """
  classes: list[str]
  keys: list
  labels: np.ndarray
  store: Store
  skipped: list[dict] = dataclasses.field(default_factory=list)
  description: str = ''

  def __len__(self) -> int:
    return len(self.keys)


@dataclasses.dataclass
class Prepared:
  """A dataset written by the prepare tool: its splits, stats and mean image."""
  root: str
  classes: list[str]
  splits: dict[str, Listing]
  stats: dict
  mean_image: np.ndarray | None


def source_kind(spec: str) -> str:
  """'tfds', 'prepared', 'folder' or 'list' (see the module docstring); 'missing' if nothing is there."""
  if spec.startswith(TFDS_PREFIX):
    return 'tfds'
  if os.path.isdir(spec):
    if os.path.isfile(os.path.join(spec, 'stats.json')) and any(
        os.path.isfile(os.path.join(spec, f'{s}.array_record')) for s in PREPARED_SPLITS):
      return 'prepared'
    return 'folder'
  if os.path.isfile(spec):
    return 'list'
  return 'missing'


def open_source(spec: str, *, what: str = 'source', image_root: str = '', labels_file: str = '',
                tfds_data_dir: str = '') -> Listing | Prepared:
  """Lists a source (module docstring). `what` names the flag or config field, for error messages."""
  if not spec:
    raise errors.DataError(f'{what} is empty: give a folder, a list file, tfds:NAME[:SPLIT] or a prepared dir')
  kind = source_kind(spec)
  if kind == 'missing':
    raise errors.DataError(f'{what}={spec!r}: no such file or directory')
  if kind == 'tfds':
    return list_tfds(spec, data_dir=tfds_data_dir, what=what)
  if kind == 'prepared':
    return open_prepared(spec, what=what)
  if kind == 'folder':
    return scan_folder(spec, what=what)
  return parse_list(spec, image_root=image_root, labels_file=labels_file, what=what)


def _scan_class(class_dir: str, files: list[str], skipped: list[dict]) -> None:
  """Collects image files under `class_dir`, following links but visiting each directory once."""
  visited = set()
  st = os.stat(class_dir)
  visited.add((st.st_dev, st.st_ino))
  stack = [class_dir]
  while stack:
    d = stack.pop()
    try:
      with os.scandir(d) as it:
        entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
      skipped.append({'path': d, 'reason': errors.UNREADABLE, 'detail': str(e)})
      continue
    subdirs = []
    for e in entries:
      if e.name.startswith('.'):
        continue
      try:
        is_dir = e.is_dir(follow_symlinks=True)
      except OSError:
        is_dir = False
      if is_dir:
        try:
          s = e.stat(follow_symlinks=True)
        except OSError as err:
          skipped.append({'path': e.path, 'reason': errors.UNREADABLE, 'detail': str(err)})
          continue
        ident = (s.st_dev, s.st_ino)
        if ident in visited:
          log.debug('not following %s again (symlink loop or duplicate link)', e.path)
          continue
        visited.add(ident)
        subdirs.append(e.path)
      elif decode_lib.has_image_extension(e.name):
        if e.is_symlink() and not os.path.exists(e.path):
          skipped.append({'path': e.path, 'reason': errors.DANGLING})
        elif e.is_file(follow_symlinks=True):
          files.append(e.path)
    stack.extend(reversed(subdirs))   # depth-first, in name order


def scan_folder(root: str, *, what: str = 'source') -> Listing:
  """Lists `root/<class>/**/<image>` (module docstring)."""
  root = os.path.abspath(root)
  try:
    with os.scandir(root) as it:
      class_dirs = sorted(e.name for e in it if not e.name.startswith('.') and e.is_dir(follow_symlinks=True))
  except OSError as e:
    raise errors.DataError(f'{what}={root!r}: cannot list the folder: {e}') from None
  if len(class_dirs) < 2:
    raise errors.DataError(
        f'{what}={root!r}: a folder source needs at least 2 class sub-folders (root/<class>/<image>), '
        f'found {len(class_dirs)}')
  keys, labels, skipped = [], [], []
  for label, name in enumerate(class_dirs):
    files: list[str] = []
    _scan_class(os.path.join(root, name), files, skipped)
    keys.extend(files)
    labels.extend([label] * len(files))
  for s in skipped:
    log.warning('skipping %s: %s', s['path'], s['reason'])
  return Listing(class_dirs, keys, np.asarray(labels, np.int32), FileStore(), skipped, f'folder {root}')


def read_labels_file(path: str, *, what: str = 'labels_file') -> list[str]:
  """DIGITS' labels.txt: one class name per line, blank lines skipped."""
  try:
    with open(path, encoding='utf-8', errors='surrogateescape') as f:
      names = [line.strip() for line in f if line.strip()]
  except OSError as e:
    raise errors.DataError(f'{what}: cannot read labels file {path!r}: {e}') from None
  if not names:
    raise errors.DataError(f'{what}: labels file {path!r} is empty')
  return names


def parse_list_lines(path: str, *, num_classes: int | None = None, base: str = '',
                     what: str = 'source') -> tuple[list[str], list[int]]:
  """Parses a DIGITS list file into (paths, labels); errors name the file and the line."""
  paths, labels = [], []
  try:
    f = open(path, encoding='utf-8', errors='surrogateescape')
  except OSError as e:
    raise errors.DataError(f'{what}={path!r}: cannot read the list file: {e}') from None
  with f:
    for lineno, line in enumerate(f, 1):
      s = line.strip()
      if not s or s.startswith('#'):
        continue
      m = _LIST_LINE.match(s)
      if m is None:
        raise errors.DataError(f'{path}:{lineno}: expected "<image path> <integer label>", got {s!r}')
      p, label = m.group(1).strip(), int(m.group(2))
      if num_classes is not None and label >= num_classes:
        raise errors.DataError(
            f'{path}:{lineno}: label {label} is out of range: the labels file names {num_classes} classes')
      if base and not os.path.isabs(p):
        p = os.path.join(base, p)
      paths.append(p)
      labels.append(label)
  return paths, labels


def parse_list(path: str, *, image_root: str = '', labels_file: str = '', what: str = 'source') -> Listing:
  """Lists a DIGITS list file (module docstring)."""
  path = os.path.abspath(path)
  labels_path = labels_file or os.path.join(os.path.dirname(path), 'labels.txt')
  if not os.path.isfile(labels_path):
    raise errors.DataError(
        f'{what}={path!r} is a list file, but its labels file {labels_path!r} does not exist '
        '(put labels.txt beside the list, or set the labels file)')
  classes = read_labels_file(labels_path, what=what)
  base = image_root or os.path.dirname(path)
  paths, labels = parse_list_lines(path, num_classes=len(classes), base=base, what=what)
  if not paths:
    raise errors.DataError(f'{what}={path!r}: the list file has no "<path> <label>" lines')
  return Listing(classes, paths, np.asarray(labels, np.int32), FileStore(), [], f'list {path}')


def parse_tfds_spec(spec: str) -> tuple[str, str]:
  """'tfds:NAME[:SPLIT]' -> (NAME, SPLIT); SPLIT defaults to 'train'."""
  body = spec[len(TFDS_PREFIX):]
  name, _, split = body.partition(':')
  if not name:
    raise errors.DataError(f'{spec!r}: expected tfds:NAME[:SPLIT]')
  return name, split or 'train'


def list_tfds(spec: str, *, data_dir: str = '', what: str = 'source') -> Listing:
  """Lists a tfds dataset through `tfds.data_source` (reads every label once)."""
  name, split = parse_tfds_spec(spec)
  store = TfdsStore(name, split, data_dir or None)
  try:
    src = store.source
    names = list(src.dataset_info.features['label'].names)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.DataError(
        f'{what}={spec!r}: tfds.data_source({name!r}, split={split!r}) failed: {type(e).__name__}: {e}. '
        'The dataset must be prepared in ArrayRecord format (file_format="array_record").') from None
  n = len(src)
  log.info('%s: reading %d labels', spec, n)
  labels = np.fromiter((int(src[i]['label']) for i in range(n)), np.int32, count=n)
  return Listing(names, list(range(n)), labels, store, [], spec)


def open_prepared(root: str, *, what: str = 'source') -> Prepared:
  """Opens a prepared dataset: labels.txt, stats.json, mean.npy and one ArrayRecord file per split."""
  root = os.path.abspath(root)
  try:
    with open(os.path.join(root, 'stats.json'), encoding='utf-8') as f:
      stats = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.DataError(f'{what}={root!r}: unreadable stats.json: {e}') from None
  classes = read_labels_file(os.path.join(root, 'labels.txt'), what=what)
  splits = {}
  for split in PREPARED_SPLITS:
    rec = os.path.join(root, f'{split}.array_record')
    if not os.path.isfile(rec):
      continue
    paths, labels = parse_list_lines(os.path.join(root, f'{split}.txt'), num_classes=len(classes), what=what)
    store = PreparedStore(rec)
    n = len(store.source)
    if n != len(labels):
      raise errors.DataError(f'{what}={root!r}: {split}.array_record holds {n} records but {split}.txt '
                             f'lists {len(labels)}; the dataset is damaged, prepare it again')
    splits[split] = Listing(classes, list(range(n)), np.asarray(labels, np.int32), store, [],
                            f'prepared {root} ({split})')
  mean_path = os.path.join(root, 'mean.npy')
  mean = np.load(mean_path).astype(np.float32) if os.path.isfile(mean_path) else None
  return Prepared(root, classes, splits, stats, mean)
