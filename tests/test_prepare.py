"""The prepare tool: outputs, hostile input, atomicity, refusal to overwrite, the command line."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from alexnet_jax import configs
from alexnet_jax import data
from alexnet_jax.data import errors
from alexnet_jax.data import loading
from alexnet_jax.data import preparation
from alexnet_jax.data import prepared_source
from alexnet_jax.data import records
from alexnet_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('src'))
  synthetic.make_image_folder(root, num_classes=3, per_class=8, size=(40, 30))
  synthetic.make_hostile_folder(os.path.join(root, 'hostile_parent'))   # a 4th class full of trouble...
  for sub in ('odd', 'plain'):                                          # ...flattened into one class folder
    shutil.move(os.path.join(root, 'hostile_parent', sub), os.path.join(root, f'class_z{sub}'))
  os.rmdir(os.path.join(root, 'hostile_parent'))
  return root


def _opts(src, out, **kw):
  kw.setdefault('image_size', (32, 32))
  kw.setdefault('workers', 2)
  kw.setdefault('progress_interval_s', 0.0)
  return preparation.PrepareOptions(source=src, output=out, **kw)


@pytest.fixture(scope='module')
def prepared(source, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('out') / 'ds')
  stream = io.StringIO()
  stats = preparation.prepare_dataset(_opts(source, out, resize_mode='fill', val_percent=25, test_percent=10,
                                            encoding='png'), stream=stream)
  return out, stats, stream.getvalue()


def test_outputs(prepared):
  out, stats, log = prepared
  names = set(os.listdir(out))
  assert {'train.array_record', 'val.array_record', 'test.array_record', 'train.txt', 'val.txt', 'test.txt',
          'labels.txt', 'mean.npy', 'mean.png', 'stats.json', 'histogram.png', 'contact_sheets'} <= names
  assert not any(n.startswith('.') for n in os.listdir(os.path.dirname(out)))      # no temporary left
  on_disk = json.load(open(os.path.join(out, 'stats.json')))
  assert on_disk['classes'] == ['class_0', 'class_1', 'class_2', 'class_zodd', 'class_zplain']
  assert on_disk['image_size'] == [32, 32] and on_disk['resize_mode'] == 'fill' and on_disk['channels'] == 3
  assert on_disk['encoding'] == 'png' and on_disk['bytes'] > 0
  assert sum(on_disk['counts']['train'].values()) == len(open(os.path.join(out, 'train.txt')).readlines())
  assert set(on_disk['counts']) == {'train', 'val', 'test'}
  assert len(os.listdir(os.path.join(out, 'contact_sheets'))) == 5
  assert PIL.Image.open(os.path.join(out, 'histogram.png')).size[0] >= 600
  mean = np.load(os.path.join(out, 'mean.npy'))
  assert mean.shape == (32, 32, 3) and mean.dtype == np.float32
  assert 'ETA' in log and 'prepare train' in log


def test_bad_files_are_skipped_with_their_reason(prepared):
  _, stats, _ = prepared
  reasons = {os.path.basename(s['path']): s['reason'] for s in stats['skipped']}
  assert reasons == {'empty.jpg': errors.EMPTY, 'truncated.jpg': errors.TRUNCATED,
                     'not_an_image.jpg': errors.NOT_AN_IMAGE, 'bomb.png': errors.BOMB,
                     'dangling.jpg': errors.DANGLING}
  written = sum(sum(c.values()) for c in stats['counts'].values())
  kept_oddities = sum(1 for r in synthetic.HOSTILE_EXPECTED.values() if r is None)
  assert written == 3 * 8 + kept_oddities
  text = preparation.summary_text(stats)
  assert 'skipped 5 files' in text and 'decompression bomb' in text


def test_records_hold_digits_resized_pixels(prepared):
  out, _, _ = prepared
  src = prepared_source.open_records(os.path.join(out, 'val.array_record'))
  lines = open(os.path.join(out, 'val.txt')).read().splitlines()
  for i in range(len(src)):
    rec = records.decode_record(src[i])
    path, label = lines[i].rsplit(' ', 1)
    assert rec.path == path and rec.label == int(label)
    want = loading.load_resized(path, image_size=32, resize_mode='fill', channels=3,
                                noise_rng=preparation.noise_rng(0, path, 1))
    np.testing.assert_array_equal(rec.image, want)      # png: lossless


def test_train_on_prepared_dataset(prepared):
  out, stats, _ = prepared
  cfg = configs.default_config().data
  cfg.source, cfg.image_size, cfg.crop_size, cfg.resize_mode = out, 32, 28, 'fill'
  cfg.augment_on = 'host'   # the float32 crops of the host path (the device path: test_device_augment.py)
  ds = data.load_dataset(cfg, seed=0)
  assert ds.classes == stats['classes'] and ds.split_sizes['val'] == sum(stats['counts']['val'].values())
  np.testing.assert_array_equal(ds.mean_image, np.load(os.path.join(out, 'mean.npy')))
  b = next(data.train_iterator(ds, cfg, global_batch_size=8, seed=0, num_epochs=1))
  assert b['image'].shape == (8, 28, 28, 3)
  e = list(data.eval_iterator(ds, cfg, 'test', global_batch_size=4, ten_crop=True))
  assert sum(int(x['mask'].sum()) for x in e) == ds.split_sizes['test'] and e[0]['image'].shape[1] == 10
  cfg.image_size = 64
  with pytest.raises(data.DataError, match='prepared at image_size'):
    data.load_dataset(cfg, seed=0)


def test_refuses_to_overwrite_and_overwrites_when_asked(source, tmp_path):
  out = str(tmp_path / 'ds')
  os.makedirs(out)
  (tmp_path / 'ds' / 'keep.txt').write_text('precious')
  with pytest.raises(errors.DataError, match='--overwrite'):
    preparation.prepare_dataset(_opts(source, out, max_per_class=3, encoding='raw'), stream=io.StringIO())
  assert os.listdir(out) == ['keep.txt']
  preparation.prepare_dataset(_opts(source, out, max_per_class=3, encoding='raw', overwrite=True),
                              stream=io.StringIO())
  assert 'keep.txt' not in os.listdir(out) and 'stats.json' in os.listdir(out)
  assert sorted(os.listdir(tmp_path)) == ['ds']


def test_interrupted_run_leaves_nothing(source, tmp_path, monkeypatch):
  out = str(tmp_path / 'ds')
  calls = {'n': 0}
  real_write = records.Writer.write

  def failing_write(self, blob):
    calls['n'] += 1
    if calls['n'] == 5:
      raise KeyboardInterrupt
    real_write(self, blob)

  monkeypatch.setattr(records.Writer, 'write', failing_write)
  with pytest.raises(KeyboardInterrupt):
    preparation.prepare_dataset(_opts(source, out), stream=io.StringIO())
  assert os.listdir(tmp_path) == []                      # neither the output nor a temporary folder
  # An existing dataset survives a failed --overwrite run untouched.
  monkeypatch.setattr(records.Writer, 'write', real_write)
  preparation.prepare_dataset(_opts(source, out, max_per_class=2), stream=io.StringIO())
  before = open(os.path.join(out, 'stats.json')).read()
  calls['n'] = 0
  monkeypatch.setattr(records.Writer, 'write', failing_write)
  with pytest.raises(KeyboardInterrupt):
    preparation.prepare_dataset(_opts(source, out, overwrite=True), stream=io.StringIO())
  assert open(os.path.join(out, 'stats.json')).read() == before and os.listdir(tmp_path) == ['ds']


def test_option_errors(source, tmp_path):
  with pytest.raises(errors.DataError, match='--encoding'):
    preparation.prepare_dataset(_opts(source, str(tmp_path / 'x'), encoding='gif'))
  with pytest.raises(errors.DataError, match='inside --source'):
    preparation.prepare_dataset(_opts(source, os.path.join(source, 'prepared')))
  with pytest.raises(errors.DataError, match='fewer than 2 usable classes'):
    preparation.prepare_dataset(_opts(source, str(tmp_path / 'y'), min_per_class=1000))
  assert os.listdir(tmp_path) == []


def _run_cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.run([sys.executable, '-m', 'alexnet_jax.prepare', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_command_line(tmp_path):
  src = str(tmp_path / 'src')
  synthetic.make_image_folder(src, num_classes=2, per_class=4, size=(24, 24))
  out = str(tmp_path / 'out')
  r = _run_cli(f'--source={src}', f'--output={out}', '--image_size=16,16', '--resize_mode=crop',
               '--val_percent=25', '--encoding=jpg', '--workers=1')
  assert r.returncode == 0, r.stderr
  assert 'Prepared' in r.stdout and 'train: 6 images' in r.stdout and 'val: 2 images' in r.stdout
  assert 'ETA' in r.stderr or 'done in' in r.stderr
  r = _run_cli(f'--source={src}', f'--output={out}')
  assert r.returncode == 2 and 'already exists' in r.stderr and '--overwrite' in r.stderr
  r = _run_cli(f'--source={tmp_path}/missing', f'--output={tmp_path}/o2')
  assert r.returncode == 2 and 'no such file or directory' in r.stderr


def test_prepare_from_tfds(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  out = str(tmp_path / 'ds')
  with tfds.testing.mock_data(num_examples=20):
    stats = preparation.prepare_dataset(_opts('tfds:imagenette', out, min_per_class=1, val_percent=0),
                                        stream=io.StringIO())
  assert len(stats['classes']) >= 2 and sum(stats['counts']['train'].values()) == 20
  first = open(os.path.join(out, 'train.txt')).readline()
  assert first.startswith('tfds:imagenette:train#')
