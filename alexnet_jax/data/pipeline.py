"""grain pipelines: deterministic, resumable training batches and exact-coverage evaluation batches.

Training (`train_iterator`) is one `grain.MapDataset` over *every example of the whole run*:

    MapDataset.range(num_epochs * steps_per_epoch * B_local)
      .map(TrainExample)          # position -> (epoch, record) -> decode + resize (uint8)
      .batch(B_local, drop_remainder=True[, batch_fn=TrainBatch])
      .to_iter_dataset(ReadOptions(num_threads, prefetch))   [.mp_prefetch(workers) if worker_count > 0]

`config.data.augment_on` says where the crop, mirror, PCA lighting and mean subtraction happen:

* ``'device'`` (the default): the host only decodes and resizes. A batch is the stored image, uint8
  [B_local, height, width, C] (fill-mode padding noise included: it is part of the resize), with
  the int32 fields ``epoch``, ``record`` and ``attempt`` that key the example's augmentation, which the
  jitted train step draws and applies on the device (`device_augment.py`). 3x fewer bytes go to the device
  than a float32 crop (196 KB against 602 KB for 256 -> 224), and the host's float work is gone.
* ``'host'``: the earlier path, kept for reference: only the crop window is resized (from the source box
  under it), and `TrainBatch` writes float32 crops, mean-subtracted, mirrored and PCA-shifted,
  [B_local, crop, crop, C].

Position i of the run belongs to epoch `i // (steps * B_local)`; inside the epoch it is row r of local batch
s, i.e. global position `g = s * B_global + shard_index * B_local + r`, and the record at g is
`perm_epoch[g]` with `perm_epoch = default_rng([seed, tag, epoch]).permutation(n)`: every epoch is reshuffled,
deterministically, the same way on every host, and each host (shard) takes its own slice of every global
batch. The remainder of each epoch (n mod B_global records) is dropped; a split smaller than one global
batch wraps around instead (`wrap_note`: one step per epoch, as Caffe cycled through a small database). Because each element is a pure
function of its position, the iterator state is just grain's `{'next_index': k}` and a restored iterator
yields exactly the remaining batches -- through orbax too (`grain.checkpoint.CheckpointSave/Restore`).

Host augmentation randomness is drawn from `default_rng([seed, tag, epoch, record, attempt])`: the crop
offsets, then the mirror coin, then the PCA lighting coefficients (the device draws from a jax key folded
from the same four numbers). (A plain `map` with this explicit key rather than
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
-- the function classification uses too -- or, on the device path, with its first half
(`contract.resize_for_eval`, uint8 [B, height, width, C]) and the crops cut in the eval step.
"""

from __future__ import annotations

import functools
import json
import logging
import queue as queue_lib
import threading

import numpy as np

from alexnet_jax.runtime import host_memory
from alexnet_jax.data import contract as contract_lib
from alexnet_jax.data import errors
from alexnet_jax.data import loading
from alexnet_jax.data import transforms

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 10
AUGMENT_ON = ('device', 'host')   # config.data.augment_on
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


def augments_on_device(data_config) -> bool:
  """Whether `config.data.augment_on` is 'device' (the default config's value). A config that predates
  the field (an older run's config.json) means the host path, which it was trained with."""
  return (getattr(data_config, 'augment_on', None) or 'host') == 'device'


def steps_per_epoch(dataset, global_batch_size: int) -> int:
  """Full global batches per epoch over the training split (the remainder is dropped); 1 when the split
  is smaller than one global batch (its batch wraps around the split: `wrap_note`)."""
  n = len(dataset.split('train'))
  if global_batch_size <= 0:
    raise errors.DataError(f'global batch size {global_batch_size} must be positive')
  if n == 0:
    raise errors.DataError('the training split has no images')
  return max(1, n // global_batch_size)


def wrap_note(dataset, global_batch_size: int) -> str | None:
  """What happens to a training split smaller than one global batch (None when it is not).

  Caffe, and so DIGITS, trained such a dataset: its data layer cycles through the database, so one
  iteration's batch holds some images twice. We do the same, keeping the batch's shape (one compiled
  step, the layouts' equal numbers, an exact resume): an epoch is one step whose batch takes the epoch's
  shuffled order and wraps around it, each repeat of an image with its own augmentation (its draws are
  keyed on the repeat too).
  """
  n = len(dataset.split('train'))
  if n == 0 or n >= global_batch_size:
    return None
  return (f'the training split has {n} images, fewer than one global batch of {global_batch_size}: '
          f'each epoch is one step whose batch wraps around the split (every image '
          f'{global_batch_size // n}-{-(-global_batch_size // n)} times, each with its own '
          'augmentation), as Caffe cycled through a small database')


def _local_batch(global_batch_size: int, shard_index: int, shard_count: int) -> int:
  if shard_count <= 0 or not 0 <= shard_index < shard_count:
    raise errors.DataError(f'shard_index={shard_index} must be in 0..shard_count-1 (shard_count={shard_count})')
  if global_batch_size % shard_count:
    raise errors.DataError(f'global batch size {global_batch_size} is not divisible by the {shard_count} '
                           'data shards (processes)')
  return global_batch_size // shard_count


class TrainExample:
  """Position in the run -> one training example (see the module docstring). Picklable.

  On the host path the example is a uint8 crop window with its draws (`TrainBatch` finishes it); on the
  device path it is the whole stored image with the numbers that key its draws on the device.
  """

  def __init__(self, dataset, data_config, *, seed: int, global_batch_size: int, shard_index: int,
               shard_count: int):
    split = dataset.split('train')
    self.keys, self.labels, self.store = split.keys, split.labels, split.store
    self.n = len(split)
    c = dataset.contract
    self.size, self.crop, self.mode, self.channels, self.draft = (
        c.image_size, c.input_hw, c.resize_mode, c.channels, c.draft)   # (W, H) and the crop's (h, w)
    self.seed = _u63(seed)
    self.global_batch = global_batch_size
    self.local_batch = _local_batch(global_batch_size, shard_index, shard_count)
    self.shard_index = shard_index
    self.steps = steps_per_epoch(dataset, global_batch_size)
    self.pads = self.mode in ('fill', 'half_crop') and not self.store.prepared   # needs fill noise
    self.on_device = augments_on_device(data_config)
    flags = transforms.AugmentFlags.from_config(data_config, self.channels)
    self.random_crop, self.flip, self.pca, self.pca_std = (
        flags.random_crop, flags.flip, flags.lighting, flags.pca_std)
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
    return epoch, g, int(self.permutation(epoch)[g % self.n])   # g >= n only when wrapping

  def _noise_rng(self, record: int):
    return loading.record_noise_rng(self.seed, record) if self.pads else None

  def _stored_example(self, record: int, epoch: int, attempt: int) -> dict:
    """The device path: the whole resized image (DIGITS' exact resize) and the keys of its draws."""
    image = loading.load_resized(
        self.store.read(self.keys[record]), image_size=self.size, resize_mode=self.mode,
        channels=self.channels, noise_rng=self._noise_rng(record), exact=True, draft=self.draft)
    return {'image': image, 'epoch': np.int32(epoch), 'record': np.int32(record),
            'attempt': np.int32(attempt)}

  def _example(self, record: int, epoch: int, attempt: int) -> dict:
    """The host path: the crop window (only its source box is resized) and its draws."""
    rng = np.random.default_rng([self.seed, _AUG_TAG, epoch, record, attempt])
    (width, height), (ch, cw) = self.size, self.crop
    if self.random_crop:
      y, x = transforms.random_offsets(rng, height, width, self.crop)
    else:
      y, x = transforms.center_offsets(height, width, self.crop)
    mirror = self.flip and rng.random() < 0.5
    window = loading.load_resized(
        self.store.read(self.keys[record]), image_size=self.size, resize_mode=self.mode,
        channels=self.channels, window=(x, y, cw, ch),
        noise_rng=self._noise_rng(record), exact=False, draft=self.draft)
    shift = (transforms.pca_lighting_shift(rng, self.pca_std, self.eigval, self.eigvec) if self.pca
             else None)
    return {'window': window, 'y': y, 'x': x, 'mirror': mirror, 'shift': shift}

  def __call__(self, i: int) -> dict:
    """One example, still uint8 (on the host path `TrainBatch` does the float work once per batch)."""
    epoch, g, record = self.locate(i)
    # A split smaller than the batch wraps around (`wrap_note`): the k-th repeat of an image keys its
    # draws with attempt + k * MAX_ATTEMPTS, so repeats are augmented differently (k = 0 otherwise).
    repeat = g // self.n
    for attempt in range(MAX_ATTEMPTS):
      try:
        key = attempt + repeat * MAX_ATTEMPTS
        if self.on_device:
          ex = self._stored_example(record, epoch, key)
        else:
          ex = self._example(record, epoch, key)
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
  """Position -> one evaluation example via `preprocess_for_eval` (on the device path: its uint8 first half,
  `resize_for_eval`); padding past the split's end. Picklable."""

  def __init__(self, dataset, split: str, *, global_batch_size: int, ten_crop: bool, shard_index: int,
               shard_count: int, on_device: bool = False):
    s = dataset.split(split)
    self.keys, self.labels, self.store = s.keys, s.labels, s.store
    self.n = len(s)
    self.contract = dataset.contract
    self.ten_crop = ten_crop
    self.on_device = on_device
    self.global_batch = global_batch_size
    self.local_batch = _local_batch(global_batch_size, shard_index, shard_count)
    self.shard_index = shard_index
    c = self.contract
    if on_device:
      self.blank = np.zeros((c.height, c.width, c.channels), np.uint8)
    else:
      shape = c.input_shape
      self.blank = np.zeros((10,) + shape if ten_crop else shape, np.float32)

  def _image(self, content) -> np.ndarray:
    if self.on_device:
      return contract_lib.resize_for_eval(content, self.contract)
    return contract_lib.preprocess_for_eval(content, self.contract, self.ten_crop)

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    b, r = divmod(int(i), self.local_batch)
    p = b * self.global_batch + self.shard_index * self.local_batch + r
    if p >= self.n:
      return {'image': self.blank, 'label': np.int32(0), 'mask': np.bool_(False), 'replaced': np.bool_(False)}
    try:
      image = self._image(self.store.read(self.keys[p]))
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


def _init_worker(retain_host_memory: bool, worker_index: int, worker_count: int) -> None:
  """First thing in each grain worker process: the parent's malloc settings (`host_memory.py`), which a
  spawned process does not inherit; without them every 196 KB image copy is a fresh, page-faulting mmap."""
  del worker_index, worker_count
  if retain_host_memory:
    host_memory.retain_freed_memory()


def _finish(ds, data_config, local_batch: int, batch_fn=None):
  import grain  # pylint: disable=g-import-not-at-top
  threads = max(1, int(data_config.num_threads))
  prefetch = max(1, int(data_config.prefetch))
  it_ds = ds.batch(local_batch, drop_remainder=True, batch_fn=batch_fn).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
  workers = int(getattr(data_config, 'worker_count', 0) or 0)
  if workers > 0:
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2),
        worker_init_fn=functools.partial(_init_worker, host_memory.is_retaining()))
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
  batch_fn = None if fn.on_device else TrainBatch(dataset.contract.subtract)   # device: plain stacking
  return _finish(grain.MapDataset.range(total).map(fn), data_config, fn.local_batch, batch_fn)


def train_iterator(dataset, data_config, *, global_batch_size: int, seed: int, num_epochs: int,
                   shard_index: int = 0, shard_count: int = 1):
  """A grain `DatasetIterator` over the whole run's training batches (module docstring).

  Yields dicts of numpy arrays: 'image' float32 [B_local, crop, crop, C] (0..255 minus the mean),
  'label' int32 [B_local], 'replaced' bool [B_local]; B_local = global_batch_size // shard_count.
  With `augment_on='device'`: 'image' uint8 [B_local, height, width, C], plus 'epoch',
  'record' and 'attempt' int32 [B_local] (the keys of the device's draws).
  `get_state()` / `set_state()` (or grain.checkpoint with orbax) resume it exactly.
  """
  return iter(train_dataset(dataset, data_config, global_batch_size=global_batch_size, seed=seed,
                            num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count))


def eval_iterator(dataset, data_config, split: str, *, global_batch_size: int, ten_crop: bool = False,
                  shard_index: int = 0, shard_count: int = 1):
  """Batches covering every example of `split` once, in order, padded to whole batches.

  Returns a re-iterable grain `IterDataset` of dicts: 'image' float32 [B, crop, crop, C] (or
  [B, 10, crop, crop, C] with `ten_crop`), 'label' int32 [B], 'mask' bool [B] (False on padding and on
  records that failed to decode), 'replaced' bool [B] (True on the latter). With
  `augment_on='device'`, 'image' is uint8 [B, height, width, C] whatever `ten_crop` says: the
  eval step cuts the crops.
  """
  import grain  # pylint: disable=g-import-not-at-top
  fn = EvalExample(dataset, split, global_batch_size=global_batch_size, ten_crop=ten_crop,
                   shard_index=shard_index, shard_count=shard_count,
                   on_device=augments_on_device(data_config))
  num_batches = -(-fn.n // global_batch_size)
  return _finish(grain.MapDataset.range(num_batches * fn.local_batch).map(fn), data_config, fn.local_batch)


class DevicePrefetch:
  """Reads the next batches of ``iterator`` and places them on the devices in a background thread.

  ``place(batch) -> (device_batch, host_batch)`` does the copy (the trainer's: each process's rows into
  the layout's global arrays with ``jax.make_array_from_process_local_data``; what stays on the host,
  such as the 'replaced' flags, comes back in ``host_batch``). At most ``size`` batches are read ahead
  of the consumer (a semaphore of ``size`` slots: bounded host and device memory); ``size=0`` reads and
  places each batch in the caller's thread when it is asked for, as the loop did before prefetching.

  **Exact resume.** ``get_state()`` is the state of ``iterator`` after the last batch *handed out*, not
  after the last one read ahead: every batch is read together with the state that follows it, so a
  snapshot records the batches the steps consumed and a resumed run reads the prefetched ones again.
  ``set_state()`` stops the reader, drops what it read ahead and repositions ``iterator``. The states are
  grain's (a dict for a ``DatasetIterator``); ``grain.checkpoint.CheckpointSave/Restore`` see this object
  as a ``DataLoader``-like iterator, whose state is bytes: the same JSON text that grain writes for the
  ``DatasetIterator`` itself, so snapshots written before prefetching restore, and the reverse.
  """

  _END = object()

  def __init__(self, iterator, place, size: int = 2):
    if size < 0:
      raise ValueError(f'prefetch size {size} must be >= 0')
    self._iterator, self._place, self.size = iterator, place, int(size)
    self._state = iterator.get_state()
    self._thread = None
    self._queue = None
    self._slots = None
    self._stop = threading.Event()
    self._finished = False

  # -- the reader ---------------------------------------------------------------------------------
  def _read_one(self):
    batch = next(self._iterator)      # StopIteration ends the stream
    state = self._iterator.get_state()
    device_batch, host_batch = self._place(batch)
    return device_batch, host_batch, state

  def _run(self, queue, slots, stop) -> None:
    try:
      while not stop.is_set():
        while not slots.acquire(timeout=0.1):
          if stop.is_set():
            return
        if stop.is_set():
          return
        try:
          item = self._read_one()
        except StopIteration:
          queue.put(self._END)
          return
        queue.put(item)
    except BaseException as e:  # pylint: disable=broad-except  # handed to the consumer, raised there
      queue.put(e)

  def _start(self) -> None:
    self._stop = threading.Event()
    self._queue = queue_lib.Queue()
    self._slots = threading.Semaphore(self.size)
    self._thread = threading.Thread(target=self._run, args=(self._queue, self._slots, self._stop),
                                    name='device-prefetch', daemon=True)
    self._thread.start()

  def close(self) -> None:
    """Stops the reader (what it read ahead is dropped); the iterator keeps its consumed state."""
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = self._queue = self._slots = None

  # -- the consumer -------------------------------------------------------------------------------
  def __iter__(self):
    return self

  def __next__(self):
    """(device_batch, host_batch) of the next batch."""
    if self._finished:
      raise StopIteration
    if self.size == 0:
      try:
        device_batch, host_batch, state = self._read_one()
      except StopIteration:
        self._finished = True
        raise
    else:
      if self._thread is None:
        self._start()
      item = self._queue.get()
      if item is self._END:
        self._finished = True
        self.close()
        raise StopIteration
      if isinstance(item, BaseException):
        self._finished = True
        self.close()
        raise item
      self._slots.release()
      device_batch, host_batch, state = item
    self._state = state
    return device_batch, host_batch

  def get_state(self) -> bytes:
    return json.dumps(self._state, indent=4).encode()

  def set_state(self, state) -> None:
    self.close()
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    self._iterator.set_state(state)
    self._state = self._iterator.get_state()
    self._finished = False

  def start_prefetch(self) -> None:
    """Called by grain's checkpoint handler after a restore; reading starts at the first ``next``."""

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()

