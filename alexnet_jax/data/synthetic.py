"""Generated image folders for tests, benchmarks and demos -- no download needed.

* `make_image_folder`: `root/<class>/<n>.jpg` with a distinct colour per class (plus texture and noise), so
  that a tiny network can actually learn it in a few steps.
* `photo_like`: an ImageNet-like picture (smooth shapes at three scales, sensor-like noise, a colour cast),
  ~50-70 KiB as a 500x375 JPEG at quality 90, for throughput measurements.
* `make_hostile_folder`: every kind of bad or odd file the issue lists, with the outcome expected of each
  (`HOSTILE_EXPECTED`): skipped with a reason, kept after conversion, or ignored by the listing.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import PIL.Image

from alexnet_jax.data import errors


def photo_like(rng: np.random.Generator, width: int = 500, height: int = 375) -> np.ndarray:
  """A uint8 [height, width, 3] image with a photo's spectrum: smooth blobs at 3 scales plus noise."""
  out = np.zeros((height, width, 3), np.float32)
  for cells, amp in ((4, 60.0), (16, 30.0), (64, 15.0)):
    small = rng.normal(0.0, 1.0, (max(2, cells * height // width), cells, 3)).astype(np.float32)
    im = PIL.Image.fromarray(np.uint8(np.clip(small * 40 + 128, 0, 255)))
    out += (np.asarray(im.resize((width, height), PIL.Image.BICUBIC), np.float32) - 128.0) * (amp / 40.0)
  out += rng.normal(0.0, 6.0, out.shape).astype(np.float32)
  out += rng.uniform(60, 190, 3).astype(np.float32)     # a colour cast per image
  return np.uint8(np.clip(out, 0, 255))


def class_image(rng: np.random.Generator, label: int, num_classes: int, width: int, height: int) -> np.ndarray:
  """uint8 [height, width, 3]: a class-specific colour and stripe orientation, with noise."""
  hue = label / max(1, num_classes)
  base = 127.5 + 100 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))
  yy, xx = np.mgrid[0:height, 0:width]
  angle = np.pi * label / max(1, num_classes)
  stripes = 30 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / 3.0)
  img = base[None, None, :] + stripes[:, :, None] + rng.normal(0, 12, (height, width, 3))
  return np.uint8(np.clip(img, 0, 255))


def make_image_folder(root: str, *, num_classes: int = 3, per_class: int = 8, size: tuple[int, int] = (48, 40),
                      seed: int = 0, class_names: list[str] | None = None, ext: str = '.jpg',
                      vary_size: bool = True) -> list[str]:
  """Writes `root/<class>/<i><ext>` images (JPEG or PNG by extension); returns their paths.

  Args:
    size: (width, height) of the images; with `vary_size`, each image is up to 25% larger in one dimension
      so that aspect ratios differ (the resize modes then do different things).
  """
  rng = np.random.default_rng(seed)
  names = class_names or [f'class_{i}' for i in range(num_classes)]
  paths = []
  for label, name in enumerate(names):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    for i in range(per_class):
      w, h = size
      if vary_size:
        extra = int(rng.integers(0, max(1, w // 4) + 1))
        w, h = (w + extra, h) if i % 2 == 0 else (w, h + extra)
      p = os.path.join(d, f'{i:03d}{ext}')
      PIL.Image.fromarray(class_image(rng, label, len(names), w, h)).save(
          p, **({'quality': 92} if ext.lower() in ('.jpg', '.jpeg') else {}))
      paths.append(p)
  return paths


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
  """A tiny PNG whose header claims width x height pixels (a decompression bomb for Pillow's check)."""
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', ihdr) + _png_chunk(b'IDAT', zlib.compress(b'\0' * 16))
          + _png_chunk(b'IEND', b''))


def _jpeg_bytes(image: PIL.Image.Image, **kwargs) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format='JPEG', **kwargs)
  return buf.getvalue()


# file (relative to the hostile root) -> None (kept, after conversion), a DecodeError reason (skipped), or
# 'ignored' (not an image file for the listing: wrong extension or hidden).
HOSTILE_EXPECTED = {
    'odd/empty.jpg': errors.EMPTY,
    'odd/truncated.jpg': errors.TRUNCATED,
    'odd/not_an_image.jpg': errors.NOT_AN_IMAGE,
    'odd/dangling.jpg': errors.DANGLING,
    'odd/bomb.png': errors.BOMB,
    'odd/cmyk.jpg': None,
    'odd/rgba.png': None,
    'odd/palette_transparent.png': None,
    'odd/gray16.png': None,
    'odd/gray.jpg': None,
    'odd/ünïcödé 画像.JPG': None,
    'odd/rotated_exif.jpeg': None,
    'odd/large.jpg': None,
    'odd/notes.txt': 'ignored',
    'odd/.hidden.jpg': 'ignored',
    'odd/.cache/hidden_dir.jpg': 'ignored',
    'plain/a.jpg': None,
    'plain/b.png': None,
    'plain/sub/c.bmp': None,
}


def make_hostile_folder(root: str, seed: int = 0) -> dict[str, str | None]:
  """Writes the files of `HOSTILE_EXPECTED` under `root` (classes 'odd' and 'plain'); returns that dict.

  Also adds `odd/loop -> odd` (a symlink loop the listing must not follow forever).
  """
  rng = np.random.default_rng(seed)
  for d in ('odd/.cache', 'plain/sub'):
    os.makedirs(os.path.join(root, d), exist_ok=True)

  def put(rel: str, data: bytes) -> None:
    with open(os.path.join(root, rel), 'wb') as f:
      f.write(data)

  rgb = PIL.Image.fromarray(class_image(rng, 0, 2, 40, 30))
  good = _jpeg_bytes(rgb, quality=90)
  put('odd/empty.jpg', b'')
  put('odd/truncated.jpg', good[:len(good) // 2])
  put('odd/not_an_image.jpg', b'this is a text file, not a JPEG\n' * 4)
  os.symlink(os.path.join(root, 'odd', 'missing_target.jpg'), os.path.join(root, 'odd', 'dangling.jpg'))
  put('odd/bomb.png', bomb_png())
  put('odd/cmyk.jpg', _jpeg_bytes(rgb.convert('CMYK')))
  rgba = rgb.convert('RGBA')
  alpha = np.zeros((30, 40), np.uint8)
  alpha[:, 20:] = 255                     # left half transparent: must come out white
  rgba.putalpha(PIL.Image.fromarray(alpha))
  rgba.save(os.path.join(root, 'odd/rgba.png'))
  pal = rgb.quantize(16)
  pal.save(os.path.join(root, 'odd/palette_transparent.png'), transparency=0)
  PIL.Image.fromarray((np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)).save(
      os.path.join(root, 'odd/gray16.png'))
  put('odd/gray.jpg', _jpeg_bytes(rgb.convert('L')))
  put('odd/ünïcödé 画像.JPG', good)
  exif = PIL.Image.Exif()
  exif[0x0112] = 6                        # rotate 90 degrees clockwise to display
  put('odd/rotated_exif.jpeg', _jpeg_bytes(PIL.Image.fromarray(class_image(rng, 0, 2, 60, 30)), exif=exif))
  put('odd/large.jpg', _jpeg_bytes(PIL.Image.fromarray(photo_like(rng, 1200, 900)), quality=85))
  put('odd/notes.txt', b'not an image extension\n')
  put('odd/.hidden.jpg', good)
  put('odd/.cache/hidden_dir.jpg', good)
  os.symlink(os.path.join(root, 'odd'), os.path.join(root, 'odd', 'loop'))
  put('plain/a.jpg', good)
  rgb.save(os.path.join(root, 'plain/b.png'))
  rgb.save(os.path.join(root, 'plain/sub/c.bmp'))
  return dict(HOSTILE_EXPECTED)
