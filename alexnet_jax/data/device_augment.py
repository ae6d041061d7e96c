"""The training augmentation and the evaluation crops on the accelerator, in pure jax.

With ``config.data.augment_on='device'`` (the default) the input pipeline stops at decode + resize and
hands the stored uint8 images to the device (``pipeline.py``); the jitted steps (``parallel/step.py``)
then do what ``transforms.py`` does on the host, with the same arithmetic:

* **Training** (`TrainAugment`), per example: the key is a ``fold_in`` chain of (a key derived from the
  run seed, epoch, record, attempt), so an example's augmentation depends on neither the batch size, the
  layout, the number of hosts nor a resume. From it: the crop offsets y in [0, H - crop], x in
  [0, W - crop] (Caffe's ``Rand(H - crop + 1)``, ``Rand(W - crop + 1)``; the centre crop when
  ``random_crop`` is off; (0, 0) for DIGITS' crop "none", where the crop is the whole H x W image), a
  mirror coin with p = 1/2, and the PCA lighting coefficients alpha ~ N(0, pca_std) [3]. The example becomes
  ``float32(crop) - mean[y:y+c, x:x+c]`` (Caffe's order: the mean at the crop's source position), mirrored
  if the coin says so, plus ``255 * eigvec @ (alpha * eigval)`` on every pixel (the paper's section 4.1,
  RGB only). The per-example function is ``vmap``-ed over the batch with ``lax.dynamic_slice`` crops, and
  the step runs it on each device's own rows (a ``shard_map`` along the batch axis: no image moves
  between devices).
* **Evaluation** (`EvalCrops`): the centre crop, or the paper's 10 crops in ``transforms.ten_crop_offsets``
  order (TL, TR, BL, BR, centre, then the five mirrored), minus the mean at each crop's position. These
  are the very numbers of ``contract.preprocess_for_eval``: float32(uint8) - float32 mean, bit for bit.

Where this departs from the host path: the draws come from jax's threefry generator instead of numpy's,
so a device-augmented run and a host-augmented run see different (equally distributed) crops, mirrors and
lighting; the training resize is DIGITS' exact resize of the whole image (the host path resizes only the
crop's source box, within one grey level of it); and the lighting shift is computed in float32 (the host
computes it in float64 and rounds it once: they agree to ~1e-6). Everything else is the same pixels.

The mean image and the PCA basis are device constants: `constants` holds them as numpy arrays, which the
step puts on the mesh once (replicated) and passes to every call, so they are never re-sent.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import sizes
from alexnet_jax.data import transforms

KEY_FIELDS = ('epoch', 'record', 'attempt')   # the int32 batch fields that key an example's draws
STORED_FIELDS = ('image',) + KEY_FIELDS        # what the augmentation reads from a stored batch
_AUGMENT_TAG = 0xA06D   # separates the augmentation stream from any other use of the run seed


class Draws(NamedTuple):
  """One example's random choices: crop offsets, mirror coin, PCA coefficients (None: no lighting)."""
  y: jax.Array
  x: jax.Array
  mirror: jax.Array
  alpha: Optional[jax.Array]


def is_stored_batch(batch: dict) -> bool:
  """Whether ``batch`` is the device path's (stored uint8 images and the key fields) rather than
  finished float32 crops."""
  return batch['image'].dtype == jnp.uint8 and all(k in batch for k in KEY_FIELDS)


def example_key(base: jax.Array, epoch, record, attempt) -> jax.Array:
  """The key of one example's draws: a function of (seed, epoch, record, attempt) only."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, epoch), record), attempt)


def lighting_shift(alpha: jax.Array, eigval: jax.Array, eigvec: jax.Array) -> jax.Array:
  """``255 * eigvec @ (alpha * eigval)``: the per-image RGB shift (``transforms.pca_shift``, in float32).

  Written as three products added in a fixed order rather than a ``dot``: XLA lowers a batched dot
  differently for different batch shapes, which would change the last bit with the batch size.
  """
  weights = alpha * eigval
  return 255.0 * (eigvec[:, 0] * weights[0] + eigvec[:, 1] * weights[1] + eigvec[:, 2] * weights[2])


class TrainAugment:
  """The training augmentation of one run (see the module docstring).

  Attributes:
    height, width, channels: the stored image's H, W and C (the mean image's shape).
    crop_hw: the crop's (height, width): a square, or (H, W) for DIGITS' crop "none".
    flags: which augmentations run (``transforms.AugmentFlags``, shared with the host path).
    seed: the run seed (mod 2**63, as the host path); the draws' base key is folded from it.
    constants: {'mean', 'eigval', 'eigvec'} as float32 numpy arrays, for the step to put on the device.
  """

  def __init__(self, *, mean: np.ndarray, eigval: np.ndarray, eigvec: np.ndarray, crop,
               flags: transforms.AugmentFlags, seed: int):
    mean = np.asarray(mean, np.float32)
    self.height, self.width, self.channels = mean.shape
    self.crop_hw = sizes.crop_hw(crop)
    if not (0 < self.crop_hw[0] <= self.height and 0 < self.crop_hw[1] <= self.width):
      raise ValueError(f'mean image of shape {mean.shape} and crop {crop}: expected an image at least '
                       'as large as the crop')
    self.flags = flags
    self.seed = int(seed) % (1 << 63)
    self.constants = {'mean': mean, 'eigval': np.asarray(eigval, np.float32),
                      'eigvec': np.asarray(eigvec, np.float32)}

  @classmethod
  def from_dataset(cls, dataset, data_config, *, seed: int) -> 'TrainAugment':
    """The augmentation ``config.data`` asks for, with the dataset's mean and PCA basis."""
    c = dataset.contract
    return cls(mean=c.mean, eigval=dataset.pca_eigval, eigvec=dataset.pca_eigvec,
               crop=c.input_hw, flags=transforms.AugmentFlags.from_config(data_config, c.channels),
               seed=seed)

  def base_key(self) -> jax.Array:
    # Both 32-bit halves of the seed: without x64, jax.random.key(seed) keeps only the low ones.
    low, high = self.seed & 0xFFFFFFFF, self.seed >> 32
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(low), high), _AUGMENT_TAG)

  def draw(self, key: jax.Array) -> Draws:
    """One example's draws (each from its own sub-key, so that switching one off leaves the others)."""
    k_crop, k_mirror, k_light = jax.random.split(key, 3)
    if self.flags.random_crop:
      # Both offsets in one draw (each uniform on its own axis's span): a square image draws as before.
      span = jnp.array([self.height - self.crop_hw[0], self.width - self.crop_hw[1]], jnp.int32)
      y, x = jax.random.randint(k_crop, (2,), 0, span + 1)
    else:
      y, x = (jnp.int32(v) for v in transforms.center_offsets(self.height, self.width, self.crop_hw))
    mirror = jax.random.bernoulli(k_mirror) if self.flags.flip else jnp.bool_(False)
    alpha = (self.flags.pca_std * jax.random.normal(k_light, (3,)) if self.flags.lighting else None)
    return Draws(y, x, mirror, alpha)

  def apply(self, constants: dict, image: jax.Array, draws: Draws) -> jax.Array:
    """One uint8 [H, W, C] image and its draws -> float32 [ch, cw, C] (Caffe's order: mean, mirror, shift)."""
    centred = image.astype(jnp.float32) - constants['mean']
    out = jax.lax.dynamic_slice(centred, (draws.y, draws.x, 0), (*self.crop_hw, self.channels))
    if self.flags.flip:
      out = jnp.where(draws.mirror, out[:, ::-1], out)
    if draws.alpha is not None:
      out = out + lighting_shift(draws.alpha, constants['eigval'], constants['eigvec'])
    return out

  def __call__(self, constants: dict, batch: dict) -> jax.Array:
    """A stored batch ('image' uint8 [B, H, W, C] and the `KEY_FIELDS`) -> float32 [B, ch, cw, C]."""
    base = self.base_key()

    def one(image, epoch, record, attempt):
      return self.apply(constants, image, self.draw(example_key(base, epoch, record, attempt)))

    return jax.vmap(one)(batch['image'], *(batch[k] for k in KEY_FIELDS))


class EvalCrops:
  """The evaluation crops of uint8 [B, H, W, C] images, on the device (see the module docstring)."""

  def __init__(self, mean: np.ndarray, crop):
    self.constants = {'mean': np.asarray(mean, np.float32)}
    self.height, self.width = self.constants['mean'].shape[:2]
    self.crop_hw = sizes.crop_hw(crop)

  @classmethod
  def from_contract(cls, contract) -> 'EvalCrops':
    return cls(contract.mean, contract.input_hw)

  def __call__(self, constants: dict, images: jax.Array, ten_crop: bool) -> jax.Array:
    """float32 [B, ch, cw, C] (the centre crop), or [B, 10, ch, cw, C] with ``ten_crop``."""
    (h, w), (ch, cw) = (self.height, self.width), self.crop_hw
    centred = images.astype(jnp.float32) - constants['mean']
    if not ten_crop:
      y, x = transforms.center_offsets(h, w, self.crop_hw)
      return centred[:, y:y + ch, x:x + cw]
    crops = [centred[:, y:y + ch, x:x + cw] for y, x in transforms.ten_crop_offsets(h, w, self.crop_hw)]
    return jnp.stack(crops + [crop[:, :, ::-1] for crop in crops], axis=1)
