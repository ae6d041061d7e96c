"""DIGITS' split rules, seeded."""

import numpy as np
import pytest

from alexnet_jax.data import errors
from alexnet_jax.data import sources
from alexnet_jax.data import splits


def _listing(counts, names=None):
  names = names or [f'c{i}' for i in range(len(counts))]
  keys, labels = [], []
  for label, n in enumerate(counts):
    keys += [f'/data/{names[label]}/{i}.jpg' for i in range(n)]
    labels += [label] * n
  return sources.Listing(names, keys, np.asarray(labels, np.int32), sources.FileStore(), [], 'test listing')


def test_three_way_split_indices_like_digits():
  assert splits.three_way_split_indices(100, 25, 0) == (75, 100)
  # a = round(6.5) = 7 (Python 2), b = round(2.5) = 3, then c = 0 < 1 asked: b gives one to c.
  assert splits.three_way_split_indices(10, 25, 10) == (7, 9)
  assert splits.three_way_split_indices(2, 25, 0) == (1, 2)       # every asked-for split gets one
  assert splits.three_way_split_indices(3, 10, 10) == (1, 2)
  assert splits.three_way_split_indices(5, 0, 0) == (5, 5)
  assert splits.three_way_split_indices(5, 100, 0) == (0, 5)
  for n in range(1, 40):
    for b, c in [(25, 0), (10, 10), (33, 33), (0, 50)]:
      a, ab = splits.three_way_split_indices(n, b, c)
      assert 0 <= a <= ab <= n


def test_split_is_per_class_seeded_and_stable():
  listing = _listing([40, 12, 7])
  classes, s1, dropped = splits.split_listing(listing, val_percent=25, test_percent=10, min_per_class=2,
                                              max_per_class=0, seed=3)
  _, s2, _ = splits.split_listing(listing, val_percent=25, test_percent=10, min_per_class=2, max_per_class=0,
                                  seed=3)
  _, s3, _ = splits.split_listing(listing, val_percent=25, test_percent=10, min_per_class=2, max_per_class=0,
                                  seed=4)
  assert classes == ['c0', 'c1', 'c2'] and dropped == []
  assert s1['train'].keys == s2['train'].keys and s1['val'].keys == s2['val'].keys
  assert s1['train'].keys != s3['train'].keys
  assert np.bincount(s1["val"].labels).tolist() == [10, 3, 1]
  assert np.bincount(s1['test'].labels).tolist() == [4, 1, 1]
  all_keys = s1['train'].keys + s1['val'].keys + s1['test'].keys
  assert sorted(all_keys) == sorted(listing.keys)
  # Adding a class does not move the images of the others.
  bigger = _listing([40, 12, 7, 9])
  _, s4, _ = splits.split_listing(bigger, val_percent=25, test_percent=10, min_per_class=2, max_per_class=0,
                                  seed=3)
  assert [k for k in s4['val'].keys if '/c3/' not in k] == s1['val'].keys


def test_min_and_max_per_class():
  listing = _listing([30, 1, 5, 3], names=['a', 'tiny', 'b', 'c'])
  classes, s, dropped = splits.split_listing(listing, val_percent=25, test_percent=0, min_per_class=4,
                                             max_per_class=10, seed=0)
  assert classes == ['a', 'b'] and sorted(dropped) == ['c', 'tiny']
  assert np.bincount(s['train'].labels).tolist() == [8, 4] and np.bincount(s['val'].labels).tolist() == [2, 1]
  # max_per_class is a seeded random sample, not the first files
  kept_a = [k for k in s['train'].keys + s['val'].keys if '/a/' in k]
  assert kept_a != [f'/data/a/{i}.jpg' for i in range(10)]
  with pytest.raises(errors.DataError, match='fewer than 2 usable classes'):
    splits.split_listing(listing, val_percent=25, test_percent=0, min_per_class=20, max_per_class=0, seed=0)


def test_percent_errors_name_the_field():
  listing = _listing([5, 5])
  with pytest.raises(errors.DataError, match=r'config\.data\.val_percent'):
    splits.split_listing(listing, val_percent=120, test_percent=0, min_per_class=2, max_per_class=0, seed=0,
                         what='config.data')
  with pytest.raises(errors.DataError, match='> 100'):
    splits.split_listing(listing, val_percent=60, test_percent=60, min_per_class=2, max_per_class=0, seed=0)


def test_separate_validation_source_matched_by_class_name():
  val = _listing([2, 3, 1], names=['c1', 'c0', 'unknown'])
  s = splits.match_classes(val, ['c0', 'c1'], 'val')
  assert s.labels.tolist() == [1, 1, 0, 0, 0] and len(s) == 5
