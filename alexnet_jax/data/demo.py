"""The demo's data: a small image-classification folder of shapes and textures, drawn as JPEGs.

``experiments/demo.py`` trains on it when ``config.data.source`` is ``'synthetic'``: the folder is made
once under the workdir (``WORKDIR/synthetic/<class>/<n>.jpg``) and reused on resume. Five classes, each a
figure on a noisy, randomly tinted background -- disc, square, triangle, stripes and checkerboard -- at
random positions, sizes and colours, so a network has to learn shape and texture rather than a colour.
The images are seeded: the same arguments always give the same files. The default 600 per class (3,000
JPEGs, ~5 s to draw) gives the demo enough distinct images for 2,100 steps without memorizing them; the
textures are learnt within a few epochs, disc / square / triangle (same circumradius, rotated) take the
rest of the run.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('checkerboard', 'disc', 'square', 'stripes', 'triangle')


def _background(rng: np.random.Generator, size: int) -> Image.Image:
  tint = rng.uniform(40, 215, 3)
  noise = rng.normal(0, 18, (size, size, 3))
  return Image.fromarray(np.uint8(np.clip(tint + noise, 0, 255)))


def _colour(rng: np.random.Generator, background: Image.Image) -> tuple[int, int, int]:
  """A colour far enough from the background's mean to be visible."""
  mean = np.asarray(background, np.float32).reshape(-1, 3).mean(0)
  while True:
    c = rng.uniform(0, 255, 3)
    if np.abs(c - mean).sum() > 150:
      return tuple(int(v) for v in c)


def draw(label: str, rng: np.random.Generator, size: int = 80) -> Image.Image:
  """One image of class ``label``."""
  image = _background(rng, size)
  pen = ImageDraw.Draw(image)
  fg, bg2 = _colour(rng, image), _colour(rng, image)
  extent = rng.uniform(0.45, 0.8) * size
  cx, cy = rng.uniform(extent / 2, size - extent / 2, 2)
  box = [cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2]
  if label == 'disc':
    pen.ellipse(box, fill=fg)
  elif label == 'square':
    angle = rng.uniform(0, math.pi / 2)
    corners = [(cx + extent / 2 * math.cos(angle + k * math.pi / 2),
                cy + extent / 2 * math.sin(angle + k * math.pi / 2)) for k in range(4)]
    pen.polygon(corners, fill=fg)
  elif label == 'triangle':
    angle = rng.uniform(0, 2 * math.pi)
    corners = [(cx + extent / 2 * math.cos(angle + k * 2 * math.pi / 3),
                cy + extent / 2 * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    pen.polygon(corners, fill=fg)
  elif label == 'stripes':
    period = rng.uniform(6, 12)
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
    on = (np.floor(phase) % 2 == 0)[..., None]
    image = Image.fromarray(np.where(on, np.array(fg, np.uint8), np.asarray(image)))
  elif label == 'checkerboard':
    cell = rng.uniform(6, 12)
    yy, xx = np.mgrid[0:size, 0:size]
    on = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2 == 0)[..., None]
    image = Image.fromarray(np.where(on, np.array(fg, np.uint8), np.array(bg2, np.uint8)))
  else:
    raise ValueError(f'unknown demo class {label!r}; classes are {CLASSES}')
  return image


def make_demo_folder(root: str, *, per_class: int = 600, size: int = 80, seed: int = 0) -> str:
  """Writes the folder (atomically: a temporary sibling renamed at the end) unless it exists."""
  if os.path.isdir(root):
    return root
  parent = os.path.dirname(os.path.abspath(root))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.synthetic-', dir=parent)
  try:
    rng = np.random.default_rng(seed)
    for label in CLASSES:
      os.makedirs(os.path.join(tmp, label))
      for i in range(per_class):
        draw(label, rng, size).save(os.path.join(tmp, label, f'{i:04d}.jpg'), quality=90)
    os.replace(tmp, root)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return root
