"""Folder sources: ``root/<class>/**/<image>``, as DIGITS and torchvision's ImageFolder expect.

One sub-folder per class, class names sorted as strings (label i is the i-th name), images found recursively
with the extensions of `decode.IMAGE_EXTENSIONS` in any case, depth-first in name order. Hidden files and
folders (a leading dot) and other extensions are ignored; a dangling link with an image extension is
reported in `Listing.skipped`. One scandir per folder; a regular file costs no stat and no realpath, only
symbolic links are resolved. DIGITS displayed ``_`` as a space in class names; we keep the folder name as
the label (`sources.display_name` gives DIGITS' spelling).

Symbolic links are followed -- datasets built from links into a store elsewhere are common -- except where
following one would give an image a label that is not its own. By real path:

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

**Cache.** With `cache_dir` (`load_dataset` passes the run's workdir) the listing is kept in
``<cache_dir>/listing_cache/folder-<hash>.npz``: keys (relative to the root), labels, classes and skipped
entries. Keyed by the root's absolute path, `listing.LISTING_VERSION` and the image extensions; valid while
the mtime of every folder listed (the root, each class folder, its sub-folders, followed link targets and
the folders that file links point into) is unchanged and every dangling link still dangles. Adding,
removing or renaming an image changes its folder's mtime. A folder changed within 2 s of the listing is not
trusted (coarse mtimes): the next run lists again.
"""

from __future__ import annotations

import logging
import os
import stat as stat_lib
import time

import numpy as np

from alexnet_jax.data import decode as decode_lib
from alexnet_jax.data import errors
from alexnet_jax.data.listing import cache_file
from alexnet_jax.data.listing import FileStore
from alexnet_jax.data.listing import Listing
from alexnet_jax.data.listing import LISTING_VERSION
from alexnet_jax.data.listing import read_cache
from alexnet_jax.data.listing import write_cache

log = logging.getLogger(__name__)

_MTIME_TICK_NS = 2_000_000_000        # the coarsest mtime resolution we expect (FAT, some NFS servers)

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
  path = cache_file(cache_dir, key)
  got = read_cache(path)
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
  write_cache(cache_file(cache_dir, meta['key']), meta, names=np.frombuffer(names, np.uint8),
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
