"""One record's content -> resized uint8 pixels: decode (with draft) + DIGITS resize, in one call.

Used by every consumer of images -- the training pipeline (a random window, `exact=False`), evaluation and
classification (`contract.preprocess_for_eval`, `exact=True`), the mean-image pass and the prepare tool --
so that they all decode and resize the same way.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.data import decode as decode_lib
from alexnet_jax.data import resize as resize_lib
from alexnet_jax.data import sizes

_NOISE_TAG = 0xF111


def record_noise_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
  """The fill-mode noise generator of one record: fixed per (seed, record), the same in every epoch.

  A padded record thus keeps one padding for the whole run, as a DIGITS dataset (which stored it) did.
  `stream` separates splits (the prepare tool passes the split's number).
  """
  return np.random.default_rng([seed % (1 << 63), _NOISE_TAG, stream, index])


def load_resized(content, *, image_size: int | tuple[int, int], resize_mode: str, channels: int,
                 window: tuple[int, int, int, int] | None = None,
                 noise_rng: np.random.Generator | None = None, exact: bool = True,
                 draft: bool = True) -> np.ndarray:
  """Decodes `content` and returns the `window` (x, y, w, h) of its DIGITS resize: uint8 [h, w, channels].

  Args:
    content: a path, encoded bytes, a uint8 array or a Pillow image. An array that already has the target
      size and channels (a prepared record) is only sliced.
    image_size: (width, height) DIGITS resizes to, or one number for a square.
    resize_mode: squash | crop | fill | half_crop.
    channels: 1 or 3.
    window: the part of the resized image wanted; None for all of it.
    noise_rng: the generator of fill-mode noise (None: seed 0).
    exact: True: DIGITS bit for bit; False: resize only the window's source box (training crops).
    draft: allow Pillow's reduced-size JPEG decoding when the stored image is >= 2x what is needed.

  Raises:
    DecodeError: the content cannot be decoded.
  """
  width, height = sizes.parse_image_size(image_size)
  if (isinstance(content, np.ndarray) and content.ndim == 3 and content.dtype == np.uint8
      and content.shape == (height, width, channels)):
    if window is None:
      return content
    x, y, w, h = window
    return content[y:y + h, x:x + w]

  def needed(w: int, h: int) -> tuple[int, int]:
    p = resize_lib.plan_resize(w, h, width, height, resize_mode)
    return p.x.resized, p.y.resized

  dec = decode_lib.decode(content, channels, needed=needed, draft=draft)
  plan = resize_lib.plan_resize(dec.size[0], dec.size[1], width, height, resize_mode)
  noise = resize_lib.make_noise(plan, channels, noise_rng) if plan.noise_axis is not None else None
  return resize_lib.render(dec.image, plan, channels=channels, noise=noise, window=window, scale=dec.scale,
                           exact=exact)
