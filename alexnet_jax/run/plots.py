"""PNG figures of a run: DIGITS' training graph, confusion matrices, bars and histograms.

What it is for: `train.py` redraws `WORKDIR/plots/curves.png` after each validation from
`metrics_writer.read_metrics(workdir)`, and `evaluate.py` draws the confusion matrix of a split.

* `plot_curves` is DIGITS' model page graph: training loss, validation loss and validation accuracy
  against epochs, accuracy (top-1, top-5) on a right-hand axis in percent; the learning rate, which
  DIGITS draws as a second graph under it, is the panel beside it here.
* Every file is written atomically (a temp file in the same folder, then os.replace), so a browser or
  TensorBoard-like viewer polling the file never sees half a PNG, and a crash keeps the previous one.
* Figures are built with matplotlib's object API on the Agg canvas (FigureCanvasAgg): no pyplot, no
  global backend switch, no display needed, safe from a background thread.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from alexnet_jax.runtime import fileio

# Above these class counts the confusion matrix drops tick labels / cell numbers.
MAX_LABELED_CLASSES = 30
MAX_ANNOTATED_CLASSES = 12


def _save_atomic(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> str:
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lstrip('.').lower() or 'png'
  with fileio.atomic_write(path, 'wb') as f:
    FigureCanvasAgg(fig)
    fig.savefig(f, format=ext, dpi=dpi, bbox_inches='tight')
  return path


def _series(records: Iterable[Mapping[str, Any]], split: str, key: str,
            scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  xs, ys = [], []
  for r in records:
    if r.get('split') != split or key not in r:
      continue
    x = r.get('epoch', r.get('step'))
    y = r[key]
    if x is None or not isinstance(y, (int, float)) or isinstance(y, bool):
      continue
    xs.append(float(x))
    ys.append(float(y) * scale)
  return np.asarray(xs), np.asarray(ys)


def _accuracy_scale(values: np.ndarray) -> float:
  """Accuracies are stored as fractions; tolerate percent values (anything above 1)."""
  finite = values[np.isfinite(values)]
  return 1.0 if finite.size and finite.max() > 1.0 else 100.0


def curves_figure(records: Sequence[Mapping[str, Any]], title: Optional[str] = None) -> Figure:
  """The training-graph figure (see `plot_curves`)."""
  records = list(records)
  fig = Figure(figsize=(12, 4.5))
  grid = fig.add_gridspec(1, 2, width_ratios=(2.2, 1))
  ax = fig.add_subplot(grid[0, 0])
  ax_lr = fig.add_subplot(grid[0, 1])
  handles = []

  x, y = _series(records, 'train', 'loss')
  if x.size:
    handles += ax.plot(x, y, color='tab:blue', lw=1.2, label='loss (train)')
  x, y = _series(records, 'val', 'loss')
  if x.size:
    handles += ax.plot(x, y, color='tab:green', lw=1.5, marker='o', ms=3, label='loss (val)')
  ax.set_xlabel('epoch')
  ax.set_ylabel('loss')
  ax.grid(alpha=0.3)
  if handles:
    ax.set_ylim(bottom=0)  # cross-entropy is >= 0; DIGITS' graph also starts at 0

  acc_ax = ax.twinx()
  for key, color, label in (('top1', 'tab:red', 'accuracy top-1 (val)'),
                            ('top5', 'tab:orange', 'accuracy top-5 (val)')):
    x, y = _series(records, 'val', key)
    if x.size:
      handles += acc_ax.plot(x, y * _accuracy_scale(y), color=color, lw=1.5, marker='s', ms=3,
                             label=label)
  acc_ax.set_ylim(0, 100)
  acc_ax.set_ylabel('accuracy (%)')
  if handles:
    ax.legend(handles=handles, loc='center right', fontsize=8, framealpha=0.8)
  else:
    ax.text(0.5, 0.5, 'no metrics yet', ha='center', va='center', transform=ax.transAxes)
  ax.set_title(title or 'training')

  x, y = _series(records, 'train', 'lr')
  if x.size:
    ax_lr.plot(x, y, color='tab:purple', lw=1.2)
    positive = y[np.isfinite(y) & (y > 0)]
    if positive.size and positive.max() / positive.min() > 20:
      ax_lr.set_yscale('log')  # step/exp policies span decades
  else:
    ax_lr.text(0.5, 0.5, 'no learning rate logged', ha='center', va='center',
               transform=ax_lr.transAxes)
  ax_lr.set_xlabel('epoch')
  ax_lr.set_ylabel('learning rate')
  ax_lr.set_title('learning rate')
  ax_lr.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                title: Optional[str] = None) -> str:
  """Draws DIGITS' training graph from metrics.jsonl records; returns the path.

  Left: train loss, val loss (left axis) and val top-1/top-5 accuracy in % (right axis) against
  epochs. Right: the learning rate of the train records (log scale when it spans decades). Records
  are `{"step", "epoch", "split", ...}` dicts (metrics_writer.read_metrics); missing series are skipped.
  """
  return _save_atomic(curves_figure(records, title), path)


def confusion_figure(matrix: Any, class_names: Optional[Sequence[str]] = None,
                     normalize: bool = True, title: Optional[str] = None) -> Figure:
  """The confusion-matrix figure (see `plot_confusion_matrix`)."""
  m = np.asarray(matrix, np.float64)
  if m.ndim != 2 or m.shape[0] != m.shape[1]:
    raise ValueError(f'confusion matrix must be square, got shape {m.shape}')
  n = m.shape[0]
  if class_names is not None and len(class_names) != n:
    raise ValueError(f'{len(class_names)} class names for a {n}x{n} matrix')
  if normalize:
    rows = m.sum(axis=1, keepdims=True)
    m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
  side = min(max(4.0, 0.32 * n + 2.5), 12.0)
  fig = Figure(figsize=(side + 1.2, side))
  ax = fig.add_subplot(1, 1, 1)
  # Past a few hundred classes there are more cells than pixels: 'antialiased' averages them instead
  # of dropping rows, so the diagonal stays a solid line at 1000 classes.
  image = ax.imshow(m, cmap='Blues', vmin=0.0, vmax=1.0 if normalize else max(m.max(), 1.0),
                    interpolation='nearest' if n <= 300 else 'antialiased', aspect='equal')
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label='fraction of the true class' if normalize else 'count')
  labeled = n <= MAX_LABELED_CLASSES
  if labeled:
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=90 if n > 6 else 0, fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
  else:
    # Too many classes to read names: a few index ticks only; the JSON has the full matrix.
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
  if n <= MAX_ANNOTATED_CLASSES:
    for i in range(n):
      for j in range(n):
        value = m[i, j]
        text = f'{value:.2f}' if normalize else f'{int(value)}'
        ax.text(j, i, text, ha='center', va='center', fontsize=8,
                color='white' if value > (0.5 if normalize else m.max() / 2) else 'black')
  ax.set_xlabel('predicted class' if labeled else 'predicted class (index)')
  ax.set_ylabel('true class' if labeled else 'true class (index)')
  accuracy = np.trace(np.asarray(matrix, np.float64)) / max(np.asarray(matrix).sum(), 1)
  ax.set_title(title or f'confusion matrix ({n} classes, accuracy {100 * accuracy:.1f}%)')
  fig.tight_layout()
  return fig


def plot_confusion_matrix(matrix: Any, class_names: Optional[Sequence[str]], path: str | os.PathLike,
                          normalize: bool = True, title: Optional[str] = None) -> str:
  """Draws a `[true, predicted]` confusion matrix, readable from 3 to 1000 classes; returns the path.

  Rows are normalized to fractions of the true class when `normalize`. Class names label the axes up
  to MAX_LABELED_CLASSES classes, and cells carry their values up to MAX_ANNOTATED_CLASSES; beyond,
  only index ticks (a 1000x1000 matrix is an image, and its diagonal is what one reads).
  """
  return _save_atomic(confusion_figure(matrix, class_names, normalize, title), path)


def plot_bar(values: Sequence[float], labels: Sequence[str], path: str | os.PathLike,
             title: str = '', xlabel: str = '', percent: bool = False,
             max_bars: int = 50) -> str:
  """Horizontal bars, highest first (per-class accuracy, top-N probabilities); returns the path.

  Shows at most `max_bars` bars (the highest); `percent` multiplies by 100 and fixes the axis to 0-100.
  """
  v = np.asarray(values, np.float64)
  if len(labels) != v.size:
    raise ValueError(f'{len(labels)} labels for {v.size} values')
  order = np.argsort(-np.nan_to_num(v, nan=-np.inf), kind='stable')[:max_bars]
  v = v[order] * (100.0 if percent else 1.0)
  names = [str(labels[i]) for i in order]
  fig = Figure(figsize=(7, max(2.0, 0.28 * len(names) + 1.2)))
  ax = fig.add_subplot(1, 1, 1)
  ax.barh(range(len(names)), np.nan_to_num(v), color='tab:blue')
  ax.set_yticks(range(len(names)))
  ax.set_yticklabels(names, fontsize=8)
  ax.invert_yaxis()
  for i, value in enumerate(v):
    if math.isfinite(value):
      ax.text(value, i, f' {value:.1f}' if percent else f' {value:.3g}', va='center', fontsize=7)
  if percent:
    ax.set_xlim(0, 105)
  ax.set_xlabel(xlabel or ('%' if percent else ''))
  ax.set_title(title)
  ax.grid(axis='x', alpha=0.3)
  fig.tight_layout()
  return _save_atomic(fig, path)


def plot_histogram(values: Any, path: str | os.PathLike, bins: int = 50, title: str = '',
                   xlabel: str = '') -> str:
  """A histogram of `values` (e.g. a layer's weights, as DIGITS' weight statistics); returns the path."""
  v = np.asarray(values, np.float64).reshape(-1)
  v = v[np.isfinite(v)]
  fig = Figure(figsize=(6, 3.5))
  ax = fig.add_subplot(1, 1, 1)
  if v.size:
    ax.hist(v, bins=bins, color='tab:blue', alpha=0.85)
    ax.set_title(f'{title}  (mean {v.mean():.3g}, std {v.std():.3g}, n={v.size})'.strip())
  else:
    ax.text(0.5, 0.5, 'no finite values', ha='center', va='center', transform=ax.transAxes)
    ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel('count')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return _save_atomic(fig, path)
