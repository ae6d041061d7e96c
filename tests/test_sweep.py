"""Sweeps: a 2x2 grid of tiny LeNet runs, its summary, an interruption and the resume, and bad flags."""

import json
import os
import subprocess
import sys

import pytest

from alexnet_jax import configs
from alexnet_jax.training import sweeping, trainer
from alexnet_jax.run import checkpoints, metrics_writer
from alexnet_jax.runtime import stopping
from alexnet_jax.data import synthetic

# The points train the same tiny LeNet: its initializer (and a point's steps, when it runs again after
# the interruption) are compiled once.
pytestmark = pytest.mark.usefixtures('compilation_cache')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = ['config.learning_rate=0.01,0.05', 'config.batch_size=6,9']
NAMES = ['learning_rate=0.01,batch_size=6', 'learning_rate=0.01,batch_size=9',
         'learning_rate=0.05,batch_size=6', 'learning_rate=0.05,batch_size=9']


def base_config(source):
  c = configs.default_config()
  c.layout = 'single'
  c.model.name = 'lenet'
  c.data.source = str(source)
  c.data.image_size = 28
  c.data.crop_size = 28
  c.data.channels = 1
  c.data.random_crop = False
  c.data.flip = False
  c.data.pca_lighting = False
  c.data.num_threads = 1
  c.num_epochs = 2
  c.lr.policy = 'fixed'
  c.log_every_steps = 1
  return c


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  synthetic.make_image_folder(str(root), num_classes=3, per_class=8, size=(32, 32), seed=5)
  return root


class StopAtOnce:
  """Stands in for ``run.stopping.StopRequest`` as if SIGTERM had arrived before the first step."""
  signal = 'SIGTERM'

  def should_stop(self, step):
    del step
    return self.signal

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return None


def test_grid_sweep_runs_resumes_and_summarizes(folder, tmp_path, monkeypatch):
  workdir = tmp_path / 'sweep'
  config = base_config(folder)

  # 1. Interrupted at the first point: it snapshots after one step and the sweep stops there.
  with monkeypatch.context() as m:
    m.setattr(stopping, 'StopRequest', StopAtOnce)
    first = sweeping.run_sweep(config, str(workdir), GRID)
  assert first['interrupted'] == NAMES[0]
  assert [p['status'] for p in first['points']] == ['stopped', 'pending', 'pending', 'pending']
  with checkpoints.Checkpointer(workdir / NAMES[0]) as ckpt:
    assert ckpt.latest_step() == 1
  assert not (workdir / NAMES[1]).exists()

  # 2. The same call again: the first point resumes from its snapshot, the others run.
  summary = sweeping.run_sweep(config, str(workdir), GRID)
  assert 'interrupted' not in summary
  assert [p['name'] for p in summary['points']] == NAMES
  assert [p['status'] for p in summary['points']] == ['done'] * 4
  for point in summary['points']:
    saved = json.loads((workdir / point['name'] / 'config.json').read_text())
    assert (saved['learning_rate'], saved['batch_size']) == (point['values']['learning_rate'],
                                                             point['values']['batch_size'])
    steps = [r['step'] for r in metrics_writer.read_metrics(workdir / point['name'], 'train')]
    assert steps == sorted(set(steps))  # the resumed point logged each step once
    assert steps[-1] == 2 * (18 // point['values']['batch_size'])  # 18 train images, 2 epochs
    assert 0.0 <= point['best_val_top1'] <= 1.0 and point['best_epoch'] in (1.0, 2.0)
  best = max(summary['points'], key=lambda p: p['best_val_top1'])
  assert summary['best'] == best['name']
  on_disk = json.loads((workdir / sweeping.SUMMARY_JSON).read_text())
  assert on_disk['grid'] == {'learning_rate': [0.01, 0.05], 'batch_size': [6, 9]}
  assert [p['best_val_top1'] for p in on_disk['points']] == [
      p['best_val_top1'] for p in summary['points']]
  assert (workdir / sweeping.SUMMARY_PNG).stat().st_size > 1000
  table = sweeping.format_table(summary)
  assert 'learning_rate' in table.splitlines()[0] and len(table.splitlines()) == 6

  # 3. Once more: every point finished, so nothing trains.
  monkeypatch.setattr(trainer, 'train_and_evaluate',
                      lambda *a: pytest.fail('a finished point was trained again'))
  again = sweeping.run_sweep(config, str(workdir), GRID)
  assert [p['status'] for p in again['points']] == ['skipped'] * 4
  assert [p['best_val_top1'] for p in again['points']] == [
      p['best_val_top1'] for p in summary['points']]


def test_grid_values_take_the_fields_types():
  config = configs.default_config()
  axes = sweeping.parse_grid(['config.learning_rate=0.1,1', 'batch_size=64,128',
                           'config.data.flip=true,False', 'config.lr.policy=step,cosine'], config)
  assert [a.values for a in axes] == [(0.1, 1.0), (64, 128), (True, False), ('step', 'cosine')]
  assert isinstance(axes[0].values[1], float) and isinstance(axes[1].values[0], int)
  points = sweeping.make_points(config, axes)
  assert len(points) == 16
  assert points[0].name == 'learning_rate=0.1,batch_size=64,data.flip=true,lr.policy=step'
  assert points[0].config.data.flip is True and points[-1].config.lr.policy == 'cosine'
  assert config.learning_rate == 0.01  # the base config is not changed


def test_a_grid_sweeps_image_shapes():
  """DIGITS' W x H sizes: WIDTHxHEIGHT in a grid (its commas separate values), or one number."""
  config = configs.default_config()
  axes = sweeping.parse_grid(['config.data.image_size=256,300x200', 'config.data.crop_size=0,128'], config)
  assert axes[0].values == ((256, 256), (300, 200))
  points = sweeping.make_points(config, axes)
  assert [p.name for p in points][2] == 'data.image_size=300x200,data.crop_size=0'
  assert points[2].config.data.image_size == (300, 200) and points[2].config.data.crop_size == 0
  with pytest.raises(ValueError, match=r"--grid=config.data.image_size=300x0: '300x0': both sides must "
                                       r'be positive whole numbers; in a grid write a rectangle as '
                                       r'WIDTHxHEIGHT'):
    sweeping.parse_grid(['config.data.image_size=300x0'], config)


@pytest.mark.parametrize('grid,message', [
    ([], 'give at least one'),
    (['config.learning_rate'], 'the form is'),
    (['config.learning_rate='], 'empty value'),
    (['config.learning_rate=0.1,,0.2'], 'empty value'),
    (['config.learnin_rate=0.1'], "no field 'learnin_rate'"),
    (['config.model=0.1'], "no field 'model'"),
    (['config.batch_size=64,0.5'], "'0.5' is not a valid int"),
    (['config.data.flip=maybe'], "'maybe' is not a valid bool"),
    (['config.batch_size=64,64'], 'repeated'),
    (['config.batch_size=64', 'batch_size=128'], 'already swept'),
])
def test_bad_grids_name_the_flag(grid, message):
  with pytest.raises(ValueError, match=message):
    sweeping.parse_grid(grid, configs.default_config())


def test_command_line_reports_a_bad_grid_in_one_line(tmp_path):
  command = [sys.executable, '-m', 'alexnet_jax.sweep', '--config=experiments/lenet_digits.py',
             f'--workdir={tmp_path}', '--grid=config.learning_rate=0.01,fast']
  proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "error: --grid=config.learning_rate=0.01,fast: 'fast' is not a valid float" in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.listdir(tmp_path)  # nothing ran
