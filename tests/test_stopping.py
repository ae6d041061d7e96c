"""Stopping on SIGTERM/SIGINT (runtime/stopping.py): at once alone, at one agreed step in a multi-process run."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from alexnet_jax.runtime import stopping
from tests.test_train import REPO


def _deliver(sig):
  """Sends ``sig`` to this process and lets its Python handler run."""
  os.kill(os.getpid(), sig)
  time.sleep(0.05)


def test_single_process_stops_at_once_and_restores_the_handlers():
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  with stopping.StopRequest() as stop:
    assert stop.should_stop(1) is None
    _deliver(signal.SIGTERM)
    assert stop.signal == 'SIGTERM'
    assert stop.should_stop(2) == 'SIGTERM' and stop.should_stop(3) == 'SIGTERM'
    assert stop.syncs == 0  # no collective in a single process
    with pytest.raises(KeyboardInterrupt):  # a second signal: stop now
      _deliver(signal.SIGINT)
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_sigint_names_itself():
  with stopping.StopRequest() as stop:
    _deliver(signal.SIGINT)
    assert stop.should_stop(7) == 'SIGINT'


def test_outside_the_main_thread_installs_nothing():
  before = signal.getsignal(signal.SIGTERM)
  seen = []

  def body():
    with stopping.StopRequest() as stop:
      seen.append((signal.getsignal(signal.SIGTERM), stop.should_stop(1)))
  thread = threading.Thread(target=body)
  thread.start()
  thread.join()
  assert seen == [(before, None)]


class FakeGather:
  """Stands in for process_allgather: this process's row, then the other process's."""

  def __init__(self, other):
    self.other = other  # (signal number, proposed interval)
    self.calls = []

  def __call__(self, local):
    self.calls.append(tuple(int(v) for v in local))
    return np.stack([np.asarray(local), np.asarray(self.other, np.int32)])


@pytest.fixture
def two_processes(monkeypatch):
  from jax.experimental import multihost_utils
  gather = FakeGather((0, 1000))
  monkeypatch.setattr(multihost_utils, 'process_allgather', gather)
  monkeypatch.setattr(stopping.StopRequest, '_is_multiprocess', lambda self: True)
  return gather


def test_fixed_interval_exchanges_only_on_its_steps(two_processes):
  with stopping.StopRequest(sync_every=3) as stop:
    decisions = [stop.should_stop(step) for step in range(10, 20)]
  assert decisions == [None] * 10
  assert stop.syncs == 4  # steps 10, 13, 16, 19
  assert {proposal for _, proposal in two_processes.calls} == {3}


def test_a_signal_elsewhere_stops_this_process_at_the_same_exchange(two_processes):
  with stopping.StopRequest(sync_every=4) as stop:
    assert stop.should_stop(1) is None  # the first call exchanges
    two_processes.other = (int(signal.SIGTERM), 4)
    assert [stop.should_stop(s) for s in (2, 3, 4)] == [None, None, None]
    assert stop.should_stop(5) == 'SIGTERM'   # the next exchange
    assert stop.signal is None and stop.reason == 'SIGTERM'
    assert stop.should_stop(6) == 'SIGTERM'
  assert stop.syncs == 2


def test_the_adaptive_interval_is_the_smallest_proposed(two_processes):
  two_processes.other = (0, 2)
  with stopping.StopRequest(sync_seconds=10.0) as stop:
    for step in range(1, 12):
      stop.should_stop(step)
  # Exchanges at 1 (the first call proposes 1), then every 2 steps: the other process's proposal is
  # smaller than this one's (10 s of microsecond steps, capped at max_sync_every).
  assert stop.syncs == 6
  assert two_processes.calls[0][1] == 1 and two_processes.calls[-1][1] == 100


def test_the_environment_bounds_the_adaptive_interval(two_processes, monkeypatch):
  monkeypatch.setenv(stopping.MAX_SYNC_ENV, '7')
  two_processes.other = (0, 1000)
  with stopping.StopRequest(sync_seconds=10.0) as stop:
    for step in range(1, 16):
      stop.should_stop(step)
  assert [proposed for _, proposed in two_processes.calls] == [1, 7, 7]   # exchanges at 1, 2 and 9
  for bad in ('0', 'many'):
    monkeypatch.setenv(stopping.MAX_SYNC_ENV, bad)
    with pytest.raises(ValueError, match=f"{stopping.MAX_SYNC_ENV}='{bad}'"):
      stopping.StopRequest()


# A two-process run through the launcher: a tiny psum per step; the test sends SIGTERM to process 0,
# and 1.5 s later to process 1, as a cluster's preemption does.
SCRIPT = '''
import json, os, sys, time
import numpy as np
import jax
from alexnet_jax.runtime import distributed
distributed.initialize(2)
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from alexnet_jax.runtime import stopping

out_dir, sync_every = sys.argv[1], (None if sys.argv[2] == 'auto' else int(sys.argv[2]))
me = jax.process_index()
sharding = NamedSharding(jax.make_mesh((jax.device_count(),), ('d',)), P('d'))
total = jax.jit(lambda x: x.sum())

def psum(value):
  local = np.full(jax.local_device_count(), value, np.float32)
  return float(total(jax.make_array_from_process_local_data(sharding, local)))

step = 0
with stopping.StopRequest(sync_every=sync_every) as stop:
  while True:
    psum(1.0)
    time.sleep(0.005)
    step += 1
    if step == 20:  # running: tell the test where to send the signal
      with open(os.path.join(out_dir, f'pid{me}.tmp'), 'w') as f:
        f.write(str(os.getpid()))
      os.rename(os.path.join(out_dir, f'pid{me}.tmp'), os.path.join(out_dir, f'pid{me}'))
    reason = stop.should_stop(step)
    if reason:
      break
  # The "snapshot": a different collective, which every process must enter at the same step, and
  # slow, so that the other process's late signal arrives during it.
  steps = multihost_utils.process_allgather(np.array([step], np.int32)).ravel().tolist()
  time.sleep(2.5)
with open(os.path.join(out_dir, f'result{me}.json'), 'w') as f:
  json.dump({'step': step, 'steps': steps, 'reason': reason, 'signal': stop.signal,
             'syncs': stop.syncs}, f)
print(f'process {me} stopped after step {step} on {reason} (own signal: {stop.signal}, '
      f'{stop.syncs} exchanges)', flush=True)
'''


def _wait_for(path, proc, deadline):
  while not os.path.exists(path):
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    assert time.time() < deadline, f'{path} never appeared'
    time.sleep(0.05)


def stagger_sigterms(proc, pids, *, timeout):
  """SIGTERM to ``pids[0]`` and 1.5 s later to ``pids[1]``, as a cluster's preemption sends it; returns
  ``proc``'s output and the seconds from the last signal until it exited."""
  os.kill(pids[0], signal.SIGTERM)
  time.sleep(1.5)
  try:
    os.kill(pids[1], signal.SIGTERM)
  except ProcessLookupError:
    pass  # already gone: stopped on process 0's signal, and exited
  last_signal = time.time()
  output, _ = proc.communicate(timeout=timeout)
  return output, time.time() - last_signal


@pytest.mark.parametrize('sync_every', ['auto', '400'])
def test_staggered_sigterms_stop_both_processes_at_the_same_step(tmp_path, sync_every):
  """With 'auto' the first exchange after process 0's signal stops both before process 1's signal;
  with 400 steps (about 3 s) between exchanges both signals arrive before the exchange."""
  script = tmp_path / 'loop.py'
  script.write_text(SCRIPT)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.launch', '--num_processes=2', '--devices_per_process=1',
       '--', sys.executable, str(script), str(tmp_path), sync_every],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 600          # a ceiling: two JAX processes start slowly on a busy host
    for i in range(2):
      _wait_for(tmp_path / f'pid{i}', proc, deadline)
    pids = [int((tmp_path / f'pid{i}').read_text()) for i in range(2)]
    output, waited = stagger_sigterms(proc, pids, timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, output[-3000:]
  assert waited < 30, waited
  results = [json.loads((tmp_path / f'result{i}.json').read_text()) for i in range(2)]
  assert results[0]['step'] == results[1]['step'], results
  assert results[0]['steps'] == results[1]['steps'] == [results[0]['step']] * 2
  assert results[0]['reason'] == results[1]['reason'] == 'SIGTERM'
  assert results[0]['signal'] == 'SIGTERM'
  if sync_every == '400':  # exchanges after steps 1, 401, ...: both had their own signal by then
    assert results[0]['step'] % 400 == 1 and results[1]['signal'] == 'SIGTERM', results
