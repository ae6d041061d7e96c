"""One of each: the tree flattener and the parameter count (models/trees.py), the thumbnail (data/reports.py)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from alexnet_jax.data import reports
from alexnet_jax.models import trees


def test_flatten_round_trips_and_counts():
  tree = {'towers': {'conv1': {'kernel': np.zeros((2, 3)), 'bias': np.zeros(3)}}, 'head': {'bias': np.zeros(1)}}
  flat = trees.flatten(tree)
  assert list(flat) == ['towers/conv1/kernel', 'towers/conv1/bias', 'head/bias']
  again = trees.unflatten(flat)
  assert again['head']['bias'] is flat['head/bias']
  assert again['towers']['conv1']['kernel'] is flat['towers/conv1/kernel']
  assert list(trees.flatten({'data': {'source': 's'}, 'seed': 0}, '.')) == ['data.source', 'seed']
  assert list(trees.leaves_by_path({'a': {}, 'b': {'c': 1}})) == [(('b', 'c'), 1)]   # empty dicts vanish
  assert trees.param_count(tree) == 6 + 3 + 1


def test_thumbnail_fits():
  wide = PIL.Image.fromarray(np.full((30, 60, 3), 10, np.uint8))
  assert reports.thumbnail(wide, 16).size == (16, 16)                          # squash
  padded = np.asarray(reports.thumbnail(wide, 16, fit='pad'))
  assert padded.shape == (16, 16, 3) and (padded[0] == 255).all() and (padded[8] == 10).all()
  assert reports.thumbnail(wide, 20, fit='within').size == (20, 10)
  assert reports.thumbnail(wide, 200, fit='within').size == (60, 30)            # never enlarged
  gray = np.zeros((5, 7, 1), np.uint8)
  assert np.asarray(reports.thumbnail(gray, 4)).shape == (4, 4, 3)
  with pytest.raises(ValueError, match='fit='):
    reports.thumbnail(wide, 8, fit='crop')
