"""Turning stored bytes into a Pillow image of the right mode, the way DIGITS does, only faster.

What DIGITS does (`digits/utils/image.py: load_image` and `resize_image`'s mode conversion):

* 'L' and 'RGB' images are used as they are; '1' becomes 'L'; 'CMYK' and 'YCbCr' become 'RGB';
* transparency is composited on **white**: 'LA' onto a white 'L' image, 'P' and 'RGBA' onto a white 'RGB'
  image (`new.paste(image, mask=image.convert('RGBA'))`, DIGITS' very call);
* the image is then converted to the requested channels: 'L' for 1, 'RGB' for 3 (Pillow's `convert`, which
  uses ITU-R 601-2 luma for RGB -> L).

What we add, because DIGITS raised on them and the issue asks to keep such files:

* 16-bit ('I;16*'), 32-bit integer ('I') and float ('F') images are scaled to 8 bits ('I;16' and 'I' holding
  values above 255 are divided by 257, i.e. 65535 -> 255) and become 'L';
* 'PA' is treated like 'P' with an alpha channel; 'LAB' and 'HSV' are converted to 'RGB';
* the EXIF orientation tag is applied (`ImageOps.exif_transpose`), so a portrait photo stays a portrait;
* **draft decoding**: before a JPEG is decoded we ask libjpeg for the smallest DCT scale (1/2, 1/4 or 1/8)
  whose output is still at least as large as what the resize step needs (`Image.draft`). That is the case
  only when the stored image is at least twice the target in both dimensions, and then it cuts the decode
  cost several-fold (../shared/PERF_NOTES.md §4: 500x375 -> 128 px went from 657 to 1067 img/s; for a
  256 px target a 500x375 image is *not* reduced, since half of 375 is below 256).

Every failure is reported as a `DecodeError` with one of the reasons of `errors.REASONS`, never as a crash.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Callable, Union

import numpy as np
import PIL.Image
import PIL.ImageOps

from alexnet_jax.data import errors

# The file extensions the folder source picks up, compared case-insensitively (DIGITS had
# .png .jpg .jpeg .bmp .ppm; the issue adds .pgm .webp .tif .tiff).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.webp', '.tif', '.tiff')

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)   # EXIF orientations that rotate by 90 or 270 degrees

ImageSource = Union[bytes, bytearray, memoryview, np.ndarray, PIL.Image.Image, str, os.PathLike]


@dataclasses.dataclass
class Decoded:
  """A decoded image in mode 'L' or 'RGB', upright (EXIF applied).

  Attributes:
    image: the pixels. When draft decoding was used, `image` is the full-resolution picture reduced by
      `scale` (its size is `ceil(size / scale)`; the last row/column may be partly padding).
    size: (width, height) of the full-resolution upright image: every geometric decision (DIGITS' resize
      arithmetic, crop offsets) is made on this size, so draft decoding never changes the geometry.
    scale: 1, 2, 4 or 8: the draft reduction factor actually applied.
  """
  image: PIL.Image.Image
  size: tuple[int, int]
  scale: int = 1


def read_bytes(path: str | os.PathLike) -> bytes:
  """Reads a whole file, mapping OS failures to `DecodeError` reasons (missing, dangling link, ...)."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError as e:
    reason = errors.DANGLING if os.path.islink(path) else errors.MISSING
    raise errors.DecodeError(reason, str(e)) from None
  except IsADirectoryError as e:
    raise errors.DecodeError(errors.NOT_AN_IMAGE, str(e)) from None
  except OSError as e:   # PermissionError, EIO, ...
    raise errors.DecodeError(errors.UNREADABLE, str(e)) from None
  if not data:
    raise errors.DecodeError(errors.EMPTY, os.fspath(path))
  return data


def _open(src: ImageSource) -> PIL.Image.Image:
  """Opens (without decoding) an image from a path, encoded bytes, an array or a Pillow image."""
  if isinstance(src, PIL.Image.Image):
    return src
  if isinstance(src, np.ndarray):
    a = src
    if a.ndim == 3 and a.shape[2] == 1:
      a = a[:, :, 0]
    if a.dtype != np.uint8:
      a = np.clip(np.rint(a), 0, 255).astype(np.uint8)   # DIGITS casts arrays to uint8
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
      raise errors.DecodeError(errors.UNSUPPORTED, f'array of shape {src.shape}')
    return PIL.Image.fromarray(np.ascontiguousarray(a))
  if isinstance(src, (str, os.PathLike)):
    src = read_bytes(src)
  if not len(src):
    raise errors.DecodeError(errors.EMPTY)
  try:
    return PIL.Image.open(io.BytesIO(src))
  except PIL.Image.DecompressionBombError as e:
    raise errors.DecodeError(errors.BOMB, str(e)) from None
  except PIL.UnidentifiedImageError:
    raise errors.DecodeError(errors.NOT_AN_IMAGE, 'Pillow cannot identify the image format') from None
  except Exception as e:  # pylint: disable=broad-except  # Pillow raises many types on broken headers
    raise errors.DecodeError(errors.TRUNCATED, f'{type(e).__name__}: {e}') from None


def _to_8bit_l(im: PIL.Image.Image) -> PIL.Image.Image:
  """'I;16*', 'I' and 'F' images -> 'L' (16-bit ranges divided by 257, others clipped)."""
  a = np.asarray(im)
  if im.mode.startswith('I;16') or (im.mode == 'I' and a.size and a.max() > 255):
    a = np.rint(a.astype(np.float64) / 257.0)
  return PIL.Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), 'L')


def to_digits_mode(im: PIL.Image.Image, channels: int) -> PIL.Image.Image:
  """Converts a loaded image to 'L' (channels=1) or 'RGB' (channels=3) by DIGITS' rules (module doc)."""
  mode = im.mode
  if mode in ('L', 'RGB'):
    pass
  elif mode == '1':
    im = im.convert('L')
  elif mode in ('LA', 'La'):
    new = PIL.Image.new('L', im.size, 255)
    new.paste(im, mask=im.convert('RGBA'))
    im = new
  elif mode in ('CMYK', 'YCbCr', 'LAB', 'HSV'):
    im = im.convert('RGB')
  elif mode in ('P', 'PA', 'RGBA', 'RGBa'):
    if mode == 'PA':
      im = im.convert('RGBA')
    new = PIL.Image.new('RGB', im.size, (255, 255, 255))
    new.paste(im, mask=im.convert('RGBA'))
    im = new
  elif mode.startswith('I') or mode == 'F':
    im = _to_8bit_l(im)
  else:
    raise errors.DecodeError(errors.UNSUPPORTED, f'image mode {mode!r}')
  want = 'L' if channels == 1 else 'RGB'
  if im.mode != want:
    im = im.convert(want)
  return im


def decode(src: ImageSource, channels: int,
           needed: Callable[[int, int], tuple[int, int]] | None = None,
           draft: bool = True) -> Decoded:
  """Decodes an image to mode 'L'/'RGB', upright, reduced by draft decoding where that loses nothing.

  Args:
    src: a path, encoded bytes, a uint8 array (HxW, HxWx1, HxWx3) or a Pillow image.
    channels: 1 or 3.
    needed: given the upright full-resolution (width, height), returns the smallest (width, height) the
      caller will resample from; draft decoding never goes below it. None disables draft decoding.
    draft: False disables draft decoding.

  Raises:
    DecodeError: the record cannot be decoded; `reason` says why.
  """
  im = _open(src)
  try:
    w, h = im.size
    if w <= 0 or h <= 0:
      raise errors.DecodeError(errors.TRUNCATED, f'image size {im.size}')
    orientation = 1
    if im.format in ('JPEG', 'MPO', 'TIFF', 'WEBP'):   # formats whose EXIF is known before decoding
      orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    swapped = orientation in _SWAPS_AXES
    size = (h, w) if swapped else (w, h)
    scale = 1
    if draft and needed is not None and im.format in ('JPEG', 'MPO'):
      nw, nh = needed(*size)
      if swapped:
        nw, nh = nh, nw
      if nw > 0 and nh > 0 and (w >= 2 * nw and h >= 2 * nh):
        result = im.draft(im.mode, (nw, nh))
        if result is not None:
          scale = max(1, int(round(w / result[1][2])))
    im.load()
    if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
      im = PIL.ImageOps.exif_transpose(im)   # (called unconditionally, it would copy every image)
    if scale == 1:
      # Without draft the decoded image is the full-resolution one; this also covers formats whose
      # orientation is only known after loading (a PNG eXIf chunk after the pixel data).
      size = im.size
    im = to_digits_mode(im, channels)
  except errors.DecodeError:
    raise
  except PIL.Image.DecompressionBombError as e:
    raise errors.DecodeError(errors.BOMB, str(e)) from None
  except Exception as e:  # pylint: disable=broad-except  # truncated data: OSError, SyntaxError, ...
    raise errors.DecodeError(errors.TRUNCATED, f'{type(e).__name__}: {e}') from None
  return Decoded(im, size, scale)


def has_image_extension(name: str) -> bool:
  """True for the extensions of `IMAGE_EXTENSIONS`, in any case."""
  return name.lower().endswith(IMAGE_EXTENSIONS)
