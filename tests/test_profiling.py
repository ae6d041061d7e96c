"""Tests of alexnet_jax/training/profiling.py: the ``profile_steps`` value, and traces of exactly the chosen steps.

Each test reads the trace back (``jax.profiler.ProfileData``) and checks which steps it holds: every call
of the tiny jitted function below sits inside a ``TraceAnnotation('call_<step>')``, so the names in the
trace say which steps were recorded and which were not.
"""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax.training import profiling


def _annotations(session_dir: str, prefix: str) -> list[str]:
  """Names of the host events starting with ``prefix`` in the session's .xplane.pb (with step numbers)."""
  (path,) = glob.glob(os.path.join(session_dir, '*.xplane.pb'))
  found = []
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        if event.name.startswith(prefix):
          stats = dict(event.stats)
          found.append(f'{event.name}:{stats["step_num"]}' if 'step_num' in stats else event.name)
  return sorted(found)


@pytest.fixture(scope='module')
def tiny_step():
  f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
  x = jnp.ones((32, 32))
  f(x).block_until_ready()   # compiled before any trace

  def run(step: int) -> None:
    with jax.profiler.TraceAnnotation(f'call_{step}'):
      f(x).block_until_ready()
  return run


def _loop(profiler, run, steps) -> None:
  with profiler:
    for step in steps:
      profiler.step(step)
      run(step)


def test_parse_profile_steps_accepts_start_stop_and_empty():
  assert profiling.parse_profile_steps('') is None
  assert profiling.parse_profile_steps(None) is None
  assert profiling.parse_profile_steps('  ') is None
  assert profiling.parse_profile_steps('10,13') == (10, 13)
  assert profiling.parse_profile_steps(' 0 , 1 ') == (0, 1)


@pytest.mark.parametrize('value', ['5', '5,5', '6,5', '-1,3', 'a,b', '1,2,3', '1.5,3', ','])
def test_parse_profile_steps_rejects_bad_values_naming_the_flag(value):
  with pytest.raises(ValueError, match=r'--config\.profile_steps=.*START,STOP'):
    profiling.parse_profile_steps(value)


def test_traces_the_configured_steps_and_nothing_outside_them(tmp_path, tiny_step):
  profiler = profiling.StepProfiler(str(tmp_path / 'profile'), 3, 5, log=lambda *_: None)
  _loop(profiler, tiny_step, range(8))
  assert profiler.done and not profiler.active and profiler.skipped is None
  sessions = glob.glob(str(tmp_path / 'profile' / 'plugins' / 'profile' / '*'))
  assert sessions == [profiler.session_dir]
  assert any(f.endswith('.xplane.pb') for f in profiler.files())
  assert _annotations(profiler.session_dir, 'call_') == ['call_3', 'call_4']
  assert _annotations(profiler.session_dir, 'train') == ['train:3', 'train:4']
  assert profiling.trace_files(str(tmp_path / 'profile'))


def test_from_config_value_and_perfetto_trace(tmp_path, tiny_step):
  profiler = profiling.StepProfiler.from_config_value('1,2', str(tmp_path), create_perfetto_trace=True,
                                                      log=lambda *_: None)
  _loop(profiler, tiny_step, range(4))
  names = [os.path.basename(f) for f in profiler.files()]
  assert 'perfetto_trace.json.gz' in names and any(n.endswith('.trace.json.gz') for n in names)
  assert _annotations(profiler.session_dir, 'call_') == ['call_1']


def test_empty_value_traces_nothing(tmp_path, tiny_step):
  profiler = profiling.StepProfiler.from_config_value('', str(tmp_path / 'profile'))
  assert profiler.done and not profiler.enabled
  _loop(profiler, tiny_step, range(3))
  assert not os.path.exists(tmp_path / 'profile')


def test_a_run_that_resumes_inside_the_window_traces_nothing(tmp_path, tiny_step):
  messages = []
  profiler = profiling.StepProfiler(str(tmp_path / 'profile'), 3, 6, log=messages.append)
  _loop(profiler, tiny_step, range(4, 9))     # restarted from a snapshot at step 4
  assert profiler.session_dir is None and 'inside the window' in profiler.skipped
  assert not os.path.exists(tmp_path / 'profile') and any('no trace' in m for m in messages)
  past = profiling.StepProfiler(str(tmp_path / 'past'), 3, 6, log=lambda *_: None)
  _loop(past, tiny_step, range(7, 9))
  assert 'past the window' in past.skipped and not os.path.exists(tmp_path / 'past')


def test_a_run_that_resumes_at_the_start_step_traces_the_whole_window(tmp_path, tiny_step):
  profiler = profiling.StepProfiler(str(tmp_path), 3, 5, log=lambda *_: None)
  _loop(profiler, tiny_step, range(3, 9))
  assert _annotations(profiler.session_dir, 'call_') == ['call_3', 'call_4']


def test_a_run_that_ends_inside_the_window_still_writes_its_trace(tmp_path, tiny_step):
  profiler = profiling.StepProfiler(str(tmp_path), 1, 100, log=lambda *_: None)
  _loop(profiler, tiny_step, range(4))        # training ends at step 4, long before step 100
  assert profiler.done and not profiler.active
  assert _annotations(profiler.session_dir, 'call_') == ['call_1', 'call_2', 'call_3']


def test_another_active_trace_makes_the_window_skip_not_fail(tmp_path, tiny_step):
  jax.profiler.start_trace(str(tmp_path / 'theirs'))
  try:
    profiler = profiling.StepProfiler(str(tmp_path / 'ours'), 0, 2, log=lambda *_: None)
    _loop(profiler, tiny_step, range(3))
  finally:
    jax.profiler.stop_trace()
  assert profiler.session_dir is None and 'start_trace failed' in profiler.skipped


def test_constructor_rejects_an_empty_window(tmp_path):
  with pytest.raises(ValueError, match='start_step < stop_step'):
    profiling.StepProfiler(str(tmp_path), 4, 4)


def test_model_step_profile_dir_traces_the_first_train_configuration(tmp_path):
  from benchmarks import model_step
  report = model_step.benchmark(('lenet',), ('float32',), (4,), ('infer', 'train'), ('default',),
                                width=0.25, image_size=28, num_classes=10, steps=1, warmup=1,
                                profile_dir=str(tmp_path / 'trace'), profile_steps=2, log=lambda *_: None)
  p = report['profile']
  assert p['key'] == 'lenet/float32/b4/default/train' and p['skipped'] is None
  assert any(f.endswith('.xplane.pb') for f in p['files'])
  assert sorted(set(_annotations(p['session_dir'], 'lenet_float32'))) == [
      'lenet_float32_b4_default_train:0', 'lenet_float32_b4_default_train:1']
  assert 'profile: 2 calls of lenet/float32/b4/default/train' in model_step.format_report(report)
