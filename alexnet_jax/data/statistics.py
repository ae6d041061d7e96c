"""The training split's mean image and RGB covariance, accumulated one resized image at a time.

DIGITS sums the resized training images (`create_db.py: image_sum += image`) and divides by their count;
we do the same, exactly, in int64, and keep the float mean (DIGITS rounded it to uint8 before saving;
`mean.png` is that rounded version). In the same pass we accumulate what the paper's PCA lighting needs:
the 3x3 covariance of RGB pixel values (on the 0..1 scale, to match `transforms.IMAGENET_EIGVAL`), using
every 4th pixel in each direction -- a 1/16 sample is plenty for a 3x3 matrix and 16x cheaper.
"""

from __future__ import annotations

import logging

import numpy as np

from alexnet_jax.data import errors
from alexnet_jax.data import loading
from alexnet_jax.data import sizes

_COV_STRIDE = 4


class MomentAccumulator:
  """Running sums of resized uint8 images [H, W, C]: the mean image and the RGB pixel covariance."""

  def __init__(self, height: int, width: int, channels: int):
    self.shape = (height, width, channels)
    self.count = 0
    self._sum = np.zeros(self.shape, np.int64)
    self._pix_n = 0
    self._pix_sum = np.zeros(channels, np.float64)
    self._pix_outer = np.zeros((channels, channels), np.float64)

  def add(self, image: np.ndarray) -> None:
    """Adds one uint8 image of shape `self.shape`."""
    if image.shape != self.shape:
      raise ValueError(f'image of shape {image.shape}, expected {self.shape}')
    np.add(self._sum, image, out=self._sum, casting='unsafe')
    self.count += 1
    px = image[::_COV_STRIDE, ::_COV_STRIDE].reshape(-1, self.shape[2]).astype(np.float64) / 255.0
    self._pix_n += px.shape[0]
    self._pix_sum += px.sum(axis=0)
    self._pix_outer += px.T @ px

  def merge(self, other: 'MomentAccumulator') -> None:
    self._sum += other._sum
    self.count += other.count
    self._pix_n += other._pix_n
    self._pix_sum += other._pix_sum
    self._pix_outer += other._pix_outer

  def mean_image(self) -> np.ndarray:
    """float32 [H, W, C] mean on the 0..255 scale (zeros if nothing was added)."""
    if not self.count:
      return np.zeros(self.shape, np.float32)
    return (self._sum / self.count).astype(np.float32)

  def pca(self) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues [C] descending, eigenvectors [C, C] as columns) of the pixel covariance (0..1 scale)."""
    c = self.shape[2]
    if self._pix_n < 2:
      return np.zeros(c, np.float32), np.eye(c, dtype=np.float32)
    mu = self._pix_sum / self._pix_n
    cov = self._pix_outer / self._pix_n - np.outer(mu, mu)
    val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1]
    return np.maximum(val[order], 0).astype(np.float32), vec[:, order].astype(np.float32)


_MEAN_TAG = 0x3EA4


def sample_indices(n: int, max_images: int, seed: int) -> np.ndarray:
  """All of range(n), or a seeded sorted sample of `max_images` of them."""
  if not max_images or n <= max_images:
    return np.arange(n)
  return np.sort(np.random.default_rng([seed % (1 << 63), _MEAN_TAG]).choice(n, max_images, replace=False))


def compute_moments(split, *, image_size: int | tuple[int, int], resize_mode: str, channels: int, seed: int,
                    max_images: int = 0, num_threads: int = 2, draft: bool = True,
                    log_every_s: float = 10.0) -> tuple[MomentAccumulator, list[dict]]:
  """Decodes and resizes (a sample of) a split in grain threads and accumulates its moments.

  Records are resized exactly as the training pipeline sees them (same fill noise per record). Records
  that fail to decode are left out and returned as {'path', 'reason'}.

  Args:
    split: a `splits.SplitData` (keys, labels, store).
    max_images: 0 for all, else a seeded sample of that many.
  """
  import time  # pylint: disable=g-import-not-at-top
  import grain  # pylint: disable=g-import-not-at-top

  idx = sample_indices(len(split), max_images, seed)
  keys, store = split.keys, split.store

  def load(i):
    i = int(i)
    try:
      return loading.load_resized(store.read(keys[i]), image_size=image_size, resize_mode=resize_mode,
                                  channels=channels, noise_rng=loading.record_noise_rng(seed, i),
                                  exact=True, draft=draft)
    except errors.DecodeError as e:
      return {'path': store.describe(keys[i]), 'reason': e.reason, 'detail': e.detail}

  width, height = sizes.parse_image_size(image_size)
  acc = MomentAccumulator(height, width, channels)
  bad = []
  ds = grain.MapDataset.source(idx).map(load).to_iter_dataset(
      grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=32))
  t0 = last = time.time()
  for k, item in enumerate(ds):
    if isinstance(item, dict):
      bad.append(item)
    else:
      acc.add(item)
    now = time.time()
    if now - last > log_every_s:
      last = now
      rate = (k + 1) / (now - t0)
      logging.getLogger(__name__).info('mean image: %d/%d images, %.0f img/s, ETA %.0f s', k + 1, len(idx),
                                       rate, (len(idx) - k - 1) / rate)
  return acc, bad
