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
from alexnet_jax.inference.importers import WeightsError, prototxt
from tests import caffe_files

WIDTH, CLASSES, SIZE, IMAGE = 0.125, 5, 227, 256


# ---- Caffe's layers in numpy ------------------------------------------------------------------------------

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


# ---- DIGITS "Download Model" archives ---------------------------------------------------------------------

def write_archive(path, files: dict[str, bytes]) -> None:
  """A DIGITS download: flat members (``digits/model/views.py``), tar.gz or zip by the name."""
  if str(path).endswith('.zip'):
    import zipfile
    with zipfile.ZipFile(path, 'w') as z:
      for name, data in files.items():
        z.writestr(name, data)
    return
  with tarfile.open(path, 'w:gz') as t:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))


def _read(path) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def _png(array, path):
  Image.fromarray(array.squeeze()).save(path)
  return str(path)


def test_digits_alexnet_archive_classifies_as_digits_did(alexnet_files, tmp_path):
  """info.json's contract (image dimensions, resize mode), labels.txt and the mean file are kept; a PNG
  classifies to Caffe's probabilities."""
  files = alexnet_files
  info = {'framework': 'caffe', 'image dimensions': [IMAGE, IMAGE, 3], 'image resize mode': 'crop',
          'mean file': 'mean.binaryproto', 'snapshot file': 'snapshot_iter_90.caffemodel',
          'deploy file': 'deploy.prototxt', 'labels file': 'labels.txt', 'name': 'flowers'}
  labels = [f'flower {i}' for i in range(CLASSES)]
  archive = tmp_path / '20160101-000000-abcd_epoch_30.0.tar.gz'
  write_archive(archive, {
      'deploy.prototxt': _read(files['deploy_new']), 'snapshot_iter_90.caffemodel': _read(files['model_new']),
      'snapshot_iter_30.caffemodel': b'not read', 'mean.binaryproto': _read(files['mean']),
      'labels.txt': ''.join(f'{name}\n' for name in labels).encode(), 'info.json': json.dumps(info).encode()})
  assert importers.detect_format(str(archive)) == 'digits'
  path, meta = importers.import_weights(archive, tmp_path / 'bundle.tar.gz')
  assert meta['preprocess']['resize_mode'] == 'crop' and meta['imported_from']['format'] == 'digits'
  assert meta['imported_from']['digits']['name'] == 'flowers'
  model = alexnet_jax.load(path)
  assert model.classes == labels
  image = smooth_image(np.random.default_rng(5), IMAGE)
  png = _png(image, tmp_path / 'flower.png')
  ours = model.probabilities(png)
  want = _softmax(caffe_alexnet(files['blobs'], caffe_input(image, files['mean_array'].astype(np.float64),
                                                            SIZE)))
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-6)


def test_digits_lenet_zip_keeps_the_input_scale(tmp_path):
  """DIGITS' LeNet (Power scale 0.0125, grayscale 28x28, no crop), V1 files in a .zip."""
  blobs = caffe_files.lenet_blobs(10, seed=6)
  rng = np.random.default_rng(7)
  mean = rng.uniform(20, 60, (1, 28, 28)).astype(np.float32)
  caffe_files.write_caffemodel(tmp_path / 'm.caffemodel', blobs, v1=True)
  caffe_files.write_binaryproto(tmp_path / 'mean.binaryproto', mean)
  deploy = caffe_files.deploy_text(caffe_files.lenet_layers(10), input_chw=(1, 28, 28), v1=True,
                                   input_style='input_shape')
  info = {'framework': 'caffe', 'image dimensions': [28, 28, 1], 'image resize mode': 'squash'}
  write_archive(tmp_path / 'lenet.zip', {
      'deploy.prototxt': deploy.encode(), 'info.json': json.dumps(info).encode(),
      'snapshot_iter_10.caffemodel': _read(tmp_path / 'm.caffemodel'),
      'mean.binaryproto': _read(tmp_path / 'mean.binaryproto')})
  path, meta = importers.import_weights(tmp_path / 'lenet.zip', tmp_path / 'bundle')
  assert meta['model']['name'] == 'lenet' and meta['preprocess']['channels'] == 1
  digit = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
  ours = alexnet_jax.load(path).probabilities(_png(digit, tmp_path / 'digit.png'))
  want = _softmax(caffe_lenet(blobs, digit.transpose(2, 0, 1).astype(np.float64) - mean))
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-6)


# ---- bad inputs -------------------------------------------------------------------------------------------

def test_bad_inputs_are_refused_naming_the_file_and_the_reason(alexnet_files, tmp_path):
  files, out = alexnet_files, tmp_path / 'bundle'
  # A truncated caffemodel.
  cut = tmp_path / 'cut.caffemodel'
  cut.write_bytes(_read(files['model_new'])[:200_000])
  with pytest.raises(WeightsError, match=r'cut\.caffemodel.*truncated'):
    importers.import_weights(cut, out, prototxt=files['deploy_new'])
  # A prototxt that does not match the weights: the layer and both shapes.
  wrong = tmp_path / 'wrong.prototxt'
  wrong.write_text(caffe_files.deploy_text(caffe_files.alexnet_layers(WIDTH, CLASSES + 2),
                                           input_chw=(3, SIZE, SIZE)))
  with pytest.raises(WeightsError, match=r"layer 'fc8'.*\(5, 512\).*\(7, 512\)"):
    importers.import_weights(files['model_new'], out, prototxt=str(wrong))
  # A value of the wrong kind where caffe.proto has a number.
  bad = tmp_path / 'bad.prototxt'
  bad.write_text(wrong.read_text().replace('num_output: 12', 'num_output: "twelve"', 1))
  with pytest.raises(WeightsError, match=r'new\.caffemodel.*twelve'):
    importers.import_weights(files['model_new'], out, prototxt=str(bad))
  # CaffeNet's pool-before-norm order is refused rather than mis-imported.
  caffenet = tmp_path / 'caffenet.prototxt'
  caffenet.write_text(caffe_files.deploy_text(caffe_files.alexnet_layers(WIDTH, CLASSES, caffenet=True),
                                              input_chw=(3, SIZE, SIZE)))
  with pytest.raises(WeightsError, match='CaffeNet'):
    importers.import_weights(files['model_new'], out, prototxt=str(caffenet))
  # No prototxt given and none beside the caffemodel.
  with pytest.raises(WeightsError, match='--prototxt'):
    importers.import_weights(files['model_new'], out)
  # An archive with a ../ member.
  evil = tmp_path / 'evil.tar.gz'
  write_archive(evil, {'../escape.caffemodel': b'x', 'deploy.prototxt': b''})
  with pytest.raises(WeightsError, match=r'evil\.tar\.gz.*\.\./'):
    importers.import_weights(evil, out)
  assert not (tmp_path / 'escape.caffemodel').exists() and not out.exists()
  # A prototxt that is not one.
  with pytest.raises(WeightsError, match=r'garbage\.prototxt, line 1'):
    prototxt.parse('layer { name: "x" type: }', 'garbage.prototxt')


# ---- --config.init_from -----------------------------------------------------------------------------------

def test_init_from_takes_a_caffemodel_with_its_deploy_prototxt_beside_it(alexnet_files, tmp_path):
  from alexnet_jax.training import finetune
  files = alexnet_files
  os.link(files['model_new'], tmp_path / 'bvlc.caffemodel')
  with pytest.raises(ValueError, match='deploy.prototxt beside'):
    finetune.load_earlier(str(tmp_path / 'bvlc.caffemodel'), mesh=None)
  (tmp_path / 'deploy.prototxt').write_text(open(files['deploy_new']).read())
  host, about = finetune.load_earlier(str(tmp_path / 'bvlc.caffemodel'), mesh=None)
  assert (about['network'], about['num_classes'], about['input_size']) == ('alexnet', CLASSES, '227x227')
  bundle = alexnet_jax.inference.read_model_files(importers.import_weights(files['model_new'], tmp_path / 'b',
                                                                           prototxt=files['deploy_new'])[0])
  flat = alexnet_jax.inference.bundle.flatten_params(bundle.params)
  assert sorted(host) == sorted(flat)
  for name in flat:
    np.testing.assert_array_equal(host[name], flat[name], err_msg=name)


# ---- bvlc_googlenet ----------------------------------------------------------------------------------------

def _max_pool_same(x):
  """Caffe's 3x3/1 max pool with pad 1 (the padding never wins)."""
  x = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2)).max(axis=(3, 4))


def caffe_googlenet(blobs, x):
  p = {name: [b.astype(np.float64) for b in bl] for name, _, bl in blobs}

  def conv(name, x, stride=1):
    return np.maximum(_conv(x, *p[name], stride=stride, pad=p[name][0].shape[-1] // 2), 0)

  x = _lrn(_max_pool(conv('conv1/7x7_s2', x, 2)))
  x = _max_pool(_lrn(conv('conv2/3x3', conv('conv2/3x3_reduce', x))))
  for name, *_ in caffe_files.INCEPTIONS:
    i = f'inception_{name}'
    x = np.concatenate([conv(f'{i}/1x1', x), conv(f'{i}/3x3', conv(f'{i}/3x3_reduce', x)),
                        conv(f'{i}/5x5', conv(f'{i}/5x5_reduce', x)),
                        conv(f'{i}/pool_proj', _max_pool_same(x))])
    if name in ('3b', '4e'):
      x = _max_pool(x)
  return p['loss3/classifier'][0] @ x.mean(axis=(1, 2)) + p['loss3/classifier'][1]


def test_bvlc_googlenet_imports_as_caffe_computes_it(tmp_path):
  """Mapped by name (conv1/7x7_s2 -> conv1, inception_3a/1x1 -> inception_3a_1x1 ...), at width 1/16 and the
  224x224 input the 7x7 average needs. A deploy net has no auxiliary classifiers (they start fresh); a
  training snapshot's are imported, loss1/fc's rows permuted from C, H, W to H, W, C."""
  width = 1 / 16
  layers, shapes = caffe_files.googlenet_layers(width, CLASSES)
  blobs = caffe_files.random_blobs(shapes, seed=8)
  caffe_files.write_caffemodel(tmp_path / 'googlenet.caffemodel', blobs)
  (tmp_path / 'deploy.prototxt').write_text(caffe_files.deploy_text(layers, input_chw=(3, 224, 224),
                                                                    input_style='input_shape'))
  path, info = importers.import_weights(tmp_path / 'googlenet.caffemodel', tmp_path / 'bundle')
  assert info['model']['name'] == 'googlenet'
  assert any('fresh xavier' in note for note in info['imported_from']['notes'])
  model = alexnet_jax.load(path)
  image = smooth_image(np.random.default_rng(9), 224)
  ours = model.logits(model.preprocess(image)[None])[0]
  want = caffe_googlenet(blobs, image[..., ::-1].transpose(2, 0, 1).astype(np.float64))
  np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

  ch = lambda n: max(1, round(n * width))  # noqa: E731
  feeds = {'loss1': sum(ch(n) for n in (192, 208, 48, 64)), 'loss2': sum(ch(n) for n in (112, 288, 64, 64))}
  aux = {}
  for loss, c in feeds.items():
    aux.update({f'{loss}/conv': (ch(128), c, 1, 1), f'{loss}/fc': (ch(1024), ch(128) * 16),
                f'{loss}/classifier': (CLASSES, ch(1024))})
  aux_blobs = caffe_files.random_blobs(aux, seed=10)
  caffe_files.write_caffemodel(tmp_path / 'snapshot.caffemodel', blobs + aux_blobs)
  imported = importers.read_source(tmp_path / 'snapshot.caffemodel')
  assert 'auxiliary classifiers imported from the caffemodel' in imported.notes
  fc = dict((name, b) for name, _, b in aux_blobs)['loss1/fc'][0]
  hwc = fc.reshape(ch(1024), ch(128), 4, 4).transpose(0, 2, 3, 1).reshape(ch(1024), -1).T
  np.testing.assert_array_equal(imported.params['towers']['loss1_fc']['kernel'][0], hwc)


def test_the_imported_alexnet_exports_to_onnx_with_its_across_tower_lrn(alexnet_files, tmp_path):
  """The ONNX graph of a caffe_across bundle normalizes over both towers' maps too (one LRN node)."""
  ort = pytest.importorskip('onnxruntime')
  from alexnet_jax.inference import exporting
  files = alexnet_files
  path, _ = importers.import_weights(files['model_new'], tmp_path / 'b', prototxt=files['deploy_new'])
  onnx_path, _ = exporting.export_onnx(path, tmp_path / 'm.onnx')
  model = alexnet_jax.load(path)
  x = np.random.default_rng(11).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
  ours = model.logits(x - model.contract.centre_mean()[None])
  theirs = ort.InferenceSession(str(onnx_path)).run(['logits'], {'image': x})[0]
  assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(ours).max()
