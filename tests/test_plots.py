"""plots: real PNGs from real records, 3 to 1000 classes, atomic writes."""

import os

import numpy as np
from PIL import Image
import pytest

from alexnet_jax.run import plots
from alexnet_jax.run.metrics_writer import MetricsWriter, read_metrics


def _png_size(path):
  with Image.open(path) as im:
    assert im.format == 'PNG'
    return im.size


def _no_temp_files(directory):
  return [n for n in os.listdir(directory) if n.endswith('.tmp')] == []


def test_curves_from_metrics_jsonl(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as w:
    for step in range(1, 61):
      epoch = step / 10
      w.write('train', step, epoch, loss=2.0 / (1 + epoch), top1=0.1 * epoch,
              lr=0.01 * 0.1 ** (step // 20))
      if step % 10 == 0:
        w.write('val', step, epoch, loss=2.2 / (1 + epoch), top1=0.15 * epoch, top5=0.9)
  records = read_metrics(tmp_path)
  path = plots.plot_curves(records, tmp_path / 'plots' / 'curves.png', title='demo')
  width, height = _png_size(path)
  assert width > 600 and height > 250
  assert _no_temp_files(tmp_path / 'plots')
  fig = plots.curves_figure(records)
  loss_ax, lr_ax, acc_ax = fig.axes
  labels = [line.get_label() for line in loss_ax.lines + acc_ax.lines]
  assert labels == ['loss (train)', 'loss (val)', 'accuracy top-1 (val)', 'accuracy top-5 (val)']
  np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), [15.0 * e for e in range(1, 7)])  # percent
  assert lr_ax.get_yscale() == 'log'  # 0.01 -> 1e-4 spans two decades
  # No records at all (first validation not reached): still a valid image.
  _png_size(plots.plot_curves([], tmp_path / 'empty.png'))


@pytest.mark.parametrize('n', [3, 30, 1000])
def test_confusion_matrix_readable_sizes(tmp_path, n):
  rng = np.random.default_rng(n)
  labels = rng.integers(0, n, size=5 * n)
  preds = np.where(rng.random(5 * n) < 0.7, labels, rng.integers(0, n, size=5 * n))
  cm = np.zeros((n, n), np.int64)
  np.add.at(cm, (labels, preds), 1)
  names = [f'class_{i}' for i in range(n)]
  path = plots.plot_confusion_matrix(cm, names, tmp_path / f'cm{n}.png')
  width, height = _png_size(path)
  assert 300 < width < 1600 and 300 < height < 1600
  fig = plots.confusion_figure(cm, names)
  ax = fig.axes[0]
  ticklabels = [t.get_text() for t in ax.get_xticklabels()]
  if n <= plots.MAX_LABELED_CLASSES:
    assert ticklabels == names
  else:
    visible = [t for t in ax.get_xticks() if 0 <= t <= n - 1]
    assert 'class_0' not in ticklabels and 3 <= len(visible) <= 7
  assert (len(ax.texts) == n * n) == (n <= plots.MAX_ANNOTATED_CLASSES)
  assert _no_temp_files(tmp_path)


def test_confusion_matrix_counts_and_bad_shapes(tmp_path):
  cm = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 3]])  # an empty row must not divide by zero
  fig = plots.confusion_figure(cm, ['a', 'b', 'c'], normalize=True)
  data = fig.axes[0].images[0].get_array()
  np.testing.assert_allclose(data[0], [5 / 6, 1 / 6, 0])
  np.testing.assert_allclose(data[1], [0, 0, 0])
  plots.plot_confusion_matrix(cm, None, tmp_path / 'counts.png', normalize=False)
  with pytest.raises(ValueError, match='square'):
    plots.plot_confusion_matrix(np.zeros((2, 3)), None, tmp_path / 'bad.png')


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
  path = tmp_path / 'curves.png'
  plots.plot_curves([], path)
  before = path.read_bytes()

  def boom(*args, **kwargs):
    raise RuntimeError('disk full')

  monkeypatch.setattr(plots.Figure, 'savefig', boom)
  with pytest.raises(RuntimeError):
    plots.plot_curves([{'split': 'train', 'epoch': 1, 'loss': 1.0}], path)
  assert path.read_bytes() == before
  assert _no_temp_files(tmp_path)


def test_bar_and_histogram(tmp_path):
  p = plots.plot_bar([0.5, 0.9, float('nan'), 0.1], ['a', 'b', 'c', 'd'], tmp_path / 'bar.png',
                     title='per-class accuracy', percent=True)
  _png_size(p)
  h = plots.plot_histogram(np.random.default_rng(0).standard_normal(10_000), tmp_path / 'h.png',
                           title='conv1 weights')
  _png_size(h)
  _png_size(plots.plot_histogram([np.nan], tmp_path / 'h2.png'))
  with pytest.raises(ValueError, match='labels'):
    plots.plot_bar([1.0], ['a', 'b'], tmp_path / 'x.png')
