"""DIGITS' train / validation / test split, made reproducible.

DIGITS (`digits/tools/parse_folder.py`) splits *per class*: it shuffles each class's images, then cuts them
with `three_way_split_indices(n, pct_val, pct_test)`, which rounds each share and then makes sure that every
split asked for (a non-zero percentage) gets at least one image. A class with fewer images than
`min_per_category` (default 2), or than the number of splits asked for, is dropped with a warning, and the
remaining classes are renumbered in order.

Our differences, all asked for by the issue:

* the shuffle is seeded -- `np.random.default_rng([seed, crc32(class name)])` -- so the same seed gives the
  same split on any machine, and adding a class does not move the images of the others;
* `max_per_class` keeps a seeded random sample (DIGITS kept the first files os.walk returned);
* a separate validation or test source replaces the corresponding percentage (DIGITS' "separate folder"
  checkboxes): its classes are matched to the training classes by name, and images of unknown classes are
  skipped with a warning.

Rounding is Python 2's (halves away from zero), as DIGITS ran on Python 2.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib

import numpy as np

from alexnet_jax.data import errors
from alexnet_jax.data import sources

log = logging.getLogger(__name__)

SPLIT_NAMES = ('train', 'val', 'test')
_SPLIT_TAG = 0x5EED5


def _py2_round(x: float) -> int:
  return int(np.floor(x + 0.5))


def three_way_split_indices(size: int, pct_b: float, pct_c: float) -> tuple[int, int]:
  """DIGITS' function: (a, a + b) cutting `size` items into train [0,a), val [a,a+b), test [a+b, size)."""
  assert 0 <= pct_b <= 100 and 0 <= pct_c <= 100
  pct_a = 100 - (pct_b + pct_c)
  assert 0 <= pct_a <= 100
  if pct_a >= 100:
    return size, size
  elif pct_b >= 100:
    return 0, size
  elif pct_c >= 100:
    return 0, 0
  a = _py2_round(float(size) * pct_a / 100)
  if pct_a and not a:
    a = 1
  b = _py2_round(float(size) * pct_b / 100)
  if a + b > size:
    b = size - a
  if pct_b and not b:
    if a > 1:
      a -= 1
      b = 1
    elif a != size:
      b = 1
  c = size - (a + b)
  if pct_c and not c:
    if b > 1:
      b -= 1
      c = 1
    elif a > 1:
      a -= 1
      c = 1
  assert a + b + c == size
  return a, a + b


@dataclasses.dataclass
class SplitData:
  """The examples of one split: keys and labels (in the final class numbering), and their store."""
  name: str
  keys: list
  labels: np.ndarray
  store: sources.Store

  def __len__(self) -> int:
    return len(self.keys)


def class_seed(seed: int, name: str) -> list[int]:
  """The seed sequence of a class's shuffle: independent of the other classes and of the machine."""
  return [seed % (1 << 63), _SPLIT_TAG, zlib.crc32(name.encode('utf-8', 'surrogateescape'))]


def _take(listing: sources.Listing, idx: np.ndarray, relabel: np.ndarray, name: str) -> SplitData:
  keys = listing.keys
  return SplitData(name, [keys[i] for i in idx.tolist()], relabel[listing.labels[idx]].astype(np.int32),
                   listing.store)


def indices_by_class(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
  """The example indices of each class, ascending: int64 arrays (one stable sort, not a Python loop)."""
  labels = np.asarray(labels)
  order = np.argsort(labels, kind='stable').astype(np.int64)
  bounds = np.searchsorted(labels[order], np.arange(num_classes + 1), side='left')
  return [order[bounds[c]:bounds[c + 1]] for c in range(num_classes)]


def split_listing(listing: sources.Listing, *, val_percent: float, test_percent: float, min_per_class: int,
                  max_per_class: int, seed: int,
                  what: str = 'data') -> tuple[list[str], dict[str, SplitData], list[str]]:
  """Splits one listing per class, DIGITS' way (module docstring).

  Returns:
    (kept class names, {'train'|'val'|'test': SplitData} for the non-empty splits, dropped class names).
  """
  for flag, v in (('val_percent', val_percent), ('test_percent', test_percent)):
    if not 0 <= v <= 100:
      raise errors.DataError(f'{what}.{flag}={v}: must be between 0 and 100')
  if val_percent + test_percent > 100:
    raise errors.DataError(f'{what}.val_percent + {what}.test_percent = {val_percent + test_percent} > 100')
  if min_per_class < 0 or max_per_class < 0:
    raise errors.DataError(f'{what}.min_per_class and {what}.max_per_class must be >= 0')
  required = sum(p > 0 for p in (100 - val_percent - test_percent, val_percent, test_percent))
  by_class = indices_by_class(listing.labels, len(listing.classes))
  kept, dropped, cuts = [], [], []
  for label, name in enumerate(listing.classes):
    idx = by_class[label]
    idx = idx[np.random.default_rng(class_seed(seed, name)).permutation(len(idx))]
    if max_per_class and len(idx) > max_per_class:
      idx = idx[:max_per_class]
    if len(idx) == 0 or len(idx) < required or len(idx) < min_per_class:
      log.warning('dropping class %r: %d images, fewer than min_per_class=%d (or than the %d splits asked for)',
                  name, len(idx), min_per_class, required)
      dropped.append(name)
      continue
    a, b = three_way_split_indices(len(idx), val_percent, test_percent)
    kept.append(label)
    cuts.append((idx[:a], idx[a:b], idx[b:]))
  if len(kept) < 2:
    raise errors.DataError(
        f'{listing.description}: fewer than 2 usable classes ({len(kept)} left after min_per_class='
        f'{min_per_class}; dropped: {dropped[:10]})')
  relabel = np.full(len(listing.classes), -1, np.int64)
  relabel[kept] = np.arange(len(kept))
  classes = [listing.classes[k] for k in kept]
  result = {}
  for j, name in enumerate(SPLIT_NAMES):
    idx = np.concatenate([c[j] for c in cuts]) if cuts else np.zeros(0, np.int64)
    if len(idx):
      result[name] = _take(listing, idx, relabel, name)
  return classes, result, dropped


def match_classes(listing: sources.Listing, classes: list[str], name: str) -> SplitData:
  """Uses a whole separate listing as split `name`, its labels mapped by class name onto `classes`."""
  index = {c: i for i, c in enumerate(classes)}
  relabel = np.asarray([index.get(c, -1) for c in listing.classes], np.int64)
  unknown = [c for c in listing.classes if c not in index]
  keep = np.nonzero(relabel[listing.labels] >= 0)[0] if len(listing) else np.zeros(0, np.int64)
  if unknown:
    log.warning('%s: %d images of classes unknown to the training split are skipped (%s)',
                listing.description, len(listing) - len(keep), unknown[:10])
  return _take(listing, keep, relabel, name)
