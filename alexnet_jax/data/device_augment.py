"""The training augmentation and the evaluation crops on the accelerator, in pure jax.

With ``config.data.augment_on='device'`` (the default) the input pipeline stops at decode + resize and
hands the stored uint8 images to the device (``pipeline.py``); the jitted steps (``parallel/step.py``)
then do what ``transforms.py`` does on the host, with the same arithmetic:

* **Training** (`TrainAugment`), per example: the key is a ``fold_in`` chain of (a key derived from the
  run seed, epoch, record, attempt), so an example's augmentation depends on neither the batch size, the
  layout, the number of hosts nor a resume. From it: the crop offsets y, x uniform in [0, S - crop]
  (Caffe's ``Rand(H - crop + 1)``; the centre crop when ``random_crop`` is off), a mirror coin with
  p = 1/2, and the PCA lighting coefficients alpha ~ N(0, pca_std) [3]. The example becomes
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
    image_size, crop_size, channels: the stored size S, the crop c and C.
    flags: which augmentations run (``transforms.AugmentFlags``, shared with the host path).
    seed: the run seed (mod 2**63, as the host path); the draws' base key is folded from it.
    constants: {'mean', 'eigval', 'eigvec'} as float32 numpy arrays, for the step to put on the device.
  """

  def __init__(self, *, mean: np.ndarray, eigval: np.ndarray, eigvec: np.ndarray, crop_size: int,
               flags: transforms.AugmentFlags, seed: int):
    mean = np.asarray(mean, np.float32)
    self.image_size, width, self.channels = mean.shape
    if width != self.image_size or not 0 < crop_size <= self.image_size:
      raise ValueError(f'mean image of shape {mean.shape} and crop {crop_size}: expected a square '
                       'image at least as large as the crop')
    self.crop_size = int(crop_size)
    self.flags = flags
    self.seed = int(seed) % (1 << 63)
    self.constants = {'mean': mean, 'eigval': np.asarray(eigval, np.float32),
                      'eigvec': np.asarray(eigvec, np.float32)}

  @classmethod
  def from_dataset(cls, dataset, data_config, *, seed: int) -> 'TrainAugment':
    """The augmentation ``config.data`` asks for, with the dataset's mean and PCA basis."""
    c = dataset.contract
    return cls(mean=c.mean, eigval=dataset.pca_eigval, eigvec=dataset.pca_eigvec,
               crop_size=c.crop_size, flags=transforms.AugmentFlags.from_config(data_config, c.channels),
               seed=seed)

  def base_key(self) -> jax.Array:
    # Both 32-bit halves of the seed: without x64, jax.random.key(seed) keeps only the low ones.
    low, high = self.seed & 0xFFFFFFFF, self.seed >> 32
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(low), high), _AUGMENT_TAG)

  def draw(self, key: jax.Array) -> Draws:
    """One example's draws (each from its own sub-key, so that switching one off leaves the others)."""
    k_crop, k_mirror, k_light = jax.random.split(key, 3)
    span = self.image_size - self.crop_size
    if self.flags.random_crop:
      y, x = jax.random.randint(k_crop, (2,), 0, span + 1)
    else:
      y, x = (jnp.int32(v) for v in transforms.center_offsets(self.image_size, self.image_size,
                                                                self.crop_size))
    mirror = jax.random.bernoulli(k_mirror) if self.flags.flip else jnp.bool_(False)
    alpha = (self.flags.pca_std * jax.random.normal(k_light, (3,)) if self.flags.lighting else None)
    return Draws(y, x, mirror, alpha)

  def apply(self, constants: dict, image: jax.Array, draws: Draws) -> jax.Array:
    """One uint8 [S, S, C] image and its draws -> float32 [c, c, C] (Caffe's order: mean, mirror, shift)."""
    c = self.crop_size
    centred = image.astype(jnp.float32) - constants['mean']
    out = jax.lax.dynamic_slice(centred, (draws.y, draws.x, 0), (c, c, self.channels))
    if self.flags.flip:
      out = jnp.where(draws.mirror, out[:, ::-1], out)
    if draws.alpha is not None:
      out = out + lighting_shift(draws.alpha, constants['eigval'], constants['eigvec'])
    return out

  def __call__(self, constants: dict, batch: dict) -> jax.Array:
    """A stored batch ('image' uint8 [B, S, S, C] and the `KEY_FIELDS`) -> float32 [B, c, c, C]."""
    base = self.base_key()

    def one(image, epoch, record, attempt):
      return self.apply(constants, image, self.draw(example_key(base, epoch, record, attempt)))

    return jax.vmap(one)(batch['image'], *(batch[k] for k in KEY_FIELDS))


class EvalCrops:
  """The evaluation crops of uint8 [B, S, S, C] images, on the device (see the module docstring)."""

  def __init__(self, mean: np.ndarray, crop_size: int):
    self.constants = {'mean': np.asarray(mean, np.float32)}
    self.image_size = self.constants['mean'].shape[0]
    self.crop_size = int(crop_size)

  @classmethod
  def from_contract(cls, contract) -> 'EvalCrops':
    return cls(contract.mean, contract.crop_size)

  def __call__(self, constants: dict, images: jax.Array, ten_crop: bool) -> jax.Array:
    """float32 [B, c, c, C] (the centre crop), or [B, 10, c, c, C] with ``ten_crop``."""
    s, c = self.image_size, self.crop_size
    centred = images.astype(jnp.float32) - constants['mean']
    if not ten_crop:
      y, x = transforms.center_offsets(s, s, c)
      return centred[:, y:y + c, x:x + c]
    crops = [centred[:, y:y + c, x:x + c] for y, x in transforms.ten_crop_offsets(s, s, c)]
    return jnp.stack(crops + [crop[:, :, ::-1] for crop in crops], axis=1)
