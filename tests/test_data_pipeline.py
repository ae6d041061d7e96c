"""The grain pipelines: determinism, exact resumption (also through orbax), sharding, bad records, eval."""

import json
import os
import threading
import types

import numpy as np
import pytest

from alexnet_jax import configs
from alexnet_jax import data
from alexnet_jax.data import pipeline
from alexnet_jax.data import synthetic
from alexnet_jax.run import checkpoints


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


def test_a_split_smaller_than_the_batch_wraps_around(dataset):
  ds, cfg = dataset                                        # 18 training images
  assert data.steps_per_epoch(ds, 64) == 1 and data.wrap_note(ds, 4) is None
  note = data.wrap_note(ds, 64)
  assert '18 images' in note and 'one global batch of 64' in note and '3-4 times' in note
  kw = dict(global_batch_size=64, seed=0, num_epochs=2)
  batches = list(data.train_iterator(ds, cfg, **kw))
  assert len(batches) == 2 and all(b['image'].shape == (64, 24, 24, 3) for b in batches)
  fn = pipeline.TrainExample(ds, cfg, seed=0, global_batch_size=64, shard_index=0, shard_count=1)
  records = [fn.locate(i)[2] for i in range(64)]
  assert records == [int(fn.permutation(0)[g % 18]) for g in range(64)]
  np.testing.assert_array_equal(batches[0]['label'], ds.split('train').labels[records])
  # the repeats of an image are augmented differently (their draws are keyed on the repeat)
  first, again = batches[0]['image'][0], batches[0]['image'][18]
  assert records[0] == records[18] and not np.array_equal(first, again)
  # and each process takes its share of the wrapped batch; a resume yields the rest
  shards = [list(data.train_iterator(ds, cfg, shard_index=i, shard_count=2, **kw)) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([shards[0][1]['image'], shards[1][1]['image']]),
                                batches[1]['image'])
  it = data.train_iterator(ds, cfg, **kw)
  next(it)
  resumed = data.train_iterator(ds, cfg, **kw)
  resumed.set_state(it.get_state())
  _assert_batches_equal(list(resumed), batches[1:])


def test_an_empty_training_split_is_refused():
  with pytest.raises(data.DataError, match='no images'):
    data.steps_per_epoch(types.SimpleNamespace(split=lambda name: []), 4)


class _Placements:
  """A `DevicePrefetch` place function that records how far ahead of the consumer it was called."""

  def __init__(self, read_ahead_to: int):
    self.placed, self.consumed, self.most_ahead = 0, 0, 0
    self.read_ahead = threading.Event()
    self.read_ahead_to = read_ahead_to

  def __call__(self, batch):
    self.placed += 1
    self.most_ahead = max(self.most_ahead, self.placed - self.consumed)
    if self.placed >= self.read_ahead_to:
      self.read_ahead.set()
    return {'image': batch['image']}, {k: v for k, v in batch.items() if k != 'image'}


def _join(device, host):
  return {**device, **host}


def test_device_prefetch_saves_the_state_of_the_batches_consumed(dataset, tmp_path):
  ds, cfg = dataset
  kw = dict(global_batch_size=4, seed=1, num_epochs=2)
  full = list(data.train_iterator(ds, cfg, **kw))
  place = _Placements(read_ahead_to=5)
  with data.DevicePrefetch(data.train_iterator(ds, cfg, **kw), place, size=2) as batches:
    consumed = []
    for _ in range(3):
      consumed.append(_join(*next(batches)))
      place.consumed += 1
    assert place.read_ahead.wait(timeout=60)               # 5 batches read: 2 ahead of the 3 consumed
    state = batches.get_state()
    rest = []
    for b in batches:
      rest.append(_join(*b))
      place.consumed += 1
  _assert_batches_equal(consumed + rest, full)             # nothing lost or repeated by the read-ahead
  assert place.most_ahead <= 2 + 1                          # bounded: 2 slots (+1 handed over)
  resumed = data.train_iterator(ds, cfg, **kw)
  resumed.set_state(json.loads(state))
  _assert_batches_equal(list(resumed), full[3:])           # the state is the consumed batches'
  # through a snapshot (grain's checkpoint handler), into a fresh prefetcher
  with checkpoints.Checkpointer(tmp_path) as ckpt, \
      data.DevicePrefetch(data.train_iterator(ds, cfg, **kw), place, size=2) as batches:
    for _ in range(3):
      next(batches)
    ckpt.save(3, {'x': np.zeros(1)}, data_iterator=batches)
    ckpt.wait()
    again = data.DevicePrefetch(data.train_iterator(ds, cfg, **kw), place, size=2)
    ckpt.restore(3, data_iterator=again)
    _assert_batches_equal([_join(*b) for b in again], full[3:])
  # without prefetching (size 0): the same batches, each read when asked for
  direct = data.DevicePrefetch(data.train_iterator(ds, cfg, **kw), place, size=0)
  _assert_batches_equal([_join(*b) for b in direct], full)


def test_device_prefetch_raises_the_readers_error_in_the_consumer(dataset):
  ds, cfg = dataset

  def place(batch):
    raise ValueError('cannot place this batch')

  with data.DevicePrefetch(data.train_iterator(ds, cfg, global_batch_size=4, seed=1, num_epochs=1),
                           place, size=2) as batches:
    with pytest.raises(ValueError, match='cannot place'):
      next(batches)
