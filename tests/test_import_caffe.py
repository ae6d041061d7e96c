"""Importing Caffe models and DIGITS archives: the bundle computes what Caffe computes, bad files are refused.

Caffe is not installed, so ``caffe_forward`` below is Caffe's layer semantics written out in numpy, float64,
NCHW, one image at a time -- the reference the imported bundles are compared with:

* Convolution with ``group``: the input maps and the filters cut in ``group`` parts, part ``g`` of the
  filters reading part ``g`` of the maps (caffe/layers/base_conv_layer.cpp); zero padding; floor sizing.
* LRN ACROSS_CHANNELS (lrn_layer.cpp): ``x / (k + alpha / n * sum of x^2 over the n maps centred on it,
  clipped at the first and last map) ** beta`` over *all* the layer's maps (groups do not split it).
* Pooling MAX with Caffe's ``ceil((H - k) / s) + 1`` outputs, the last window clipped at the edge.
* InnerProduct on the ``C, H, W``-flattened map; ReLU; Power ``(shift + scale * x) ** power``.
* The input: the image in **BGR**, minus the mean file's image, centre-cropped (Caffe's test-time
  DataTransformer).

Files are written by ``tests/caffe_files.py`` (an independent wire-format encoder and prototxt writer) in both
of Caffe's formats. The networks are narrow copies where the mapping allows (AlexNet at width 1/8: every
layer's maps scaled alike), at the real 227x227 input.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

import alexnet_jax
from alexnet_jax.inference import importers
from alexnet_jax.inference.importers import WeightsError, caffe_proto, prototxt
from tests import caffe_files

WIDTH, CLASSES, SIZE, IMAGE = 0.125, 5, 227, 256


# ---- Caffe's layers in numpy -------------------------------------------------------------------------------

def _conv(x, w, b, stride=1, pad=0, group=1):
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
  outs = []
  for xg, wg in zip(np.split(x, group), np.split(w, group)):
    windows = np.lib.stride_tricks.sliding_window_view(xg, wg.shape[2:], axis=(1, 2))[:, ::stride, ::stride]
    outs.append(np.tensordot(wg, windows, axes=([1, 2, 3], [0, 3, 4])))
  return np.concatenate(outs) + b[:, None, None]


def _lrn(x, n=5, alpha=1e-4, beta=0.75, k=1.0):
  sq = np.pad(x * x, ((n // 2, n // 2), (0, 0), (0, 0)))
  window = sum(sq[i:i + x.shape[0]] for i in range(n))
  return x / (k + alpha / n * window) ** beta


def _max_pool(x, k=3, s=2):
  c, h, w = x.shape
  oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
  out = np.empty((c, oh, ow))
  for i in range(oh):
    for j in range(ow):
      out[:, i, j] = x[:, i * s:min(i * s + k, h), j * s:min(j * s + k, w)].max(axis=(1, 2))
  return out


def caffe_input(image_rgb, mean_bgr_chw, crop):
  """The network input Caffe's transformer makes: BGR, minus the mean image, the centre crop."""
  x = image_rgb[..., ::-1].transpose(2, 0, 1).astype(np.float64) - mean_bgr_chw
  top, left = (x.shape[1] - crop) // 2, (x.shape[2] - crop) // 2
  return x[:, top:top + crop, left:left + crop]


def caffe_alexnet(blobs, x, lrn_groups=1):
  """bvlc_alexnet's deploy net (logits of fc8) on one CHW input; ``lrn_groups=2``: a tower-local LRN
  instead of Caffe's (what the test shows the import does *not* compute)."""
  p = {name: [b.astype(np.float64) for b in bl] for name, _, bl in blobs}
  relu = lambda a: np.maximum(a, 0)  # noqa: E731
  lrn = lambda a: np.concatenate([_lrn(part) for part in np.split(a, lrn_groups)])  # noqa: E731
  x = _max_pool(lrn(relu(_conv(x, *p['conv1'], stride=4))))
  x = _max_pool(lrn(relu(_conv(x, *p['conv2'], pad=2, group=2))))
  x = relu(_conv(x, *p['conv3'], pad=1))
  x = relu(_conv(x, *p['conv4'], pad=1, group=2))
  x = _max_pool(relu(_conv(x, *p['conv5'], pad=1, group=2)))
  x = relu(p['fc6'][0] @ x.reshape(-1) + p['fc6'][1])
  x = relu(p['fc7'][0] @ x + p['fc7'][1])
  return p['fc8'][0] @ x + p['fc8'][1]


def caffe_lenet(blobs, x):
  p = {name: [b.astype(np.float64) for b in bl] for name, _, bl in blobs}
  x = x * 0.0125
  x = _max_pool(_conv(x, *p['conv1']), 2, 2)
  x = _max_pool(_conv(x, *p['conv2']), 2, 2)
  x = np.maximum(p['ip1'][0] @ x.reshape(-1) + p['ip1'][1], 0)
  return p['ip2'][0] @ x + p['ip2'][1]


def _softmax(z):
  e = np.exp(z - z.max())
  return e / e.sum()


# ---- files ------------------------------------------------------------------------------------------------

def smooth_image(rng, size, channels=3):
  """A photo-like uint8 image (smooth, so resampling choices matter little; compared at its own size)."""
  coarse = rng.uniform(0, 255, (8, 8, channels))
  up = np.kron(coarse, np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
  return np.clip(up + rng.normal(0, 20, up.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def alexnet_files(tmp_path_factory):
  """A width-1/8 bvlc_alexnet: random weights in both formats, its deploy.prototxt in both, a mean file."""
  folder = tmp_path_factory.mktemp('caffe')
  blobs = caffe_files.alexnet_blobs(WIDTH, CLASSES, seed=1)
  rng = np.random.default_rng(2)
  mean = rng.uniform(90, 140, (3, IMAGE, IMAGE)).astype(np.float32)   # BGR, like ilsvrc_2012_mean
  files = {'blobs': blobs, 'mean_array': mean, 'mean': str(folder / 'mean.binaryproto')}
  caffe_files.write_binaryproto(files['mean'], mean)
  for v1 in (False, True):
    tag = 'v1' if v1 else 'new'
    files[f'model_{tag}'] = str(folder / f'{tag}.caffemodel')
    caffe_files.write_caffemodel(files[f'model_{tag}'], blobs, v1=v1, packed=not v1)
    files[f'deploy_{tag}'] = str(folder / f'deploy_{tag}.prototxt')
    with open(files[f'deploy_{tag}'], 'w') as f:
      f.write(caffe_files.deploy_text(caffe_files.alexnet_layers(WIDTH, CLASSES), input_chw=(3, SIZE, SIZE),
                                      v1=v1, input_style='input_dim' if v1 else 'input_layer'))
  return files


@pytest.mark.parametrize('fmt', ['new', 'v1'])
def test_alexnet_imports_as_caffe_computes_it(alexnet_files, tmp_path, fmt):
  """Both formats (V1 `layers` with unpacked floats and 4-D blob dims; `layer` with packed floats and
  BlobShape) give the logits of Caffe's semantics: groups as towers, LRN across both towers, ceil pooling,
  BGR input, the mean image at the crop."""
  files = alexnet_files
  out = tmp_path / 'bundle'
  _, info = importers.import_weights(files[f'model_{fmt}'], out, prototxt=files[f'deploy_{fmt}'],
                                     mean=files['mean'])
  assert info['model']['name'] == 'alexnet' and info['model']['lrn'] == 'caffe_across'
  assert info['preprocess']['image_size'] == [IMAGE, IMAGE] and info['preprocess']['crop_size'] == SIZE
  model = alexnet_jax.load(out)
  image = smooth_image(np.random.default_rng(3), IMAGE)
  ours = model.logits(model.preprocess(image)[None])[0]
  x = caffe_input(image, files['mean_array'].astype(np.float64), SIZE)
  want = caffe_alexnet(files['blobs'], x)
  np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  # Not vacuous: a tower-local LRN on the same weights gives other logits.
  local = caffe_alexnet(files['blobs'], x, lrn_groups=2)
  assert np.abs(local - want).max() > 1e-3 * np.abs(want).max()


def test_across_tower_lrn_gives_the_same_logits_with_the_towers_on_two_devices(alexnet_files, tmp_path):
  """The imported bvlc_alexnet in the 'model' layout (one tower per device, the conv1/conv2 maps exchanged
  before each LRN) computes the one-device logits."""
  files = alexnet_files
  out = tmp_path / 'bundle'
  importers.import_weights(files['model_new'], out, prototxt=files['deploy_new'], mean=files['mean'])
  rng = np.random.default_rng(4)
  single = alexnet_jax.load(out, layout='single')
  batch = np.stack([single.preprocess(smooth_image(rng, IMAGE)) for _ in range(2)])
  towers = alexnet_jax.load(out, layout='model')
  np.testing.assert_allclose(towers.logits(batch), single.logits(batch), rtol=1e-5, atol=1e-5)
