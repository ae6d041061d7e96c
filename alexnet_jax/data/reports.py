"""Pictures for exploring a prepared dataset: the class histogram, contact sheets and the mean image.

* `histogram.png` -- images per class, one bar per split side by side (training beside validation, and
  test when there is one), as DIGITS' dataset page draws it.
* `contact_sheets/<index>_<class>.jpg` -- a grid of thumbnails of the first training images of each class
  (in the split's seeded order), to spot a mislabelled or broken class at a glance.
* `mean.png` -- the mean image rounded to uint8 (DIGITS saved its mean this way).

matplotlib is imported lazily with the Agg backend, so nothing here needs a display.
"""

from __future__ import annotations

import os
import re

import numpy as np
import PIL.Image

THUMB = 64
SHEET_COLUMNS = 8
SHEET_MAX = 48


def safe_filename(name: str, limit: int = 60) -> str:
  """A class name usable in a file name on any filesystem."""
  s = re.sub(r'[^\w.-]+', '_', name, flags=re.UNICODE).strip('._')
  return (s or 'class')[:limit]


def save_histogram(path: str, classes: list[str], counts: dict[str, np.ndarray]) -> None:
  """Bar chart of images per class for each split (`counts[split][label]`)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg', force=False)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = [s for s in ('train', 'val', 'test') if s in counts]
  n = len(classes)
  width_in = min(max(6.0, 0.35 * n * max(1, len(names)) / 2 + 2), 60.0)
  fig, ax = plt.subplots(figsize=(width_in, 4.5), dpi=100)
  bar = 0.8 / max(1, len(names))
  x = np.arange(n)
  colors = {'train': '#1f77b4', 'val': '#ff7f0e', 'test': '#2ca02c'}
  for k, s in enumerate(names):
    ax.bar(x + (k - (len(names) - 1) / 2) * bar, counts[s], bar, label=s, color=colors[s])
  if n <= 100:
    ax.set_xticks(x)
    ax.set_xticklabels([c.replace('_', ' ') for c in classes], rotation=60 if n > 8 else 0, ha='right'
                       if n > 8 else 'center', fontsize=8)
  else:
    ax.set_xlabel(f'{n} classes (label order)')
  ax.set_ylabel('images')
  ax.set_title('Images per class')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


THUMBNAIL_FITS = ('squash', 'pad', 'within')


def thumbnail(image: PIL.Image.Image | np.ndarray, size: int = THUMB, *, fit: str = 'squash'
              ) -> PIL.Image.Image:
  """The package's one thumbnail: an RGB Pillow image of ``image`` (Pillow's, or uint8 [H, W, C]).

  ``fit`` says how the aspect ratio is treated:
    squash  exactly ``size`` x ``size``, the aspect ratio ignored (the contact sheets, as DIGITS' look);
    pad     ``size`` x ``size``, the image scaled to fit and centred on white (classify's top-N sheet);
    within  scaled down to fit in ``size`` x ``size``, never up, not padded (the dashboard's thumbnails;
            Pillow's ``Image.thumbnail``).
  Numpy and Pillow only: the dashboard's web process uses it too.
  """
  if isinstance(image, np.ndarray):
    image = PIL.Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
  image = image.convert('RGB')
  if fit == 'squash':
    return image.resize((size, size), PIL.Image.BILINEAR)
  if fit == 'within':
    image.thumbnail((size, size))
    return image
  if fit != 'pad':
    raise ValueError(f'fit={fit!r}: choose one of {", ".join(THUMBNAIL_FITS)}')
  scale = size / max(image.size)
  image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                       PIL.Image.BILINEAR)
  canvas = PIL.Image.new('RGB', (size, size), (255, 255, 255))
  canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
  return canvas


def save_contact_sheet(path: str, thumbs: list[np.ndarray], columns: int = SHEET_COLUMNS) -> None:
  """A grid of thumbnails with a 2-pixel grey gutter."""
  if not thumbs:
    return
  t = thumbs[0].shape[0]
  rows = -(-len(thumbs) // columns)
  cols = min(columns, len(thumbs))
  gap = 2
  sheet = np.full((rows * (t + gap) + gap, cols * (t + gap) + gap, 3), 128, np.uint8)
  for i, th in enumerate(thumbs):
    r, c = divmod(i, columns)
    y, x = gap + r * (t + gap), gap + c * (t + gap)
    sheet[y:y + t, x:x + t] = th
  PIL.Image.fromarray(sheet).save(path, quality=90)


def save_mean_png(path: str, mean: np.ndarray) -> None:
  """The mean image, rounded to uint8 as DIGITS stored it."""
  a = np.clip(np.around(mean), 0, 255).astype(np.uint8)
  PIL.Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(path)


def contact_sheet_path(directory: str, label: int, name: str) -> str:
  return os.path.join(directory, f'{label:04d}_{safe_filename(name)}.jpg')
