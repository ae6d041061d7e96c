"""Crops, mirrors, the paper's PCA lighting and mean subtraction: what happens after the resize.

Everything here follows Caffe's `DataTransformer` and the 2012 paper:

* **Random crop** (training): offsets `h_off = Rand(H - crop + 1)`, then `w_off = Rand(W - crop + 1)`.
  **Center crop** (evaluation): `(H - crop) // 2`, `(W - crop) // 2`.
* **Mean subtraction** happens at the crop's *source* position, before mirroring: Caffe computes
  `datum[h_off + h, w_off + w] - mean[h_off + h, w_off + w]` and writes it at the mirrored column. The mean
  is the per-pixel mean image of the training split (`image`), its per-channel average broadcast to every
  pixel (`pixel`), or zero (`none`). Values stay on the 0..255 scale (Caffe's `scale` 1).
* **Mirror**: a horizontal flip with probability 1/2.
* **10 crops** (paper section 4.1, Caffe's `oversample`): the four corners (top-left, top-right,
  bottom-left, bottom-right), the centre, then the same five mirrored.
* **PCA lighting** (paper section 4.1): add `[p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T` to every RGB pixel, with
  `a_i ~ N(0, 0.1)` drawn once per image and (l_i, p_i) the eigenvalues and eigenvectors of the 3x3
  covariance of RGB pixel values. The ImageNet values below are those published with fb.resnet.torch
  (for pixels scaled to 0..1); we multiply the shift by 255 because our pixels are on the 0..255 scale.
  `statistics.py` can compute the same quantities on the training split instead. Grayscale images get no
  lighting noise (the paper's formula is defined for RGB).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alexnet_jax.data import sizes

MEAN_MODES = ('image', 'pixel', 'none')

# Eigen-decomposition of ImageNet's RGB pixel covariance, pixel values in [0, 1] (fb.resnet.torch).
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], np.float32)   # columns are eigenvectors


@dataclasses.dataclass(frozen=True)
class AugmentFlags:
  """Which training augmentations run, from `config.data` (the same on the host and on the device).

  Attributes:
    random_crop: random crop offsets (False: the centre crop).
    flip: a mirror with probability 1/2.
    pca_std: the std of the PCA lighting alphas; 0 when lighting is off (`pca_lighting` False,
      `pca_std` 0, or a grayscale image: the paper's formula is defined for RGB).
  """
  random_crop: bool
  flip: bool
  pca_std: float

  @property
  def lighting(self) -> bool:
    return self.pca_std > 0

  @classmethod
  def from_config(cls, data_config, channels: int) -> 'AugmentFlags':
    std = float(data_config.pca_std) if bool(data_config.pca_lighting) and channels == 3 else 0.0
    return cls(bool(data_config.random_crop), bool(data_config.flip), max(std, 0.0))


def mean_for_mode(mean_image: np.ndarray, mode: str) -> np.ndarray:
  """The array actually subtracted: the mean image, its per-channel mean everywhere, or zeros."""
  if mode not in MEAN_MODES:
    raise ValueError(f'mean mode {mode!r} is not one of {MEAN_MODES}')
  mean_image = np.asarray(mean_image, np.float32)
  if mode == 'image':
    return mean_image
  if mode == 'pixel':
    return np.broadcast_to(mean_image.mean(axis=(0, 1), keepdims=True), mean_image.shape).copy()
  return np.zeros_like(mean_image)


def random_offsets(rng: np.random.Generator, height: int, width: int, crop) -> tuple[int, int]:
  """Caffe's training crop offsets (y, x): uniform over every position where the crop fits.

  `crop` is a square's side or (height, width) (`sizes.crop_hw`); a crop as large as the image (DIGITS'
  "none") has the single offset (0, 0).
  """
  ch, cw = sizes.crop_hw(crop)
  return int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))


def center_offsets(height: int, width: int, crop) -> tuple[int, int]:
  """Caffe's test-time crop offsets (y, x); `crop` a side or (height, width)."""
  ch, cw = sizes.crop_hw(crop)
  return (height - ch) // 2, (width - cw) // 2


def ten_crop_offsets(height: int, width: int, crop) -> list[tuple[int, int]]:
  """(y, x) of the five crops of Caffe's `oversample`: TL, TR, BL, BR, centre (mirrors come after)."""
  ch, cw = sizes.crop_hw(crop)
  corners = [(y, x) for y in (0, height - ch) for x in (0, width - cw)]
  return corners + [center_offsets(height, width, crop)]


def mirror_hwc(a: np.ndarray) -> np.ndarray:
  """A contiguous horizontal mirror of an [H, W, C] array.

  Pixels are reversed as C-byte units (a void dtype), which numpy copies ~2.5x faster than a plain
  `a[:, ::-1]` of an interleaved image.
  """
  a = np.ascontiguousarray(a)
  h, w, c = a.shape
  return a.view(np.dtype((np.void, c * a.itemsize))).reshape(h, w)[:, ::-1].copy().view(a.dtype).reshape(
      h, w, c)


class MeanSubtractor:
  """`crop - mean[y:y+h, x:x+w]` (then mirrored, then + a per-channel shift), fast, into float32.

  Caffe's order (mean at the source position, then the mirror) is kept by subtracting a pre-mirrored copy
  of the mean from the mirrored crop: `mirror(c - m) == mirror(c) - mirror(m)`. Rows are processed as
  flat [h, w*C] arrays, so numpy's inner loops run over whole rows, not over 3 channels.
  """

  def __init__(self, mean: np.ndarray):
    mean = np.ascontiguousarray(mean, np.float32)
    self.height, self.width, self.channels = mean.shape
    self.mean = mean
    self._flat = mean.reshape(self.height, -1)
    self._flat_mirrored = mirror_hwc(mean).reshape(self.height, -1)

  def __call__(self, crop: np.ndarray, y: int, x: int, mirror: bool = False, shift: np.ndarray | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    h, w, c = crop.shape
    if out is None:
      out = np.empty((h, w, c), np.float32)
    o = out.reshape(h, w * c)
    if mirror:
      crop = mirror_hwc(crop)
      x = self.width - x - w
      m = self._flat_mirrored[y:y + h, x * c:(x + w) * c]
    else:
      m = self._flat[y:y + h, x * c:(x + w) * c]
    np.copyto(o, crop.reshape(h, w * c), casting='unsafe')
    np.subtract(o, m, out=o)
    if shift is not None:
      np.add(o, np.tile(np.asarray(shift, np.float32), w), out=o)
    return out


def subtract_mean(crop: np.ndarray, mean: np.ndarray, y: int, x: int, mirror: bool = False) -> np.ndarray:
  """float32 `crop - mean[y:y+c, x:x+c]`, then mirrored if asked (Caffe's order). Reference version."""
  h, w = crop.shape[:2]
  out = np.subtract(crop, mean[y:y + h, x:x + w], dtype=np.float32)
  return np.ascontiguousarray(out[:, ::-1]) if mirror else out


def pca_lighting_shift(rng: np.random.Generator, std: float, eigval: np.ndarray,
                       eigvec: np.ndarray) -> np.ndarray:
  """The per-image RGB shift of the paper's colour augmentation, on the 0..255 scale: float32 [3]."""
  return pca_shift(rng.normal(0.0, std, size=3), eigval, eigvec)


def pca_shift(alpha: np.ndarray, eigval: np.ndarray, eigvec: np.ndarray) -> np.ndarray:
  """`255 * eigvec @ (alpha * eigval)`: the RGB shift for given coefficients (computed in float64)."""
  return (255.0 * (np.asarray(eigvec, np.float64) @ (np.asarray(alpha, np.float64)
                                                     * np.asarray(eigval, np.float64)))).astype(np.float32)


def crops_from_resized(image: np.ndarray, subtract: MeanSubtractor, crop, ten_crop: bool) -> np.ndarray:
  """Evaluation crops of a resized uint8 [H, W, C] image: [ch, cw, C], or [10, ch, cw, C].

  `crop` is a square's side or (height, width): the whole image for DIGITS' "none", whose 10 crops are
  then the image five times and its mirror five times (Caffe's `oversample` of a crop the image's size).
  """
  h, w = image.shape[:2]
  ch, cw = sizes.crop_hw(crop)
  if ch > h or cw > w:
    raise ValueError(f'crop {cw}x{ch} larger than the image {w}x{h}')
  if not ten_crop:
    y, x = center_offsets(h, w, crop)
    return subtract(image[y:y + ch, x:x + cw], y, x)
  out = np.empty((10, ch, cw, image.shape[2]), np.float32)
  for k, (y, x) in enumerate(ten_crop_offsets(h, w, crop)):
    subtract(image[y:y + ch, x:x + cw], y, x, out=out[k])
    out[k + 5] = mirror_hwc(out[k])
  return out
