"""Where labelled images come from: a folder, a DIGITS list file, a tfds dataset or a prepared dataset.

`open_source(spec)` returns a `Listing` -- class names, one key and one label per example, and a `Store`
that reads the bytes (or pixels) behind a key -- without decoding any image, so that listing ImageNet's
1.28M files costs seconds. Which kind a spec is:

* ``tfds:NAME[:SPLIT]`` -- a dataset prepared by tensorflow-datasets in ArrayRecord format, read through
  `tfds.data_source` (no TensorFlow needed; API_NOTES.md §8). SPLIT defaults to ``train`` and may use tfds'
  slicing syntax (``train[:80%]``). Class names come from the ``label`` feature. The labels are read in
  batches of undecoded records, of which only the label is parsed (the offline mock cannot do that and
  decodes); tfds keeps no per-record labels in its metadata, so the first listing still reads every record
  once (for imagenet2012, ~140 GB of I/O) -- hence the cache below.
* a directory holding ``stats.json`` and ``*.array_record`` -- the output of ``python -m alexnet_jax.prepare``;
  it brings its own splits and mean image.
* another directory -- a **folder** source, ``root/<class>/**/<image>`` as DIGITS and torchvision's
  ImageFolder expect: one sub-folder per class, class names sorted as strings (label i is the i-th name),
  images found recursively with the extensions of `decode.IMAGE_EXTENSIONS` in any case, depth-first in
  name order. Hidden files and folders (a leading dot) and other extensions are ignored; a dangling link
  with an image extension is reported in `Listing.skipped`. One scandir per folder; a regular file costs
  no stat and no realpath, only symbolic links are resolved. DIGITS displayed ``_`` as a space in class
  names; we keep the folder name as the label (`display_name` gives DIGITS' spelling).
* a file -- a **DIGITS list**: one ``path label`` line per image (``re.match(r'(.+)\\s+(\\d+)\\s*$')``, DIGITS'
  own pattern, so paths may hold spaces), blank lines and ``#`` comments ignored. Relative paths are taken
  against `image_root`, else against the list file's folder. Label names come from `labels_file`, else from
  ``labels.txt`` beside the list (line i = name of label i). A malformed line or an out-of-range label is an
  error that names the file and the line.

Symbolic links in a folder source are followed -- datasets built from links into a store elsewhere are
common -- except where following one would give an image a label that is not its own. By real path:

* a folder link to the dataset root or to a folder above it, or above the class's real folder
  (``ln -s .. classA/loop`` would list every class under classA) is not followed: `LINK_TO_ANCESTOR`;
* a link (to a folder or a file) into another class's folder is not followed: `IN_OTHER_CLASS` -- those
  images are listed under their own class;
* a file reached a second time within a class through a file link (two links to one file, a link beside
  its target) is listed once: `DUPLICATE_LINK` (a regular file is always kept, a link is the one dropped);
* a folder link back to the class's own folder, or to a folder already listed, is simply not entered
  again (it adds nothing); links outside the dataset root are followed, each folder visited once.

What was left out is in `Listing.skipped` with its reason (and, for prepare, in ``stats.json``), and
logged as one warning per reason with the count.

**Cache.** With `cache_dir` (`load_dataset` passes the run's workdir), folder and tfds listings are kept in
``<cache_dir>/listing_cache/``, so that a resume or an evaluation does not list again:

* ``folder-<hash>.npz``: keys (relative to the root), labels, classes and skipped entries. Keyed by the
  root's absolute path, `LISTING_VERSION` and the image extensions; valid while the mtime of every folder
  listed (the root, each class folder, its sub-folders, followed link targets and the folders that file
  links point into) is unchanged and every dangling link still dangles. Adding, removing or renaming an
  image changes its folder's mtime. A folder changed within 2 s of the listing is not trusted (coarse
  mtimes): the next run lists again.
* ``tfds-<hash>.npz``: the labels. Keyed by dataset name, split, resolved data_dir, full name and version,
  record count, class names, the mtime of the prepared copy's ``dataset_info.json`` and `LISTING_VERSION`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import re
import stat as stat_lib
import threading
import time
from typing import Any

import numpy as np

from alexnet_jax.runtime import fileio
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
    import grain  # pylint: disable=g-import-not-at-top  (as records.py had it: importing sources stays light)
    return grain.sources.ArrayRecordDataSource([self.path])   # random access, picklable

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
    skipped: entries left out while listing, as {'path', 'reason'[, 'detail']}: dangling links, unreadable
      folders, and links the folder rules do not follow (module docstring).
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
                tfds_data_dir: str = '', cache_dir: str | None = None) -> Listing | Prepared:
  """Lists a source (module docstring).

  Args:
    spec: a folder, a DIGITS list file, ``tfds:NAME[:SPLIT]`` or a prepared dataset.
    what: the flag or config field that named it, for error messages.
    image_root: the base of a list file's relative paths ('' for the list's folder).
    labels_file: a list file's labels ('' for labels.txt beside it).
    tfds_data_dir: tfds' data_dir ('' for its default).
    cache_dir: where folder and tfds listings are cached (the run's workdir; None: no cache).
  """
  if not spec:
    raise errors.DataError(f'{what} is empty: give a folder, a list file, tfds:NAME[:SPLIT] or a prepared dir')
  kind = source_kind(spec)
  if kind == 'missing':
    raise errors.DataError(f'{what}={spec!r}: no such file or directory')
  if kind == 'tfds':
    return list_tfds(spec, data_dir=tfds_data_dir, what=what, cache_dir=cache_dir)
  if kind == 'prepared':
    return open_prepared(spec, what=what)
  if kind == 'folder':
    return scan_folder(spec, what=what, cache_dir=cache_dir)
  return parse_list(spec, image_root=image_root, labels_file=labels_file, what=what)


# ---- The listing cache --------------------------------------------------------------------------------------

LISTING_CACHE_DIR = 'listing_cache'   # inside the run's workdir
LISTING_VERSION = 1                   # part of every cache key: bump it when what a listing holds changes
_MTIME_TICK_NS = 2_000_000_000        # the coarsest mtime resolution we expect (FAT, some NFS servers)


def _cache_file(cache_dir: str, key: dict) -> str:
  """``<cache_dir>/listing_cache/<kind>-<hash>.npz``; the hash is of the source's identity only (not of the
  versions and stamps that invalidate it), so that a stale cache is overwritten rather than piling up."""
  ident = {k: key[k] for k in ('kind', 'root', 'name', 'split', 'data_dir') if k in key}
  digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(cache_dir, LISTING_CACHE_DIR, f'{key["kind"]}-{digest}.npz')


def _write_cache(path: str, meta: dict, **arrays: np.ndarray) -> None:
  """Writes one cache file atomically; a failure is a warning (the listing is still good)."""
  blob = np.frombuffer(json.dumps(meta, ensure_ascii=True).encode('ascii'), np.uint8)
  try:
    with fileio.atomic_write(path, 'wb') as f:
      np.savez_compressed(f, meta=blob, **arrays)
  except OSError as e:
    log.warning('could not cache the listing: %s', e)
    return
  log.info('listing cached in %s', path)


def _read_cache(path: str) -> tuple[dict, dict[str, np.ndarray]] | None:
  """(meta, arrays) of a cache file; None if there is none or it cannot be read."""
  try:
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(z['meta'].tobytes().decode('ascii'))
      arrays = {k: z[k] for k in z.files if k != 'meta'}
  except FileNotFoundError:
    return None
  except Exception as e:  # pylint: disable=broad-except  # a damaged cache is only a missed shortcut
    log.warning('ignoring the unreadable listing cache %s: %s', path, e)
    return None
  return meta, arrays


# ---- Folder sources -----------------------------------------------------------------------------------------

# Why an entry of a folder source was left out, besides errors.DANGLING and errors.UNREADABLE. They appear in
# `Listing.skipped` and in the prepare tool's stats.json["skipped"].
LINK_TO_ANCESTOR = 'symlink to the dataset root or above'
IN_OTHER_CLASS = "link into another class's folder"
DUPLICATE_LINK = 'symlink to a file already listed'


def _self_and_ancestors(path: str) -> list[str]:
  """[path, its parent, ..., '/']."""
  out = [path]
  while True:
    parent = os.path.dirname(path)
    if parent == path:
      return out
    out.append(parent)
    path = parent


_FOLDER = 'folder'   # `_FolderScan._file_link`: the link is a folder's


def _entry_name(entry: os.DirEntry) -> str:
  return entry.name


class _FolderScan:
  """One scan of ``root/<class>/**/<image>``, applying the link rules of the module docstring.

  The real path of every folder is tracked (a real sub-folder's is its parent's plus its name), so that only
  symbolic links cost a resolution; a regular file costs nothing beyond its scandir entry (no stat, no
  realpath). What the scan depended on -- each folder's mtime, the dangling links -- is kept for the cache.
  """

  def __init__(self, root: str, class_names: list[str]):
    self.class_names = class_names
    self.class_paths = [os.path.join(root, n) for n in class_names]
    self.class_reals = [os.path.realpath(p) for p in self.class_paths]
    self.class_of_real: dict[str, list[int]] = {}
    for label, real in enumerate(self.class_reals):
      self.class_of_real.setdefault(real, []).append(label)
    for real, labels in self.class_of_real.items():
      if len(labels) > 1:
        log.warning('class folders %s are one folder (%s): its images are listed under each of them',
                    [class_names[i] for i in labels], real)
    # The root and every folder above it, by real path -- also above the real root when the root, or a
    # folder above it, is a link.
    self.above_root: set[str] = set()
    for p in _self_and_ancestors(root):
      self.above_root.update(_self_and_ancestors(os.path.realpath(p)))
    self.skipped: list[dict] = []
    self.watched: dict[str, int] = {}     # folder -> st_mtime_ns when it was listed
    self.dangling: list[str] = []
    self._real_dirs: dict[str, str] = {}  # folder named by a file link -> its real path

  def _skip(self, path: str, reason: str, target: str | None = None) -> None:
    entry = {'path': path, 'reason': reason}
    if target is not None:
      entry['detail'] = f'points to {target}'
    self.skipped.append(entry)

  def _in_other_class(self, real: str, own: str) -> bool:
    """True if the real path `real` is another class's folder or inside one (and not inside `own`)."""
    p = real
    while True:
      if p == own:
        return False
      if p in self.class_of_real:
        return True
      parent = os.path.dirname(p)
      if parent == p:
        return False
      p = parent

  def scan_class(self, label: int) -> list[str]:
    """The image files of one class, depth-first in name order (a folder's files before its sub-folders')."""
    class_dir, own = self.class_paths[label], self.class_reals[label]
    # Folders a link must not lead to: the root and above, and whatever is above this class's real folder.
    forbidden = self.above_root.union(_self_and_ancestors(os.path.dirname(own)))
    st = os.stat(class_dir)
    self.watched[class_dir] = st.st_mtime_ns
    visited = {(st.st_dev, st.st_ino)}
    files: list[str] = []
    links: dict[int, str] = {}                 # index in files -> real path of the file link's target
    spans: list[tuple[int, str]] = []          # (index of a folder's first file, the folder's real path)
    verdicts: dict[str, bool] = {}             # target folder of file links -> in another class?
    has_ext = decode_lib.has_image_extension
    stack = [(class_dir, own)]
    while stack:
      d, d_real = stack.pop()
      try:
        with os.scandir(d) as it:
          entries = sorted(it, key=_entry_name)
      except OSError as e:
        self.skipped.append({'path': d, 'reason': errors.UNREADABLE, 'detail': str(e)})
        continue
      spans.append((len(files), d_real))
      subdirs = []
      for e in entries:
        name = e.name
        if name.startswith('.'):
          continue
        link = e.is_symlink()                  # (scandir's d_type: no syscall)
        if link and has_ext(name):
          # Resolving a link tells a file from a folder, which spares is_dir's stat.
          target = self._file_link(e, d_real, own, verdicts)
          if target is not _FOLDER:
            if target is not None:
              links[len(files)] = target
              files.append(e.path)
            continue
        try:
          is_dir = e.is_dir()
        except OSError:
          is_dir = False
        if is_dir:
          sub = self._enter(e, d_real, own, forbidden, visited)
          if sub is not None:
            subdirs.append(sub)
        elif not link and has_ext(name) and e.is_file():
          files.append(e.path)
      stack.extend(reversed(subdirs))   # depth-first, in name order
    if links:
      files = self._drop_duplicate_links(files, links, spans)
    return files

  def _enter(self, e: os.DirEntry, d_real: str, own: str, forbidden: set[str],
             visited: set) -> tuple[str, str] | None:
    """(path, real path) of a sub-folder to list, or None when a rule says no."""
    if e.is_symlink():
      real = os.path.realpath(e.path)
      if real in forbidden:
        self._skip(e.path, LINK_TO_ANCESTOR, real)
        return None
      if self._in_other_class(real, own):
        self._skip(e.path, IN_OTHER_CLASS, real)
        return None
    else:
      # Its parent is in no other class's folder (checked on the way down): only the folder itself can be
      # one (a class folder that is a link into this one).
      real = os.path.join(d_real, e.name)
      if real in self.class_of_real:
        self._skip(e.path, IN_OTHER_CLASS, real)
        return None
    try:
      s = e.stat()
    except OSError as err:
      self.skipped.append({'path': e.path, 'reason': errors.UNREADABLE, 'detail': str(err)})
      return None
    ident = (s.st_dev, s.st_ino)
    if ident in visited:
      # A link back to this class's own folder or to a folder already listed: nothing new, nothing wrong.
      log.debug('not following %s again (symlink loop or duplicate link)', e.path)
      return None
    visited.add(ident)
    self.watched[e.path] = s.st_mtime_ns
    return e.path, real

  def _resolve_file_link(self, path: str, d_real: str) -> tuple[str, str, os.stat_result] | None:
    """(real path, its real folder, stat) of the file a link points to; None if it dangles.

    One readlink and one lstat: the link's folder part is resolved once per folder (`os.path.realpath`
    costs a syscall per path component, 30 us, which a farm of 1.3M links would feel).
    """
    try:
      text = os.readlink(path)
    except OSError:
      text = '..'                              # vanished or unreadable: let realpath say what it is
    if '..' in text.split(os.sep):
      real = os.path.realpath(path)            # '..' after a link component is not lexical
      folder = os.path.dirname(real)
    else:
      head, tail = os.path.split(os.path.join(d_real, text))
      folder = self._real_dirs.get(head)
      if folder is None:
        folder = self._real_dirs[head] = os.path.realpath(head)
      real = os.path.join(folder, tail)
    try:
      st = os.lstat(real)
      if stat_lib.S_ISLNK(st.st_mode):       # a chain of links
        real = os.path.realpath(real)
        folder = os.path.dirname(real)
        st = os.stat(real)
    except OSError:
      return None
    return real, folder, st

  def _file_link(self, e: os.DirEntry, d_real: str, own: str, verdicts: dict[str, bool]) -> str | None:
    """The real path of the file a link with an image extension points to, if it is to be listed (else
    None), or `_FOLDER` if it points to a folder.

    `verdicts` caches, per target folder, whether it lies in another class's folder (for this class).
    """
    resolved = self._resolve_file_link(e.path, d_real)
    if resolved is None:
      try:
        real = os.path.realpath(e.path)          # (a race, or a path the shortcut missed)
        resolved = real, os.path.dirname(real), os.stat(e.path)
      except OSError:
        self.skipped.append({'path': e.path, 'reason': errors.DANGLING})
        self.dangling.append(e.path)
        return None
    real, folder, st = resolved
    if stat_lib.S_ISDIR(st.st_mode):
      return _FOLDER
    if not stat_lib.S_ISREG(st.st_mode):
      return None
    other = verdicts.get(folder)
    if other is None:
      other = verdicts[folder] = self._in_other_class(folder, own)
      if folder not in self.watched:          # a store folder: its files may go away
        try:
          self.watched[folder] = os.stat(folder).st_mtime_ns
        except OSError:
          pass
    if other:
      self._skip(e.path, IN_OTHER_CLASS, real)
      return None
    return real

  def _drop_duplicate_links(self, files: list[str], links: dict[int, str],
                            spans: list[tuple[int, str]]) -> list[str]:
    """Drops file links to a file the class lists already (as a regular file, or through an earlier link)."""
    regular = set()
    stops = [start for start, _ in spans[1:]] + [len(files)]
    for (start, d_real), stop in zip(spans, stops):
      for i in range(start, stop):
        if i not in links:
          regular.add(os.path.join(d_real, os.path.basename(files[i])))
    kept, seen = [], set()
    for i, path in enumerate(files):
      target = links.get(i)
      if target is not None:
        if target in regular or target in seen:
          self._skip(path, DUPLICATE_LINK, target)
          continue
        seen.add(target)
      kept.append(path)
    return kept


def _report_skipped(where: str, skipped: list[dict]) -> None:
  """One warning per reason, with the count and the first few paths (each one at debug level)."""
  by_reason: dict[str, list[str]] = {}
  for s in skipped:
    by_reason.setdefault(s['reason'], []).append(s['path'])
    log.debug('skipping %s: %s %s', s['path'], s['reason'], s.get('detail', ''))
  for reason, paths in by_reason.items():
    more = f' and {len(paths) - 3} more' if len(paths) > 3 else ''
    log.warning('%s: skipped %d (%s): %s%s', where, len(paths), reason, ', '.join(paths[:3]), more)


def _folder_cache_key(root: str) -> dict:
  return {'kind': 'folder', 'version': LISTING_VERSION, 'root': root,
          'extensions': list(decode_lib.IMAGE_EXTENSIONS)}


def _load_folder_cache(cache_dir: str, root: str) -> Listing | None:
  """The cached listing of `root`, if no folder it depends on has changed since (module docstring)."""
  key = _folder_cache_key(root)
  path = _cache_file(cache_dir, key)
  got = _read_cache(path)
  if got is None:
    return None
  meta, arrays = got
  if meta.get('key') != key:
    return None
  listed_ns = meta['listed_ns']
  for folder, mtime_ns in meta['watched']:
    try:
      if os.stat(folder).st_mtime_ns != mtime_ns:
        return None
    except OSError:
      return None
    # A folder changed within a timestamp tick of the listing may have changed again unseen
    # (1-2 s ticks on some network filesystems): list again; the next cache will be clean.
    if mtime_ns >= listed_ns - _MTIME_TICK_NS:
      return None
  if any(os.path.exists(p) for p in meta['dangling']):
    return None
  count = meta['count']
  rels = arrays['names'].tobytes().decode('utf-8', 'surrogateescape').split('\0') if count else []
  labels = arrays['labels'].astype(np.int32)
  if len(rels) != count or len(labels) != count:
    return None
  prefix = os.path.join(root, '')
  keys = [prefix + r for r in rels]
  log.info('folder %s: %d images in %d classes, listing read from %s', root, count, len(meta['classes']), path)
  _report_skipped(f'folder {root}', meta['skipped'])
  return Listing(meta['classes'], keys, labels, FileStore(), meta['skipped'], f'folder {root}')


def _save_folder_cache(cache_dir: str, listing: Listing, scan: _FolderScan, root: str, listed_ns: int) -> None:
  prefix = os.path.join(root, '')
  if not all(k.startswith(prefix) for k in listing.keys):
    return                                     # (every key is root/<class>/..., but never cache a surprise)
  names = '\0'.join([k[len(prefix):] for k in listing.keys]).encode('utf-8', 'surrogateescape')
  meta = {'key': _folder_cache_key(root), 'listed_ns': listed_ns, 'count': len(listing.keys),
          'classes': listing.classes, 'skipped': listing.skipped, 'dangling': scan.dangling,
          'watched': sorted(scan.watched.items())}
  _write_cache(_cache_file(cache_dir, meta['key']), meta, names=np.frombuffer(names, np.uint8),
               labels=listing.labels)


def scan_folder(root: str, *, what: str = 'source', cache_dir: str | None = None) -> Listing:
  """Lists `root/<class>/**/<image>` (module docstring).

  Args:
    root: the folder.
    what: the flag or config field that named it, for error messages.
    cache_dir: where to keep the listing (the run's workdir); a later call reads it from there while no
      folder the listing depends on has changed.
  """
  root = os.path.abspath(root)
  if cache_dir:
    cached = _load_folder_cache(cache_dir, root)
    if cached is not None:
      return cached
  listed_ns = time.time_ns()
  try:
    root_mtime = os.stat(root).st_mtime_ns
    with os.scandir(root) as it:
      class_dirs = sorted(e.name for e in it if not e.name.startswith('.') and e.is_dir(follow_symlinks=True))
  except OSError as e:
    raise errors.DataError(f'{what}={root!r}: cannot list the folder: {e}') from None
  if len(class_dirs) < 2:
    raise errors.DataError(
        f'{what}={root!r}: a folder source needs at least 2 class sub-folders (root/<class>/<image>), '
        f'found {len(class_dirs)}')
  scan = _FolderScan(root, class_dirs)
  scan.watched[root] = root_mtime
  keys, counts = [], []
  for label in range(len(class_dirs)):
    files = scan.scan_class(label)
    keys.extend(files)
    counts.append(len(files))
  labels = np.repeat(np.arange(len(class_dirs), dtype=np.int32), counts)
  _report_skipped(f'folder {root}', scan.skipped)
  listing = Listing(class_dirs, keys, labels, FileStore(), scan.skipped, f'folder {root}')
  if cache_dir:
    _save_folder_cache(cache_dir, listing, scan, root, listed_ns)
  return listing


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


_TFDS_BATCH = 1024   # records per task of the label-reading threads


def _raw_label_reader(store: TfdsStore, n: int):
  """A function (start, stop) -> labels that parses only the label out of the serialized records; None when
  this dataset cannot be read that way (the offline mock needs TensorFlow for it).

  The records come undecoded (``DeserializeMethod.RAW_BYTES``) and each is parsed as a ``tf.train.Example``
  (upb, in C) of which only the ``label`` int64 is touched: the image bytes are neither decoded nor copied
  into numpy. They are read one by one, in order: on a local ArrayRecord copy (6,000 records of 40 KB) that
  took 28-33 us of CPU per record, where ArrayRecord's batched ``__getitems__`` took 75-100 us and the
  decoded path (``SkipDecoding``, what this listing did before) 60 us. `read_tfds_labels` runs several
  such ranges in threads, which hides the latency of remote storage.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
    raw = tfds.data_source(store.name, split=store.split, data_dir=store.data_dir,
                           deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    parse = tf_example_pb2.Example.FromString

    def read(start: int, stop: int) -> list[int]:
      return [parse(raw[i]).features.feature['label'].int64_list.value[0] for i in range(start, stop)]

    probe = min(n, 8)
    if read(0, probe) != [store.label(i) for i in range(probe)]:
      raise ValueError('labels parsed from the raw records differ from the decoded ones')
    return read
  except Exception as e:  # pylint: disable=broad-except
    log.debug('tfds:%s: labels cannot be parsed from raw records (%s: %s); decoding them',
              store.name, type(e).__name__, e)
    return None


def _decoded_label_reader(store: TfdsStore):
  """(start, stop) -> labels through the store's own source (images skipped where tfds can; the mock
  decodes them). One record at a time: ArrayRecord's batched ``__getitems__`` was slower (see above)."""
  src = store.source
  return lambda start, stop: [int(src[i]['label']) for i in range(start, stop)]


def read_tfds_labels(store: TfdsStore, n: int) -> np.ndarray:
  """Every record's label, int32 [n], in ranges of `_TFDS_BATCH` records read by a few threads, parsing
  only the label where tfds allows it (`_raw_label_reader`), else decoding records without their image."""
  labels = np.empty(n, np.int32)
  read = _raw_label_reader(store, n)
  threads = min(8, os.cpu_count() or 1) if read is not None else 1
  read = read or _decoded_label_reader(store)
  spans = [(s, min(n, s + _TFDS_BATCH)) for s in range(0, n, _TFDS_BATCH)]

  def fill(span: tuple[int, int]) -> None:
    labels[span[0]:span[1]] = read(*span)

  if threads > 1 and len(spans) > 1:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(fill, spans))
  else:
    for span in spans:
      fill(span)
  return labels


def _tfds_cache_key(store: TfdsStore, src, classes: list[str], n: int) -> dict:
  """What a cached label list depends on: the dataset, split, version, prepared copy and class names."""
  info = src.dataset_info
  data_dir = str(info.data_dir)
  try:
    stamp = os.stat(os.path.join(data_dir, 'dataset_info.json')).st_mtime_ns   # re-prepared: new stamp
  except OSError:
    stamp = None
  return {'kind': 'tfds', 'version': LISTING_VERSION, 'name': store.name, 'split': store.split,
          'data_dir': data_dir, 'full_name': str(info.full_name), 'dataset_version': str(info.version),
          'records': n, 'info_mtime_ns': stamp,
          'classes_sha1': hashlib.sha1('\n'.join(classes).encode('utf-8', 'surrogateescape')).hexdigest()}


def list_tfds(spec: str, *, data_dir: str = '', what: str = 'source', cache_dir: str | None = None) -> Listing:
  """Lists a tfds dataset through `tfds.data_source`, reading every label once (module docstring).

  Args:
    spec: ``tfds:NAME[:SPLIT]``.
    data_dir: tfds' data_dir ('' for its default).
    what: the flag or config field that named it, for error messages.
    cache_dir: where to keep the labels (the run's workdir); a later call with the same dataset, split,
      version and prepared copy reads them from there instead of from the records.
  """
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
  key = path = None
  if cache_dir:
    key = _tfds_cache_key(store, src, names, n)
    path = _cache_file(cache_dir, key)
    got = _read_cache(path)
    cached = got[1].get('labels') if got is not None and got[0].get('key') == key else None
    if cached is not None and cached.shape == (n,):
      log.info('%s: %d labels read from %s', spec, n, path)
      return Listing(names, list(range(n)), cached.astype(np.int32), store, [], spec)
  log.info('%s: reading %d labels%s', spec, n, f' (cached afterwards in {cache_dir})' if cache_dir else '')
  t0 = time.perf_counter()
  labels = read_tfds_labels(store, n)
  log.info('%s: %d labels read in %.1f s', spec, n, time.perf_counter() - t0)
  if path is not None:
    _write_cache(path, {'key': key}, labels=labels)
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
