"""Tests of benchmarks/device_check.py, the prepared GPU check: its smoke run on CPU, plans and pieces.

The GPU run itself happens only where a session is lent the device (one call of about 8 minutes); these
tests keep it from rotting in between: ``--smoke`` runs every part at tiny sizes through the same code
and the same wrapper script, and the checks below look at what a reader of its outputs would use.
"""

import importlib.metadata
import itertools
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from benchmarks import device_plan as dp
from benchmarks import device_report
from benchmarks import device_runner
from benchmarks import device_wheels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ('## Model step and inference', '## Profiler trace of the train step',
            '## XLA flags of alexnet_jax/devices.py', '## End-to-end demo train',
            '## Input pipeline into device memory', '## Layouts', '## Wheels')


def _env() -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)   # conftest's forced devices and CPU flags are not the script's business
  return env


# ---- The smoke run ----------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  """One smoke run through the wrapper script, as the device would run it (``$OUT`` set)."""
  out = tmp_path_factory.mktemp('out')
  scratch = tmp_path_factory.mktemp('scratch')
  env = dict(_env(), OUT=str(out), PYTHON=sys.executable)
  proc = subprocess.run(['bash', 'benchmarks/device_check.sh', '--smoke', f'--scratch={scratch}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((out / dp.JSON_NAME).read_text())
  return out, report, (out / dp.MD_NAME).read_text()


def test_smoke_runs_every_part_and_summarizes_each(smoke):
  out, report, md = smoke
  assert report['smoke'] and report['wall_s'] > 0
  assert {name: p['status'] for name, p in report['parts'].items()} == {name: 'ok' for name in dp.PARTS}
  for section in SECTIONS:
    assert section in md, section
  assert 'Not measured' not in md and 'could not summarize' not in md
  assert md.count('| ok |') == len(dp.PARTS)


def test_smoke_returns_only_what_the_device_tool_can_bring_back(smoke):
  out, _, _ = smoke
  files = [os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs]
  assert sorted(files) == sorted([dp.JSON_NAME, dp.MD_NAME, 'device_check.log', dp.TRACE_NAME,
                                  dp.DEMO_METRICS_NAME])
  assert len(files) <= 8   # the device tool returns at most 8 files, 16 MiB each, 2 folders deep
  for f in files:
    assert re.fullmatch(r'[A-Za-z0-9._-]+', f) and os.path.getsize(out / f) <= dp.MAX_RETURN_BYTES
  assert 'wrote' in (out / 'device_check.log').read_text()


def test_smoke_model_numbers_are_plausible(smoke):
  _, report, _ = smoke
  model = report['parts']['model']['result']
  assert set(model['results']) == {dp.config_key(*c) for c in dp.SMOKE.model_configs}
  assert not model['skipped'] and model['ml_collections'].startswith('ml_collections')
  for r in model['results'].values():
    assert 'error' not in r, r
    assert r['compile_s'] > 0 and r['step_ms'] > 0 and r['images_per_s'] > 0
    assert r['step']['min_s'] <= r['step']['median_s'] <= r['step']['max_s']
    assert r['images_per_s'] == pytest.approx(r['batch'] / r['step']['median_s'])
    assert r['flops_per_image'] > 0 and r['flops_source'] == 'lowered'
    assert r['program_memory']['total_bytes'] > 0
    assert r['mfu'] is None or 0 < r['mfu'] < 1
  train = model['results']['alexnet_owt/float32/b8/train']
  assert 1.0 < train['loss'] < 10.0
  # A train step costs about three forward passes (the dtype does not change XLA's FLOP count).
  infer = model['results']['alexnet_owt/bfloat16/b8/infer']
  assert 2.0 < train['flops_per_image'] / infer['flops_per_image'] < 3.5
  assert report['machine']['device_kind'] and report['machine']['jax']


def test_smoke_profile_is_a_viewable_trace_of_the_train_step(smoke):
  out, report, _ = smoke
  profile = report['parts']['model']['result']['profile']
  assert profile['key'] == 'alexnet_owt/float32/b8/train' and profile['skipped'] is None
  assert profile['tarball'] == dp.TRACE_NAME and profile['tarball_bytes'] <= dp.MAX_RETURN_BYTES
  with tarfile.open(out / dp.TRACE_NAME) as tar:
    names = tar.getnames()
  assert any(re.fullmatch(r'trace/plugins/profile/[^/]+/[^/]+\.xplane\.pb', n) for n in names), names
  assert any(n.endswith('.trace.json.gz') for n in names)


def test_smoke_train_input_layouts_and_wheels_are_plausible(smoke):
  out, report, _ = smoke
  parts = {name: p['result'] for name, p in report['parts'].items()}
  flags = parts['xla_flags']
  assert flags['starts_with_cpu_flags'] and 'xla_cpu_experimental' in flags['xla_flags']

  train = parts['train']
  assert train['rc'] == 0 and not train['cpu_xla_flags_removed']
  assert train['steps'] == 70 and train['epochs'] == pytest.approx(1.0)   # 2,250 images / 32
  assert train['images_per_s_median_after_first'] > 0 and 0 <= train['val']['top1'] <= 1
  lines = (out / dp.DEMO_METRICS_NAME).read_text().splitlines()
  assert any(json.loads(line)['split'] == 'val' for line in lines)

  inputs = parts['input']
  assert set(inputs) == {'retained', 'glibc_default'}
  assert inputs['retained']['host_memory_retained'] and not inputs['glibc_default']['host_memory_retained']
  assert set(inputs['retained']['results']) == {'folder/1', 'folder/2', 'prepared/1', 'prepared/2'}
  assert set(inputs['glibc_default']['results']) == {'folder/2', 'prepared/2'}
  for r in itertools.chain(*(x['results'].values() for x in inputs.values())):
    assert r['images_per_s'] > 0 and r['images'] > 0
  assert inputs['retained']['host_to_device']['gb_per_s'] > 0

  layouts = parts['layouts']
  assert list(layouts['layouts']) == ['single'] and 'model' in layouts['not_run']
  assert layouts['layouts']['single']['images_per_s'] > 0

  wheels = parts['wheels']
  assert wheels['listed'] == len(device_wheels.read_wheels_list()) and not wheels['no_wheel_carried']
  assert all(v.startswith('ok') for v in wheels['imports'].values()), wheels['imports']


# ---- The model part without the wheels ---------------------------------------------------------------------

_WITHOUT_WHEELS = r'''
import importlib.abc, json, sys
BLOCKED = ('ml_collections', 'grain', 'array_record', 'tensorboardX', 'tensorflow_datasets', 'orbax')
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      raise ImportError(f'{name} is blocked (not installed on the device)')
sys.meta_path.insert(0, Block())
import dataclasses
from benchmarks import device_parts
from benchmarks import device_plan as dp
from benchmarks import device_report
from benchmarks import device_runner
from benchmarks import device_wheels
plan = dataclasses.replace(dp.SMOKE, model_configs=(('lenet', 'float32', 4, 'train'),), width=0.25,
                           image_size=28, profile=None)
report = device_parts.run_model_part(plan, sys.argv[1], 120, trace_out=None, scratch=sys.argv[2],
                                     log=lambda *_: None)
imported = sorted({m.split('.')[0] for m in sys.modules} & set(BLOCKED))
stub = getattr(sys.modules['ml_collections'], '__stub__', False)
print('RESULT ' + json.dumps({'ml': report['ml_collections'], 'keys': list(report['results']),
                              'error': report['results']['lenet/float32/b4/train'].get('error'),
                              'imported': imported, 'stub': stub}))
'''


def test_model_part_runs_without_any_of_the_carried_wheels(tmp_path):
  proc = subprocess.run([sys.executable, '-c', _WITHOUT_WHEELS, str(tmp_path / 'm.json'), str(tmp_path)],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split('RESULT ')[-1])
  assert result['keys'] == ['lenet/float32/b4/train'] and result['error'] is None
  # alexnet_jax/models/__init__.py imports ml_collections at import time: the stub stood in for it.
  assert result['ml'].startswith('stub') and result['stub'] is True
  assert result['imported'] == ['ml_collections']   # the stub's name only; nothing else was loaded


# ---- Plans, wheels, environment, summary -------------------------------------------------------------------


def test_full_plan_covers_the_issue_and_fits_eight_minutes():
  plan = dp.FULL
  expected = set(itertools.product(('alexnet', 'alexnet_owt'), ('bfloat16', 'float32'), (128, 256, 512),
                                   ('train', 'infer')))
  assert set(plan.model_configs) == expected and len(plan.model_configs) == len(expected)
  assert plan.model_configs[:4] == (('alexnet', 'bfloat16', 256, 'train'),
                                    ('alexnet_owt', 'bfloat16', 256, 'train'),
                                    ('alexnet', 'float32', 256, 'train'),
                                    ('alexnet_owt', 'float32', 256, 'train'))
  assert {c[2] for c in plan.model_configs[:8]} == {256}   # every mode and dtype at 256 first
  assert (plan.width, plan.image_size, plan.num_classes) == (1.0, 224, 1000)
  assert (*plan.profile, 'train') in plan.model_configs and plan.profile_steps == 3
  assert set(plan.budgets) == set(dp.PARTS)
  assert sum(plan.budgets.values()) <= plan.total_budget_s <= 8 * 60
  assert plan.model_configs and dp.PARTS[:2] == ('wheels', 'model')   # the model step first
  assert '--config.num_epochs=2' in plan.train_args and '--config.layout=single' in plan.train_args
  assert set(dp.SMOKE.budgets) == set(dp.PARTS)


def test_wheels_list_is_pinned_and_meets_the_project_requirements():
  entries = device_wheels.read_wheels_list()
  names = [device_wheels.normalize(e['name']) for e in entries]
  assert len(names) == len(set(names))   # two versions of one package stop the whole install
  assert {'grain', 'array-record', 'ml-collections', 'tensorboardx', 'tensorflow-datasets'} <= set(names)
  # Each pin satisfies setup.cfg's lower bound (not equality with this machine: PyPI moves on).
  required = {device_wheels.normalize(r.split('>=')[0]): r.split('>=')[1] for r in
              importlib.metadata.requires('alexnet_jax') if '>=' in r and ';' not in r}
  for e in entries:
    floor = required.get(device_wheels.normalize(e['name']))
    if floor:
      as_tuple = lambda v: tuple(int(p) for p in v.split('.')[:3] if p.isdigit())
      assert as_tuple(e['version']) >= as_tuple(floor), (e, floor)
  assert [e['name'] for e in entries if e['sdist_only']] == ['promise']


def test_wheel_files_are_found_by_normalized_name_and_version(tmp_path):
  for name in ('array_record-0.8.6-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl',
               'tensorboardx-2.6.5-py3-none-any.whl', 'grain-0.2.17-cp312-cp312-manylinux_2_28_x86_64.whl'):
    (tmp_path / name).write_bytes(b'')
  find = lambda name, version: device_wheels.wheel_file_for({'name': name, 'version': version}, str(tmp_path))
  assert find('array-record', '0.8.6').endswith('array_record-0.8.6-cp312-cp312-manylinux2014_x86_64.'
                                                'manylinux_2_17_x86_64.whl')
  assert find('tensorboardX', '2.6.5').endswith('tensorboardx-2.6.5-py3-none-any.whl')
  assert find('grain', '0.2.18') is None


def test_wheels_list_rejects_unpinned_lines(tmp_path):
  path = tmp_path / 'w.txt'
  path.write_text('# comment\ngrain==0.2.18  # fine\nnumpy>=2\n')
  with pytest.raises(ValueError, match='NAME==VERSION'):
    device_wheels.read_wheels_list(str(path))


def test_children_get_no_cpu_only_xla_flag_and_never_a_blank_one(monkeypatch):
  assert device_runner.sanitized_xla_flags('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution '
                                '--xla_force_host_platform_device_count=2') == \
      '--xla_force_host_platform_device_count=2'
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution')
  env = device_runner.child_env(None)
  assert 'XLA_FLAGS' not in env and env['PYTHONUNBUFFERED'] == '1'
  assert env['PYTHONPATH'].split(os.pathsep)[0] == ROOT


def test_ml_collections_stub_reads_like_a_config_dict():
  d = device_wheels.ConfigDictStub(name='alexnet', width=0.5)
  assert d.name == 'alexnet' and d.get('weight_init', 'paper') == 'paper'
  with pytest.raises(AttributeError):
    d.missing  # pylint: disable=pointless-statement


def _row(model, dtype, batch, mode, tflops, **kw):
  return {'model': model, 'dtype': dtype, 'batch': batch, 'mode': mode, 'images_per_s': 1000.0 * tflops,
          'step_ms': 5.0, 'blocked_call_ms': 5.5, 'compile_s': 9.0, 'flops_per_image': 4.1e9,
          'achieved_tflops': tflops, 'mfu': tflops / 989.4, 'mfu_vs_plain_fp32': None,
          'program_memory': {'total_bytes': 2**30}, 'peak_bytes_in_use': 2**31, 'peak_set_here': True,
          **kw}


def test_summary_of_a_partial_run_names_what_is_missing():
  results = {'alexnet/bfloat16/b256/train': _row('alexnet', 'bfloat16', 256, 'train', 180.0),
             'alexnet_owt/bfloat16/b256/train': _row('alexnet_owt', 'bfloat16', 256, 'train', 200.0),
             'alexnet/bfloat16/b512/train': {'model': 'alexnet', 'dtype': 'bfloat16', 'batch': 512,
                                             'mode': 'train', 'error': 'XlaRuntimeError: out of memory'}}
  assert device_report.tower_ratios(results) == {'bfloat16/b256/train': pytest.approx(0.9)}
  report = {
      'plan': {'name': 'full'}, 'started': 'now', 'budget_s': 450, 'wall_s': 450.0, 'cores': 16,
      'machine': {'device_kind': 'NVIDIA H200', 'platform': 'gpu', 'device_count': 1},
      'parts': {
          'wheels': {'status': 'ok', 'result': {'listed': 15, 'already_installed': {}, 'to_install': ['x'],
                                                'imports': {'grain': 'ok 0.2.18'}}},
          'model': {'status': 'timeout (partial)', 'wall_s': 215.0, 'result': {
              'config': {'order': [*results, 'alexnet/float32/b128/infer', 'alexnet_owt/float32/b128/infer']},
              'peaks': {'bfloat16': {'flops_per_s': 989.4e12}}, 'results': results,
              'skipped': {'alexnet/float32/b128/infer': 'time'},
              'machine': {'platform': 'gpu'}, 'profile': {'key': 'k', 'skipped': 'no time left'}}},
          'train': {'status': 'skipped: no time left'},
      }}
  md = device_report.format_markdown(report)
  for section in SECTIONS:
    assert section in md
  assert 'alexnet FLOP rate / alexnet_owt FLOP rate' in md and 'bfloat16/b256/train 0.90' in md
  assert 'ERROR' in md and 'Skipped for time: alexnet/float32/b128/infer' in md
  assert 'No trace: no time left' in md
  assert 'Not reached (the part was stopped): alexnet_owt/float32/b128/infer' in md
  assert 'Not measured: skipped: no time left' in md and 'Not measured: not run yet' in md
  assert 'something is wrong' not in md and "within PERF_NOTES' expectation" not in md
