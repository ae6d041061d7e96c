"""ONNX export (issue 22, "Models out"): onnxruntime's logits equal ours on the same 0..255 images, for
every network the exporter supports, at batch 1 and 3 (one graph: the batch dimension is dynamic); the
labels and the preprocessing contract travel in the metadata; the Triton layout; a missing onnx package
is one line naming the extra.

All four networks of issue 22 (two-tower alexnet with the paper's and Caffe's LRN, alexnet_owt, lenet,
googlenet). The networks are random, untrained, narrow copies written straight into bundles (``onnx_bundles.py``),
with weights large enough that LRN and the image matter (each test checks that they do)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

from alexnet_jax import inference   # noqa: E402
from alexnet_jax.inference import exporting, onnx_export   # noqa: E402
from tests.onnx_bundles import make_bundle   # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5   # max |ours - onnxruntime| / max |ours|

CASES = {
    'lenet': dict(name='lenet', width=0.5, image_size=28, crop_size=0, channels=1),
    # 96: fc6 reads a 2x2 map (at 64 it would be 1x1, where NHWC and NCHW flatten alike).
    'alexnet_owt': dict(name='alexnet_owt', width=0.125, image_size=104, crop_size=96),
    # 79 wide: conv1 gives 18 columns, so pool1 rounds up (ceil mode) and pads a column; a pixel mean.
    'alexnet_paper_lrn': dict(name='alexnet', width=0.125, image_size=(79, 72), crop_size=0, lrn='paper',
                              mean_mode='pixel'),
    'alexnet_caffe_lrn': dict(name='alexnet', width=0.125, image_size=104, crop_size=96, lrn='caffe'),
    # 70 high: 35 after conv1, 18 after pool1 (ceil mode), 9 after pool2, 5 (ceil) after 3b.
    'googlenet': dict(name='googlenet', width=0.125, image_size=(64, 70), crop_size=0, mean_mode='none'),
}


@pytest.fixture(scope='module', params=sorted(CASES))
def exported(request, tmp_path_factory):
  """(case, the loaded model, the .onnx path, an onnxruntime session)."""
  folder = tmp_path_factory.mktemp(request.param)
  case = dict(CASES[request.param])
  bundle = make_bundle(str(folder), case.pop('name'), **case)
  path, summary = exporting.export_onnx(bundle, folder / 'model.onnx')
  assert summary['step'] == 7 and summary['bytes'] == os.path.getsize(path)
  session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
  return request.param, inference.load(bundle), path, session


def _images(model, n, seed):
  return np.random.default_rng(seed).integers(0, 256, (n, *model.image_shape)).astype(np.float32)


def _relative(ours, theirs):
  return float(np.abs(ours - theirs).max() / np.abs(ours).max())


@pytest.mark.parametrize('batch', [1, 3])
def test_onnxruntime_logits_equal_ours(exported, batch):
  _, model, _, session = exported
  images = _images(model, batch, seed=batch)
  ours = model.logits(images - model.contract.centre_mean())   # our preprocessing's mean subtraction
  logits, probabilities = session.run(['logits', 'probabilities'], {'image': images})
  assert logits.shape == probabilities.shape == (batch, model.num_classes)
  assert _relative(ours, logits) <= TOLERANCE
  shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
  np.testing.assert_allclose(probabilities, shifted / shifted.sum(axis=1, keepdims=True), atol=1e-6)
  if batch > 1:   # the images, not only the biases, decide the logits: the comparison has teeth
    assert np.abs(ours[0] - ours[1]).max() > 1e3 * TOLERANCE * np.abs(ours).max()


def test_input_output_and_metadata(exported):
  _, model, path, _ = exported
  proto = onnx.load(path)
  (image,), outputs = proto.graph.input, proto.graph.output
  dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
  assert image.name == 'image' and dims == ['batch', *model.image_shape]
  assert [o.name for o in outputs] == ['logits', 'probabilities']
  meta = onnx_export.metadata(proto)
  assert json.loads(meta['labels']) == model.classes == ['class 0', 'class 1', 'class 2']
  assert json.loads(meta['preprocess']) == model.contract.to_json()
  assert meta['network'] == model.network.name and meta['step'] == '7'


def test_lrn_convention_is_the_models(exported):
  """The other LRN convention's graph is measurably wrong: the LRN mapping is really being tested."""
  case, model, _, _ = exported
  if not case.startswith('alexnet_'):
    pytest.skip('one LRN convention only in this network')
  other = model.config.model.copy_and_resolve_references()
  other.lrn = 'caffe' if model.config.model.lrn == 'paper' else 'paper'
  proto = onnx_export.build_onnx(model.host_params(), network='alexnet', model_config=other,
                                 contract=model.contract, classes=model.classes)
  wrong = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
  images = _images(model, 2, seed=5)
  ours = model.logits(images - model.contract.centre_mean())
  assert _relative(ours, wrong.run(['logits'], {'image': images})[0]) > 100 * TOLERANCE


def test_triton_model_repository(exported, tmp_path):
  case, model, _, _ = exported
  if case != 'alexnet_caffe_lrn':
    pytest.skip('one network is enough for the layout')
  folder, _ = exporting.export_onnx(model.path, tmp_path / 'repo', triton=True, max_batch_size=8)
  assert folder == str(tmp_path / 'repo' / 'alexnet')
  assert sorted(os.listdir(folder)) == ['1', 'config.pbtxt', 'labels.txt']
  config = open(os.path.join(folder, 'config.pbtxt')).read()
  for line in ('name: "alexnet"', 'platform: "onnxruntime_onnx"', 'max_batch_size: 8',
               '{ name: "image" data_type: TYPE_FP32 dims: [ 96, 96, 3 ] }',
               '{ name: "logits" data_type: TYPE_FP32 dims: [ 3 ] }',
               'label_filename: "labels.txt"'):
    assert line in config
  assert open(os.path.join(folder, 'labels.txt')).read().split('\n')[:3] == model.classes
  session = ort.InferenceSession(os.path.join(folder, '1', 'model.onnx'),
                                 providers=['CPUExecutionProvider'])
  images = _images(model, 2, seed=9)
  assert _relative(model.logits(images - model.contract.centre_mean()),
                   session.run(['logits'], {'image': images})[0]) <= TOLERANCE
  with pytest.raises(FileExistsError, match='--overwrite'):
    exporting.export_onnx(model.path, tmp_path / 'repo', triton=True)


def test_clear_errors(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="'my.module:Net' cannot be exported to ONNX yet"):
    onnx_export.build_onnx({'head': {'bias': np.zeros(3)}}, network='my.module:Net', model_config=None,
                           contract=None, classes=['a', 'b', 'c'])
  with pytest.raises(ValueError, match='PATH.onnx'):
    exporting.export_onnx(str(tmp_path), tmp_path / 'model.bin')
  monkeypatch.setattr(onnx_export, 'onnx', None)   # as if the extra were not installed
  with pytest.raises(ValueError, match=r'pip install -e \.\[onnx\]'):
    exporting.export_onnx(str(tmp_path), tmp_path / 'model.onnx')


# The command, with the onnx import made to fail in the child: one line, exit status 2, nothing written.
BLOCK_ONNX = '''
import sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name == 'onnx' or name.startswith('onnx.'):
      raise ImportError('No module named onnx (blocked by the test)')
sys.meta_path.insert(0, Block())
sys.argv = ['export'] + sys.argv[1:]
from alexnet_jax import export
export.run()
'''


def test_command(tmp_path):
  bundle = make_bundle(str(tmp_path), 'lenet', width=0.25, image_size=28, crop_size=0, channels=1)
  out = tmp_path / 'lenet.onnx'
  done = subprocess.run([sys.executable, '-m', 'alexnet_jax.export', f'--bundle={bundle}', '--format=onnx',
                         f'--output={out}'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert f'wrote {out}' in done.stdout and 'lenet, step 7, 3 classes, input [batch, 28, 28, 1]' in done.stdout
  assert onnx_export.metadata(onnx.load(str(out)))['network'] == 'lenet'
  missing = subprocess.run([sys.executable, '-c', BLOCK_ONNX, f'--bundle={bundle}', '--format=onnx',
                            f'--output={tmp_path / "again.onnx"}'], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
  assert missing.returncode == 2, missing.stderr
  assert missing.stderr.strip().splitlines()[-1] == (
      'error: --format=onnx needs the onnx package, which is not installed: pip install -e .[onnx]')
  assert not os.path.exists(tmp_path / 'again.onnx')
