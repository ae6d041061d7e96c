"""load_dataset: every source kind, the mean image and its cache, the saved contract, config errors."""

import io
import json
import os

import numpy as np
import pytest

from alexnet_jax import configs
from alexnet_jax import data
from alexnet_jax.data import dataset as dataset_lib
from alexnet_jax.data import loading
from alexnet_jax.data import statistics
from alexnet_jax.data import synthetic


def _cfg(source, **kw):
  c = configs.default_config().data
  c.source = source
  c.image_size, c.crop_size = 32, 28
  c.num_threads = 2
  c.augment_on = 'host'   # these tests read the host's float32 crops; test_device_augment.py the device's
  for k, v in kw.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('imgs'))
  synthetic.make_image_folder(root, num_classes=3, per_class=6, size=(40, 30))
  return root


def test_folder_dataset_and_exact_mean_image(folder):
  cfg = _cfg(folder, resize_mode='fill', mean_max_images=0)
  ds = data.load_dataset(cfg, seed=0)
  assert ds.classes == ['class_0', 'class_1', 'class_2'] and ds.num_classes == 3
  # 6 per class at 25%: train round(4.5) = 5 (Python 2 rounding, as DIGITS), validation the 1 left
  assert ds.split_sizes == {'train': 15, 'val': 3} and ds.has_split('val') and not ds.has_split('test')
  assert ds.mean_image.shape == (32, 32, 3) and ds.mean_image.dtype == np.float32
  train = ds.split('train')
  imgs = [loading.load_resized(k, image_size=32, resize_mode='fill', channels=3,
                               noise_rng=loading.record_noise_rng(0, i)) for i, k in enumerate(train.keys)]
  np.testing.assert_allclose(ds.mean_image, np.mean(imgs, axis=0), rtol=1e-5)
  assert ds.class_counts('train').tolist() == [5, 5, 5]


def test_mean_modes_and_no_pass_for_none(folder, monkeypatch):
  pixel = data.load_dataset(_cfg(folder, mean='pixel'), seed=0)
  np.testing.assert_allclose(pixel.contract.mean[0, 0], pixel.mean_image.mean(axis=(0, 1)), rtol=1e-5)
  np.testing.assert_allclose(pixel.contract.mean[5, 9], pixel.contract.mean[0, 0])
  monkeypatch.setattr(statistics, 'compute_moments', lambda *a, **k: pytest.fail('no pass expected'))
  none = data.load_dataset(_cfg(folder, mean='none'), seed=0)
  assert not none.contract.mean.any() and not none.mean_image.any()


def test_mean_cached_in_metadata_dir(folder, tmp_path, monkeypatch):
  cfg = _cfg(folder)
  ds = data.load_dataset(cfg, seed=0, metadata_dir=str(tmp_path))
  ds.save_metadata(str(tmp_path))
  assert (tmp_path / 'labels.txt').read_text().split() == ds.classes
  contract = json.loads((tmp_path / 'preprocess.json').read_text())
  assert {k: contract[k] for k in ('image_size', 'crop_size', 'resize_mode', 'channels', 'mean')} == {
      'image_size': [32, 32], 'crop_size': 28, 'resize_mode': 'squash', 'channels': 3, 'mean': 'image'}
  monkeypatch.setattr(statistics, 'compute_moments', lambda *a, **k: pytest.fail('mean should be cached'))
  again = data.load_dataset(cfg, seed=0, metadata_dir=str(tmp_path))
  np.testing.assert_array_equal(again.mean_image, ds.mean_image)
  # another geometry invalidates the cache
  monkeypatch.undo()
  other = data.load_dataset(_cfg(folder, resize_mode='crop'), seed=0, metadata_dir=str(tmp_path))
  assert not np.array_equal(other.mean_image, ds.mean_image)


def test_a_rewrite_that_fails_halfway_leaves_the_saved_metadata_whole(folder, tmp_path, monkeypatch):
  """A resume rewrites labels.txt, mean.npy and preprocess.json while the dashboard may read them (a
  census, Classify): a reader must find the old file or the new one, never half of one. Here the mean
  stops halfway (a full disk, a kill) during the second save."""
  ds = data.load_dataset(_cfg(folder), seed=0)
  ds.save_metadata(str(tmp_path))
  saved = {name: (tmp_path / name).read_bytes() for name in ('labels.txt', 'mean.npy', 'preprocess.json')}
  real_save = np.save

  def save_half(file, array):
    buffer = io.BytesIO()
    real_save(buffer, array)
    half = buffer.getvalue()[:len(buffer.getvalue()) // 2]
    if isinstance(file, (str, os.PathLike)):
      with open(file, 'wb') as f:
        f.write(half)
    else:
      file.write(half)
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(np, 'save', save_half)
  with pytest.raises(OSError):
    ds.save_metadata(str(tmp_path))
  monkeypatch.undo()
  for name, content in saved.items():
    assert (tmp_path / name).read_bytes() == content, name
  np.testing.assert_array_equal(data.load_contract(str(tmp_path)).mean_image, ds.mean_image)
  assert sorted(os.listdir(tmp_path)) == sorted(saved)        # no temporary file left behind


def test_saved_contract_reproduces_eval_preprocessing(folder, tmp_path):
  cfg = _cfg(folder, resize_mode='fill')
  ds = data.load_dataset(cfg, seed=0)
  ds.save_metadata(str(tmp_path))
  contract = data.load_contract(str(tmp_path))
  path = ds.split('val').keys[2]
  batch = next(iter(data.eval_iterator(ds, cfg, 'val', global_batch_size=3)))
  np.testing.assert_array_equal(data.preprocess_for_eval(path, contract), batch['image'][2])
  np.testing.assert_array_equal(data.preprocess_for_eval(path, str(tmp_path)), batch['image'][2])


def test_pca_from_training_split(folder):
  ds = data.load_dataset(_cfg(folder, pca_eigen='train'), seed=0)
  assert ds.pca_eigval.shape == (3,) and ds.pca_eigval[0] >= ds.pca_eigval[1] >= ds.pca_eigval[2] >= 0
  assert not np.allclose(ds.pca_eigval, data.transforms.IMAGENET_EIGVAL)
  np.testing.assert_allclose(ds.pca_eigvec.T @ ds.pca_eigvec, np.eye(3), atol=1e-5)


def test_list_source_with_separate_validation_list(folder, tmp_path):
  train_paths = [os.path.join(folder, c, f'{i:03d}.jpg') for c in ('class_0', 'class_1') for i in range(4)]
  (tmp_path / 'labels.txt').write_text('class_0\nclass_1\n')
  (tmp_path / 'train.txt').write_text(''.join(f'{p} {i // 4}\n' for i, p in enumerate(train_paths)))
  (tmp_path / 'val.txt').write_text(f'{folder}/class_1/005.jpg 1\n{folder}/class_0/005.jpg 0\n')
  cfg = _cfg(str(tmp_path / 'train.txt'), val_source=str(tmp_path / 'val.txt'), mean='none')
  ds = data.load_dataset(cfg, seed=0)
  assert ds.classes == ['class_0', 'class_1'] and ds.split_sizes == {'train': 8, 'val': 2}
  assert ds.split('val').labels.tolist() == [1, 0]


def test_grayscale_dataset(folder):
  cfg = _cfg(folder, channels=1)
  ds = data.load_dataset(cfg, seed=0)
  assert ds.mean_image.shape == (32, 32, 1)
  b = next(data.train_iterator(ds, cfg, global_batch_size=4, seed=0, num_epochs=1))
  assert b['image'].shape == (4, 28, 28, 1)


def test_tfds_source_end_to_end():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=24):
    cfg = _cfg('tfds:imagenette', val_percent=0.0, min_per_class=1, val_source='tfds:imagenette:validation')
    ds = data.load_dataset(cfg, seed=0)
    assert ds.num_classes >= 2 and ds.split_sizes['val'] == 24
    b = next(data.train_iterator(ds, cfg, global_batch_size=4, seed=0, num_epochs=1))
    assert b['image'].shape == (4, 28, 28, 3) and not b['replaced'].any()
    e = next(iter(data.eval_iterator(ds, cfg, 'val', global_batch_size=4, ten_crop=True)))
    assert e['image'].shape == (4, 10, 28, 28, 3) and e['mask'].all()


@pytest.mark.parametrize('field, value, message', [
    ('resize_mode', 'stretch', r'config\.data\.resize_mode'),
    ('channels', 2, r'config\.data\.channels'),
    ('mean', 'median', r'config\.data\.mean'),
    ('crop_size', 64, r'config\.data\.crop_size'),
    ('source', '/no/such/place', r'config\.data\.source'),
])
def test_config_errors_name_the_field(folder, field, value, message):
  with pytest.raises(data.DataError, match=message):
    cfg = _cfg(folder)
    setattr(cfg, field, value)
    data.load_dataset(cfg, seed=0)


def test_config_defaults_have_the_new_fields():
  c = configs.default_config().data
  for name in ('mean_max_images', 'pca_eigen', 'draft', 'labels_file', 'tfds_data_dir'):
    assert name in c, name
  assert dataset_lib._get(c, 'pca_eigen', None) in dataset_lib.PCA_EIGEN
