"""Visualizations: conv1's kernels with the towers side by side, every layer's activations for an image,
per-layer statistics and histograms -- written completely or not at all."""

import json
import os

import numpy as np
import PIL.Image
import pytest

from alexnet_jax import inference
from alexnet_jax.inference import exporting, visualization
from tests.test_classify import all_images, image_folder, run_cli, trained_run


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  return trained_run(tmp_path_factory, 'model')


@pytest.fixture(scope='module')
def image(tmp_path_factory):
  return all_images(image_folder(tmp_path_factory))[9]


def test_conv1_grid_puts_the_towers_side_by_side():
  """Tower 0's kernels all red and tower 1's all green: the left grid is red, the right one green."""
  kernel = np.zeros((2, 11, 11, 3, 48), np.float32)
  kernel[0, :, :, 0] = np.linspace(0.1, 1, 11)[:, None, None]   # red ramps
  kernel[1, :, :, 1] = np.linspace(0.1, 1, 11)[None, :, None]   # green ramps
  grid = visualization.conv1_filter_grid(kernel, enlarge_by=2)
  assert grid.dtype == np.uint8 and grid.ndim == 3
  half = grid.shape[1] // 2
  left, right = grid[20:, :half - 8].reshape(-1, 3), grid[20:, half + 8:].reshape(-1, 3)
  kernel_px = lambda px: px[(px != 255).any(axis=1)]             # noqa: E731  (drop the white gaps)
  assert kernel_px(left)[:, 0].mean() > 120 and kernel_px(left)[:, 1].max() == 0
  assert kernel_px(right)[:, 1].mean() > 120 and kernel_px(right)[:, 0].max() == 0
  # 48 kernels per tower on a 7x7 grid of 22-pixel tiles.
  assert grid.shape[1] > 2 * 7 * 22
  assert visualization.color_specificity(kernel)[0] > 0.5
  grey = np.repeat(kernel[:, :, :, :1], 3, axis=3)
  assert visualization.color_specificity(grey) == pytest.approx([0.0, 0.0], abs=1e-9)


def test_visualize_writes_every_picture_and_the_stats(run_dir, image, tmp_path):
  model = inference.load(str(run_dir))
  out = tmp_path / 'vis'
  stats = visualization.visualize(model, str(out), image=image)
  layers = ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8']
  expected = {'conv1_filters.png', 'input.png', 'top5.png', 'stats.json'}
  expected |= {f'activations/{l}.png' for l in layers}
  expected |= {f'histograms/weights_{l}.png' for l in layers}
  expected |= {f'histograms/activations_{l}.png' for l in layers}
  written = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}
  assert written == expected == set(stats['files'])
  for name in expected - {'stats.json'}:
    with PIL.Image.open(out / name) as im:
      assert im.size[0] > 10 and im.size[1] > 10, name
  with PIL.Image.open(out / 'input.png') as im:
    assert im.size == (64, 64)

  saved = json.loads((out / 'stats.json').read_text())
  params = model.host_params()
  conv1 = saved['layers']['conv1']
  assert conv1['kernel_shape'] == [2, 11, 11, 3, 6] and conv1['parameters'] == 2 * (11 * 11 * 3 * 6 + 6)
  assert conv1['weights']['std'] == pytest.approx(float(params['towers']['conv1']['kernel'].std()),
                                                  rel=1e-5)
  assert len(conv1['per_tower']) == 2 and len(saved['conv1_color']['per_tower']) == 2
  assert sum(saved['layers'][l]['parameters'] for l in layers + ['head']) == (
      saved['model']['parameters'])
  acts = saved['layers']['conv2']['activations']
  assert acts['shape_per_tower'] == [[1, 7, 7, 16], [1, 7, 7, 16]]
  assert 0 <= acts['fraction_positive'] <= 1
  # The top-5 is the model's own prediction for the centre crop.
  top5 = saved['image']['top5']
  predicted = model.predict(image, top_k=5, ten_crop=False)
  assert [label for label, _ in top5] == [label for label, _ in predicted]
  np.testing.assert_allclose([p for _, p in top5], [p for _, p in predicted], atol=1e-5)


def test_refuses_a_foreign_folder_and_a_bad_image(run_dir, tmp_path):
  model = inference.load(str(run_dir))
  foreign = tmp_path / 'mine'
  foreign.mkdir()
  (foreign / 'notes.txt').write_text('keep me')
  with pytest.raises(FileExistsError, match='--overwrite'):
    visualization.visualize(model, str(foreign))
  from alexnet_jax.data import DecodeError
  with pytest.raises(DecodeError):
    visualization.visualize(model, str(tmp_path / 'new'), image=str(tmp_path / 'missing.jpg'))
  assert sorted(os.listdir(tmp_path)) == ['mine']  # nothing half-written, no temp folders


def test_cli_from_a_bundle(run_dir, image, tmp_path):
  bundle, _ = exporting.export_model(str(run_dir), tmp_path / 'm.zip')
  out = tmp_path / 'vis'
  proc = run_cli('visualize', f'--bundle={bundle}', f'--image={image}', f'--output={out}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'wrote 28 files' in proc.stdout and 'top-5:' in proc.stdout
  assert (out / 'activations' / 'fc7.png').exists()
  proc = run_cli('visualize', f'--bundle={bundle}', '--image=nope.jpg', f'--output={tmp_path / "x"}')
  assert proc.returncode == 2 and 'nope.jpg' in proc.stderr.splitlines()[-1]
  assert not (tmp_path / 'x').exists()
