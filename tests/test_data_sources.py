"""Sources: folder, DIGITS list, tfds (offline mock) -- and their error messages."""

import os

import numpy as np
import pytest

from alexnet_jax.data import errors
from alexnet_jax.data import folders
from alexnet_jax.data import list_source
from alexnet_jax.data import sources
from alexnet_jax.data import synthetic
from alexnet_jax.data import tfds_source


def test_folder_classes_sorted_as_strings(tmp_path):
  names = ['b_class', 'B', 'a', '10', '9']
  synthetic.make_image_folder(str(tmp_path), class_names=names, per_class=2, size=(8, 8))
  (tmp_path / '.hidden_class').mkdir()
  (tmp_path / 'stray.jpg').write_bytes(b'')         # a file at the top level is not a class
  listing = folders.scan_folder(str(tmp_path))
  assert listing.classes == sorted(names) == ['10', '9', 'B', 'a', 'b_class']
  assert np.bincount(listing.labels).tolist() == [2] * 5
  assert os.path.basename(os.path.dirname(listing.keys[0])) == '10'
  assert sources.display_name('b_class') == 'b class'


def test_folder_needs_two_classes(tmp_path):
  synthetic.make_image_folder(str(tmp_path), num_classes=1, per_class=2, size=(8, 8))
  with pytest.raises(errors.DataError, match='at least 2 class'):
    sources.open_source(str(tmp_path), what='--source')
  with pytest.raises(errors.DataError, match=r"--source='/no/such/dir'"):
    sources.open_source('/no/such/dir', what='--source')


def test_list_file(tmp_path):
  paths = synthetic.make_image_folder(str(tmp_path / 'imgs'), num_classes=2, per_class=2, size=(8, 8))
  (tmp_path / 'labels.txt').write_text('zero\n\none\n')
  lines = ['# a comment', ''] + [f'{os.path.relpath(p, tmp_path)} {i % 2}' for i, p in enumerate(paths)]
  (tmp_path / 'train.txt').write_text('\n'.join(lines) + '\n')
  listing = sources.open_source(str(tmp_path / 'train.txt'))
  assert listing.classes == ['zero', 'one']
  assert listing.keys[0] == paths[0] and listing.labels.tolist() == [0, 1, 0, 1]
  # image_root replaces the list's folder as the base of relative paths
  other = list_source.parse_list(str(tmp_path / 'train.txt'), image_root='/elsewhere')
  assert other.keys[0].startswith('/elsewhere/')


def test_list_file_with_spaces_in_paths(tmp_path):
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  (tmp_path / 'l.txt').write_text('/x/my photo 1.jpg 1\n/y/z.jpg   0  \n')
  listing = list_source.parse_list(str(tmp_path / 'l.txt'))
  assert listing.keys == ['/x/my photo 1.jpg', '/y/z.jpg'] and listing.labels.tolist() == [1, 0]


def test_list_file_errors_name_file_and_line(tmp_path):
  (tmp_path / 'labels.txt').write_text('a\nb\n')
  bad = tmp_path / 'bad.txt'
  bad.write_text('/x/1.jpg 0\n/x/2.jpg\n')
  with pytest.raises(errors.DataError, match=r'bad\.txt:2: expected'):
    sources.open_source(str(bad))
  bad.write_text('/x/1.jpg 0\n/x/2.jpg 5\n')
  with pytest.raises(errors.DataError, match=r'bad\.txt:2: label 5 is out of range'):
    sources.open_source(str(bad))
  os.remove(tmp_path / 'labels.txt')
  with pytest.raises(errors.DataError, match='labels file'):
    sources.open_source(str(bad))


def test_tfds_source_offline():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=12):
    listing = sources.open_source('tfds:imagenette:train')
    assert len(listing) == 12 and len(listing.classes) == 10
    assert listing.classes[0] == 'n01440764'
    content = listing.store.read(listing.keys[3])
    assert isinstance(content, (bytes, np.ndarray))
    assert listing.store.describe(3) == 'tfds:imagenette:train#3'
  assert tfds_source.parse_tfds_spec('tfds:mnist') == ('mnist', 'train')
  assert tfds_source.parse_tfds_spec('tfds:mnist:train[:80%]') == ('mnist', 'train[:80%]')


def test_source_kind(tmp_path):
  assert sources.source_kind('tfds:mnist') == 'tfds'
  assert sources.source_kind(str(tmp_path)) == 'folder'
  (tmp_path / 'list.txt').write_text('')
  assert sources.source_kind(str(tmp_path / 'list.txt')) == 'list'
  assert sources.source_kind(str(tmp_path / 'nope')) == 'missing'
