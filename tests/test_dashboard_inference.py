"""The dashboard's inference worker through its web-side client (``dashboard/workers/inference_client.py``).

One tiny run is trained once per module: DIGITS' LeNet at 28 px, three classes (tests/test_classify.py's
images and settings), in seconds; one ``Predictor`` serves the whole module, so its interactive worker
keeps the model loaded from test to test, as in the dashboard. LeNet has one tower, so the multi-device
layout here is 'data' (the batch of one image padded to the four forced devices); the two-tower layouts
of AlexNet are compared by tests/test_classify.py through the same library.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import PIL.Image
import pytest

from alexnet_jax import inference
from alexnet_jax.training import trainer
from alexnet_jax.dashboard.workers import inference_worker, inference_client as predictor_lib, worker_process
from alexnet_jax.data import synthetic
from alexnet_jax.run import workdir as workdir_lib
from tests.test_classify import all_images, image_folder, tiny_config

CROP = 28
LENET = {'layout': 'single', 'model.name': 'lenet', 'data.image_size': 32, 'data.crop_size': CROP}


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A finished LeNet run: 4 steps, one snapshot (step 4, epoch 1) with its validation top-1."""
  workdir = tmp_path_factory.mktemp('inference_run_lenet')
  trainer.train_and_evaluate(tiny_config(image_folder(tmp_path_factory), **LENET), str(workdir))
  return str(workdir)


@pytest.fixture(scope='module')
def image(tmp_path_factory):
  return all_images(image_folder(tmp_path_factory))[0]


@pytest.fixture(scope='module')
def predictor(tmp_path_factory):
  p = predictor_lib.Predictor(str(tmp_path_factory.mktemp('dashboard_state')), timeout_s=240)
  p.start()
  yield p
  p.close()


@pytest.fixture(scope='module')
def reference(run_dir, image):
  return inference.load(run_dir, step='best').probabilities(image)


def _classify(predictor, run_dir, image, **kwargs):
  return predictor.classify_one(run_dir, image, step='best', **kwargs)


def test_the_client_imports_no_jax():
  code = ('import sys; from alexnet_jax.dashboard.workers import inference_client, worker_process; '
          'print(sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax")))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60,
                       check=True)
  assert out.stdout.strip() == '[]', out.stdout


def test_classify_one_equals_the_library_and_is_cached(predictor, run_dir, image, reference, tmp_path):
  first = _classify(predictor, run_dir, image, layout='single', top_k=2, out_dir=str(tmp_path))
  np.testing.assert_allclose(first['probabilities'], reference, atol=1e-6)
  order = np.argsort(-reference, kind='stable')
  assert [label for label, _ in first['predictions']] == [first['labels'][i] for i in order[:2]]
  assert first['predictions'][0][1] == round(100 * float(reference.max()), 2)
  assert first['step'] == 4 and first['epoch'] == 1.0 and first['layout'] == 'single'
  assert set(first['timings']) == {'load_s', 'classify_s', 'total_s'}
  with PIL.Image.open(first['input_png']) as png:   # the centre crop the network saw, in the run's mode
    assert png.format == 'PNG' and png.size == (CROP, CROP) and png.mode == 'RGB'

  answers = []
  threads = [threading.Thread(target=lambda: answers.append(_classify(predictor, run_dir, image)))
             for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(answers) == 2 and all(a['cached'] for a in answers)   # one lane, one model, in turn
  for a in answers:
    np.testing.assert_allclose(a['probabilities'], first['probabilities'], atol=0)


def test_a_multi_device_layout_gives_the_same_probabilities(predictor, run_dir, image, reference):
  spread = _classify(predictor, run_dir, image, layout='data')
  assert spread['layout'] == 'data' and not spread['cached']
  np.testing.assert_allclose(spread['probabilities'], reference, atol=1e-5)
  with pytest.raises(predictor_lib.PredictorError) as e:     # LeNet has no towers to split
    _classify(predictor, run_dir, image, layout='model')
  assert e.value.user_error and 'single tower' in str(e.value)


def _hostile_files(folder, image):
  data = open(image, 'rb').read()
  files = {'not_an_image.jpg': b'this is text, not a JPEG\n', 'truncated.jpg': data[:len(data) // 3],
           'bomb.png': synthetic.bomb_png()}
  paths = {}
  for name, content in files.items():
    paths[name] = str(folder / name)
    with open(paths[name], 'wb') as f:
      f.write(content)
  paths['missing.jpg'] = str(folder / 'missing.jpg')
  return paths


def test_bad_images_are_user_errors_naming_the_file(predictor, run_dir, image, tmp_path):
  pid = predictor.pid()
  words = {'not_an_image.jpg': 'not an image', 'truncated.jpg': 'truncated',
           'bomb.png': 'decompression bomb', 'missing.jpg': 'missing file'}
  for name, path in _hostile_files(tmp_path, image).items():
    with pytest.raises(predictor_lib.PredictorError) as e:
      _classify(predictor, run_dir, path, layout='single')
    assert e.value.user_error and path in str(e.value) and words[name] in str(e.value), str(e.value)
  with pytest.raises(predictor_lib.PredictorError) as e:
    predictor.classify_one(run_dir, image, step=99)
  assert e.value.user_error and 'available steps: [4]' in str(e.value)
  assert predictor.pid() == pid                  # the same worker ...
  assert _classify(predictor, run_dir, image, layout='single')['cached']   # ... still answering


def test_visualizations(predictor, run_dir, image, tmp_path):
  folder = tmp_path / 'vis'
  answer = _classify(predictor, run_dir, image, layout='single', visualize_dir=str(folder))
  stats = answer['visualizations']
  assert stats['model']['step'] == 4 and 'conv1' in stats['layers'] and 'image' in stats
  for name in stats['files']:
    assert (folder / name).is_file(), name
  assert answer['input_png'] == f'{folder}-input.png'
  with PIL.Image.open(answer['input_png']) as png:
    assert png.format == 'PNG' and png.size == (CROP, CROP)


def test_export_is_made_once_and_loads(predictor, run_dir, image, reference):
  first = predictor.export(run_dir, step='best', format='zip')
  second = predictor.export(run_dir, step=4, format='zip')
  assert not first['cached'] and second['cached'] and second['path'] == first['path']
  assert first['size'] == os.path.getsize(first['path']) and first['info']['step'] == 4
  model = inference.load(first['path'])
  np.testing.assert_allclose(model.probabilities(image), reference, atol=1e-6)


def test_census_lists_every_layout_once_per_network_shape(predictor, run_dir):
  report = predictor.census(workdir=run_dir)
  by_name = {row['name']: row for row in report['layouts']}
  assert list(by_name) == list(inference_worker.CENSUS_LAYOUTS)
  for name in ('single', 'data'):
    assert by_name[name]['available'] and by_name[name]['param_bytes_per_device'] > 0
  assert by_name['single']['rows'] == [] and by_name['data']['devices'] == 4
  assert by_name['data']['total_bytes_per_step_per_device'] > 0
  assert {r['axis'] for r in by_name['data']['rows']} == {'data'}
  for name in ('model', 'hybrid'):                # LeNet has one tower
    assert not by_name[name]['available'] and 'single tower' in by_name[name]['reason']
  assert not report['cached'] and os.path.isfile(report['path'])
  # The same shape described by hand is the same census: served from the file.
  network = {'model': workdir_lib.read_config(run_dir).model.to_dict(), 'num_classes': 3,
             'crop_size': CROP, 'channels': 3}
  again = predictor.census(network=network)
  assert again['cached'] and again['path'] == report['path'] and again['layouts'] == report['layouts']


def test_a_network_must_come_from_the_registry(predictor):
  with pytest.raises(predictor_lib.PredictorError) as e:
    predictor.census(network={'model': {'name': 'os:system'}, 'num_classes': 3})
  assert e.value.user_error and 'choose one of' in str(e.value)


def test_a_worker_that_does_not_answer_is_killed():
  # json.tool reads its stdin to the end: it never says it is ready, nor answers.
  worker = worker_process.WorkerProcess('json.tool', timeout_s=1, error=predictor_lib.PredictorError)
  with pytest.raises(predictor_lib.PredictorError, match='did not answer within 1 s') as e:
    worker.ask({'op': 'ping'})
  assert not e.value.user_error and worker.pid is None
  worker.close()


def test_a_killed_worker_is_started_again(predictor, run_dir, image, reference):
  pid = predictor.pid()
  assert pid is not None
  os.kill(pid, signal.SIGKILL)
  # Until every thread of the process has exited, the pipe stays open and nobody can tell it is dead.
  deadline = time.monotonic() + 300
  while predictor.pid() == pid and time.monotonic() < deadline:
    time.sleep(0.05)
  answer = _classify(predictor, run_dir, image, layout='single')
  assert not answer['cached'] and predictor.pid() not in (None, pid)
  np.testing.assert_allclose(answer['probabilities'], reference, atol=1e-6)
