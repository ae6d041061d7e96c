"""grain pipelines: deterministic, resumable training batches and exact-coverage evaluation batches.

Training (`train_iterator`) is one `grain.MapDataset` over *every example of the whole run*:

    MapDataset.range(num_epochs * steps_per_epoch * B_local)
      .map(TrainExample)          # position -> (epoch, record) -> decode + resize the crop window (uint8)
      .batch(B_local, drop_remainder=True, batch_fn=TrainBatch)   # float32, mean, mirror, PCA lighting
      .to_iter_dataset(ReadOptions(num_threads, prefetch))   [.mp_prefetch(workers) if worker_count > 0]

Position i of the run belongs to epoch `i // (steps * B_local)`; inside the epoch it is row r of local batch
s, i.e. global position `g = s * B_global + shard_index * B_local + r`, and the record at g is
`perm_epoch[g]` with `perm_epoch = default_rng([seed, tag, epoch]).permutation(n)`: every epoch is reshuffled,
deterministically, the same way on every host, and each host (shard) takes its own slice of every global
batch. The remainder of each epoch (n mod B_global records) is dropped. Because each element is a pure
function of its position, the iterator state is just grain's `{'next_index': k}` and a restored iterator
yields exactly the remaining batches -- through orbax too (`grain.checkpoint.CheckpointSave/Restore`).

Augmentation randomness is drawn from `default_rng([seed, tag, epoch, record, attempt])`: the crop offsets,
then the mirror coin, then the PCA lighting coefficients. (A plain `map` with this explicit key rather than
grain's `random_map`, whose seed follows the element's position: keyed on the record, an example's
augmentation does not depend on the batch size or on how many hosts share the batch.) Fill-mode padding
noise is keyed on (seed, record) only, so a padded image keeps one padding for the whole run, as in a
DIGITS dataset.

A record that fails to decode is replaced by another record drawn deterministically from
(seed, epoch, position, attempt), up to 10 attempts, and the example is flagged `replaced=True`, so that the
trainer can count replacements in its metrics. A run therefore never stops on one bad file; it stops with
a clear error only if 10 records in a row fail (the dataset is unreadable).

Evaluation (`eval_iterator`) covers every example of a split exactly once, in order, padded to whole
batches (`mask` False on padding and on records that failed to decode), with `contract.preprocess_for_eval`
-- the function classification uses too.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from alexnet_jax.data import contract as contract_lib
from alexnet_jax.data import errors
from alexnet_jax.data import loading
from alexnet_jax.data import transforms

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 10
_PERM_TAG, _AUG_TAG, _REPLACE_TAG = 0x9E53, 0xA06, 0x4E9
_MAX_WARNINGS = 20
_warned = set()
_warn_lock = threading.Lock()


def _u63(x: int) -> int:
  return int(x) % (1 << 63)


def _warn_bad(description: str, err: errors.DecodeError) -> None:
  with _warn_lock:
    if description in _warned or len(_warned) >= _MAX_WARNINGS:
      return
    _warned.add(description)
    more = ' (further bad records are not logged)' if len(_warned) == _MAX_WARNINGS else ''
  log.warning('bad record %s (%s); replaced by another record%s', description, err, more)


def steps_per_epoch(dataset, global_batch_size: int) -> int:
  """Full global batches per epoch over the training split (the remainder is dropped)."""
  n = len(dataset.split('train'))
  if global_batch_size <= 0:
    raise errors.DataError(f'global batch size {global_batch_size} must be positive')
  steps = n // global_batch_size
  if steps == 0:
    raise errors.DataError(
        f'the training split has {n} images, fewer than one global batch of {global_batch_size}; '
        'lower the batch size')
  return steps


def _local_batch(global_batch_size: int, shard_index: int, shard_count: int) -> int:
  if shard_count <= 0 or not 0 <= shard_index < shard_count:
    raise errors.DataError(f'shard_index={shard_index} must be in 0..shard_count-1 (shard_count={shard_count})')
  if global_batch_size % shard_count:
    raise errors.DataError(f'global batch size {global_batch_size} is not divisible by the {shard_count} '
                           'data shards (processes)')
  return global_batch_size // shard_count


class TrainExample:
  """Position in the run -> one augmented training example (see the module docstring). Picklable."""

  def __init__(self, dataset, data_config, *, seed: int, global_batch_size: int, shard_index: int,
               shard_count: int):
    split = dataset.split('train')
    self.keys, self.labels, self.store = split.keys, split.labels, split.store
    self.n = len(split)
    c = dataset.contract
    self.size, self.crop, self.mode, self.channels, self.draft = (
        c.image_size, c.crop_size, c.resize_mode, c.channels, c.draft)
    self.seed = _u63(seed)
    self.global_batch = global_batch_size
    self.local_batch = _local_batch(global_batch_size, shard_index, shard_count)
    self.shard_index = shard_index
    self.steps = steps_per_epoch(dataset, global_batch_size)
    self.pads = self.mode in ('fill', 'half_crop') and not self.store.prepared   # needs fill noise
    self.random_crop = bool(data_config.random_crop)
    self.flip = bool(data_config.flip)
    self.pca = bool(data_config.pca_lighting) and self.channels == 3 and float(data_config.pca_std) > 0
    self.pca_std = float(data_config.pca_std)
    self.eigval, self.eigvec = dataset.pca_eigval, dataset.pca_eigvec
    self._perms: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_perms'], state['_lock'] = {}, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def permutation(self, epoch: int) -> np.ndarray:
    """The record order of one epoch (cached; a few epochs at a time)."""
    perm = self._perms.get(epoch)
    if perm is None:
      with self._lock:
        perm = self._perms.get(epoch)
        if perm is None:
          perm = np.random.default_rng([self.seed, _PERM_TAG, epoch]).permutation(self.n)
          if len(self._perms) >= 3:
            self._perms.pop(min(self._perms))
          self._perms[epoch] = perm
    return perm

  def locate(self, i: int) -> tuple[int, int, int]:
    """Run position -> (epoch, global position in the epoch, record index)."""
    per_epoch = self.steps * self.local_batch
    epoch, j = divmod(int(i), per_epoch)
    s, r = divmod(j, self.local_batch)
    g = s * self.global_batch + self.shard_index * self.local_batch + r
    return epoch, g, int(self.permutation(epoch)[g])

  def _example(self, record: int, epoch: int, attempt: int) -> dict:
    rng = np.random.default_rng([self.seed, _AUG_TAG, epoch, record, attempt])
    if self.random_crop:
      y, x = transforms.random_offsets(rng, self.size, self.size, self.crop)
    else:
      y, x = transforms.center_offsets(self.size, self.size, self.crop)
    mirror = self.flip and rng.random() < 0.5
    window = loading.load_resized(
        self.store.read(self.keys[record]), image_size=self.size, resize_mode=self.mode,
        channels=self.channels, window=(x, y, self.crop, self.crop),
        noise_rng=loading.record_noise_rng(self.seed, record) if self.pads else None, exact=False,
        draft=self.draft)
    shift = (transforms.pca_lighting_shift(rng, self.pca_std, self.eigval, self.eigvec) if self.pca
             else None)
    return {'window': window, 'y': y, 'x': x, 'mirror': mirror, 'shift': shift}

  def __call__(self, i: int) -> dict:
    """One example, still uint8: `TrainBatch` does the float work once per batch, in place."""
    epoch, g, record = self.locate(i)
    for attempt in range(MAX_ATTEMPTS):
      try:
        ex = self._example(record, epoch, attempt)
        ex.update(label=np.int32(self.labels[record]), replaced=attempt > 0)
        return ex
      except errors.DecodeError as e:
        _warn_bad(self.store.describe(self.keys[record]), e)
        record = int(np.random.default_rng([self.seed, _REPLACE_TAG, epoch, g, attempt]).integers(self.n))
    raise errors.DataError(f'{MAX_ATTEMPTS} records in a row failed to decode (epoch {epoch}, position {g}); '
                           'is the training data readable?')


class TrainBatch:
  """grain `batch_fn`: uint8 windows -> one float32 batch, mean-subtracted, mirrored, PCA-shifted.

  Writing every image straight into the batch array (instead of making a float32 image per example and
  stacking them) saves two 600 KB copies per 224x224 image.
  """

  def __init__(self, subtract: transforms.MeanSubtractor):
    self.subtract = subtract

  def __call__(self, examples: list[dict]) -> dict[str, np.ndarray]:
    first = examples[0]['window']
    out = np.empty((len(examples),) + first.shape, np.float32)
    for k, ex in enumerate(examples):
      self.subtract(ex['window'], ex['y'], ex['x'], mirror=ex['mirror'], shift=ex['shift'], out=out[k])
    return {'image': out,
            'label': np.fromiter((ex['label'] for ex in examples), np.int32, len(examples)),
            'replaced': np.fromiter((ex['replaced'] for ex in examples), np.bool_, len(examples))}


class EvalExample:
  """Position -> one evaluation example via `preprocess_for_eval`; padding past the split's end. Picklable."""

  def __init__(self, dataset, split: str, *, global_batch_size: int, ten_crop: bool, shard_index: int,
               shard_count: int):
    s = dataset.split(split)
    self.keys, self.labels, self.store = s.keys, s.labels, s.store
    self.n = len(s)
    self.contract = dataset.contract
    self.ten_crop = ten_crop
    self.global_batch = global_batch_size
    self.local_batch = _local_batch(global_batch_size, shard_index, shard_count)
    self.shard_index = shard_index
    c = self.contract
    shape = (c.crop_size, c.crop_size, c.channels)
    self.blank = np.zeros((10,) + shape if ten_crop else shape, np.float32)

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    b, r = divmod(int(i), self.local_batch)
    p = b * self.global_batch + self.shard_index * self.local_batch + r
    if p >= self.n:
      return {'image': self.blank, 'label': np.int32(0), 'mask': np.bool_(False), 'replaced': np.bool_(False)}
    try:
      image = contract_lib.preprocess_for_eval(self.store.read(self.keys[p]), self.contract, self.ten_crop)
      return {'image': image, 'label': np.int32(self.labels[p]), 'mask': np.bool_(True),
              'replaced': np.bool_(False)}
    except errors.DecodeError as e:
      _warn_bad(self.store.describe(self.keys[p]), e)
      return {'image': self.blank, 'label': np.int32(self.labels[p]), 'mask': np.bool_(False),
              'replaced': np.bool_(True)}


def _ensure_absl_flags_parsed() -> None:
  """grain's worker processes read absl flags (API_NOTES.md §0.6); mark them parsed outside absl.app."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _finish(ds, data_config, local_batch: int, batch_fn=None):
  import grain  # pylint: disable=g-import-not-at-top
  threads = max(1, int(data_config.num_threads))
  prefetch = max(1, int(data_config.prefetch))
  it_ds = ds.batch(local_batch, drop_remainder=True, batch_fn=batch_fn).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
  workers = int(getattr(data_config, 'worker_count', 0) or 0)
  if workers > 0:
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
  return it_ds


def train_dataset(dataset, data_config, *, global_batch_size: int, seed: int, num_epochs: int,
                  shard_index: int = 0, shard_count: int = 1):
  """The grain `IterDataset` behind `train_iterator` (iterate it to start from the first batch)."""
  import grain  # pylint: disable=g-import-not-at-top
  fn = TrainExample(dataset, data_config, seed=seed, global_batch_size=global_batch_size,
                    shard_index=shard_index, shard_count=shard_count)
  if num_epochs <= 0:
    raise errors.DataError(f'num_epochs={num_epochs} must be positive')
  total = int(num_epochs) * fn.steps * fn.local_batch
  return _finish(grain.MapDataset.range(total).map(fn), data_config, fn.local_batch,
                 TrainBatch(dataset.contract.subtract))


def train_iterator(dataset, data_config, *, global_batch_size: int, seed: int, num_epochs: int,
                   shard_index: int = 0, shard_count: int = 1):
  """A grain `DatasetIterator` over the whole run's training batches (module docstring).

  Yields dicts of numpy arrays: 'image' float32 [B_local, crop, crop, C] (0..255 minus the mean),
  'label' int32 [B_local], 'replaced' bool [B_local]; B_local = global_batch_size // shard_count.
  `get_state()` / `set_state()` (or grain.checkpoint with orbax) resume it exactly.
  """
  return iter(train_dataset(dataset, data_config, global_batch_size=global_batch_size, seed=seed,
                            num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count))


def eval_iterator(dataset, data_config, split: str, *, global_batch_size: int, ten_crop: bool = False,
                  shard_index: int = 0, shard_count: int = 1):
  """Batches covering every example of `split` once, in order, padded to whole batches.

  Returns a re-iterable grain `IterDataset` of dicts: 'image' float32 [B, crop, crop, C] (or
  [B, 10, crop, crop, C] with `ten_crop`), 'label' int32 [B], 'mask' bool [B] (False on padding and on
  records that failed to decode), 'replaced' bool [B] (True on the latter).
  """
  import grain  # pylint: disable=g-import-not-at-top
  fn = EvalExample(dataset, split, global_batch_size=global_batch_size, ten_crop=ten_crop,
                   shard_index=shard_index, shard_count=shard_count)
  num_batches = -(-fn.n // global_batch_size)
  return _finish(grain.MapDataset.range(num_batches * fn.local_batch).map(fn), data_config, fn.local_batch)
