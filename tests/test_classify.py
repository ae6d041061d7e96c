"""Classification from checkpoints: the Python API, the CLI's outputs, accuracy, top-N per category,
agreement with evaluate, and the same probabilities whichever layout trained or runs the network.

The runs are trained once per session (``trained_run``, also used by test_export.py and
test_visualize.py) at the size of tests/test_train.py: 3 classes of generated JPEGs, width 1/8, 64 px
crops, 4 steps. They use He initialization and a tiny learning rate so that the outputs depend
clearly on the image (the paper's N(0, 0.01) initialization gives this narrow network nearly the same
output for every image, which would make the equality tests below pass vacuously).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import inference
from alexnet_jax.data import lists as image_lists
from alexnet_jax.inference import classification
from alexnet_jax.training import evaluation, trainer
from alexnet_jax.data import synthetic
from alexnet_jax.run import workdir as workdir_lib
from experiments import demo
from tests import tiny_experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- Shared set-up (imported by test_export.py and test_visualize.py) -----------------------------------

def tiny_config(source, **overrides):
  c = demo.get_config()
  c.data.source = str(source)
  c.model.width = 0.125
  c.model.weight_init = 'he'
  c.model.bias_init = 'small'
  c.data.image_size = 72
  c.data.crop_size = 64
  c.data.num_threads = 1
  c.batch_size = 4
  c.num_epochs = 1
  c.val_interval = 1.0
  c.snapshot_interval = 1.0
  c.log_every_steps = 2
  c.learning_rate = 1e-5
  c.lr.policy = 'fixed'
  return tiny_experiment.override(c, **overrides)


def image_folder(tmp_path_factory):
  """3 classes x 8 JPEGs, generated once per session."""
  root = tmp_path_factory.getbasetemp() / 'inference_images'
  if not (root / 'done').exists():
    synthetic.make_image_folder(str(root), num_classes=3, per_class=8, seed=1)
    (root / 'done').write_text('')
  return root


def trained_run(tmp_path_factory, layout='model'):
  """A finished tiny run trained in ``layout``, once per session (4 steps, one snapshot)."""
  workdir = tmp_path_factory.getbasetemp() / f'inference_run_{layout}'
  if not (workdir / 'done').exists():
    trainer.train_and_evaluate(tiny_config(image_folder(tmp_path_factory), layout=layout),
                             str(workdir))
    (workdir / 'done').write_text('')
  return workdir


def all_images(folder):
  return sorted(str(p) for p in folder.glob('class_*/*.jpg'))


def run_cli(module, *args, cwd=REPO):
  return subprocess.run([sys.executable, '-m', f'alexnet_jax.{module}', *map(str, args)], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  return trained_run(tmp_path_factory, 'model')


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  return all_images(image_folder(tmp_path_factory))


@pytest.fixture(scope='module')
def model(run_dir):
  return inference.load(str(run_dir), layout='single')


# ---- The Python API ----------------------------------------------------------------------------------

def test_load_and_predict(model, images):
  assert model.step == 4 and model.classes == ['class_0', 'class_1', 'class_2']
  top = model.predict(images[0], top_k=2)
  assert len(top) == 2 and all(isinstance(label, str) for label, _ in top)
  assert top[0][1] >= top[1][1]
  many = model.predict(images[:3], top_k=5)
  assert len(many) == 3 and all(len(r) == 3 for r in many)  # top_k is capped at the class count
  probs = model.probabilities(images)
  assert probs.shape == (24, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
  # The outputs depend on the image (so that the equality tests below mean something).
  assert np.ptp(probs, axis=0).max() > 1e-2
  # Other input kinds: bytes, a PIL image, an array -- all through the same preprocessing.
  import PIL.Image
  raw = open(images[5], 'rb').read()
  with PIL.Image.open(images[5]) as im:
    pil = im.copy()
  for other in (raw, pil):
    np.testing.assert_allclose(model.probabilities(other), probs[5], atol=1e-6)
  from alexnet_jax.data import DecodeError
  with pytest.raises(DecodeError, match='nope.jpg'):
    model.predict('nope.jpg')


def test_missing_step_and_empty_workdir_say_what_exists(run_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r'available steps: \[4\]'):
    inference.load(str(run_dir), step=7)
  empty = tmp_path / 'empty'
  empty.mkdir()
  for name in ('config.json', 'labels.txt', 'preprocess.json', 'mean.npy'):
    (empty / name).write_bytes((run_dir / name).read_bytes())
  with pytest.raises(FileNotFoundError, match='no checkpoints'):
    inference.load(str(empty))
  with pytest.raises(FileNotFoundError, match='no such workdir or bundle'):
    inference.load(str(tmp_path / 'nowhere'))


# ---- Any layout ------------------------------------------------------------------------------------------

def test_same_probabilities_in_every_layout(run_dir, tmp_path_factory, images, model):
  """Trained with the towers on two devices, classified on one -- and trained on one device,
  classified with the towers on two: the same probabilities within float32 round-off."""
  reference = model.probabilities(images)
  paper = inference.load(str(run_dir), layout='model')
  assert paper.layout.num_devices == 2
  np.testing.assert_allclose(paper.probabilities(images), reference, atol=1e-5, rtol=0)

  single_run = trained_run(tmp_path_factory, 'single')
  on_one = inference.load(str(single_run), layout='single').probabilities(images)
  on_two = inference.load(str(single_run), layout='model').probabilities(images)
  np.testing.assert_allclose(on_two, on_one, atol=1e-5, rtol=0)
  # Each array went straight to its target sharding: tower-split leaves on the 'model' axis.
  kernel = paper.params['towers']['conv1']['kernel']
  assert kernel.sharding.spec[0] == 'model' and len(kernel.sharding.device_set) == 2


# ---- classify == evaluate ---------------------------------------------------------------------------------

def val_entries(run_dir):
  config = workdir_lib.read_config(str(run_dir))
  val = workdir_lib.load_run_dataset(config, str(run_dir)).split('val')
  return [image_lists.Entry(os.path.basename(k), k, i + 1, int(label))
          for i, (k, label) in enumerate(zip(val.keys, val.labels))]


@pytest.mark.parametrize('ten_crop', [False, True])
def test_classify_and_evaluate_agree(run_dir, model, ten_crop):
  entries = val_entries(run_dir)
  results = classification.classify_entries(model, entries, ten_crop=ten_crop, progress=False)
  _, summary = evaluation.run_evaluation(str(run_dir), split='val', ten_crop=ten_crop,
                                       layout_name='single')
  acc = results.accuracy
  assert acc['count'] == summary['count'] == len(entries) == 6
  assert acc['confusion'] == summary['confusion']
  assert acc['top1'] == pytest.approx(summary['top1']) and acc['top5'] == pytest.approx(summary['top5'])
  assert acc['loss'] == pytest.approx(summary['loss'], abs=1e-5)
  assert results.model['ten_crop'] is ten_crop


# ---- Lists, formats, accuracy, top-N ----------------------------------------------------------------------

@pytest.fixture(scope='module')
def labelled_list(tmp_path_factory, images):
  """A DIGITS list with labels, one missing file and one corrupt file among 12 images."""
  root = tmp_path_factory.mktemp('lists')
  (root / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  lines = ['# path label']
  for path in images[::2]:
    lines.append(f'{path} {int(os.path.basename(os.path.dirname(path))[-1])}')
  lines.insert(3, 'missing.jpg 1')
  lines.append('broken.jpg 2')
  (root / 'list.txt').write_text('\n'.join(lines) + '\n\n')
  return root / 'list.txt'


@pytest.fixture(scope='module')
def list_results(model, labelled_list):
  entries = image_lists.parse_image_list(str(labelled_list), num_classes=3)
  return classification.classify_entries(model, entries, top_k=2, top_n_per_category=3, progress=False)


def test_list_mode_reports_bad_lines_and_goes_on(list_results, model):
  entries = list_results.entries
  assert len(entries) == 14
  bad = {entries[i].name: msg for i, msg in list_results.errors.items()}
  assert set(bad) == {'missing.jpg', 'broken.jpg'}
  assert bad['missing.jpg'].startswith('missing file') and 'truncated' in bad['broken.jpg']
  good = [i for i in range(len(entries)) if i not in list_results.errors]
  np.testing.assert_allclose(list_results.probabilities[good],
                             model.probabilities([entries[i].path for i in good]), atol=1e-6)


def test_json_structure_accuracy_and_top_n(list_results, tmp_path):
  written = classification.write_results(list_results, 'json', str(tmp_path / 'out' / 'preds.json'))
  assert sorted(os.listdir(tmp_path / 'out')) == [
      'preds-confusion.png', 'preds-top_n_per_category.png', 'preds.json']
  assert len(written) == 3
  doc = json.loads((tmp_path / 'out' / 'preds.json').read_text())
  assert set(doc) == {'model', 'predictions', 'errors', 'accuracy', 'top_n_per_category'}
  assert len(doc['predictions']) == 12
  for ranked in doc['predictions'].values():
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]
    assert all(isinstance(label, str) and 0 <= p <= 1 for label, p in ranked)
  assert {(e['path'], e['line']) for e in doc['errors']} == {('missing.jpg', 4), ('broken.jpg', 15)}
  acc = doc['accuracy']
  assert {'top1', 'top5', 'per_class', 'confusion'} <= set(acc)
  assert acc['count'] == 12 and acc['failed'] == 2 and acc['top5'] == 1.0
  assert np.sum(acc['confusion']) == 12 and set(acc['per_class']) == {'class_0', 'class_1', 'class_2'}
  # Top-N per category: for each class, the 3 readable images scoring highest for it, best first.
  probs, names = list_results.probabilities, [e.name for e in list_results.entries]
  for c, cls in enumerate(list_results.classes):
    picks = doc['top_n_per_category'][cls]
    assert len(picks) == 3 and [p for _, p in picks] == sorted([p for _, p in picks], reverse=True)
    best = np.sort(np.nan_to_num(probs[:, c], nan=-1))[::-1][:3]
    np.testing.assert_allclose([p for _, p in picks], best, rtol=1e-6)
    assert all(names.index(name) not in list_results.errors for name, _ in picks)


def test_csv_and_table_formats(list_results, tmp_path):
  import csv
  classification.write_results(list_results, 'csv', str(tmp_path / 'preds.csv'))
  with open(tmp_path / 'preds.csv') as f:
    rows = list(csv.DictReader(f))
  assert rows[0].keys() == {'path', 'line', 'rank', 'label', 'probability', 'true_label', 'error'}
  assert len(rows) == 12 * 2 + 2
  assert [r['rank'] for r in rows[:2]] == ['1', '2']
  assert [r['path'] for r in rows if r['error']] == ['missing.jpg', 'broken.jpg']
  for name in ('preds-accuracy.json', 'preds-confusion.png', 'preds-top_n_per_category.json',
               'preds-top_n_per_category.png'):
    assert (tmp_path / name).exists(), name
  import io
  out = io.StringIO()
  classification.write_results(list_results, 'table', stdout=out)
  text = out.getvalue()
  assert 'error: missing file' in text and 'accuracy: top-1' in text
  first = list_results.ranked(0)[0]
  assert f'{first[0]}' in text and f'{100 * first[1]:.2f}%' in text
  assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]


def test_malformed_lists_name_file_and_line(tmp_path):
  bad = tmp_path / 'bad.txt'
  bad.write_text('a.jpg 0\nb.jpg\n')
  with pytest.raises(ValueError, match=r'bad.txt:2: expected'):
    image_lists.parse_image_list(str(bad), num_classes=3)
  bad.write_text('a.jpg 0\n\nb.jpg 3\n')
  with pytest.raises(ValueError, match=r'bad.txt:3: label 3 is out of range'):
    image_lists.parse_image_list(str(bad), num_classes=3)
  ok = tmp_path / 'ok.txt'
  ok.write_text('my photo.jpg\n/abs/x.png\n')
  entries = image_lists.parse_image_list(str(ok), num_classes=3, image_root='/data')
  assert [(e.name, e.path, e.label) for e in entries] == [
      ('my photo.jpg', '/data/my photo.jpg', None), ('/abs/x.png', '/abs/x.png', None)]


# ---- The command line ------------------------------------------------------------------------------------

def test_cli_list_mode_json(run_dir, labelled_list, list_results, tmp_path):
  out = tmp_path / 'cli.json'
  proc = run_cli('classify', f'--workdir={run_dir}', f'--image_list={labelled_list}', '--top_k=2',
                 '--format=json', f'--output={out}', '--layout=model', '--limit=5')
  assert proc.returncode == 0, proc.stderr[-2000:]
  doc = json.loads(out.read_text())
  assert doc['model']['layout'] == 'model' and len(doc['predictions']) + len(doc['errors']) == 5
  expected = {e.name: list_results.ranked(i) for i, e in enumerate(list_results.entries[:5])
              if i not in list_results.errors}
  for name, ranked in doc['predictions'].items():
    assert [label for label, _ in ranked] == [label for label, _ in expected[name]]
    np.testing.assert_allclose([p for _, p in ranked], [p for _, p in expected[name]], atol=1e-5)
  assert 'could not be read' in proc.stderr


def test_cli_errors_exit_non_zero_and_write_nothing(run_dir, tmp_path):
  out = tmp_path / 'never.json'
  proc = run_cli('classify', f'--workdir={run_dir}', '--format=json', f'--output={out}',
                 str(tmp_path / 'nope.jpg'))
  assert proc.returncode == 2 and 'nope.jpg' in proc.stderr.splitlines()[-1]
  bad = tmp_path / 'bad.txt'
  bad.write_text('x.jpg 0\ny.jpg 9\n')
  proc = run_cli('classify', f'--workdir={run_dir}', f'--image_list={bad}', f'--output={out}')
  assert proc.returncode == 2 and f'{bad}:2: label 9' in proc.stderr.splitlines()[-1]
  assert not out.exists() and os.listdir(tmp_path) == ['bad.txt']
