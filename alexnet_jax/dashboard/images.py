"""The image work the web process does itself: thumbnails, gallery images, the resize example.

Pillow, numpy and the record decoder are imported inside these functions, not at the top: the web
process starts without them (``tests/test_dashboard_api.py`` times the import of ``app``) and loads them
only for the page that draws. Everything here is bounded, so that a burst of requests (a hostile page's
``<img>`` tags) stays within a few hundred MB instead of growing the server by GBs (issue 24): at most
``IMAGE_WORK`` images at a time, each decoding at most ``MAX_DECODE_PIXELS``.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Any, Optional

from alexnet_jax.runtime import confinement
from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import forms
from alexnet_jax.dashboard import security

IMAGE_WORK = threading.BoundedSemaphore(2)
MAX_DECODE_PIXELS = 4096 * 4096


def open_bounded(path: str, size: tuple[int, int]):
  """A Pillow image of ``path`` reduced while decoding towards ``size`` (JPEG draft), refused (ValueError)
  when it would still decode more than ``MAX_DECODE_PIXELS``; nothing is decoded before that check."""
  import PIL.Image  # pylint: disable=g-import-not-at-top  (the web process starts without it)
  im = PIL.Image.open(path)
  try:
    im.draft('RGB', size)
    if im.width * im.height > MAX_DECODE_PIXELS:
      raise ValueError(f'{im.width}x{im.height} is too large to show (at most {MAX_DECODE_PIXELS} pixels)')
  except BaseException:
    im.close()
    raise
  return im


def thumbnail(path: str, size: int) -> bytes:
  import PIL.Image  # pylint: disable=g-import-not-at-top  (the web process starts without it)
  from alexnet_jax.data import reports  # pylint: disable=g-import-not-at-top  (numpy + Pillow only)
  try:
    with IMAGE_WORK, open_bounded(path, (size, size)) as im:
      im = reports.thumbnail(im, size, fit='within')
      out = io.BytesIO()
      im.save(out, format='PNG')
      return out.getvalue()
  except (OSError, ValueError, PIL.Image.DecompressionBombError):
    raise errors_lib.not_found(f'{confinement.printable(path)} cannot be shown as a thumbnail') from None


class RecordImages:
  """The stored images of prepared splits, as PNG, with a few ArrayRecord readers kept open."""

  def __init__(self):
    self._readers: dict[str, Any] = {}
    self._readers_lock = threading.Lock()

  def png(self, path: str, index: int) -> bytes:
    """One stored image of a prepared split, as PNG (records are read without grain, so without JAX)."""
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    from alexnet_jax.data import records  # pylint: disable=g-import-not-at-top  (numpy + Pillow only)
    import PIL.Image  # pylint: disable=g-import-not-at-top
    with self._readers_lock:
      reader = self._readers.get(path)
      if reader is None:
        if len(self._readers) > 16:
          self._readers.clear()
        reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
        self._readers[path] = reader
      if not 0 <= index < reader.num_records():
        raise IndexError(index)
      blob = reader.read([index])[0]
    with IMAGE_WORK:
      image = records.decode_record(blob).image
      pil = PIL.Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
      buf = io.BytesIO()
      pil.save(buf, format='PNG', compress_level=1)
      return buf.getvalue()


def resize_example(width: int, height: int, channels: int, sample: Optional[str]) -> bytes:
  """The four resize modes drawn side by side on a sample image (the form's "See example")."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import PIL.Image  # pylint: disable=g-import-not-at-top
  import PIL.ImageDraw  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import resize  # pylint: disable=g-import-not-at-top  (numpy + Pillow only)
  image = None
  if sample:
    try:
      with open_bounded(sample, (512, 512)) as opened:
        image = opened.convert('RGB')
      image.thumbnail((512, 512))
    except Exception:  # pylint: disable=broad-except
      image = None
  if image is None:            # a wide picture, so the modes differ: sky, ground, sun, a tree
    image = PIL.Image.new('RGB', (240, 150), (120, 170, 230))
    d = PIL.ImageDraw.Draw(image)
    d.rectangle([0, 105, 240, 150], fill=(80, 150, 70))
    d.ellipse([20, 15, 70, 65], fill=(250, 210, 60))
    d.rectangle([170, 60, 182, 110], fill=(110, 70, 40))
    d.ellipse([145, 20, 207, 80], fill=(40, 120, 50))
    d.rectangle([0, 0, 239, 149], outline=(200, 30, 30), width=3)
  scale = min(1.0, 150.0 / max(width, height))
  tile_w, tile_h = max(1, round(width * scale)), max(1, round(height * scale))
  modes = ('squash', 'crop', 'fill', 'half_crop')
  src_w = round(image.width * tile_h / image.height)
  src = image.resize((max(1, src_w), tile_h))
  pad, label_h = 10, 18
  canvas = PIL.Image.new('RGB', (src.width + len(modes) * (tile_w + pad) + 2 * pad, tile_h + label_h + 2 * pad),
                         (255, 255, 255))
  d = PIL.ImageDraw.Draw(canvas)
  canvas.paste(src, (pad, pad + label_h))
  d.text((pad, pad), f'original {image.width}x{image.height}', fill=(0, 0, 0))
  x = src.width + 2 * pad
  for mode in modes:
    # Drawn at the size it is shown: the modes depend on the aspect ratio only, and a 4096x4096 example
    # computed at full size cost ~200 MB a request (issue 24).
    out = resize.resize_image(image, tile_h, tile_w, channels, mode, rng=np.random.default_rng(0))
    tile = PIL.Image.fromarray(out[:, :, 0] if out.ndim == 3 and out.shape[2] == 1 else out).convert('RGB')
    canvas.paste(tile, (x, pad + label_h))
    d.text((x, pad), mode, fill=(0, 0, 0))
    x += tile_w + pad
  buf = io.BytesIO()
  canvas.save(buf, format='PNG')
  return buf.getvalue()


def first_image(folder: str, roots) -> Optional[str]:
  try:
    for cls in sorted(os.scandir(folder), key=lambda e: e.name):
      if cls.is_dir() and not cls.name.startswith('.'):
        for f in sorted(os.scandir(cls.path), key=lambda e: e.name):
          if f.is_file() and f.name.lower().endswith(forms.IMAGE_EXTENSIONS) and security.inside(f.path, roots):
            return f.path
  except OSError:
    return None
  return None
