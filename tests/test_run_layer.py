"""The run directory as one layer: read-only readers, damaged snapshots, config/metrics messages, the
layout rules, the import structure, and start-up (the XLA flag guard, --help without jax)."""

import glob
import json
import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import configs, models
from alexnet_jax.runtime import cli, devices
from alexnet_jax.parallel import layouts
from alexnet_jax.run import checkpoints, metrics_writer, workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'alexnet_jax')


def _state(scale):
  params = {'conv': {'kernel': jnp.arange(600.0).reshape(20, 30) * scale}, 'bias': jnp.ones(5) * scale}
  return {'step': jnp.array(scale), 'params': params, 'opt_state': {'mu': params, 'count': jnp.array(3)}}


def _abstract():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return {'conv': {'kernel': jax.ShapeDtypeStruct((20, 30), jnp.float32, sharding=sharding)},
          'bias': jax.ShapeDtypeStruct((5,), jnp.float32, sharding=sharding)}


@pytest.fixture
def three_snapshots(tmp_path):
  with checkpoints.Checkpointer(tmp_path, async_save=False) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _state(step), meta={'epoch': step}, metrics={'top1': step / 10})
  return tmp_path


def _damage(workdir, step, how):
  step_dir = os.path.join(workdir, 'checkpoints', str(step))
  files = [f for f in glob.glob(os.path.join(step_dir, 'state', '**'), recursive=True)
           if os.path.isfile(f)]
  if how == 'truncate':
    # Every data file: which one holds the parameters (rather than the optimizer state) depends on how
    # orbax's writer threads split the arrays, so truncating only the biggest one may miss them.
    for f in files:
      if os.sep + 'd' + os.sep in f:
        with open(f, 'r+b') as handle:
          handle.truncate(os.path.getsize(f) // 2)
  elif how == 'missing':
    for f in files:
      if os.sep + 'd' + os.sep in f:
        os.remove(f)
  else:  # an emptied metadata file
    open(os.path.join(step_dir, 'state', '_METADATA'), 'w').close()


# ---- Readers ------------------------------------------------------------------------------------------

def test_a_reader_restores_params_without_the_optimizer(three_snapshots):
  with checkpoints.Checkpointer(three_snapshots, read_only=True) as reader:
    params, step = reader.restore_params(None, _abstract())
    assert step == 3 and reader.best_step() == 3
    np.testing.assert_array_equal(params['conv']['kernel'], np.arange(600.0).reshape(20, 30) * 3)
    with pytest.raises(ValueError, match='read-only'):
      reader.save(4, _state(4))


def test_a_reader_opened_during_a_save_leaves_it_intact(three_snapshots):
  """A read-write manager removes unfinished saves when it opens; a reader must not (issue 12)."""
  big = {'step': jnp.array(4), 'params': {'w': jnp.ones((2048, 2048))},
         'opt_state': {'w': jnp.ones((2048, 2048))}}
  with checkpoints.Checkpointer(three_snapshots) as writer:
    writer.save(4, big)   # async: returns while the files are still being written
    in_progress = [n for n in os.listdir(writer.directory) if 'tmp' in n]
    readers = []

    def read():
      with checkpoints.Checkpointer(three_snapshots, read_only=True) as reader:
        readers.append(reader.restore_params(None, _abstract())[1])
    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    writer.wait()
    assert writer.all_steps() == [2, 3, 4] or writer.all_steps() == [1, 2, 3, 4]
  assert readers and readers[0] in (3, 4)
  # A hand-made unfinished save (a killed trainer's) is left alone by readers too.
  stale = os.path.join(three_snapshots, 'checkpoints', '9.orbax-checkpoint-tmp-123')
  os.makedirs(os.path.join(stale, 'state'))
  checkpoints.Checkpointer(three_snapshots, read_only=True).close()
  assert os.path.isdir(stale), in_progress


@pytest.mark.parametrize('how', ['truncate', 'missing', 'empty_metadata'])
def test_a_damaged_latest_snapshot_is_skipped_by_readers(three_snapshots, how):
  _damage(three_snapshots, 3, how)
  with checkpoints.Checkpointer(three_snapshots, read_only=True) as reader:
    params, step = reader.restore_params(None, _abstract())
    assert step == 2
    np.testing.assert_array_equal(params['bias'], np.full(5, 2.0))
    with pytest.raises(checkpoints.DamagedCheckpointError) as err:
      reader.restore_params(3, _abstract())
  message = str(err.value)
  assert 'snapshot 3' in message and 'snapshots that restore: 1, 2' in message
  assert len(message) < 600
  # The trainer's view: resume from 2, and set 3 aside so that it is saved anew.
  with checkpoints.Checkpointer(three_snapshots) as ckpt:
    _, meta, skipped = ckpt.restore_latest()
    assert meta == {'epoch': 2} and len(skipped) == 1 and 'snapshot 3' in skipped[0]
    assert ckpt.all_steps() == [1, 2]
    assert ckpt.save(3, _state(3))
  assert os.path.isdir(os.path.join(three_snapshots, 'checkpoints', '3.damaged'))


# ---- config.json and metrics.jsonl ----------------------------------------------------------------------

@pytest.mark.parametrize('content, words', [
    ('{"seed": 0, "data": {', 'not valid JSON (line 1'),
    ('42', 'holds int, not a config object'),
    (b'\xff\xfe\x00garbage', 'not text'),
])
def test_a_broken_config_json_is_named_with_the_fix(tmp_path, content, words):
  path = tmp_path / 'config.json'
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(ValueError) as err:
    workdir_lib.read_config(str(tmp_path))
  assert words in str(err.value) and str(path) in str(err.value) and 'new --workdir' in str(err.value)
  with pytest.raises(FileNotFoundError, match='has no config.json'):
    workdir_lib.read_config(str(tmp_path / 'elsewhere'))


def test_bad_metrics_lines_are_skipped_with_their_line_number(tmp_path, caplog):
  good = [{'split': 'train', 'step': s, 'epoch': s / 4, 'loss': 1.0 / s} for s in (1, 2, 3)]
  path = tmp_path / metrics_writer.METRICS_FILE
  with open(path, 'wb') as f:
    f.write((json.dumps(good[0]) + '\n42\n').encode() + b'\x00\xff\xfe binary\n'
            + (json.dumps(good[1]) + '\n' + json.dumps(good[2]) + '\n').encode())
  os.chmod(path, 0o644)
  assert [r['step'] for r in metrics_writer.read_metrics(tmp_path)] == [1, 2, 3]
  assert 'line 2' in caplog.text and 'line 3' in caplog.text
  writer = metrics_writer.MetricsWriter(tmp_path, tensorboard=False)
  assert writer.truncate_after(2) == 3   # the two bad lines and step 3
  writer.close()
  assert [r['step'] for r in metrics_writer.read_metrics(tmp_path)] == [1, 2]
  assert oct(os.stat(path).st_mode & 0o777) == oct(0o644), 'metrics.jsonl lost its permissions'


# ---- Layout rules ---------------------------------------------------------------------------------------

NETWORK_TOWERS = {'alexnet': 2, 'alexnet_owt': 1, 'lenet': 1, 'googlenet': 1}
EXPECTED_DEVICES = {  # layout -> devices forced on a CPU host for a 2-tower / 1-tower network
    'single': (1, 1), 'model': (2, None), 'data': (2, 2), 'hybrid': (4, None),
    'weird_trick': (2, 2), 'auto': (4, 2)}


@pytest.mark.parametrize('network', sorted(NETWORK_TOWERS))
@pytest.mark.parametrize('layout', layouts.LAYOUT_NAMES)
def test_every_layout_and_network_forces_the_devices_it_resolves_on(layout, network):
  config = configs.default_config()
  config.layout, config.model.name = layout, network
  towers = models.build(config.model, 10).num_towers
  assert towers == NETWORK_TOWERS[network]
  expected = EXPECTED_DEVICES[layout][0 if towers == 2 else 1]
  if expected is None:
    with pytest.raises(layouts.LayoutError) as err:
      workdir_lib.devices_needed(config)
    assert f'--config.layout={layout}' in str(err.value) and 'single' in str(err.value)
    return
  assert workdir_lib.devices_needed(config) == expected
  # What is forced is exactly what resolve needs: it fits, and one device less does not.
  network_obj = models.build(config.model, 10)
  resolved = layouts.resolve(layout, network_obj, num_devices=expected)
  assert resolved.num_devices <= expected
  if layouts.RULES[layout].needs_towers:   # one device per tower: one device less cannot work
    with pytest.raises(layouts.LayoutError, match='needs'):
      layouts.resolve(layout, network_obj, num_devices=expected - 1,
                      mesh_data=-1 if layout == 'model' else expected // 2)


def test_mesh_overrides_change_the_device_count():
  assert layouts.devices_needed('data', 1, mesh_data=4) == 4
  assert layouts.devices_needed('hybrid', 2, mesh_data=3) == 6
  assert layouts.devices_needed('weird_trick', 2, mesh_model=4) == 4
  with pytest.raises(layouts.LayoutError, match='not a layout'):
    layouts.devices_needed('pipeline', 2)


def test_evaluate_and_classify_share_their_defaults():
  code = ('from absl import flags; from alexnet_jax import {tool}; {tool}.define_flags(); '
          'print(flags.FLAGS["layout"].default, flags.FLAGS["ten_crop"].default)')
  defaults = [subprocess.run([sys.executable, '-c', code.format(tool=tool)], cwd=REPO, text=True,
                             capture_output=True, timeout=120).stdout.split()
              for tool in ('evaluate', 'classify')]
  assert defaults[0] == defaults[1] == ['single', 'None']


# ---- Start-up -------------------------------------------------------------------------------------------

def test_an_xla_flag_this_jaxlib_lacks_is_never_passed(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  monkeypatch.setattr(devices, 'CPU_XLA_FLAGS', ('--xla_cpu_flag_that_does_not_exist=1',) +
                      devices.CPU_XLA_FLAGS)
  devices.add_cpu_xla_flags()
  flags_now = os.environ['XLA_FLAGS']
  assert 'xla_cpu_flag_that_does_not_exist' not in flags_now
  assert devices.xla_knows_flag(devices.CPU_XLA_FLAGS[-1]) == (devices.CPU_XLA_FLAGS[-1] in flags_now)
  # On an accelerator host the CPU options are left out altogether (its XLA parses XLA_FLAGS too).
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  devices.add_cpu_xla_flags()
  assert os.environ['XLA_FLAGS'] == ''
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  # And a process whose jaxlib lacks the flag starts: simulate by making the lookup fail.
  code = ('from alexnet_jax.runtime import devices; devices.xla_knows_flag = lambda name: False; '
          'devices.ensure_devices(2); import os; print(os.environ.get("XLA_FLAGS", ""))')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, 'XLA_FLAGS': ''}, timeout=120)
  assert out.returncode == 0, out.stderr
  assert 'ynn' not in out.stdout


def test_a_user_error_inside_the_trainer_is_one_line(tmp_path):
  # (--help without JAX and each command's first user errors: tests/test_commands.py.)
  # A user error found by the trainer: one line, no TPU notice, no orbax traceback, exit status 2.
  out = subprocess.run([sys.executable, '-m', 'alexnet_jax.train', '--config=tests/tiny_experiment.py',
                        f'--workdir={tmp_path / "run"}', '--config.data.source=/nonexistent'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  assert 'error:' in out.stderr and '/nonexistent' in out.stderr
  assert 'Traceback' not in out.stderr and 'libtpu' not in out.stderr, out.stderr[-3000:]
  assert cli.user_message(OSError(28, 'No space left on device', '/data/x.tar.gz')) == (
      'cannot write or read /data/x.tar.gz: no space left on device')


def test_a_second_trainer_on_a_busy_workdir_stops_at_once(tmp_path, children):
  from alexnet_jax.training import trainer
  from alexnet_jax.runtime import lock
  from tests import tiny_experiment
  workdir = tmp_path / 'busy'
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\nfrom alexnet_jax.runtime import lock\n'
       f'held = lock.WorkdirLock({str(workdir)!r}).acquire()\nprint("ready", flush=True)\n'
       'time.sleep(120)'], cwd=REPO, stdout=subprocess.PIPE, text=True)
  children.append(holder)
  assert holder.stdout.readline().strip() == 'ready'
  config = tiny_experiment.get_config()
  config.data.source = 'synthetic'
  with pytest.raises(lock.WorkdirBusyError, match=f'in use by process {holder.pid}'):
    trainer.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir)) == ['.lock']   # nothing of the holder's run was touched
  holder.kill()
  holder.wait()
  with lock.WorkdirLock(str(workdir)):   # a dead holder's lock never blocks
    pass
