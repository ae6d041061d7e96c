"""Importing torchvision's AlexNet: the bundle's logits are torchvision's, and untrusted files are refused.

torchvision cannot load on these machines (and torch is not installed), so ``reference_logits`` rebuilds
torchvision's ``AlexNet`` module for module in numpy, float64, with torch's NCHW semantics and its key names
(``features.0`` ... ``classifier.6``): Conv2d with zero padding, ReLU, MaxPool2d(3, 2) (floor mode),
AdaptiveAvgPool2d((6, 6)), flatten in C, H, W order, Linear; Dropout is the identity in eval mode; the input
is torchvision's ``Normalize`` of ``ToTensor``'s 0..1 RGB. The weights are random at the real shapes (the
mapping is fixed), drawn as torch's default init does.

The files are written without torch by ``torch_writers.py`` (shared with
benchmarks/import_weights.py).
"""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import alexnet_jax
from alexnet_jax.inference import importers
from alexnet_jax.inference.importers import WeightsError
from alexnet_jax.inference.importers import torch_files, torchvision
from alexnet_jax.training import finetune
from tests.torch_writers import random_state_dict, write_pth, write_safetensors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


# ---- torchvision's AlexNet in numpy ---------------------------------------------------------------------

def _conv(x, w, b, stride=1, pad=0):
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
  windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(1, 2))[:, ::stride, ::stride]
  return np.tensordot(w, windows, axes=([1, 2, 3], [0, 3, 4])) + b[:, None, None]


def _max_pool(x):
  return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(3, 4))


def _adaptive_avg_pool(x, out=6):
  c, h, w = x.shape
  rows = [(i * h // out, -(-(i + 1) * h // out)) for i in range(out)]
  cols = [(j * w // out, -(-(j + 1) * w // out)) for j in range(out)]
  return np.array([[[x[k, r0:r1, c0:c1].mean() for c0, c1 in cols] for r0, r1 in rows] for k in range(c)])


def reference_logits(state, image_rgb_uint8):
  """torchvision's alexnet(image) in eval mode, float64; ``image`` HxWx3 uint8 RGB (the 224 crop)."""
  p = {k: v.astype(np.float64) for k, v in state.items()}
  x = ((image_rgb_uint8 / 255.0 - MEAN) / STD).transpose(2, 0, 1)   # ToTensor + Normalize, CHW
  relu = lambda a: np.maximum(a, 0)   # noqa: E731
  x = _max_pool(relu(_conv(x, p['features.0.weight'], p['features.0.bias'], stride=4, pad=2)))
  x = _max_pool(relu(_conv(x, p['features.3.weight'], p['features.3.bias'], pad=2)))
  x = relu(_conv(x, p['features.6.weight'], p['features.6.bias'], pad=1))
  x = relu(_conv(x, p['features.8.weight'], p['features.8.bias'], pad=1))
  x = _max_pool(relu(_conv(x, p['features.10.weight'], p['features.10.bias'], pad=1)))
  x = _adaptive_avg_pool(x).reshape(-1)      # torch.flatten(x, 1): C, H, W order
  x = relu(p['classifier.1.weight'] @ x + p['classifier.1.bias'])
  x = relu(p['classifier.4.weight'] @ x + p['classifier.4.bias'])
  return p['classifier.6.weight'] @ x + p['classifier.6.bias']


# ---- Tests ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def torchvision_files(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('torchvision')
  state = random_state_dict()
  image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
  reference = reference_logits(state, image[16:240, 16:240])   # CenterCrop(224) of a 256x256 image
  write_safetensors(tmp / 'alexnet.safetensors', state)
  write_pth(tmp / 'alexnet.pth', state)
  return tmp, image, reference


def test_imported_logits_equal_torchvisions(torchvision_files):
  tmp, image, reference = torchvision_files
  labels = tmp / 'labels.txt'
  labels.write_text(''.join(f'synset {i}\n' for i in range(1000)))
  path, info = importers.import_weights(tmp / 'alexnet.pth', tmp / 'from_pth', labels=str(labels))
  assert info['model']['name'] == 'alexnet_owt' and info['imported_from']['format'] == 'torchvision'
  model = alexnet_jax.load(path)
  assert model.classes[999] == 'synset 999' and model.contract.input_hw == (224, 224)
  x = model.preprocess(image)                        # the bundle's own contract: crop, mean image
  logits = np.asarray(model.eval_step()(model.params, x[None]))[0]
  error = np.abs(logits - reference).max() / np.abs(reference).max()
  assert error <= 1e-5, error
  assert np.argmax(logits) == np.argmax(reference)

  # The same weights as .safetensors give the same parameters, bit for bit.
  other, _ = importers.import_weights(tmp / 'alexnet.safetensors', tmp / 'from_st')
  files = alexnet_jax.inference.read_model_files(other)
  with np.load(os.path.join(path, 'params.npz')) as from_pth:
    flat = alexnet_jax.inference.bundle.flatten_params(files.params)
    assert sorted(flat) == sorted(from_pth.files)
    for name in from_pth.files:
      np.testing.assert_array_equal(flat[name], from_pth[name], err_msg=name)
  assert files.classes[:2] == ['class_0', 'class_1']

  # --config.init_from reads it as any bundle (the mesh is only used for a workdir's checkpoint).
  host, about = finetune.load_earlier(str(other), mesh=None)
  assert (about['network'], about['num_classes'], about['input_size']) == ('alexnet_owt', 1000, '224x224')
  np.testing.assert_array_equal(host['towers/fc6/kernel'], flat['towers/fc6/kernel'])
  # ... and takes the .pth itself, read in memory as the import reads it.
  host, about = finetune.load_earlier(str(tmp / 'alexnet.pth'), mesh=None)
  assert (about['network'], about['kind']) == ('alexnet_owt', 'torchvision file')
  np.testing.assert_array_equal(host['towers/fc6/kernel'], flat['towers/fc6/kernel'])

  with pytest.raises(FileExistsError, match='--overwrite'):
    importers.import_weights(tmp / 'alexnet.pth', path)


def test_a_pickle_naming_a_foreign_class_is_refused_and_never_run(tmp_path):
  marker = tmp_path / 'ran'

  class Evil:
    def __reduce__(self):
      return os.system, (f'touch {marker}',)
  source = tmp_path / 'evil.pth'
  write_pth(source, {}, payload=pickle.dumps(collections.OrderedDict({'features.0.weight': Evil()}),
                                             protocol=2))
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''), JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-m', 'alexnet_jax.import_weights', f'--source={source}',
                        f'--output={tmp_path}/bundle'], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert out.returncode == 2, out.stderr[-2000:]
  assert len(lines) == 1 and 'posix.system' in lines[0] and 'refusing' in lines[0], out.stderr[-2000:]
  assert not marker.exists() and not (tmp_path / 'bundle').exists()
  assert [p for p in os.listdir(tmp_path) if p != 'evil.pth'] == []   # no staging folder left

  write_pth(tmp_path / 'evil_legacy.pth', {}, legacy=True,
            payload=pickle.dumps(collections.OrderedDict({'features.0.weight': Evil()}), protocol=2))
  with pytest.raises(WeightsError, match=r'names posix\.system'):
    torch_files.read_state_dict(str(tmp_path / 'evil_legacy.pth'))
  assert not marker.exists()


def test_a_mismatched_shape_names_the_layer_and_both_shapes(tmp_path):
  state = {'features.0.weight': np.zeros((64, 3, 11, 11), np.float32),
           'features.0.bias': np.zeros(64, np.float32),
           'features.3.weight': np.zeros((192, 64, 3, 3), np.float32),
           'classifier.6.weight': np.zeros((10, 4096), np.float32)}
  write_safetensors(tmp_path / 'small.safetensors', state)
  with pytest.raises(WeightsError, match=r'features\.3\.weight has shape \(192, 64, 3, 3\).*\(192, 64, 5, 5\)'):
    importers.import_weights(tmp_path / 'small.safetensors', tmp_path / 'bundle')
  assert not (tmp_path / 'bundle').exists()


def test_formats_are_recognised_from_the_file_name():
  assert importers.detect_format('alexnet.pth') == 'torchvision'
  assert importers.detect_format('bvlc_alexnet.caffemodel') == 'caffe'       # tests/test_import_caffe.py
  assert importers.detect_format('digits_model.tar.gz') == 'digits'
  with pytest.raises(WeightsError, match='give the .caffemodel as --source'):
    importers.detect_format('deploy.prototxt')


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_pth_files_read_back_their_tensors(tmp_path, legacy):
  """Both .pth formats, with a transposed view and tensors at offsets in one shared storage."""
  rng = np.random.default_rng(2)
  state = {'features.0.bias': rng.normal(size=5).astype(np.float32),
           'features.3.bias': rng.normal(size=3).astype(np.float32),
           'classifier.4.weight': rng.normal(size=(4, 6)).astype(np.float32),
           'classifier.6.weight': rng.normal(size=(2, 3, 2)).astype(np.float32)}
  write_pth(tmp_path / 'small.pth', state, legacy=legacy)
  read = torch_files.read_state_dict(str(tmp_path / 'small.pth'))
  assert list(read) == list(state)
  for name, value in state.items():
    np.testing.assert_array_equal(read[name], value, err_msg=name)
  data = (tmp_path / 'small.pth').read_bytes()
  (tmp_path / 'cut.pth').write_bytes(data[:len(data) - 20])
  with pytest.raises(WeightsError, match='truncated'):
    torch_files.read_state_dict(str(tmp_path / 'cut.pth'))


def test_converted_parameters_are_copies_not_views_of_the_file(tmp_path):
  """No parameter is a view into the file's buffer (a bias would keep a 240 MB file alive)."""
  state = random_state_dict(num_classes=10)
  write_safetensors(tmp_path / 'a.safetensors', state)
  read = torch_files.read_state_dict(str(tmp_path / 'a.safetensors'))
  params = torchvision.convert(read, source='a.safetensors')
  leaves = [leaf for layer in params['towers'].values() for leaf in layer.values()] + [params['head']['bias']]
  assert len(leaves) == 16
  for leaf in leaves:
    assert leaf.dtype == np.float32 and leaf.flags.c_contiguous
    assert not any(np.shares_memory(leaf, value) for value in read.values())
