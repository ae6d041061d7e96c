"""Folder and tfds listings: symbolic links never mislabel an image; listings are cached in the workdir.

The link rules and the cache keys are in the docstrings of alexnet_jax/data/folders.py and tfds_source.py.
"""

import io
import logging
import os
import time

import numpy as np
import PIL.Image
import pytest

from alexnet_jax import configs
from alexnet_jax import data
from alexnet_jax.data import errors
from alexnet_jax.data import preparation
from alexnet_jax.data import folders
from alexnet_jax.data import listing as listing_lib
from alexnet_jax.data import tfds_source
from alexnet_jax.data import splits
from alexnet_jax.data import synthetic


def _age(root, seconds=3600):
  """Sets every folder's mtime back, out of the cache's 'just modified, do not trust' window."""
  past = time.time() - seconds
  for d, _, _ in os.walk(root, followlinks=False):
    os.utime(d, (past, past))


def _empty_images(folder, names):
  os.makedirs(folder, exist_ok=True)
  for n in names:
    open(os.path.join(folder, n), 'wb').close()


def _by_class(listing):
  """{class: sorted key paths}."""
  out = {c: [] for c in listing.classes}
  for k, label in zip(listing.keys, listing.labels):
    out[listing.classes[label]].append(k)
  return {c: sorted(v) for c, v in out.items()}


def _reasons(listing, root):
  """{path relative to root: reason} of what the listing skipped."""
  return {os.path.relpath(s['path'], root): s['reason'] for s in listing.skipped}


def _tree(root, classes=('a', 'b', 'c'), per_class=20):
  for c in classes:
    _empty_images(os.path.join(root, c), [f'{c}{i:02d}.jpg' for i in range(per_class)])


# ---- symbolic links ------------------------------------------------------------------------------------------

def test_link_to_the_root_does_not_list_other_classes_under_a_class(tmp_path, caplog):
  root = str(tmp_path / 'ds')
  _tree(root)
  os.symlink('..', os.path.join(root, 'a', 'loop'))              # ln -s .. a/loop
  with caplog.at_level(logging.WARNING, logger='alexnet_jax.data.folders'):
    listing = folders.scan_folder(root)
  assert len(listing) == 60                                       # (the defect listed 100)
  assert np.bincount(listing.labels).tolist() == [20, 20, 20]
  for c, keys in _by_class(listing).items():
    assert all(os.path.basename(k).startswith(c) for k in keys), c
  assert listing.skipped == [{'path': os.path.join(root, 'a', 'loop'), 'reason': folders.LINK_TO_ANCESTOR,
                              'detail': f'points to {os.path.realpath(root)}'}]
  assert f'skipped 1 ({folders.LINK_TO_ANCESTOR})' in caplog.text


def test_links_above_the_root_into_other_classes_and_duplicates(tmp_path):
  root = str(tmp_path / 'ds')
  _tree(root, per_class=3)
  _empty_images(os.path.join(root, 'b', 'sub'), ['bsub.jpg'])
  a = os.path.join(root, 'a')
  os.symlink('../..', os.path.join(a, 'up'))                      # above the root (tmp_path)
  os.symlink(str(tmp_path), os.path.join(a, 'up_abs'))
  os.symlink('../b', os.path.join(a, 'b_folder'))                 # another class's folder
  os.symlink(os.path.join(root, 'b', 'sub'), os.path.join(a, 'b_sub'))   # inside another class
  os.symlink('../b/b00.jpg', os.path.join(a, 'from_b.jpg'))       # a file of another class
  os.symlink('a01.jpg', os.path.join(a, 'a01_again.jpg'))         # a link beside its target
  _empty_images(str(tmp_path / 'outside'), ['o.jpg'])
  os.symlink(str(tmp_path / 'outside' / 'o.jpg'), os.path.join(a, 'x1.jpg'))   # two links to one file
  os.symlink('../../outside/o.jpg', os.path.join(a, 'x2.jpg'))
  os.makedirs(os.path.join(a, 'nested'))
  os.symlink('../../a', os.path.join(a, 'nested', 'own'))          # back to the class's own folder: harmless
  listing = folders.scan_folder(root)
  assert _by_class(listing) == {
      'a': [os.path.join(a, f'a{i:02d}.jpg') for i in range(3)] + [os.path.join(a, 'x1.jpg')],
      'b': [os.path.join(root, 'b', f'b{i:02d}.jpg') for i in range(3)] + [os.path.join(root, 'b', 'sub', 'bsub.jpg')],
      'c': [os.path.join(root, 'c', f'c{i:02d}.jpg') for i in range(3)]}
  assert _reasons(listing, a) == {
      'up': folders.LINK_TO_ANCESTOR, 'up_abs': folders.LINK_TO_ANCESTOR,
      'b_folder': folders.IN_OTHER_CLASS, 'b_sub': folders.IN_OTHER_CLASS, 'from_b.jpg': folders.IN_OTHER_CLASS,
      'a01_again.jpg': folders.DUPLICATE_LINK, 'x2.jpg': folders.DUPLICATE_LINK}
  # (a/nested/own -> a, back to the class's own folder, adds nothing and is not reported)


def test_links_outside_the_root_are_followed_without_looping(tmp_path):
  root, store = str(tmp_path / 'ds'), str(tmp_path / 'store')
  _tree(root, per_class=2)
  _empty_images(os.path.join(store, 'x'), ['s0.jpg', 's1.jpg'])
  _empty_images(os.path.join(store, 'y'), ['t0.jpg'])
  _empty_images(os.path.join(store, 'z'), ['z0.jpg'])
  os.symlink(store, os.path.join(store, 'x', 'loop'))            # a loop inside the store
  os.symlink(root, os.path.join(store, 'x', 'back'))             # from the store back to the dataset root
  os.symlink(os.path.join(root, 'c'), os.path.join(store, 'x', 'to_c'))   # ... and into another class
  os.symlink(os.path.join(store, 'x'), os.path.join(root, 'a', 'ext'))
  os.symlink(os.path.join(store, 'y', 't0.jpg'), os.path.join(root, 'b', 'linked.jpg'))
  os.symlink(os.path.join(store, 'z'), os.path.join(root, 'd'))  # a class folder that is a link
  os.symlink('..', os.path.join(store, 'z', 'up'))               # above the real folder of class d
  listing = folders.scan_folder(root)
  ext = os.path.join(root, 'a', 'ext')
  assert [k for k, label in zip(listing.keys, listing.labels) if label == 0] == [
      os.path.join(root, 'a', 'a00.jpg'), os.path.join(root, 'a', 'a01.jpg'),
      os.path.join(ext, 's0.jpg'), os.path.join(ext, 's1.jpg'),
      os.path.join(ext, 'loop', 'y', 't0.jpg')]                  # store/x once; store/z is class d's
  got = _by_class(listing)
  assert os.path.join(root, 'b', 'linked.jpg') in got['b'] and len(got['b']) == 3
  assert got['c'] == [os.path.join(root, 'c', f'c{i:02d}.jpg') for i in range(2)]
  assert got['d'] == [os.path.join(root, 'd', 'z0.jpg')]
  assert _reasons(listing, root) == {'a/ext/back': folders.LINK_TO_ANCESTOR, 'a/ext/to_c': folders.IN_OTHER_CLASS,
                               'a/ext/loop/z': folders.IN_OTHER_CLASS, 'd/up': folders.LINK_TO_ANCESTOR}


def test_ordinary_folder_order_is_depth_first_in_name_order(tmp_path):
  root = str(tmp_path / 'ds')
  for rel in ('k1', 'k1/sub_b', 'k1/sub_a/deeper', 'k2', 'K0'):
    os.makedirs(os.path.join(root, rel))
  for rel in ('k1/z.JPG', 'k1/a.png', 'k1/B.jpeg', 'k1/sub_b/1.jpg', 'k1/sub_a/2.bmp', 'k1/sub_a/deeper/3.jpg',
              'k1/sub_a/notes.txt', 'k1/.hidden.jpg', 'k2/only.webp', 'K0/x.tif'):
    open(os.path.join(root, rel), 'wb').close()

  def reference(d):   # the listing rule, written plainly: a folder's files, then its sub-folders, by name
    names = sorted(n for n in os.listdir(d) if not n.startswith('.'))
    files = [os.path.join(d, n) for n in names if os.path.isfile(os.path.join(d, n))
             and n.lower().endswith(data.decode.IMAGE_EXTENSIONS)]
    for n in names:
      if os.path.isdir(os.path.join(d, n)):
        files += reference(os.path.join(d, n))
    return files

  listing = folders.scan_folder(root)
  assert listing.classes == ['K0', 'k1', 'k2']
  assert listing.keys == sum((reference(os.path.join(root, c)) for c in listing.classes), [])
  assert listing.labels.tolist() == [0, 1, 1, 1, 1, 1, 1, 2] and listing.skipped == []


def test_prepare_does_not_mislabel_through_a_loop(tmp_path):
  root = str(tmp_path / 'src')
  synthetic.make_image_folder(root, num_classes=3, per_class=4, size=(16, 12))
  os.symlink('..', os.path.join(root, 'class_0', 'loop'))
  stats = preparation.prepare_dataset(preparation.PrepareOptions(
      source=root, output=str(tmp_path / 'out'), image_size=(8, 8), workers=1, val_percent=25,
      progress_interval_s=0.0), stream=io.StringIO())
  per_class = {c: sum(stats['counts'][s][c] for s in stats['counts']) for c in stats['classes']}
  assert per_class == {'class_0': 4, 'class_1': 4, 'class_2': 4}   # (the defect gave class_0 12)
  assert stats['skipped_by_reason'] == {folders.LINK_TO_ANCESTOR: 1}
  lines = open(tmp_path / 'out' / 'train.txt').read().splitlines()
  for line in lines:
    path, label = line.rsplit(' ', 1)
    assert os.path.basename(os.path.dirname(path)) == stats['classes'][int(label)]


def test_indices_by_class_is_the_plain_loop():
  labels = np.random.default_rng(0).integers(0, 7, 500).astype(np.int32)
  labels[labels == 3] = 4                                 # an empty class
  expected = [[] for _ in range(8)]
  for i, label in enumerate(labels):
    expected[label].append(i)
  got = splits.indices_by_class(labels, 8)
  assert [g.tolist() for g in got] == expected and all(g.dtype == np.int64 for g in got)


# ---- the folder listing cache --------------------------------------------------------------------------------

def _no_scan(monkeypatch):
  monkeypatch.setattr(folders._FolderScan, 'scan_class', lambda *a: pytest.fail('the listing should be cached'))


def test_folder_listing_cached_and_invalidated(tmp_path, monkeypatch):
  root, wd = str(tmp_path / 'ds'), str(tmp_path / 'wd')
  _tree(root, per_class=5)
  os.makedirs(os.path.join(root, 'b', 'sub'))
  _empty_images(os.path.join(root, 'b', 'sub'), ['deep.jpg'])
  os.symlink(str(tmp_path / 'elsewhere' / 'missing.jpg'), os.path.join(root, 'c', 'dangling.jpg'))
  _age(root)
  first = folders.scan_folder(root, cache_dir=wd)
  files = os.listdir(os.path.join(wd, listing_lib.LISTING_CACHE_DIR))
  assert len(files) == 1 and files[0].startswith('folder-') and files[0].endswith('.npz')
  with monkeypatch.context() as m:
    _no_scan(m)
    again = folders.scan_folder(root, cache_dir=wd)
  assert (again.classes, again.keys, again.labels.tolist(), again.skipped, again.description) == (
      first.classes, first.keys, first.labels.tolist(), first.skipped, first.description)
  assert again.labels.dtype == np.int32 and first.skipped[0]['reason'] == errors.DANGLING

  def relisted(change):
    change()
    _age(str(tmp_path))
    return folders.scan_folder(root, cache_dir=wd)

  # a file added in a sub-folder, a class folder added, a dangling link that now resolves
  assert os.path.join(root, 'b', 'sub', 'new.jpg') in relisted(
      lambda: _empty_images(os.path.join(root, 'b', 'sub'), ['new.jpg'])).keys
  assert relisted(lambda: _empty_images(os.path.join(root, 'e'), ['e.jpg'])).classes == ['a', 'b', 'c', 'e']
  fixed = relisted(lambda: _empty_images(str(tmp_path / 'elsewhere'), ['missing.jpg']))
  assert os.path.join(root, 'c', 'dangling.jpg') in fixed.keys and not fixed.skipped
  with monkeypatch.context() as m:   # and the new listing is the cached one
    _no_scan(m)
    assert folders.scan_folder(root, cache_dir=wd).keys == fixed.keys
  assert len(os.listdir(os.path.join(wd, listing_lib.LISTING_CACHE_DIR))) == 1   # overwritten, not piled up


def test_folder_cache_distrusts_just_modified_folders_and_damage(tmp_path, monkeypatch, caplog):
  root, wd = str(tmp_path / 'ds'), str(tmp_path / 'wd')
  _tree(root, per_class=2)
  folders.scan_folder(root, cache_dir=wd)                # folders modified just now: not trusted...
  calls = []
  real_scan = folders._FolderScan.scan_class
  monkeypatch.setattr(folders._FolderScan, 'scan_class', lambda self, label: calls.append(label) or
                      real_scan(self, label))
  folders.scan_folder(root, cache_dir=wd)
  assert calls == [0, 1, 2]                              # ...so it listed again
  _age(root)
  folders.scan_folder(root, cache_dir=wd)
  calls.clear()
  folders.scan_folder(root, cache_dir=wd)
  assert calls == []                                     # old folders: the cache holds
  cache = os.path.join(wd, listing_lib.LISTING_CACHE_DIR)
  for name in os.listdir(cache):
    with open(os.path.join(cache, name), 'wb') as f:
      f.write(b'not a zip file')
  with caplog.at_level(logging.WARNING, logger='alexnet_jax.data.folders'):
    assert len(folders.scan_folder(root, cache_dir=wd)) == 6
  assert 'ignoring the unreadable listing cache' in caplog.text and calls == [0, 1, 2]


def test_load_dataset_caches_the_listing_in_metadata_dir(tmp_path, monkeypatch):
  root, wd = str(tmp_path / 'imgs'), str(tmp_path / 'wd')
  synthetic.make_image_folder(root, num_classes=3, per_class=6, size=(20, 16))
  _age(root)
  cfg = configs.default_config().data
  cfg.source, cfg.image_size, cfg.crop_size, cfg.mean = root, 16, 16, 'none'
  ds = data.load_dataset(cfg, seed=0, metadata_dir=wd)
  assert os.listdir(os.path.join(wd, listing_lib.LISTING_CACHE_DIR))
  _no_scan(monkeypatch)
  again = data.load_dataset(cfg, seed=0, metadata_dir=wd)
  assert again.classes == ds.classes and again.split_sizes == ds.split_sizes
  for name in ds.splits:
    assert again.split(name).keys == ds.split(name).keys
    np.testing.assert_array_equal(again.split(name).labels, ds.split(name).labels)


# ---- tfds ------------------------------------------------------------------------------------------------------

def test_tfds_labels_cached_per_split(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  wd = str(tmp_path / 'wd')
  with tfds.testing.mock_data(num_examples=40):
    first = tfds_source.list_tfds('tfds:imagenette:train', cache_dir=wd)
    src = first.store.source
    assert first.labels.tolist() == [int(src[i]['label']) for i in range(40)]
    other = tfds_source.list_tfds('tfds:imagenette:validation', cache_dir=wd)
    names = sorted(os.listdir(os.path.join(wd, listing_lib.LISTING_CACHE_DIR)))
    assert len(names) == 2 and all(n.startswith('tfds-') for n in names)
    monkeypatch.setattr(tfds_source, 'read_tfds_labels',
                        lambda *a: pytest.fail('the labels should be cached'))
    again = tfds_source.list_tfds('tfds:imagenette:train', cache_dir=wd)
    assert again.labels.tolist() == first.labels.tolist() and again.keys == list(range(40))
    again_other = tfds_source.list_tfds('tfds:imagenette:validation', cache_dir=wd)
    assert again_other.labels.tolist() == other.labels.tolist()
  with tfds.testing.mock_data(num_examples=41):          # another record count: not the same dataset
    monkeypatch.undo()
    assert len(tfds_source.list_tfds('tfds:imagenette:train', cache_dir=wd)) == 41


def _tiny_builder():
  """A real ArrayRecord tfds dataset class (defined lazily: tfds registers builders by class name)."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class AlexnetJaxListingTest(tfds.core.GeneratorBasedBuilder):
    # A top-level module name: for a class of a package module (tests.*), tfds 4.9.10 looks for its code
    # with `importlib_resources`, which is not installed.
    __module__ = 'alexnet_jax_listing_test'
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
          'label': tfds.features.ClassLabel(names=['p', 'q', 'r'])}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(37)}

    def _generate_examples(self, n):
      for i in range(n):
        buf = io.BytesIO()
        PIL.Image.fromarray(np.full((4, 5, 3), i, np.uint8)).save(buf, 'PNG')
        yield i, {'image': buf.getvalue(), 'label': (i * 7) % 3}

  return AlexnetJaxListingTest


def test_tfds_labels_from_raw_records_of_a_real_array_record_dataset(tmp_path, monkeypatch):
  builder_cls = _tiny_builder()
  data_dir = str(tmp_path / 'tfds')
  builder_cls(data_dir=data_dir, file_format='array_record').download_and_prepare()
  monkeypatch.setattr(tfds_source, '_TFDS_BATCH', 8)          # several ranges, read by several threads
  store = tfds_source.TfdsStore('alexnet_jax_listing_test', 'train', data_dir)
  assert tfds_source._raw_label_reader(store, 37) is not None   # the fast path is the one taken
  listing = tfds_source.list_tfds('tfds:alexnet_jax_listing_test', data_dir=data_dir,
                                  cache_dir=str(tmp_path / 'wd'))
  assert listing.classes == ['p', 'q', 'r']
  assert sorted(listing.labels.tolist()) == sorted((i * 7) % 3 for i in range(37))
  assert listing.labels.tolist() == [listing.store.label(i) for i in range(37)]
