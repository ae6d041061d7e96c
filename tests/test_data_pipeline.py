"""The grain pipelines: determinism, exact resumption (also through orbax), sharding, bad records, eval."""

import os

import numpy as np
import pytest

from alexnet_jax import configs
from alexnet_jax import data
from alexnet_jax.data import pipeline
from alexnet_jax.data import synthetic


def _cfg(source, **kw):
  c = configs.default_config().data
  c.source = source
  # These tests pin the host path's float32 contract; tests/test_device_augment.py tests the device one.
  c.augment_on = 'host'
  c.image_size, c.crop_size = 32, 24
  c.val_percent = 25.0
  c.num_threads = 2
  c.prefetch = 2
  for k, v in kw.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('imgs'))
  synthetic.make_image_folder(root, num_classes=3, per_class=8, size=(40, 32))
  return root


@pytest.fixture(scope='module')
def dataset(folder):
  cfg = _cfg(folder, resize_mode='half_crop')
  return data.load_dataset(cfg, seed=0), cfg


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_contract(dataset):
  ds, cfg = dataset
  assert ds.split_sizes == {'train': 18, 'val': 6}
  assert data.steps_per_epoch(ds, 4) == 4
  it = data.train_iterator(ds, cfg, global_batch_size=4, seed=0, num_epochs=2)
  batches = list(it)
  assert len(batches) == 8                                  # 4 steps x 2 epochs, remainder dropped
  b = batches[0]
  assert b['image'].shape == (4, 24, 24, 3) and b['image'].dtype == np.float32
  assert b['label'].dtype == np.int32 and b['replaced'].dtype == np.bool_ and not b['replaced'].any()
  assert -255 <= b['image'].min() and b['image'].max() <= 255 and abs(b['image'].mean()) < 60


def test_same_seed_same_batches_other_seed_other_batches(dataset):
  ds, cfg = dataset
  a = _take(data.train_iterator(ds, cfg, global_batch_size=4, seed=5, num_epochs=1), 3)
  b = _take(data.train_iterator(ds, cfg, global_batch_size=4, seed=5, num_epochs=1), 3)
  c = _take(data.train_iterator(ds, cfg, global_batch_size=4, seed=6, num_epochs=1), 3)
  _assert_batches_equal(a, b)
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_epochs_are_reshuffled_permutations(dataset):
  ds, cfg = dataset
  fn = pipeline.TrainExample(ds, cfg, seed=0, global_batch_size=4, shard_index=0, shard_count=1)
  per_epoch = fn.steps * fn.local_batch
  e0 = [fn.locate(i)[2] for i in range(per_epoch)]
  e1 = [fn.locate(i)[2] for i in range(per_epoch, 2 * per_epoch)]
  assert len(set(e0)) == len(e0) == 16 and len(set(e1)) == 16 and e0 != e1
  batches = list(data.train_iterator(ds, cfg, global_batch_size=4, seed=0, num_epochs=2))
  labels = np.concatenate([b['label'] for b in batches])
  np.testing.assert_array_equal(labels, ds.split('train').labels[e0 + e1])


def test_resumed_iterator_yields_exactly_the_remaining_batches(dataset):
  ds, cfg = dataset
  kw = dict(global_batch_size=4, seed=1, num_epochs=2)
  full = list(data.train_iterator(ds, cfg, **kw))
  it = data.train_iterator(ds, cfg, **kw)
  _take(it, 3)
  state = it.get_state()
  resumed = data.train_iterator(ds, cfg, **kw)
  resumed.set_state(state)
  _assert_batches_equal(list(resumed), full[3:])           # across the epoch boundary too


def test_resume_through_orbax_checkpoint(dataset, tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  import grain
  ds, cfg = dataset
  kw = dict(global_batch_size=4, seed=2, num_epochs=2)
  it = data.train_iterator(ds, cfg, **kw)
  _take(it, 5)
  mngr = ocp.CheckpointManager(str(tmp_path / 'ckpt'))
  mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  expected = list(it)
  fresh = data.train_iterator(ds, cfg, **kw)
  mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  mngr.close()
  _assert_batches_equal(list(fresh), expected)


def test_shards_concatenate_to_the_global_batch(dataset):
  ds, cfg = dataset
  whole = _take(data.train_iterator(ds, cfg, global_batch_size=4, seed=0, num_epochs=1), 2)
  parts = [_take(data.train_iterator(ds, cfg, global_batch_size=4, seed=0, num_epochs=1, shard_index=i,
                                     shard_count=2), 2) for i in range(2)]
  for step in range(2):
    for k in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([parts[0][step][k], parts[1][step][k]]), whole[step][k])
  with pytest.raises(data.DataError, match='not divisible'):
    data.train_iterator(ds, cfg, global_batch_size=5, seed=0, num_epochs=1, shard_count=2)


def test_augmentation_switches(dataset):
  ds, cfg = dataset
  plain = _cfg(cfg.source, resize_mode='half_crop', random_crop=False, flip=False, pca_lighting=False)
  a = _take(data.train_iterator(ds, plain, global_batch_size=4, seed=0, num_epochs=1), 1)[0]
  fn = pipeline.TrainExample(ds, plain, seed=0, global_batch_size=4, shard_index=0, shard_count=1)
  rec = fn.locate(0)[2]
  # Without augmentation a training example is the eval centre crop (within 1 grey level: fast resize path).
  want = data.preprocess_for_eval(ds.split('train').keys[rec], ds.contract)
  assert np.abs(a['image'][0] - want).max() <= 1.0


def test_bad_record_is_replaced_and_counted(tmp_path):
  root = str(tmp_path / 'imgs')
  synthetic.make_image_folder(root, num_classes=2, per_class=6, size=(32, 32))
  bad = os.path.join(root, 'class_0', '000.jpg')
  with open(bad, 'wb') as f:
    f.write(b'\xff\xd8 broken')
  cfg = _cfg(root, val_percent=0.0, mean='none', pca_lighting=False)
  ds = data.load_dataset(cfg, seed=0)
  batches = list(data.train_iterator(ds, cfg, global_batch_size=4, seed=0, num_epochs=2))
  replaced = np.concatenate([b['replaced'] for b in batches])
  assert len(replaced) == 24 and replaced.sum() == 2        # the bad record comes once per epoch
  again = list(data.train_iterator(ds, cfg, global_batch_size=4, seed=0, num_epochs=2))
  _assert_batches_equal(batches, again)                     # replacement is deterministic too
  ev = list(data.eval_iterator(ds, cfg, 'train', global_batch_size=5))
  mask = np.concatenate([b['mask'] for b in ev])
  assert mask.sum() == 11 and np.concatenate([b['replaced'] for b in ev]).sum() == 1


def test_eval_covers_every_example_once(dataset):
  ds, cfg = dataset
  val = ds.split('val')
  batches = list(data.eval_iterator(ds, cfg, 'val', global_batch_size=4))
  assert len(batches) == 2
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.tolist() == [True] * 6 + [False] * 2
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches])[:6], val.labels)
  images = np.concatenate([b['image'] for b in batches])
  for i, path in enumerate(val.keys):
    np.testing.assert_array_equal(images[i], data.preprocess_for_eval(path, ds.contract))
  assert not images[6:].any()
  # two shards together cover the split once
  shard = [list(data.eval_iterator(ds, cfg, 'val', global_batch_size=4, shard_index=i, shard_count=2))
           for i in range(2)]
  labels = [np.concatenate([b['label'][b['mask']] for b in s]) for s in shard]
  assert sorted(np.concatenate(labels).tolist()) == sorted(val.labels.tolist())


def test_ten_crop_eval(dataset):
  ds, cfg = dataset
  b = next(iter(data.eval_iterator(ds, cfg, 'val', global_batch_size=3, ten_crop=True)))
  assert b['image'].shape == (3, 10, 24, 24, 3)
  path = ds.split('val').keys[0]
  np.testing.assert_array_equal(b['image'][0], data.preprocess_for_eval(path, ds.contract, ten_crop=True))
  np.testing.assert_array_equal(b['image'][0, 4], data.preprocess_for_eval(path, ds.contract))


def test_worker_processes_give_the_same_batches(dataset):
  ds, cfg = dataset
  threads = _take(data.train_iterator(ds, cfg, global_batch_size=4, seed=0, num_epochs=1), 2)
  mp_cfg = _cfg(cfg.source, resize_mode='half_crop', worker_count=1)
  it = data.train_iterator(ds, mp_cfg, global_batch_size=4, seed=0, num_epochs=1)
  _assert_batches_equal(_take(it, 2), threads)


def test_too_small_for_a_batch(dataset):
  ds, _ = dataset
  with pytest.raises(data.DataError, match='fewer than one global batch'):
    data.steps_per_epoch(ds, 64)
