"""The preprocessing contract between training, evaluation and classification.

A trained network is only meaningful with the exact preprocessing it was trained with: the resize mode and
size, the crop size, the channels and the mean that was subtracted. `PreprocessContract` holds them;
`save` writes them into a workdir (`preprocess.json` + `mean.npy`) and `load` reads them back, so that
`classify` months later preprocesses exactly as `evaluate` did.

`preprocess_for_eval` is *the* evaluation preprocessing: the evaluation pipeline calls it for every record
and classification calls it for every image, so the two can never disagree. It decodes (DIGITS' mode rules,
EXIF orientation, draft decoding), resizes with DIGITS' `resize_image` (fill noise from the fixed seed
`EVAL_NOISE_SEED`, so the same file always gives the same input), then takes the centre crop -- or the
paper's 10 crops -- and subtracts the mean at the crop's position (Caffe's order: mean first, then mirror).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from alexnet_jax.runtime import fileio
from alexnet_jax.data import errors
from alexnet_jax.data import loading
from alexnet_jax.data import resize as resize_lib
from alexnet_jax.data import sizes
from alexnet_jax.data import transforms

CONTRACT_FILE = 'preprocess.json'
MEAN_FILE = 'mean.npy'
LABELS_FILE = 'labels.txt'
EVAL_NOISE_SEED = 0
VERSION = 1


@dataclasses.dataclass
class PreprocessContract:
  """What a network expects of its input (see the module docstring).

  Attributes:
    image_size: (width, height) images are resized to (DIGITS' "Image size (Width x Height)"), before
      cropping; one number is accepted for a square and stored as (n, n) (`sizes.parse_image_size`).
    crop_size: the side of the square crop that is the network's input, or 0 (`sizes.NO_CROP`, DIGITS'
      blank crop size): the whole resized image is the input.
    resize_mode: squash | crop | fill | half_crop.
    channels: 1 or 3.
    mean_mode: image | pixel | none.
    mean_image: float32 [height, width, channels], the training split's mean image.
    draft: whether draft (reduced-size) JPEG decoding is allowed.
  """
  image_size: tuple[int, int]
  crop_size: int
  resize_mode: str
  channels: int
  mean_mode: str
  mean_image: np.ndarray
  draft: bool = True

  def __post_init__(self):
    if self.resize_mode not in resize_lib.RESIZE_MODES:
      raise errors.DataError(f'resize_mode={self.resize_mode!r}: expected one of {resize_lib.RESIZE_MODES}')
    if self.channels not in (1, 3):
      raise errors.DataError(f'channels={self.channels}: expected 1 or 3')
    if self.mean_mode not in transforms.MEAN_MODES:
      raise errors.DataError(f'mean={self.mean_mode!r}: expected one of {transforms.MEAN_MODES}')
    try:
      self.image_size = sizes.parse_image_size(self.image_size)
    except ValueError as e:
      raise errors.DataError(f'image_size: {e}') from None
    self.crop_size = int(self.crop_size)
    if self.crop_size != sizes.NO_CROP and not 0 < self.crop_size <= min(self.image_size):
      raise errors.DataError(f'crop_size={self.crop_size} must be 0 (none) or in 1..{min(self.image_size)}, '
                             f'the shorter side of the {sizes.describe(*self.image_size)} images')
    self.mean_image = np.asarray(self.mean_image, np.float32)
    want = (self.height, self.width, self.channels)
    if self.mean_image.shape != want:
      raise errors.DataError(f'mean image of shape {self.mean_image.shape}, expected {want}')
    self.mean = transforms.mean_for_mode(self.mean_image, self.mean_mode)
    self.subtract = transforms.MeanSubtractor(self.mean)

  @property
  def width(self) -> int:
    return self.image_size[0]

  @property
  def height(self) -> int:
    return self.image_size[1]

  @property
  def input_hw(self) -> tuple[int, int]:
    """The network input's (height, width): the crop, or the whole image when crop_size is 0."""
    return sizes.input_hw(self.width, self.height, self.crop_size)

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """The network input's [height, width, channels]."""
    return (*self.input_hw, self.channels)

  def centre_mean(self) -> np.ndarray:
    """The subtracted mean at the centre crop's position, float32 [h, w, C]: what adds a centre crop
    back to the pixels the network saw."""
    (h, w), (ch, cw) = (self.height, self.width), self.input_hw
    y, x = transforms.center_offsets(h, w, (ch, cw))
    return np.asarray(self.mean, np.float32)[y:y + ch, x:x + cw]

  def to_json(self) -> dict[str, Any]:
    # image_size is [W, H] (DIGITS' order); input_size the network input's [W, H] after the crop.
    h, w = self.input_hw
    return {'version': VERSION, 'image_size': list(self.image_size), 'crop_size': self.crop_size,
            'input_size': [w, h],
            'resize_mode': self.resize_mode, 'channels': self.channels, 'mean': self.mean_mode,
            'mean_file': MEAN_FILE, 'draft': self.draft, 'scale': '0..255, mean subtracted',
            'layout': 'HWC, RGB'}

  def save(self, directory: str, extra: dict[str, Any] | None = None) -> None:
    """Writes `mean.npy`, then `preprocess.json` (plus `extra` keys), into `directory`.

    Each atomically: a resume rewrites them while the dashboard may be reading them (a census, Classify).
    """
    with fileio.atomic_write(os.path.join(directory, MEAN_FILE), 'wb') as f:
      np.save(f, self.mean_image)
    fileio.write_json(os.path.join(directory, CONTRACT_FILE), dict(self.to_json(), **(extra or {})),
                      indent=2)

  @classmethod
  def load(cls, directory: str) -> 'PreprocessContract':
    """Reads what `save` wrote."""
    path = os.path.join(directory, CONTRACT_FILE)
    try:
      with open(path, encoding='utf-8') as f:
        d = json.load(f)
      mean = np.load(os.path.join(directory, d.get('mean_file', MEAN_FILE)))
    except (OSError, ValueError, KeyError) as e:
      raise errors.DataError(f'cannot read the preprocessing contract in {directory!r}: {e}') from None
    # image_size: [W, H]; one number in contracts written before rectangular images.
    return cls(d['image_size'], int(d['crop_size']), d['resize_mode'], int(d['channels']), d['mean'],
               mean, bool(d.get('draft', True)))


def load_contract(directory: str) -> PreprocessContract:
  return PreprocessContract.load(directory)


def preprocess_for_eval(image, contract: PreprocessContract | str | os.PathLike,
                        ten_crop: bool = False) -> np.ndarray:
  """The evaluation/classification input of one image.

  Args:
    image: a Pillow image, a file path, encoded bytes, or a uint8 array (HxW or HxWxC).
    contract: a `PreprocessContract`, or a directory holding one (a workdir or a model bundle).
    ten_crop: False: the centre crop; True: the paper's 10 crops (TL, TR, BL, BR, centre, then mirrored).

  Returns:
    float32 [h, w, C], or [10, h, w, C] with (h, w) = `contract.input_hw`; 0..255 scale minus the mean.

  Raises:
    DecodeError: the image cannot be decoded.
  """
  if not isinstance(contract, PreprocessContract):
    contract = PreprocessContract.load(os.fspath(contract))
  return transforms.crops_from_resized(resize_for_eval(image, contract), contract.subtract,
                                       contract.input_hw, ten_crop)


def resize_for_eval(image, contract: PreprocessContract) -> np.ndarray:
  """The first half of `preprocess_for_eval`: decoded and resized, uint8 [height, width, C].

  The evaluation pipeline hands these to the device when `config.data.augment_on='device'`, and the
  eval step cuts the crops there (`device_augment.EvalCrops`: the same arithmetic as `crops_from_resized`).
  """
  return loading.load_resized(
      image, image_size=contract.image_size, resize_mode=contract.resize_mode, channels=contract.channels,
      noise_rng=np.random.default_rng(EVAL_NOISE_SEED), exact=True, draft=contract.draft)
