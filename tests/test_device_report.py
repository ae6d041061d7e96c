"""The device check's outputs keep their format: reports rendered from fixed results, compared to files.

``tests/data/device_check_summaries.json`` holds, for each case below, the ``device_check.md`` and
``device_check.json`` that the device check wrote for it before it was split into plan, runner, wheels,
parts and report modules (commit cba6d01's renderer, run once). The cases reach every branch of every
section: a full GPU run, a run cut short with failures, and an empty one.
"""

import json
import os

import pytest

from benchmarks import device_report

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'device_check_summaries.json')


def _row(model, dtype, batch, mode, tflops, **kw):
  return {'model': model, 'dtype': dtype, 'batch': batch, 'mode': mode, 'images_per_s': 1000.0 * tflops,
          'step_ms': 5.25, 'blocked_call_ms': 5.5, 'compile_s': 9.0, 'flops_per_image': 4.1e9,
          'achieved_tflops': tflops, 'mfu': tflops / 989.4, 'mfu_vs_plain_fp32': None,
          'program_memory': {'total_bytes': 2**30}, 'peak_bytes_in_use': 2**31, 'peak_set_here': True,
          **kw}


def _full_run() -> dict:
  results = {
      'alexnet/bfloat16/b256/train': _row('alexnet', 'bfloat16', 256, 'train', 41.0),
      'alexnet_owt/bfloat16/b256/train': _row('alexnet_owt', 'bfloat16', 256, 'train', 45.5,
                                              peak_set_here=False),
      'alexnet/float32/b256/train': _row('alexnet', 'float32', 256, 'train', 20.0, mfu_vs_plain_fp32=0.3),
      'alexnet_owt/float32/b256/train': _row('alexnet_owt', 'float32', 256, 'train', 21.0,
                                             peak_bytes_in_use=None),
  }
  return {
      'benchmark': 'device_check', 'plan': {'name': 'full'}, 'smoke': False,
      'started': '2026-12-07 02:00 UTC',
      'budget_s': 450, 'python': '3.12.3', 'cores': 16, 'wall_s': 431.27,
      'nvidia_smi': 'nvidia-smi: NVIDIA H200, 570.1, 143771 MiB, 1980 MHz',
      'machine': {'device_kind': 'NVIDIA H200', 'platform': 'gpu', 'device_count': 1, 'jax': '0.7.2',
                  'jaxlib': '0.7.2', 'flax': '0.11.2', 'python': '3.12.3'},
      'parts': {
          'wheels': {'status': 'ok', 'wall_s': 12.34, 'limit_s': 20.0, 'result': {
              'listed': 15, 'already_installed': {'numpy': '2.1'},
              'to_install': ['grain-0.2.18.whl', 'x.whl'],
              'no_wheel_carried': [], 'pip': {'rc': 0, 'wall_s': 4.2},
              'imports': {'grain': 'ok 0.2.18', 'ml_collections': 'ok 1.1.0'}}},
          'model': {'status': 'ok', 'wall_s': 200.0, 'limit_s': 230.0, 'result': {
              'config': {'width': 1.0, 'image_size': 224, 'num_classes': 1000, 'rounds': 5,
                         'steps_per_round': 5, 'warmup': 3, 'order': list(results)},
              'peaks': {'bfloat16': {'flops_per_s': 989.4e12}, 'float32': {'flops_per_s': 494.7e12},
                        'float32_simt': {'flops_per_s': 66.9e12}},
              'ml_collections': 'ml_collections 1.1.0', 'results': results, 'skipped': {},
              'machine': {'platform': 'gpu'},
              'profile': {'key': 'alexnet/bfloat16/b256/train', 'steps': 3, 'capture_s': 2.5,
                          'files': {'plugins/profile/x/host.xplane.pb': 3 * 2**20,
                                    'plugins/profile/x/host.trace.json.gz': 2**19},
                          'tarball': 'train_step_trace.tar.gz', 'tarball_bytes': 5 * 2**20,
                          'left_out': ['perfetto_trace.json.gz'], 'skipped': None}}},
          'xla_flags': {'status': 'ok', 'wall_s': 3.0, 'limit_s': 20.0, 'result': {
              'starts_with_cpu_flags': True, 'rc': 0, 'timed_out': False, 'wall_s': 2.9,
              'xla_flags': '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',
              'devices': 'gpu NVIDIA H200 1', 'unknown_flag_error': False}},
          'train': {'status': 'ok', 'wall_s': 70.0, 'limit_s': 75.0, 'result': {
              'command': 'python -m alexnet_jax.train --config=experiments/demo.py',
              'cpu_xla_flags_removed': True,
              'rc': 0, 'timed_out': False, 'wall_s': 65.43, 'steps': 140, 'epochs': 2.0,
              'images_per_s_first_window': 812.4, 'images_per_s_median_after_first': 15432.1,
              'images_per_s_last': 15111.0, 'val': {'top1': 0.4321, 'loss': 1.23456},
              'batch_size': 32, 'model': 'alexnet', 'width': 0.5, 'metrics_file': 'demo_metrics.jsonl'}},
          'input': {'status': 'partial: ok, skipped', 'wall_s': 50.0, 'limit_s': 60.0, 'result': {
              'retained': {'cores': 16, 'num_images': 2048, 'mean_jpeg_kib': 71.3, 'batch': 256,
                           'window_s': 3.0, 'device': 'NVIDIA H200 (gpu)',
                           'decode_all_cores_images_per_s': 4321.5,
                           'host_to_device': {'gb_per_s': 12.345, 'images_per_s': 250000.0},
                           'results': {'folder/8': {'images_per_s': 2100.2, 'prefetch': 8,
                                                    'first_wave_s': 1.234},
                                       'folder/16': {'skipped': 'no time left'},
                                       'prepared/8': {'images_per_s': 5400.9, 'prefetch': 8,
                                                      'first_wave_s': 0.5}}},
              'glibc_default': 'skipped: no time left'}},
          'layouts': {'status': 'ok', 'wall_s': 40.0, 'limit_s': 45.0, 'result': {
              'config': {'model': 'alexnet', 'width': 1.0, 'batch': 256, 'image_size': 224,
                         'dtype': 'bfloat16', 'steps': 10},
              'layouts': {'single': {'compile_s': 20.5, 'step': {'median_s': 0.0061}, 'images_per_s': 41967.2,
                                     'mfu': 0.21, 'memory_per_device': {'temp_bytes': 3 * 2**30},
                                     'first_step_loss': 6.90775}},
              'not_run': {'model': 'needs 2 devices, 1 here', 'hybrid': 'needs 4 devices, 1 here'}}},
      }}


def _cut_short() -> dict:
  results = {
      'alexnet_owt/bfloat16/b256/train': _row('alexnet_owt', 'bfloat16', 512, 'train', 10.0),
      'alexnet/bfloat16/b512/train': {'model': 'alexnet', 'dtype': 'bfloat16', 'batch': 512, 'mode': 'train',
                                      'error': 'XlaRuntimeError: RESOURCE_EXHAUSTED: out of memory ' * 3},
  }
  return {
      'plan': {'name': 'smoke'}, 'started': '2026-12-07 02:05 UTC', 'budget_s': 900, 'cores': 2,
      'python': '3.12.3', 'nvidia_smi': None, 'machine': {},
      'parts': {
          'wheels': {'status': 'partial', 'wall_s': 30.0, 'result': {
              'listed': 15, 'already_installed': {}, 'to_install': [],
              'no_wheel_carried': ['grain==0.2.18', 'promise==2.3'], 'imports': {}}},
          'model': {'status': 'timeout (partial), 1 configs skipped for time', 'wall_s': 240.0, 'result': {
              'config': {'order': [*results, 'alexnet/float32/b128/infer', 'lenet/float32/b8/train']},
              'peaks': {'bfloat16': None}, 'results': results,
              'skipped': {'alexnet/float32/b128/infer': 'time: about 30 s needed, 4 left'},
              'machine': {'platform': 'gpu'},
              'profile': {'key': 'k', 'steps': 3, 'capture_s': 9.0, 'files': {'a.xplane.pb': 40 * 2**20},
                          'tarball': None, 'too_big': '40.0 MiB even as xplane.pb alone; kept in /tmp/t',
                          'skipped': None}}},
          'xla_flags': {'status': 'failed', 'wall_s': 5.0, 'result': {
              'starts_with_cpu_flags': False, 'rc': -6, 'timed_out': False, 'wall_s': 4.0,
              'xla_flags': '--xla_cpu_experimental_x=1', 'devices': '', 'unknown_flag_error': True,
              'output_tail': 'Unknown flag in XLA_FLAGS: --xla_cpu_experimental_x=1\n' * 30}},
          'train': {'status': 'error', 'error': 'KeyError: step'},
          'input': {'status': 'running', 'limit_s': 33.3},
          'layouts': {'status': 'ok', 'result': {'config': {}, 'layouts': {}, 'not_run': {}}},
      }}


def _variants() -> dict:
  """Sections in the states the two runs above do not reach."""
  return {
      'plan': {'name': 'full'}, 'started': 'now', 'budget_s': 450, 'machine': {'platform': 'cpu'},
      'parts': {
          'model': {'status': 'failed (rc 1)', 'result': {
              'config': {}, 'peaks': {}, 'results': {
                  'alexnet_owt/bfloat16/b256/train': _row('alexnet_owt', 'bfloat16', 256, 'train', 5.0)},
              'machine': {'platform': 'gpu'}, 'skipped': {}}},
          'xla_flags': {'status': 'timeout', 'result': {'timed_out': True, 'wall_s': 20.0}},
          'train': {'status': 'timeout', 'result': {
              'command': 'python -c ...', 'cpu_xla_flags_removed': False, 'rc': -15, 'timed_out': True,
              'wall_s': 75.0, 'steps': 0, 'epochs': 0, 'val': None}},
          'input': {'status': 'ok', 'result': {'retained': 'no result (rc 1)'}},
          'wheels': {'status': 'ok', 'result': {'listed': 1}},
          'layouts': {'status': 'ok', 'result': {'layouts': {'single': {'step': {}}}}},
      }}


def _no_cpu_flags() -> dict:
  return {'parts': {
      'xla_flags': {'status': 'ok', 'result': {'starts_with_cpu_flags': True, 'xla_flags': '',
                                              'devices': 'cpu cpu 1'}},
      'model': {'status': 'ok', 'result': {'config': {}, 'results': {}, 'machine': {'platform': 'gpu'},
                                           'profile': {'key': 'k', 'skipped': 'no time left'}}}}}


CASES = {'full_run': _full_run, 'cut_short': _cut_short, 'variants': _variants, 'no_cpu_flags': _no_cpu_flags,
         'empty': dict}


@pytest.mark.parametrize('case', sorted(CASES))
def test_report_renders_as_before_the_split(case, tmp_path):
  with open(GOLDEN, encoding='utf-8') as f:
    expected = json.load(f)[case]
  report = CASES[case]()
  device_report.write_outputs(report, str(tmp_path))
  assert (tmp_path / device_report.MD_NAME).read_text(encoding='utf-8') == expected['md']
  assert (tmp_path / device_report.JSON_NAME).read_text(encoding='utf-8') == expected['json']
