"""A preempted two-process training run stops at one step, resumes, and ends like an uninterrupted run.

The trainer asks ``alexnet_jax.runtime.stopping.StopRequest.should_stop(step)`` after every step; with the
old per-process flag each process stopped at the step its own signal arrived, and the two hung in
mismatched collectives.

SIGTERM goes to process 0, and 1.5 s later to process 1, as a cluster's preemption sends it; both must
snapshot the same step and exit (status 75, "stopped, resumable") within 30 s of the last signal; the
same command then resumes, and the final parameters equal those of one uninterrupted process on the same
mesh (as in test_multihost.py, within 1e-5: two processes reduce in another order than one).

The signal goes as soon as the run is training (its first metrics line), and the processes agree to stop
at their next exchange: within ``stopping.StopRequest``'s largest interval -- 100 steps in a real run,
``MAX_SYNC`` here through its environment variable -- however fast or slow the host. So the run is longer
than that by far (64 steps; validations and snapshots only every 8 epochs, so the steps cost little):
with the default bound, an 8-step run ended before the exchange on a quiet host, where 8 steps take well
under the second, and exited 0.
"""

import os
import subprocess
import sys
import time

import pytest

from alexnet_jax.runtime import launcher as launch
from alexnet_jax.training import trainer
from alexnet_jax.data import synthetic
from alexnet_jax.parallel import compare
from alexnet_jax.runtime import stopping
from tests.test_multihost import OVERRIDES, params_on_one_device
from tests.test_stopping import stagger_sigterms
from tests.test_train import EXPERIMENT, REPO, overrides_as_flags, tiny_config

# test_multihost's run, in the data layout on 1 device per process (the cheapest to compile, since
# compiling dominates the test's time), for 16 epochs of 4 steps: far more than the MAX_SYNC steps the
# processes may run between two exchanges, so the stop comes before the end on any host.
MAX_SYNC = 4
EPOCHS = 16
RUN = dict(OVERRIDES, layout='data', num_epochs=EPOCHS, val_interval=EPOCHS / 2,
           snapshot_interval=EPOCHS / 2)
TOTAL_STEPS = EPOCHS * 4
assert TOTAL_STEPS > 8 * MAX_SYNC
ENV = dict(os.environ, **{stopping.MAX_SYNC_ENV: str(MAX_SYNC)})   # the launcher passes it to each process


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  synthetic.make_image_folder(str(root), num_classes=3, per_class=8, seed=2)
  return root


def launch_command(folder, workdir):
  return [sys.executable, '-m', 'alexnet_jax.launch', '--num_processes=2', '--devices_per_process=1',
          '--heartbeat_timeout_seconds=20', '--', sys.executable, '-m', 'alexnet_jax.train',
          EXPERIMENT, f'--workdir={workdir}'] + overrides_as_flags(
              **{'data.source': folder, **RUN})


def trainer_pids(launcher_pid: int) -> dict[int, int]:
  """{process index: pid} of the launcher's children that have started (read from /proc: Linux); a
  child still between fork and exec (no ALEXNET_PROCESS_ID yet) or gone is left out."""
  children = set()
  task_dir = f'/proc/{launcher_pid}/task'
  for task in os.listdir(task_dir):
    try:
      with open(os.path.join(task_dir, task, 'children')) as f:
        children.update(int(pid) for pid in f.read().split())
    except FileNotFoundError:   # a thread that just ended
      pass
  pids = {}
  for pid in children:
    try:
      with open(f'/proc/{pid}/environ', 'rb') as f:
        env = dict(item.split(b'=', 1) for item in f.read().split(b'\0') if b'=' in item)
    except (FileNotFoundError, ProcessLookupError):
      continue
    if b'ALEXNET_PROCESS_ID' in env:
      pids[int(env[b'ALEXNET_PROCESS_ID'])] = pid
  return pids


def test_staggered_sigterms_then_resume_end_like_an_uninterrupted_run(folder, tmp_path):
  workdir = tmp_path / 'preempted'
  proc = subprocess.Popen(launch_command(folder, workdir), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    # Training, past its first log line (so inside the loop, its stop handlers installed): the signal
    # goes at once, far from the end of the run (module docstring). Starting and compiling take
    # minutes on a busy host: the deadline only bounds a run that never starts.
    deadline = time.monotonic() + 900
    pids = {}
    while not (workdir / 'metrics.jsonl').exists():
      assert proc.poll() is None, proc.communicate()[0][-4000:]
      assert time.monotonic() < deadline, 'the run did not start training'
      if len(pids) < 2:
        pids = trainer_pids(proc.pid)
      time.sleep(0.01)
    if len(pids) < 2:
      pids = trainer_pids(proc.pid)
    output, waited = stagger_sigterms(proc, pids, timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == launch.STOPPED_EXIT_STATUS, output[-4000:]
  assert waited < 30, waited
  assert 'SIGTERM at step' in output and '[launch] process' not in output, output[-4000:]
  stopped_at = int(output.split('SIGTERM at step ')[1].split(';')[0])
  assert 0 < stopped_at < TOTAL_STEPS
  step, _ = params_on_one_device(workdir)
  assert step == stopped_at  # the snapshot both processes took together, at the agreed step

  resumed = subprocess.run(launch_command(folder, workdir), cwd=REPO, env=ENV, capture_output=True,
                           text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stdout[-4000:]
  assert f'[p0] done at step {TOTAL_STEPS}' in resumed.stdout

  reference = tmp_path / 'uninterrupted'
  trainer.train_and_evaluate(tiny_config(folder, **RUN), str(reference))
  step_a, params_a = params_on_one_device(workdir)
  step_b, params_b = params_on_one_device(reference)
  assert step_a == step_b == TOTAL_STEPS
  assert compare.max_rel_diff(params_a, params_b) < 1e-5
