"""Image and crop sizes as DIGITS states them: WIDTH x HEIGHT images, a square crop or none.

DIGITS' "Image size (Width x Height)" may be any rectangle (its classroom lab squashes photos to 300 x 200),
and its "Crop Size" is one number -- a square cut from the resized image -- or blank, for none: then the
whole resized image is the network's input, and the network's fully connected layers take whatever the
convolutions leave (Caffe infers an InnerProduct layer's fan-in from its input).

Here ``config.data.image_size`` is ``W,H`` (the order of ``python -m alexnet_jax.prepare --image_size`` and
DIGITS) or one number for a square, and ``config.data.crop_size`` is the square crop's side, or 0 for
none. Arrays are [H, W, C], so the helpers below hand back ``(width, height)`` for sizes as stated and
``(height, width)`` for array shapes; the names say which.
"""

from __future__ import annotations

import re
from typing import Any

NO_CROP = 0   # config.data.crop_size=0: DIGITS' blank crop size, the whole resized image


def parse_image_size(value: Any) -> tuple[int, int]:
  """``config.data.image_size`` -> (width, height).

  Accepts one integer (a square), ``(W, H)``/``[W, H]``, or the text ``'W,H'`` / ``'WxH'`` / ``'N'``.

  Raises:
    ValueError: anything else, or a side that is not a positive integer (the message says what was given).
  """
  if isinstance(value, bool):
    raise ValueError(f'{value!r} is not an image size; expected WIDTH,HEIGHT such as 300,200 or one number')
  if isinstance(value, int):
    sides: list[Any] = [value, value]
  elif isinstance(value, (tuple, list)):
    sides = list(value)
  elif isinstance(value, str):
    parts = [p for p in re.split(r'[,x\s]+', value.strip().strip('()[]')) if p]
    sides = parts * 2 if len(parts) == 1 else parts
  else:
    raise ValueError(f'{value!r} is not an image size; expected WIDTH,HEIGHT such as 300,200 or one number')
  if len(sides) != 2:
    raise ValueError(f'{value!r}: expected WIDTH,HEIGHT such as 300,200 (or one number for a square)')
  try:
    w, h = (int(s) for s in sides)
  except (TypeError, ValueError):
    raise ValueError(f'{value!r}: expected whole numbers WIDTH,HEIGHT such as 300,200') from None
  if any(isinstance(s, float) and s != int(s) for s in sides) or w < 1 or h < 1:
    raise ValueError(f'{value!r}: both sides must be positive whole numbers')
  return w, h


def input_hw(width: int, height: int, crop: int) -> tuple[int, int]:
  """The network input's (height, width): the square crop, or with ``crop`` 0 the whole image."""
  crop = int(crop)
  return (int(height), int(width)) if crop == NO_CROP else (crop, crop)


def crop_hw(crop) -> tuple[int, int]:
  """A crop given as one side (a square) or as (height, width) -> (height, width)."""
  if isinstance(crop, (tuple, list)):
    ch, cw = crop
    return int(ch), int(cw)
  return int(crop), int(crop)


def describe(width: int, height: int) -> str:
  """``'300x200'``: DIGITS' W x H."""
  return f'{width}x{height}'
