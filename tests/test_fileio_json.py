"""runtime/fileio.py's JSON: one sanitizer (``plain``) and one reader/writer for every file of the package."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

import numpy as np

from alexnet_jax.runtime import fileio


@dataclasses.dataclass
class _Point:
  x: float
  label: str


def test_plain_turns_numpy_paths_and_dataclasses_into_json():
  value = {1: np.float32(0.1), 'n': np.int64(7), 'flag': np.bool_(True), 'arr': np.arange(3, dtype=np.int32),
           't': (1, 2.5), 'path': pathlib.Path('/a/b'), 'point': _Point(np.float64(2.0), 'p'),
           'other': object}
  out = fileio.plain(value)
  assert out == {'1': float(np.float32(0.1)), 'n': 7, 'flag': True, 'arr': [0, 1, 2], 't': [1, 2.5],
                 'path': '/a/b', 'point': {'x': 2.0, 'label': 'p'}, 'other': str(object)}
  assert type(out['n']) is int and type(out['flag']) is bool and type(out['1']) is float
  assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_plain_makes_non_finite_numbers_null_unless_told_to_keep_them():
  value = {'loss': float('nan'), 'lr': np.float32('inf'), 'per_class': np.array([0.5, np.nan]), 'ok': 1.0}
  assert fileio.plain(value) == {'loss': None, 'lr': None, 'per_class': [0.5, None], 'ok': 1.0}
  kept = fileio.plain(value, finite=False)
  assert math.isnan(kept['loss']) and kept['lr'] == math.inf and math.isnan(kept['per_class'][1])


def test_read_json_is_none_for_missing_broken_or_cut_files(tmp_path):
  path = tmp_path / 'doc.json'
  assert fileio.read_json(path) is None
  fileio.write_json(path, {'a': [1, 2]}, indent=1, fsync=True)
  assert fileio.read_json(path) == {'a': [1, 2]}
  assert path.read_text() == '{\n "a": [\n  1,\n  2\n ]\n}'
  assert os.listdir(tmp_path) == ['doc.json']          # no temporary file left behind
  assert fileio.read_json(path, max_bytes=5) is None    # cut short: not JSON
  path.write_bytes(b'{"a": \xff}')
  assert fileio.read_json(path) is None
