"""What every source kind returns: a `Listing` (class names, keys, labels) and the `Store` behind its keys.

A source kind (`folders`, `list_source`, `tfds_source`, `prepared_source`; `sources.open_source` picks one)
lists its examples without decoding any image; the `Store` reads the bytes (or pixels) of one key later, in
the input pipeline's workers. The listing cache (``<cache_dir>/listing_cache/<kind>-<hash>.npz``) is shared
by the kinds that keep one (folders and tfds); what invalidates each is in its module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from typing import Any

import numpy as np

from alexnet_jax.runtime import fileio
from alexnet_jax.data import decode as decode_lib

log = logging.getLogger(__name__)

LISTING_CACHE_DIR = 'listing_cache'   # inside the run's workdir
LISTING_VERSION = 1                   # part of every cache key: bump it when what a listing holds changes


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


class LazyStore(Store):
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


# ---- The listing cache --------------------------------------------------------------------------------------

def cache_file(cache_dir: str, key: dict) -> str:
  """``<cache_dir>/listing_cache/<kind>-<hash>.npz``; the hash is of the source's identity only (not of the
  versions and stamps that invalidate it), so that a stale cache is overwritten rather than piling up."""
  ident = {k: key[k] for k in ('kind', 'root', 'name', 'split', 'data_dir') if k in key}
  digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(cache_dir, LISTING_CACHE_DIR, f'{key["kind"]}-{digest}.npz')


def write_cache(path: str, meta: dict, **arrays: np.ndarray) -> None:
  """Writes one cache file atomically; a failure is a warning (the listing is still good)."""
  blob = np.frombuffer(json.dumps(meta, ensure_ascii=True).encode('ascii'), np.uint8)
  try:
    with fileio.atomic_write(path, 'wb') as f:
      np.savez_compressed(f, meta=blob, **arrays)
  except OSError as e:
    log.warning('could not cache the listing: %s', e)
    return
  log.info('listing cached in %s', path)


def read_cache(path: str) -> tuple[dict, dict[str, np.ndarray]] | None:
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
