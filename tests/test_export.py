"""Model bundles: what they hold, a round trip on "another machine" (a fresh folder, the workdir gone),
and clear failures for truncated, tampered or incomplete bundles -- with nothing half-written."""

import json
import os
import shutil
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest

from alexnet_jax import inference
from alexnet_jax.inference import bundle as bundle_lib, exporting
from alexnet_jax.runtime import cli
from tests.test_classify import all_images, image_folder, run_cli, trained_run


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  return trained_run(tmp_path_factory, 'model')


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  return all_images(image_folder(tmp_path_factory))[::3]


@pytest.fixture(scope='module')
def reference(run_dir, images):
  """Probabilities computed from the workdir itself."""
  return inference.load(str(run_dir)).probabilities(images)


@pytest.fixture(scope='module')
def bundle(run_dir, tmp_path_factory):
  path, info = exporting.export_model(str(run_dir), tmp_path_factory.mktemp('bundles') / 'm.tar.gz')
  return path, info


def test_bundle_contents_and_info(bundle, run_dir):
  path, info = bundle
  with tarfile.open(path) as t:
    names = sorted(t.getnames())
  assert names == sorted(bundle_lib.BUNDLE_FILES + (bundle_lib.MANIFEST_FILE,))
  assert info['step'] == 4 and info['classes'] == ['class_0', 'class_1', 'class_2']
  assert info['model']['name'] == 'alexnet' and info['model']['towers'] == 2
  assert info['preprocess']['crop_size'] == 64 and info['preprocess']['resize_mode'] == 'squash'
  assert 'top1' in info['metrics']['val'] and 'loss' in info['metrics']['train']
  assert {'jax', 'flax', 'numpy', 'python'} <= set(info['versions']) and info['created']
  # The parameters are plain numpy arrays, [tower, ...] whatever layout trained them.
  scratch = os.path.dirname(path) + '/unpacked'
  with tarfile.open(path) as t:
    t.extractall(scratch, filter='data')
  with np.load(os.path.join(scratch, 'params.npz'), allow_pickle=False) as z:
    assert z['towers/conv1/kernel'].shape == (2, 11, 11, 3, 6) and z['head/bias'].shape == (3,)
  manifest = json.loads(open(os.path.join(scratch, 'manifest.json')).read())
  assert set(manifest['files']) == set(bundle_lib.BUNDLE_FILES)


@pytest.mark.parametrize('suffix', ['tar.gz', 'zip', 'dir'])
def test_round_trip_in_a_fresh_directory(run_dir, images, reference, tmp_path, suffix):
  """Export from a copy of the run, move the bundle elsewhere, delete the run, classify: same numbers."""
  workdir = tmp_path / 'run'
  shutil.copytree(run_dir, workdir)
  made, _ = exporting.export_model(str(workdir), tmp_path / 'out' / f'model.{suffix}'.replace('.dir', ''))
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  moved = elsewhere / os.path.basename(made)
  shutil.move(made, moved)
  shutil.rmtree(workdir)
  shutil.rmtree(tmp_path / 'out')
  import alexnet_jax
  model = alexnet_jax.load(str(moved), layout='model' if suffix == 'zip' else 'single')
  assert model.kind == 'bundle' and model.step == 4
  np.testing.assert_allclose(model.probabilities(images), reference, atol=1e-5, rtol=0)
  assert model.predict(images[0], top_k=1)[0][0] == model.classes[int(np.argmax(reference[0]))]


def test_cli_classifies_from_a_bundle_without_the_workdir(bundle, images, reference, tmp_path):
  path, _ = bundle
  copy = tmp_path / 'copied.tar.gz'
  shutil.copyfile(path, copy)
  proc = run_cli('classify', f'--bundle={copy}', '--format=json', '--top_k=3', *images[:2],
                 cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  doc = json.loads(proc.stdout)
  assert doc['model']['kind'] == 'bundle'
  for i, image in enumerate(images[:2]):
    got = dict(doc['predictions'][image])
    for c, name in enumerate(['class_0', 'class_1', 'class_2']):
      assert got[name] == pytest.approx(float(reference[i, c]), abs=1e-5)


def _dir_bundle(bundle, tmp_path):
  path, _ = bundle
  target = tmp_path / 'b'
  with tarfile.open(path) as t:
    t.extractall(target, filter='data')
  return target


def test_tampered_truncated_and_incomplete_bundles_are_named(bundle, tmp_path):
  path, _ = bundle
  data = open(path, 'rb').read()
  truncated = tmp_path / 'cut.tar.gz'
  truncated.write_bytes(data[:len(data) // 2])
  with pytest.raises(bundle_lib.BundleError, match='truncated or corrupt'):
    inference.load(str(truncated))

  target = _dir_bundle(bundle, tmp_path)
  params = bytearray((target / 'params.npz').read_bytes())
  params[-100] ^= 0xFF
  (target / 'params.npz').write_bytes(bytes(params))
  with pytest.raises(bundle_lib.BundleError, match='params.npz does not match its sha256'):
    inference.load(str(target))
  (target / 'params.npz').write_bytes(bytes(params[:1000]))
  with pytest.raises(bundle_lib.BundleError, match='params.npz has 1000 bytes'):
    inference.load(str(target))
  (target / 'labels.txt').unlink()
  with pytest.raises(bundle_lib.BundleError, match='incomplete: labels.txt is missing'):
    bundle_lib.verify_bundle_dir(str(target))

  # A zip with a damaged member fails its CRC check.
  good_zip = tmp_path / 'm.zip'
  with zipfile.ZipFile(good_zip, 'w', compression=zipfile.ZIP_STORED) as z:
    z.writestr('manifest.json', '{"files": {}}')
    z.writestr('labels.txt', 'a\nb\n')
  raw = bytearray(good_zip.read_bytes())
  raw[raw.index(b'a\nb\n')] = ord('x')
  good_zip.write_bytes(bytes(raw))
  with pytest.raises(bundle_lib.BundleError, match='fails its CRC check'):
    inference.load(str(good_zip))


def test_cli_rejects_a_tampered_bundle(bundle, tmp_path, images):
  target = _dir_bundle(bundle, tmp_path)
  (target / 'labels.txt').write_text('class_0\nclass_2\nclass_1\n')  # same size, two classes swapped
  proc = run_cli('classify', f'--bundle={target}', images[0])
  assert proc.returncode == 2
  assert 'labels.txt does not match its sha256' in proc.stderr.splitlines()[-1]


def test_export_leaves_nothing_behind_on_error(run_dir, bundle, tmp_path):
  out = tmp_path / 'out'
  with pytest.raises(FileNotFoundError, match=r'available steps: \[4\]'):
    exporting.export_model(str(run_dir), out / 'm.zip', step=9)
  assert not out.exists() or os.listdir(out) == []
  path, _ = bundle
  with pytest.raises(FileExistsError, match='--overwrite'):
    exporting.export_model(str(run_dir), path)
  before = os.path.getmtime(path)
  exporting.export_model(str(run_dir), path, overwrite=True)
  assert os.path.getmtime(path) >= before
  assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith('.tmp') or '.old-' in n]
  with pytest.raises(ValueError, match='already a bundle'):
    exporting.export_model(str(_dir_bundle(bundle, tmp_path)), tmp_path / 'again.zip')


@pytest.mark.parametrize('where', ['/proc/alexnet_bundle.tar.gz', 'parent_is_a_file/m.zip'])
def test_export_to_an_unwritable_place_names_the_output(run_dir, tmp_path, where):
  if not where.startswith('/'):
    (tmp_path / 'parent_is_a_file').write_text('not a folder')
    where = str(tmp_path / where)
  with pytest.raises(OSError) as err:
    exporting.export_model(str(run_dir), where)
  message = cli.user_message(err.value)
  assert message.startswith(f'cannot write {where}') and '.tmp' not in message, message
  assert not os.path.exists(where)


# ---- A rectangular model: DIGITS' W x H dataset with crop "none" -----------------------------------------

RECT_W, RECT_H = 96, 72   # W x H; the whole image is the input (crop_size=0)


@pytest.fixture(scope='module')
def rect_run(tmp_path_factory):
  from tests.test_classify import tiny_config  # pylint: disable=g-import-not-at-top
  from alexnet_jax.training import trainer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('rect_run')
  trainer.train_and_evaluate(tiny_config(image_folder(tmp_path_factory), layout='single',
                                         **{'data.image_size': (RECT_W, RECT_H), 'data.crop_size': 0}),
                             str(workdir))
  return workdir


def test_a_rectangular_model_evaluates_exports_and_classifies(rect_run, images, tmp_path):
  """Trained on 96 x 72 images with no crop: classify agrees with evaluate (centre and 10 crops), the
  bundle records W x H and gives the same probabilities elsewhere, and visualize draws its input."""
  from alexnet_jax.inference import classification, visualization  # pylint: disable=g-import-not-at-top
  from alexnet_jax.training import evaluation
  from tests.test_classify import val_entries  # pylint: disable=g-import-not-at-top
  model = inference.load(str(rect_run), layout='single')
  assert model.image_shape == (RECT_H, RECT_W, 3)
  for ten_crop in (False, True):
    results = classification.classify_entries(model, val_entries(rect_run), ten_crop=ten_crop,
                                              progress=False)
    _, summary = evaluation.run_evaluation(str(rect_run), split='val', ten_crop=ten_crop,
                                           layout_name='single')
    assert results.accuracy['confusion'] == summary['confusion']
    assert results.accuracy['loss'] == pytest.approx(summary['loss'], abs=1e-5)
  reference = model.probabilities(images)
  made, info = exporting.export_model(str(rect_run), tmp_path / 'rect.tar.gz')
  assert info['preprocess']['image_size'] == [RECT_W, RECT_H]
  assert info['preprocess']['input_size'] == [RECT_W, RECT_H] and info['preprocess']['crop_size'] == 0
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  moved = shutil.move(made, elsewhere / 'rect.tar.gz')
  bundled = inference.load(str(moved), layout='model')   # the towers on two devices
  assert bundled.image_shape == (RECT_H, RECT_W, 3)
  np.testing.assert_allclose(bundled.probabilities(images), reference, atol=1e-5, rtol=0)
  assert bundled.predict(images[0], top_k=1)[0][0] == model.classes[int(np.argmax(reference[0]))]
  stats = visualization.visualize(bundled, str(tmp_path / 'vis'), image=images[0])
  seen = np.asarray(PIL.Image.open(tmp_path / 'vis' / 'input.png'))
  assert seen.shape[:2] == (RECT_H, RECT_W) and stats


def test_a_run_exports_as_onnx_through_the_command(run_dir, tmp_path):
  """``--workdir --format=onnx``: the snapshot restored from the checkpoint, onnxruntime's logits ours
  (tests/test_onnx_export.py covers every network from bundles)."""
  ort = pytest.importorskip('onnxruntime')
  out = tmp_path / 'run.onnx'
  proc = run_cli('export', f'--workdir={run_dir}', '--format=onnx', f'--output={out}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'alexnet, step 4, 3 classes, input [batch, 64, 64, 3]' in proc.stdout
  model = inference.load(str(run_dir))
  images = np.random.default_rng(0).integers(0, 256, (2, *model.image_shape)).astype(np.float32)
  ours = model.logits(images - model.contract.centre_mean())
  theirs = ort.InferenceSession(str(out), providers=['CPUExecutionProvider']).run(
      ['logits'], {'image': images})[0]
  assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(ours).max()
  for args, message in ((['--format=bundle', f'--bundle={out}'], 'is a bundle already'),
                        ([f'--workdir={run_dir}', '--triton'], '--triton writes an ONNX model repository')):
    proc = run_cli('export', *args, f'--output={tmp_path / "x"}')
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1]
