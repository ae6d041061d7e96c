"""Prepared sources: a directory written by ``python -m alexnet_jax.prepare``.

It holds ``stats.json``, ``labels.txt``, ``mean.npy`` and, per split, ``<split>.array_record`` (the
records, `records.py`) with ``<split>.txt`` (DIGITS' list of the original paths and labels, in record
order, read by the one list parser of `lists.py`). It brings its own splits and mean image.
"""

from __future__ import annotations

import json
import os

import numpy as np

from alexnet_jax.data import errors
from alexnet_jax.data import lists
from alexnet_jax.data import records
from alexnet_jax.data.listing import LazyStore
from alexnet_jax.data.listing import Listing
from alexnet_jax.data.listing import Prepared

PREPARED_SPLITS = ('train', 'val', 'test')


def open_records(path: str):
  """A random-access, picklable reader of one ArrayRecord file (`grain.sources.ArrayRecordDataSource`).

  Here, not in `records.py`: the dashboard's web process decodes records for the dataset page and must
  not import grain (JAX's family). Imported when a prepared source is read: ``import alexnet_jax.data``
  stays free of grain.
  """
  import grain  # pylint: disable=g-import-not-at-top
  return grain.sources.ArrayRecordDataSource([path])


def is_prepared(path: str) -> bool:
  """True for a directory holding ``stats.json`` and at least one split's ArrayRecord file."""
  return os.path.isfile(os.path.join(path, 'stats.json')) and any(
      os.path.isfile(os.path.join(path, f'{s}.array_record')) for s in PREPARED_SPLITS)


class PreparedStore(LazyStore):
  """Keys are record indices of one split's ArrayRecord file; `read` returns resized uint8 pixels."""
  prepared = True

  def __init__(self, path: str):
    super().__init__()
    self.path = path

  def _open(self):
    return open_records(self.path)

  def read(self, key: int) -> np.ndarray:
    return records.decode_record(self.source[int(key)]).image

  def describe(self, key: int) -> str:
    return f'{self.path}#{key}'

  def __repr__(self):
    return f'PreparedStore({self.path!r})'


def open_prepared(root: str, *, what: str = 'source') -> Prepared:
  """Opens a prepared dataset: labels.txt, stats.json, mean.npy and one ArrayRecord file per split."""
  root = os.path.abspath(root)
  try:
    with open(os.path.join(root, 'stats.json'), encoding='utf-8') as f:
      stats = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.DataError(f'{what}={root!r}: unreadable stats.json: {e}') from None
  classes = lists.read_labels_file(os.path.join(root, 'labels.txt'), what=what)
  splits = {}
  for split in PREPARED_SPLITS:
    rec = os.path.join(root, f'{split}.array_record')
    if not os.path.isfile(rec):
      continue
    _, labels = lists.read_labelled_list(os.path.join(root, f'{split}.txt'), num_classes=len(classes),
                                         what=what)
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
