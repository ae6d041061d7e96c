"""Multi-host training on jax.distributed, run as several local processes (CPU devices, gloo)."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import models
from alexnet_jax.runtime import launcher as launch
from alexnet_jax.training import trainer
from alexnet_jax.run import workdir as workdir_lib
from alexnet_jax.data import synthetic
from alexnet_jax.parallel import compare, layouts
from tests.test_train import EXPERIMENT, REPO, overrides_as_flags, tiny_config

OVERRIDES = {'layout': 'hybrid', 'mesh.data': 2, 'num_epochs': 2, 'model.weight_init': 'he',
             'learning_rate': 0.001}


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  synthetic.make_image_folder(str(root), num_classes=3, per_class=8, seed=2)
  return root


def train_command(folder, workdir):
  return [sys.executable, '-m', 'alexnet_jax.train', EXPERIMENT,
          f'--workdir={workdir}'] + overrides_as_flags(**{'data.source': folder, **OVERRIDES})


def params_on_one_device(workdir):
  """The latest snapshot's parameters, restored into the single-device layout of this process."""
  config = workdir_lib.read_config(str(workdir))
  network = models.build(config.model, 3)
  layout = layouts.resolve('single', network)
  mesh = layout.make_mesh()
  params, step, _ = workdir_lib.restore_params(str(workdir), config, 'latest', network, layout, mesh)
  return step, jax.tree.map(np.asarray, params)


def test_two_processes_train_like_one(folder, tmp_path):
  """2 processes x 2 devices in the hybrid layout end with the parameters of 1 process x 4 devices,
  and the checkpoint the two processes wrote together restores in this single process."""
  distributed_dir = tmp_path / 'two_processes'
  lines = []

  class Sink:
    def write(self, text):
      lines.append(text)

    def flush(self):
      pass

  old_cwd = os.getcwd()
  os.chdir(REPO)
  try:
    status = launch.launch(train_command(folder, distributed_dir), 2, 2,
                           heartbeat_timeout_seconds=20, out=Sink())
  finally:
    os.chdir(old_cwd)
  output = ''.join(lines)
  assert status == 0, output[-4000:]
  assert '[p0] done at step 8' in output and '[p1] done' not in output

  config = tiny_config(folder, **OVERRIDES)
  single_dir = tmp_path / 'one_process'
  trainer.train_and_evaluate(config, str(single_dir))

  step_a, params_a = params_on_one_device(distributed_dir)
  step_b, params_b = params_on_one_device(single_dir)
  assert step_a == step_b == 8
  assert compare.max_rel_diff(params_a, params_b) < 1e-5
  # Only process 0 wrote the metrics and plots.
  assert (distributed_dir / 'plots' / 'curves.png').exists()
  val_lines = [l for l in (distributed_dir / 'metrics.jsonl').read_text().splitlines() if '"val"' in l]
  assert len(val_lines) == 2


def test_launcher_stops_everyone_when_one_process_fails():
  script = ('import os, sys, time\n'
            'if os.environ["ALEXNET_PROCESS_ID"] == "1": sys.exit(3)\n'
            'time.sleep(120)\n')
  started = time.time()
  status = launch.launch([sys.executable, '-c', script], 2, 1, grace_seconds=5)
  assert status == 3
  assert time.time() - started < 30


def test_survivor_exits_with_an_error_when_a_process_dies(folder, tmp_path):
  """kill -9 one process mid-training: the other stops non-zero, with a message, within a minute."""
  workdir = tmp_path / 'killed'
  env = dict(os.environ, ALEXNET_COORDINATOR_ADDRESS=f'localhost:{launch.free_port()}',
             ALEXNET_NUM_PROCESSES='2', ALEXNET_DEVICES_PER_PROCESS='2',
             ALEXNET_HEARTBEAT_TIMEOUT_SECONDS='10', JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  command = train_command(folder, workdir) + ['--config.num_epochs=50']
  procs = [subprocess.Popen(command, cwd=REPO, env=dict(env, ALEXNET_PROCESS_ID=str(i)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
           for i in range(2)]
  try:
    deadline = time.time() + 300
    while not (workdir / 'metrics.jsonl').exists() and time.time() < deadline:
      assert procs[0].poll() is None, procs[0].stderr.read().decode()[-3000:]
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    _, err = procs[0].communicate(timeout=120)
    waited = time.time() - killed_at
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert procs[0].returncode != 0
  assert waited < 75, waited
  message = err.decode(errors='replace')
  assert any(word in message for word in ('another task died', 'Connection', 'connection',
                                          'heartbeat', 'DEADLINE', 'UNAVAILABLE')), message[-3000:]
