"""`load_dataset`: from `config.data` to a `Dataset` -- classes, splits, mean image, preprocessing contract.

This is DIGITS' "New Image Classification Dataset" page as a function. It resolves `config.data.source`
(see `sources.py`), applies DIGITS' split rules (`splits.py`) or, for a prepared dataset, takes its
splits as written, and gets the mean image of the training split:

* a prepared dataset brings `mean.npy` (computed over every training image by the prepare tool);
* otherwise the training images are decoded and resized once, in grain threads -- all of them, or a seeded
  sample of `config.data.mean_max_images` (default 10,000; 0 means all, as DIGITS did) -- and the result is
  cached: pass `metadata_dir` (the run's workdir) and a later run whose training split and geometry are
  unchanged loads `mean.npy` from there instead of decoding again.

The listing of a folder or tfds source is cached in `metadata_dir` too (``listing_cache/``, see
`folders.py` and `tfds_source.py` for the keys and when it is invalidated), so that a resume or an
evaluation of an ImageNet-sized run neither walks 1.3M files nor reads every tfds record again. The split
itself is recomputed from the listing each time (a stable sort and one seeded permutation per class: well
under a second for 1.3M).

With `config.data.mean = 'none'` and ImageNet PCA values, no pass is needed and the mean image is zeros.
`Dataset.save_metadata(workdir)` writes what classification needs: `labels.txt`, `mean.npy` and
`preprocess.json` (the `contract.PreprocessContract`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import numpy as np

from alexnet_jax.runtime import fileio
from alexnet_jax.data import contract as contract_lib
from alexnet_jax.data import errors
from alexnet_jax.data import resize as resize_lib
from alexnet_jax.data import sizes
from alexnet_jax.data import sources
from alexnet_jax.data import splits as splits_lib
from alexnet_jax.data import statistics
from alexnet_jax.data import transforms

log = logging.getLogger(__name__)

PCA_EIGEN = ('imagenet', 'train')


class Dataset:
  """Classes, splits and preprocessing of one dataset (see the module docstring).

  Attributes:
    classes: class names; label i is classes[i].
    splits: {'train'|'val'|'test': SplitData}, only the non-empty ones.
    contract: the `PreprocessContract` (geometry and mean) every pipeline uses.
    pca_eigval, pca_eigvec: the PCA lighting basis (ImageNet's or the training split's).
    skipped: records found unusable so far, as {'path', 'reason'} (listing, mean pass).
    description: where the data came from.
  """

  def __init__(self, classes: list[str], splits: dict[str, splits_lib.SplitData],
               contract: contract_lib.PreprocessContract, pca_eigval: np.ndarray, pca_eigvec: np.ndarray,
               description: str = '', skipped: list[dict] | None = None, fingerprint: str = ''):
    self.classes = list(classes)
    self.splits = splits
    self.contract = contract
    self.pca_eigval = np.asarray(pca_eigval, np.float32)
    self.pca_eigvec = np.asarray(pca_eigvec, np.float32)
    self.description = description
    self.skipped = list(skipped or [])
    self.fingerprint = fingerprint

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  @property
  def split_sizes(self) -> dict[str, int]:
    return {name: len(s) for name, s in self.splits.items()}

  @property
  def mean_image(self) -> np.ndarray:
    """float32 [height, width, channels]: the training split's mean image (0..255)."""
    return self.contract.mean_image

  @property
  def image_size(self) -> tuple[int, int]:
    """(width, height) of the resized images."""
    return self.contract.image_size

  @property
  def channels(self) -> int:
    return self.contract.channels

  def has_split(self, name: str) -> bool:
    return name in self.splits and len(self.splits[name]) > 0

  def split(self, name: str) -> splits_lib.SplitData:
    if not self.has_split(name):
      raise errors.DataError(f'the dataset has no {name!r} split (it has {sorted(self.splits)})')
    return self.splits[name]

  def class_counts(self, name: str) -> np.ndarray:
    """Images per class in one split: int64 [num_classes]."""
    return np.bincount(self.split(name).labels, minlength=self.num_classes)

  def save_metadata(self, directory: str) -> None:
    """Writes labels.txt, mean.npy and preprocess.json (what classify needs) into `directory`."""
    with fileio.atomic_write(os.path.join(directory, contract_lib.LABELS_FILE), 'w', encoding='utf-8',
                             errors='surrogateescape') as f:   # atomic: a resume rewrites it under readers
      f.write(''.join(c + '\n' for c in self.classes))
    self.contract.save(directory, extra={
        'num_classes': self.num_classes, 'split_sizes': self.split_sizes, 'source': self.description,
        'pca_eigval': self.pca_eigval.tolist(), 'pca_eigvec': self.pca_eigvec.tolist(),
        'fingerprint': self.fingerprint})

  def __repr__(self):
    return (f'Dataset({self.description!r}, {self.num_classes} classes, {self.split_sizes}, '
            f'{sizes.describe(*self.image_size)}px {self.contract.resize_mode}, '
            f'mean={self.contract.mean_mode})')


def _get(cfg, name: str, default: Any) -> Any:
  """`cfg.name` if the config has it (older configs may lack the fields this package added)."""
  try:
    value = cfg[name] if hasattr(cfg, '__getitem__') else getattr(cfg, name)
  except (KeyError, AttributeError):
    return default
  return default if value is None else value


def _check_config(cfg) -> None:
  mode = _get(cfg, 'resize_mode', 'squash')
  if mode not in resize_lib.RESIZE_MODES:
    raise errors.DataError(f'config.data.resize_mode={mode!r}: expected one of {resize_lib.RESIZE_MODES}')
  if _get(cfg, 'channels', 3) not in (1, 3):
    raise errors.DataError(f'config.data.channels={cfg.channels}: expected 1 (grayscale) or 3 (color)')
  if _get(cfg, 'mean', 'image') not in transforms.MEAN_MODES:
    raise errors.DataError(f'config.data.mean={cfg.mean!r}: expected one of {transforms.MEAN_MODES}')
  if _get(cfg, 'pca_eigen', 'imagenet') not in PCA_EIGEN:
    raise errors.DataError(f'config.data.pca_eigen={cfg.pca_eigen!r}: expected one of {PCA_EIGEN}')
  w, h = _image_size(cfg)
  crop = int(_get(cfg, 'crop_size', 224))
  if crop != sizes.NO_CROP and not 0 < crop <= min(w, h):
    raise errors.DataError(f'config.data.crop_size={crop} must be 0 (none: the whole image) or in '
                           f'1..{min(w, h)}, the shorter side of config.data.image_size={w},{h}')


def _image_size(cfg) -> tuple[int, int]:
  """`config.data.image_size` as (width, height)."""
  value = _get(cfg, 'image_size', 256)
  try:
    return sizes.parse_image_size(value)
  except ValueError as e:
    raise errors.DataError(f'config.data.image_size={value!r}: {e}') from None


def _fingerprint(train: splits_lib.SplitData, *parts: Any) -> str:
  h = hashlib.sha1()
  if train.keys:
    # One update of 'k1\0k2\0...kn\0': the same bytes (hence digest) as one update per key and NUL.
    h.update(('\0'.join(map(str, train.keys)) + '\0').encode('utf-8', 'surrogateescape'))
  h.update(np.ascontiguousarray(train.labels).tobytes())
  h.update(repr(train.store).encode())
  h.update(repr(parts).encode())
  return h.hexdigest()


def _load_cached(directory: str | None, fingerprint: str):
  """(mean, eigval, eigvec) saved by `save_metadata` for the same fingerprint, else None."""
  if not directory:
    return None
  path = os.path.join(directory, contract_lib.CONTRACT_FILE)
  d = fileio.read_json(path)
  if not isinstance(d, dict) or d.get('fingerprint') != fingerprint:
    return None
  try:
    mean = np.load(os.path.join(directory, contract_lib.MEAN_FILE)).astype(np.float32)
    return mean, np.asarray(d['pca_eigval'], np.float32), np.asarray(d['pca_eigvec'], np.float32)
  except (OSError, ValueError, KeyError):
    return None


def load_dataset(data_config, *, seed: int, metadata_dir: str | None = None) -> Dataset:
  """Resolves `data_config.source`, splits it DIGITS' way and gets the training split's mean image.

  Args:
    data_config: `config.data` (see alexnet_jax/configs.py).
    seed: the split seed (same seed, same split, on any machine) and the mean-sample seed.
    metadata_dir: where `save_metadata` may have written an earlier result; when its fingerprint matches
      (same training split, geometry and sample), the mean image is loaded from there. Folder and tfds
      listings are cached there as well.

  Raises:
    DataError: the source or an option cannot be used; the message names the config field.
  """
  cfg = data_config
  _check_config(cfg)
  width, height = _image_size(cfg)
  channels = int(_get(cfg, 'channels', 3))
  resize_mode = _get(cfg, 'resize_mode', 'squash')
  mean_mode = _get(cfg, 'mean', 'image')
  pca_eigen = _get(cfg, 'pca_eigen', 'imagenet')
  draft = bool(_get(cfg, 'draft', True))
  common = dict(image_root=_get(cfg, 'image_root', ''), labels_file=_get(cfg, 'labels_file', ''),
                tfds_data_dir=_get(cfg, 'tfds_data_dir', ''))
  # Folder and tfds listings are cached beside the mean, in metadata_dir (see folders.py, tfds_source.py).
  common['cache_dir'] = metadata_dir
  listing = sources.open_source(_get(cfg, 'source', ''), what='config.data.source', **common)

  skipped: list[dict] = []
  prepared_mean = prepared_pca = None
  if isinstance(listing, sources.Prepared):
    prepared = listing
    st = prepared.stats
    size = st.get('image_size')
    p_size = size if isinstance(size, list) else [size, size]
    if p_size != [width, height] or st.get('channels') != channels or st.get(
        'resize_mode') != resize_mode:
      raise errors.DataError(
          f'config.data.source={prepared.root!r} was prepared at image_size={",".join(map(str, p_size))} '
          f'(W,H), channels={st.get("channels")}, resize_mode={st.get("resize_mode")!r}, but config.data '
          f'asks for image_size={width},{height}, channels={channels}, resize_mode={resize_mode!r}; set '
          'them to match')
    for flag in ('val_source', 'test_source'):
      if _get(cfg, flag, ''):
        raise errors.DataError(f'config.data.{flag} cannot be combined with a prepared dataset '
                               '(it brings its own splits); prepare with --val_source instead')
    classes = prepared.classes
    split_map = {name: splits_lib.SplitData(name, lst.keys, lst.labels, lst.store)
                 for name, lst in prepared.splits.items() if len(lst)}
    prepared_mean = prepared.mean_image
    if 'pca' in st:
      prepared_pca = (np.asarray(st['pca']['eigval'], np.float32), np.asarray(st['pca']['eigvec'], np.float32))
    description = f'prepared {prepared.root}'
  else:
    skipped.extend(listing.skipped)
    val_source, test_source = _get(cfg, 'val_source', ''), _get(cfg, 'test_source', '')
    classes, split_map, _ = splits_lib.split_listing(
        listing, val_percent=0.0 if val_source else float(_get(cfg, 'val_percent', 25.0)),
        test_percent=0.0 if test_source else float(_get(cfg, 'test_percent', 0.0)),
        min_per_class=int(_get(cfg, 'min_per_class', 2)), max_per_class=int(_get(cfg, 'max_per_class', 0)),
        seed=seed, what='config.data')
    for name, spec, flag in (('val', val_source, 'val_source'), ('test', test_source, 'test_source')):
      if spec:
        other = sources.open_source(spec, what=f'config.data.{flag}', **common)
        if isinstance(other, sources.Prepared):
          raise errors.DataError(f'config.data.{flag}={spec!r} is a prepared dataset; use a folder or list')
        skipped.extend(other.skipped)
        split_map[name] = splits_lib.match_classes(other, classes, name)
        if not len(split_map[name]):
          del split_map[name]
    description = listing.description
  if 'train' not in split_map:
    raise errors.DataError(f'{description}: the training split is empty (val_percent + test_percent = 100?)')

  train = split_map['train']
  max_images = int(_get(cfg, 'mean_max_images', 10000))
  # A square keeps its one-number fingerprint, so means cached before rectangles stay valid.
  image_size = width if width == height else (width, height)
  fingerprint = _fingerprint(train, image_size, resize_mode, channels, max_images, seed, draft)
  need_pass = prepared_mean is None and (mean_mode != 'none' or (pca_eigen == 'train' and channels == 3))
  mean = np.zeros((height, width, channels), np.float32)
  eigval, eigvec = transforms.IMAGENET_EIGVAL, transforms.IMAGENET_EIGVEC
  if prepared_mean is not None:
    mean = prepared_mean
    if pca_eigen == 'train' and prepared_pca is not None:
      eigval, eigvec = prepared_pca
  elif need_pass:
    # The true mean is kept even with mean='none' (the contract subtracts zeros), so that a cached
    # result stays valid for a later run with another mean mode.
    cached = _load_cached(metadata_dir, fingerprint)
    if cached is not None:
      log.info('mean image: loaded from %s', metadata_dir)
      mean, t_val, t_vec = cached
    else:
      n = len(train) if not max_images else min(len(train), max_images)
      log.info('mean image: decoding %d training images (%s)', n, description)
      acc, bad = statistics.compute_moments(
          train, image_size=(width, height), resize_mode=resize_mode, channels=channels, seed=seed,
          max_images=max_images, num_threads=int(_get(cfg, 'num_threads', 2)), draft=draft)
      skipped.extend(bad)
      if not acc.count:
        raise errors.DataError(f'{description}: none of the sampled training images could be decoded')
      mean = acc.mean_image()
      t_val, t_vec = acc.pca()
    if pca_eigen == 'train' and channels == 3:
      eigval, eigvec = t_val, t_vec
  else:
    fingerprint = ''   # nothing computed: nothing a later run could reuse
  if channels != 3:
    eigval, eigvec = np.zeros(channels, np.float32), np.eye(channels, dtype=np.float32)

  contract = contract_lib.PreprocessContract(
      image_size=(width, height), crop_size=int(_get(cfg, 'crop_size', 224)), resize_mode=resize_mode,
      channels=channels, mean_mode=mean_mode, mean_image=mean, draft=draft)
  ds = Dataset(classes, split_map, contract, eigval, eigvec, description, skipped, fingerprint)
  log.info('%r', ds)
  return ds
