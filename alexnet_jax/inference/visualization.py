"""What a trained network has learned: DIGITS' "Show visualizations and statistics" and the paper's Figure 3.

The library behind ``python -m alexnet_jax.visualize`` (``visualize.py``):

    python -m alexnet_jax.visualize (--workdir=DIR [--step=latest|best|N] | --bundle=PATH)
        [--image=PATH] --output=OUT [--overwrite]

writes into OUT:

    conv1_filters.png         conv1's kernels, one tile each, the towers' grids side by side (tower 0
                              left). The paper (section 6.1, Figure 3) saw tower 0 learn largely
                              colour-agnostic kernels and tower 1 colour-specific ones, whatever the
                              initialization; ``stats.json["conv1_color"]`` puts a number on it.
    stats.json                per layer: weight shape, parameter count, mean, std, min, max (per tower
                              too); with --image the same for the layer's activations, and the top-5
    histograms/weights_<layer>.png      the distribution of each layer's kernel weights
    --image only:
    input.png                 the centre crop the network saw (the mean added back)
    activations/<layer>.png   every output map of the layer for that image, tiled, towers side by side
    histograms/activations_<layer>.png
    top5.png                  the five most probable classes

Activations are the outputs of each convolution and dense layer *before* its ReLU (what Flax captures,
``TowerNetwork.apply_stage_capturing``); the tiles show them after the ReLU -- what the next layer
receives -- scaled by the layer's largest value, so a dim map is a weak one, not a badly scaled one.
Dense layers are drawn as a near-square block of units, one pixel per unit, enlarged.

The image is preprocessed by ``data.preprocess_for_eval`` (centre crop), as classification does. OUT is
assembled in a temporary folder and renamed into place when complete.

``image_grid``/``save_png`` are also used by ``classification`` for its top-N-per-category sheet.
"""

from __future__ import annotations

import functools
import io
import math
import os
import shutil
from typing import Any, Optional, Sequence

import jax
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
from alexnet_jax import inference, metrics
from alexnet_jax.models import trees
from alexnet_jax.run import plots
from alexnet_jax.runtime import fileio
from alexnet_jax.parallel import forward

STATS_FILE = 'stats.json'
BACKGROUND = 255     # white separators between tiles
TOWER_GAP = 12       # pixels between the towers' grids


# ---- Pictures as numpy arrays --------------------------------------------------------------------------

def save_png(image: np.ndarray | PIL.Image.Image, path: str) -> str:
  """Writes a uint8 array (HxW or HxWx3) or PIL image as PNG atomically (temp file, then rename)."""
  if not isinstance(image, PIL.Image.Image):
    image = PIL.Image.fromarray(np.asarray(image, np.uint8))
  buf = io.BytesIO()
  image.save(buf, format='PNG')
  return fileio.write_bytes(path, buf.getvalue())


def tile(tiles: np.ndarray, *, columns: Optional[int] = None, pad: int = 1,
         background: int = BACKGROUND) -> np.ndarray:
  """Lays ``tiles`` [N, h, w(, 3)] (uint8) out on a grid with ``pad`` pixels between them.

  ``columns`` defaults to ceil(sqrt(N)), so the grid is about square.
  """
  tiles = np.asarray(tiles, np.uint8)
  n, h, w = tiles.shape[:3]
  columns = columns or max(1, math.ceil(math.sqrt(n)))
  rows = max(1, math.ceil(n / columns))
  shape = (rows * (h + pad) + pad, columns * (w + pad) + pad) + tiles.shape[3:]
  out = np.full(shape, background, np.uint8)
  for i in range(n):
    r, c = divmod(i, columns)
    y, x = pad + r * (h + pad), pad + c * (w + pad)
    out[y:y + h, x:x + w] = tiles[i]
  return out


def side_by_side(images: Sequence[np.ndarray], gap: int = TOWER_GAP,
                 background: int = BACKGROUND) -> np.ndarray:
  """Images (same number of channels) next to each other, top-aligned, ``gap`` pixels apart."""
  height = max(im.shape[0] for im in images)
  width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
  out = np.full((height, width) + images[0].shape[2:], background, np.uint8)
  x = 0
  for im in images:
    out[:im.shape[0], x:x + im.shape[1]] = im
    x += im.shape[1] + gap
  return out


def with_header(image: np.ndarray, text: str, height: int = 16) -> np.ndarray:
  """``image`` (uint8, grey or RGB) with a white strip above it carrying ``text``."""
  strip = PIL.Image.new('L' if image.ndim == 2 else 'RGB', (image.shape[1], height), 'white')
  PIL.ImageDraw.Draw(strip).text((2, 2), text, fill='black', font=_font(11))
  return np.concatenate([np.asarray(strip, np.uint8), image], axis=0)


def tower_pictures(grids: Sequence[np.ndarray]) -> np.ndarray:
  """Each tower's grid under a 'tower t' header, side by side (tower 0 on the left)."""
  return side_by_side([with_header(g, f'tower {t}') for t, g in enumerate(grids)])


def enlarge(images: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour enlargement of [..., h, w(, C)] by an integer factor (keeps pixels crisp)."""
  if factor <= 1:
    return images
  images = np.asarray(images)
  if images.ndim >= 3 and images.shape[-1] == 3:  # colour: axes -3, -2 are height, width
    return images.repeat(factor, axis=-3).repeat(factor, axis=-2)
  return images.repeat(factor, axis=-2).repeat(factor, axis=-1)


def _font(size: int = 11):
  try:
    return PIL.ImageFont.load_default(size=size)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font
    return PIL.ImageFont.load_default()


def image_grid(rows: Sequence[tuple[str, Sequence[tuple[PIL.Image.Image, str]]]], *, cell: int = 96,
               title: str = '') -> PIL.Image.Image:
  """A contact sheet: one row per (row label, [(image, caption), ...]), labels on the left.

  Used for classify's "top N predictions per category": a row per class, its best-scoring images with
  their probability under each.
  """
  font = _font(11)
  label_width = 10 + max([int(font.getlength(label)) for label, _ in rows] + [40])
  columns = max([len(cells) for _, cells in rows] + [1])
  caption_h, pad, title_h = 16, 6, (22 if title else 0)
  width = label_width + columns * (cell + pad) + pad
  height = title_h + len(rows) * (cell + caption_h + pad) + pad
  sheet = PIL.Image.new('RGB', (width, height), (255, 255, 255))
  draw = PIL.ImageDraw.Draw(sheet)
  if title:
    draw.text((pad, 4), title, fill=(0, 0, 0), font=_font(13))
  for r, (label, cells) in enumerate(rows):
    y = title_h + pad + r * (cell + caption_h + pad)
    draw.text((pad, y + cell // 2 - 6), label, fill=(0, 0, 0), font=font)
    for c, (image, caption) in enumerate(cells):
      x = label_width + pad + c * (cell + pad)
      sheet.paste(image.resize((cell, cell)) if image.size != (cell, cell) else image, (x, y))
      draw.text((x, y + cell + 2), caption, fill=(0, 0, 0), font=font)
  return sheet


def _to_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
  scale = 255.0 / (hi - lo) if hi > lo else 0.0
  return np.uint8(np.clip((np.asarray(x, np.float64) - lo) * scale, 0, 255).round())


# ---- conv1's kernels (the paper's Figure 3) ------------------------------------------------------------

def conv1_filter_grid(kernel: np.ndarray, *, enlarge_by: int = 4) -> np.ndarray:
  """conv1's kernels ``[towers, kh, kw, C, F]`` as one picture: each tower's F kernels on a grid, the
  towers side by side.

  Each kernel is scaled on its own to the full 0..255 range (the paper's Figure 3 shows shapes and
  colours, not relative magnitudes), with its channels kept together so an RGB kernel shows its colours.
  """
  kernel = np.asarray(kernel, np.float32)
  grids = []
  for t in range(kernel.shape[0]):
    k = np.moveaxis(kernel[t], -1, 0)            # [F, kh, kw, C]
    lo = k.min(axis=(1, 2, 3), keepdims=True)
    hi = k.max(axis=(1, 2, 3), keepdims=True)
    scaled = np.uint8(np.round(255 * (k - lo) / np.maximum(hi - lo, 1e-12)))
    if scaled.shape[-1] == 1:
      scaled = np.repeat(scaled, 3, axis=-1)
    elif scaled.shape[-1] != 3:  # not an image layer: show the channel mean
      scaled = np.repeat(scaled.mean(axis=-1, keepdims=True).astype(np.uint8), 3, axis=-1)
    grids.append(tile(enlarge(scaled, enlarge_by), pad=2))
  return tower_pictures(grids)


def color_specificity(kernel: np.ndarray) -> list[float]:
  """Per tower, the share of conv1's kernel energy that is colour rather than grey (0 = colour-agnostic).

  For each kernel w[kh, kw, 3] the grey part is its mean over the channels; the score is
  ||w - grey||^2 / ||w||^2, averaged over the tower's kernels. The paper reports tower 0 near the
  grey end and tower 1 coloured.
  """
  kernel = np.asarray(kernel, np.float64)
  if kernel.shape[-2] != 3:
    return [0.0] * kernel.shape[0]
  grey = kernel.mean(axis=-2, keepdims=True)
  colour = ((kernel - grey) ** 2).sum(axis=(1, 2, 3))
  total = (kernel ** 2).sum(axis=(1, 2, 3))
  return [float(v) for v in (colour / np.maximum(total, 1e-30)).mean(axis=-1)]


# ---- Activations ---------------------------------------------------------------------------------------

def activation_grid(per_tower: Sequence[np.ndarray], *, min_tile: int = 32) -> np.ndarray:
  """One layer's outputs for one image (per tower [1, H, W, C] or [1, F]) as a grayscale picture.

  Convolutional maps: one tile per channel, each tower's on its grid, towers side by side. Dense
  layers: the units as a near-square block. Values are shown after the ReLU, scaled by the layer's
  largest value across towers.
  """
  arrays = [np.maximum(np.asarray(a, np.float32)[0], 0.0) for a in per_tower]
  hi = max(float(a.max()) for a in arrays)
  grids = []
  for a in arrays:
    if a.ndim == 3:                               # [H, W, C] -> C tiles
      maps = _to_uint8(np.moveaxis(a, -1, 0), 0.0, hi)
      grids.append(tile(enlarge(maps, max(1, -(-min_tile // maps.shape[1]))), pad=1))
    else:                                         # [F] -> a block of units
      side = max(1, math.ceil(math.sqrt(a.size)))
      block = np.zeros(side * side, np.float32)
      block[:a.size] = a
      block = _to_uint8(block.reshape(side, side), 0.0, hi)
      grids.append(enlarge(block, max(1, -(-128 // side))))
  return tower_pictures(grids)


def summary_stats(values: np.ndarray) -> dict[str, float]:
  v = np.asarray(values, np.float64).reshape(-1)
  return {'mean': float(v.mean()), 'std': float(v.std()), 'min': float(v.min()), 'max': float(v.max())}


def weight_stats(params: dict[str, Any]) -> dict[str, Any]:
  """Per layer: kernel and bias shapes, parameter count, mean/std/min/max overall and per tower."""
  out: dict[str, Any] = {}
  for layer, leaves in params['towers'].items():
    kernel = np.asarray(leaves['kernel'])
    entry = {'kernel_shape': list(kernel.shape),
             'parameters': trees.param_count(leaves),
             'weights': summary_stats(kernel),
             'per_tower': [summary_stats(kernel[t]) for t in range(kernel.shape[0])]}
    if 'bias' in leaves:
      entry['bias_shape'] = list(np.shape(leaves['bias']))
      entry['bias'] = summary_stats(leaves['bias'])
    out[layer] = entry
  head = np.asarray(params['head']['bias'])
  out['head'] = {'bias_shape': list(head.shape), 'parameters': int(head.size),
                 'bias': summary_stats(head),
                 'note': "fc8's bias: added once after the towers' partial logits are summed"}
  return out


def activation_stats(per_tower: Sequence[np.ndarray]) -> dict[str, Any]:
  """Shape, mean/std/min/max and the fraction of positive outputs (units a ReLU would pass)."""
  joined = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in per_tower])
  return {'shape_per_tower': [list(np.shape(a)) for a in per_tower], **summary_stats(joined),
          'fraction_positive': float((joined > 0).mean()),
          'per_tower': [summary_stats(a) for a in per_tower]}


# ---- Everything at once --------------------------------------------------------------------------------

def visualize(model: inference.Model, output: str, *, image: Any = None, overwrite: bool = False,
              bins: int = 50) -> dict[str, Any]:
  """Writes the visualizations of ``model`` (and of ``image`` going through it) into folder ``output``.

  Returns the stats dict (also ``output/stats.json``) with a ``'files'`` list. ``output`` is replaced
  only when ``overwrite`` or when it holds a previous visualization (a ``stats.json``) or nothing.

  Raises:
    FileExistsError: ``output`` holds something else.
    data.DecodeError: ``image`` cannot be read.
  """
  output = os.path.abspath(os.fspath(output))
  if os.path.isfile(output):
    raise FileExistsError(f'--output={output} is a file; give a folder')
  if (os.path.isdir(output) and os.listdir(output) and not overwrite
      and not os.path.isfile(os.path.join(output, STATS_FILE))):
    raise FileExistsError(f'--output={output} holds other files; pass --overwrite or give a new folder')
  params = model.host_params()
  crop = None
  if image is not None:
    crop = model.preprocess(image, ten_crop=False)  # before any file is written: fail early

  staging = fileio.make_staging_dir(output)
  try:
    folder = os.path.join(staging, 'out')  # created with the usual permissions (mkdtemp's are 0700)
    os.makedirs(folder)
    stats = _write_all(model, params, crop, image, folder, bins)
    fileio.replace_dir(folder, output)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return stats


def _write_all(model: inference.Model, params: dict[str, Any], crop: Optional[np.ndarray], image: Any,
               out: str, bins: int) -> dict[str, Any]:
  files: list[str] = []

  def path(*parts: str) -> str:
    files.append('/'.join(parts))
    return os.path.join(out, *parts)

  conv1 = np.asarray(params['towers']['conv1']['kernel'])
  save_png(conv1_filter_grid(conv1), path('conv1_filters.png'))
  stats: dict[str, Any] = {
      'model': {'name': model.network.name, 'towers': model.network.num_towers,
                'classes': model.num_classes, 'step': model.step, 'source': model.path,
                'parameters': trees.param_count(params)},
      'conv1_color': {'per_tower': color_specificity(conv1),
                      'meaning': 'share of kernel energy that is colour, not grey (0: colour-agnostic)'},
      'layers': weight_stats(params)}
  for layer, leaves in params['towers'].items():
    plots.plot_histogram(np.asarray(leaves['kernel']), path('histograms', f'weights_{layer}.png'),
                         bins=bins, title=f'{layer} weights', xlabel='weight')

  if crop is not None:
    # What the network saw: the centre crop plus the mean it had subtracted at that position.
    mean = model.contract.centre_mean()
    seen = np.uint8(np.clip(crop + mean, 0, 255).round())
    save_png(seen[..., 0] if seen.shape[-1] == 1 else seen, path('input.png'))

    run = jax.jit(functools.partial(forward.layer_activations, model.network))
    logits, activations = run(params, crop[None])
    logits = np.asarray(logits)
    activations = {k: [np.asarray(a) for a in v] for k, v in activations.items()}
    for layer, per_tower in activations.items():
      save_png(activation_grid(per_tower), path('activations', f'{layer}.png'))
      plots.plot_histogram(np.concatenate([a.reshape(-1) for a in per_tower]),
                           path('histograms', f'activations_{layer}.png'), bins=bins,
                           title=f'{layer} outputs (before ReLU)', xlabel='activation')
      stats['layers'].setdefault(layer, {})['activations'] = activation_stats(per_tower)
    z = logits[0].astype(np.float64) - logits[0].max()
    probs = np.exp(z) / np.exp(z).sum()
    top5 = metrics.top_n(probs[None], 5, model.classes)[0]
    stats['image'] = {'source': inference.describe(image), 'crop': 'centre',
                      'top5': [[label, p] for label, p in top5]}
    plots.plot_bar([p for _, p in top5], [label for label, _ in top5], path('top5.png'),
                   title=f'top-5: {inference.describe(image)}', percent=True)

  files.append(STATS_FILE)
  stats['files'] = sorted(files)
  fileio.write_json(os.path.join(out, STATS_FILE), stats, indent=2)
  return stats
