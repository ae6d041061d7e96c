"""End-to-end training on generated JPEG folders: outputs, exact resume, config checks, NaN stop."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from alexnet_jax.runtime import cli
from alexnet_jax.training import evaluation, profiling, trainer
from alexnet_jax.training.cadence import Cadence
from alexnet_jax.run import checkpoints, metrics_writer
from alexnet_jax.runtime import logs, status
from alexnet_jax.data import synthetic
from tests import tiny_experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


EXPERIMENT = '--config=tests/tiny_experiment.py'

# The runs here compile the same init, train and eval programs again and again (tiny_experiment's network,
# layout and shapes): with conftest's compilation cache an identical program is compiled once per process.
pytestmark = pytest.mark.usefixtures('compilation_cache')


def tiny_config(source, **overrides):
  """``tests/tiny_experiment.py`` (trains in seconds) on ``source``, with ``overrides``."""
  c = tiny_experiment.get_config()
  c.data.source = str(source)
  return tiny_experiment.override(c, **overrides)


def overrides_as_flags(**overrides):
  return [f'--config.{k}={v}' for k, v in overrides.items()]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  synthetic.make_image_folder(str(root), num_classes=3, per_class=8, seed=1)
  return root


@pytest.fixture(scope='module')
def finished_run(folder, tmp_path_factory):
  """An uninterrupted 3-epoch run in the paper's layout; other tests compare against it."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  # With a profiler trace of step 1 (profile_steps may change on resume: the numbers do not).
  results = trainer.train_and_evaluate(tiny_config(folder, profile_steps='1,2'), str(workdir))
  return workdir, results


def comparable(records):
  """Metric records without the wall-clock fields, which no two runs share."""
  return [{k: v for k, v in r.items() if k != 'images_per_sec'} for r in records]


def final_params(workdir):
  with checkpoints.Checkpointer(workdir) as ckpt:
    state, _ = ckpt.restore(ckpt.latest_step())
  return jax.tree.map(np.asarray, state['params'])


def test_training_writes_everything_a_run_needs(finished_run):
  workdir, results = finished_run
  steps_per_epoch = 18 // 4  # 24 images, 25% validation, batch 4
  assert results['step'] == 3 * steps_per_epoch
  for name in ('config.json', 'labels.txt', 'mean.npy', 'preprocess.json', 'metrics.jsonl',
               'plots/curves.png'):
    assert (workdir / name).exists(), name
  assert os.listdir(workdir / 'tensorboard')
  config = json.loads((workdir / 'config.json').read_text())
  assert config['layout'] == 'model' and config['model']['width'] == 0.125
  records = metrics_writer.read_metrics(workdir)
  train_records = [r for r in records if r['split'] == 'train']
  val_records = [r for r in records if r['split'] == 'val']
  assert [r['step'] for r in val_records] == [4, 8, 12]
  assert {'loss', 'top1', 'top5', 'lr', 'images_per_sec', 'grad_norm', 'epoch'} <= set(
      train_records[0])
  assert all(np.isfinite(r['loss']) for r in records)
  with checkpoints.Checkpointer(workdir) as ckpt:
    assert ckpt.latest_step() == 12
    assert ckpt.best_step() in ckpt.all_steps()


def test_run_resumed_after_kill_minus_9_ends_bit_identical(folder, finished_run, tmp_path):
  """A run killed with SIGKILL as soon as its first snapshot exists, then resumed, equals one never
  interrupted: parameters bit for bit, metrics record for record."""
  reference_dir, _ = finished_run
  workdir = tmp_path / 'killed'
  command = [sys.executable, '-m', 'alexnet_jax.train', EXPERIMENT, f'--workdir={workdir}',
             f'--config.data.source={folder}']
  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  first = workdir / 'checkpoints' / '4'
  deadline = time.time() + 300
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert first.exists(), proc.stderr.read().decode()[-3000:]
  results = trainer.train_and_evaluate(tiny_config(folder), str(workdir))
  assert results['step'] == 12
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(reference_dir))
  assert comparable(metrics_writer.read_metrics(workdir)) == comparable(
      metrics_writer.read_metrics(reference_dir))


def test_sigterm_snapshots_and_stops_then_resumes(folder, finished_run, tmp_path):
  reference_dir, _ = finished_run
  workdir = tmp_path / 'terminated'
  command = [sys.executable, '-m', 'alexnet_jax.train', EXPERIMENT, f'--workdir={workdir}',
             f'--config.data.source={folder}']
  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 300
  while not (workdir / 'metrics.jsonl').exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  # Stopped, not finished: a distinct exit status, and the state in status.json.
  assert proc.returncode == cli.STOPPED_EXIT_STATUS == 75, err[-3000:]
  assert 'SIGTERM' in out + err
  with checkpoints.Checkpointer(workdir) as ckpt:
    stopped_at = ckpt.latest_step()
  assert stopped_at is not None and stopped_at < 12
  record = status.read_status(str(workdir))
  assert record['state'] == 'stopped' and record['step'] == stopped_at
  assert status.effective_state(record) == 'stopped'
  assert 'SIGTERM' in (workdir / 'train.log').read_text()
  trainer.train_and_evaluate(tiny_config(folder), str(workdir))
  record = status.read_status(str(workdir))
  assert record['state'] == 'done' and record['step'] == record['total_steps'] == 12
  assert record['snapshots'] and record['best_val_top1'] is not None
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(reference_dir))


def test_profile_steps_write_a_trace_under_the_workdir(finished_run):
  workdir, _ = finished_run
  assert profiling.trace_files(str(workdir / 'profile')), os.listdir(workdir)


def test_resume_with_a_changed_config_names_the_fields(folder, finished_run):
  workdir, _ = finished_run
  with pytest.raises(ValueError) as err:
    trainer.train_and_evaluate(tiny_config(folder, learning_rate=0.05, **{'model.lrn': 'caffe'}),
                             str(workdir))
  message = str(err.value)
  assert 'learning_rate: 0.01 -> 0.05' in message and 'model.lrn' in message
  with pytest.raises(ValueError, match='num_epochs'):
    trainer.train_and_evaluate(tiny_config(folder, num_epochs=2), str(workdir))


def test_more_epochs_continue_the_run(folder, tmp_path):
  workdir = tmp_path / 'longer'
  config = tiny_config(folder, num_epochs=1, **{'lr.policy': 'fixed'})
  assert trainer.train_and_evaluate(config, str(workdir))['step'] == 4
  config = tiny_config(folder, num_epochs=2, **{'lr.policy': 'fixed'})
  assert trainer.train_and_evaluate(config, str(workdir))['step'] == 8
  steps = [r['step'] for r in metrics_writer.read_metrics(workdir, split='val')]
  assert steps == [4, 8]


def test_non_finite_loss_stops_at_once_and_keeps_the_last_good_snapshot(folder, tmp_path):
  workdir = tmp_path / 'nan'
  config = tiny_config(folder, learning_rate=1e12, **{'lr.policy': 'fixed'})
  with pytest.raises(trainer.NonFiniteLossError) as err:
    trainer.train_and_evaluate(config, str(workdir))
  assert 'at step' in str(err.value) and 'learning_rate' in str(err.value)
  # The steps run ahead of the metrics' reads, yet the message names the first bad step, as the loop
  # that read every step's loss at once (device_prefetch=0) does.
  config.data.device_prefetch = 0
  with pytest.raises(trainer.NonFiniteLossError) as step_by_step:
    trainer.train_and_evaluate(config, str(tmp_path / 'nan_step_by_step'))
  assert str(err.value) == str(step_by_step.value)
  record = status.read_status(str(workdir))   # the failure is recorded where `runs` reads it
  assert record['state'] == 'failed' and 'NonFiniteLossError' in record['error']
  assert status.effective_state(record) == 'failed'
  with checkpoints.Checkpointer(workdir) as ckpt:
    for step in ckpt.all_steps():
      state, _ = ckpt.restore(step)
      assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(state['params']))


def test_bad_flags_stop_before_compiling(folder, tmp_path):
  with pytest.raises(ValueError, match='batch_size'):
    trainer.train_and_evaluate(tiny_config(folder, layout='hybrid', batch_size=3),
                             str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='data.source'):
    trainer.train_and_evaluate(tiny_config(''), str(tmp_path / 'b'))


def test_evaluate_writes_metrics_and_confusion_in_another_layout(finished_run):
  workdir, results = finished_run
  path, summary = evaluation.run_evaluation(str(workdir), split='val', step='latest',
                                          layout_name='single')
  assert path.endswith('eval/val-12.json') and os.path.exists(path)
  assert os.path.exists(path.replace('.json', '-confusion.png'))
  saved = json.loads(open(path).read())
  assert {'loss', 'top1', 'top5', 'per_class', 'confusion', 'step'} <= set(saved)
  assert np.sum(saved['confusion']) == 6 == saved['count']
  # The same checkpoint evaluated in the paper's layout gives the same numbers.
  assert abs(saved['top1'] - results['val']['top1']) < 1e-6
  assert abs(saved['loss'] - results['val']['loss']) < 1e-5
  _, ten = evaluation.run_evaluation(str(workdir), split='val', step='best', ten_crop=True)
  assert ten['ten_crop'] and ten['count'] == 6
  with pytest.raises(FileNotFoundError, match='available steps'):
    evaluation.run_evaluation(str(workdir), step='7')


def test_cadence_counts_the_last_step():
  cadence = Cadence(steps_per_epoch=10, total_steps=25, log_every=4, val_every=10,
                          snapshot_every=20)
  assert [s for s in range(1, 26) if cadence.validate(s)] == [10, 20, 25]
  assert [s for s in range(1, 26) if cadence.snapshot(s)] == [20, 25]
  assert cadence.log(10) and cadence.log(8) and not cadence.log(9)


class _HostTransfers:
  """Counts the jax.Arrays turned into host values on the main thread, by the number of train steps
  dispatched when it happened. Every route to the host (np.asarray, float(), jax.device_get, .item())
  reads ``ArrayImpl._value``; JAX's transfer guard does not fire on the CPU backend, so it is wrapped."""

  def __init__(self, monkeypatch):
    from jax._src import array as array_lib   # pylint: disable=g-import-not-at-top
    from alexnet_jax.parallel import step as step_lib   # pylint: disable=g-import-not-at-top
    self.steps, self.at = 0, {}
    value = array_lib.ArrayImpl._value

    def counted(array):
      if threading.current_thread() is threading.main_thread():
        self.at[self.steps] = self.at.get(self.steps, 0) + 1
      return value.fget(array)

    monkeypatch.setattr(array_lib.ArrayImpl, '_value', property(counted))
    make_train_step = step_lib.make_train_step

    def counting_make_train_step(*args, **kwargs):
      step = make_train_step(*args, **kwargs)

      def counting_step(state, batch):
        self.steps += 1
        return step(state, batch)

      return counting_step

    monkeypatch.setattr(step_lib, 'make_train_step', counting_make_train_step)


@pytest.mark.parametrize('device_prefetch', [2, 0])
def test_the_loop_reads_nothing_from_the_device_between_log_points(folder, tmp_path, monkeypatch,
                                                                  device_prefetch):
  """Steps 1-4, 6-9 and 11 of 12 (log every 5, validation and snapshot at the end) transfer nothing to
  the host: each is dispatched while the one before runs. ``device_prefetch=0`` is the loop of before,
  which reads every step's metrics; it is the proof that the count sees a per-step sync."""
  transfers = _HostTransfers(monkeypatch)
  config = tiny_config(folder, num_epochs=3, log_every_steps=5, val_interval=3.0,
                       snapshot_interval=3.0, **{'data.device_prefetch': device_prefetch})
  results = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['step'] == transfers.steps == 12
  synced = sorted(step for step in transfers.at if step > 0)
  if device_prefetch:
    assert synced == [5, 10, 12]                            # the log points, one read each...
    assert transfers.at[5] == transfers.at[10]              # ...of the same size
  else:
    assert synced == list(range(1, 13))
  records = metrics_writer.read_metrics(tmp_path / 'run', split='train')
  assert [r['step'] for r in records] == [5, 10, 12]
  assert all(np.isfinite(r['loss']) and 0 < r['lr'] for r in records)


def test_a_dataset_smaller_than_the_batch_trains_and_says_so(folder, tmp_path):
  """18 training images and a batch of 32 (DIGITS' 69 images at "network defaults" 128): one step per
  epoch whose batch wraps around the split, as Caffe cycled through a small database."""
  workdir = tmp_path / 'small'
  results = trainer.train_and_evaluate(tiny_config(folder, batch_size=32, num_epochs=2),
                                       str(workdir))
  assert results['step'] == 2 and np.isfinite(results['train']['loss'])
  assert [r['step'] for r in metrics_writer.read_metrics(workdir, split='val')] == [1, 2]
  log = (workdir / logs.LOG_FILE).read_text()
  assert '18 images, fewer than one global batch of 32' in log and 'wraps around' in log
