"""Smoke runs of the benchmarks at a tiny size (width 1/8, 67x67 inputs, 2 timed steps).

Benchmarks are not tests (STYLE.md): nothing here checks a speed. It checks that each benchmark runs
end to end on the forced CPU devices of conftest.py, and that what it reports is coherent -- FLOPs and
memory present, the layouts' first losses equal to ``single``'s, communication where a layout must
communicate and none where it must not, PyTorch's network equal to ours.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import common
from benchmarks import compare_torch
from benchmarks import import_weights as import_bench
from benchmarks import layouts as layouts_bench
from benchmarks import model_step
from benchmarks import torch_alexnet
from tests import torch_writers

# The benchmarks here build the same tiny networks' train states over and over: each compiled once.
pytestmark = pytest.mark.usefixtures('compilation_cache')

TINY = dict(width=0.125, image_size=67, num_classes=10)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_interleave_times_round_robin_and_ratios_pair_rounds():
  order = []
  timings = common.interleave({'a': lambda: order.append('a'), 'b': lambda: order.append('b')},
                              reps=3, warmup=1)
  assert order == ['a', 'b'] + ['a', 'b'] * 3
  assert len(timings['a'].seconds) == 3
  a, b = common.Timing([1.0, 2.0, 4.0]), common.Timing([2.0, 4.0, 8.0])
  assert common.paired_ratio(a, b) == 2.0


def test_peak_table_knows_the_lent_gpus_and_rejects_unknown_option_sets():
  assert common.table_peak('NVIDIA H100 80GB HBM3', 'gpu', 'bfloat16') == pytest.approx(989.4e12)
  assert common.table_peak('NVIDIA H100 PCIe', 'gpu', 'bfloat16') == pytest.approx(756e12)
  assert common.table_peak('NVIDIA H200', 'gpu', 'float32') == pytest.approx(494.7e12)
  assert common.table_peak('NVIDIA A100-SXM4-40GB', 'gpu', 'float32_simt') == pytest.approx(19.5e12)
  assert common.table_peak('Some Future GPU', 'gpu', 'float32') is None
  with pytest.raises(ValueError, match='--xla'):
    common.xla_options('fastest', 'cpu')
  assert common.xla_options('tuned', 'gpu') == {}


def test_write_json_is_atomic_and_readable(tmp_path):
  path = tmp_path / 'sub' / 'r.json'
  common.write_json(str(path), {'x': 1.5})
  assert json.loads(path.read_text()) == {'x': 1.5}
  assert os.listdir(path.parent) == ['r.json']


def test_layouts_benchmark_reports_every_layout(tmp_path):
  names = ['single', 'model', 'weird_trick']
  report = layouts_bench.benchmark(names, devices=4, model='alexnet', batch=8, steps=2, warmup=1,
                                   log=lambda *_: None, **TINY)
  rows = report['layouts']
  assert list(rows) == names
  for name, r in rows.items():
    assert r['loss_matches_single'], (name, r['loss_abs_diff_vs_single'])
    assert r['flops_per_step'] > 0 and r['images_per_s'] > 0 and r['compile_s'] > 0
    assert r['memory_per_device']['argument_bytes'] > 0
    assert r['step']['min_s'] <= r['step']['median_s'] <= r['step']['max_s']
  assert rows['single']['comm_bytes_per_device_total'] == 0
  assert rows['model']['comm_bytes_per_device'].get('all-gather', 0) > 0     # the tower exchanges
  assert rows['weird_trick']['comm_bytes_per_device'].get('all-reduce', 0) > 0  # conv gradients
  # Towers split over 'model' halve the tower parameters a device holds.
  assert rows['model']['param_bytes_per_device'] < 0.6 * rows['single']['param_bytes_per_device']
  text = layouts_bench.format_report(report)
  assert all(name in text for name in names) and 'MFU' in text
  layouts_bench.plot(report, str(tmp_path / 'l.png'))
  assert (tmp_path / 'l.png').stat().st_size > 1000
  common.write_json(str(tmp_path / 'l.json'), report)
  assert json.loads((tmp_path / 'l.json').read_text())['layouts']['weird_trick']['devices'] == 4


def test_layouts_command_line_writes_table_json_and_plot(tmp_path):
  """The flags reach ``benchmark`` and its report the table, the JSON and the plot. LeNet: the
  command is the same for any network (AlexNet's layouts are the test above), and it compiles in
  seconds where AlexNet's initializer alone takes 5-30 s per layout on a 2-core CPU."""
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  out = subprocess.run(
      [sys.executable, '-m', 'benchmarks.layouts', '--layouts=data', '--devices=2',
       '--model=lenet', '--width=0.5', '--batch=8', '--image_size=28', '--num_classes=10',
       '--steps=2', '--warmup=1', f'--json={tmp_path / "r.json"}', f'--plot={tmp_path / "r.png"}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'data' in out.stdout and 'loss ok' in out.stdout
  report = json.loads((tmp_path / 'r.json').read_text())
  assert list(report['layouts']) == ['single', 'data']
  assert report['layouts']['data']['mesh'] == {'data': 2, 'model': 1}
  assert report['layouts']['data']['loss_matches_single']
  assert (tmp_path / 'r.png').exists()


def test_layouts_command_line_rejects_an_impossible_layout_before_compiling():
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  out = subprocess.run(
      [sys.executable, '-m', 'benchmarks.layouts', '--layouts=model', '--model=alexnet_owt',
       '--devices=2', '--width=0.125', '--image_size=67', '--batch=8'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert 'single tower' in out.stderr and 'compiled' not in out.stdout


def test_model_step_benchmark_runs_both_networks():
  report = model_step.benchmark(('alexnet', 'alexnet_owt'), ('float32',), (8,), ('train', 'infer'),
                                ('default',), steps=2, warmup=1, log=lambda *_: None, **TINY)
  assert len(report['results']) == 2 * 2
  for r in report['results'].values():
    assert r['images_per_s'] > 0 and r['flops_per_image'] > 0
    assert r['mfu'] is None or 0 < r['mfu'] < 1
  # Training costs about three forward passes.
  train = report['results']['alexnet_owt/float32/b8/default/train']['flops_per_image']
  infer = report['results']['alexnet_owt/float32/b8/default/infer']['flops_per_image']
  assert 2.0 < train / infer < 3.5
  assert set(report['alexnet_over_owt_flop_rate']) >= {'float32/b8/default/train'}
  assert 'alexnet FLOP rate' in model_step.format_report(report)


def test_model_step_benchmark_compares_xla_option_sets_in_bfloat16():
  report = model_step.benchmark(('alexnet_owt',), ('bfloat16',), (8,), ('infer',), ('default', 'eigen'),
                                steps=2, warmup=1, log=lambda *_: None, **TINY)
  rows = report['results']
  assert rows['alexnet_owt/bfloat16/b8/default/infer']['speed_vs_first_xla'] == 1.0
  assert rows['alexnet_owt/bfloat16/b8/eigen/infer']['speed_vs_first_xla'] > 0


def test_compare_torch_without_torch_times_our_side_only():
  report = compare_torch.benchmark(batch=8, steps=2, warmup=1, xla=('default',), modes=('infer',),
                                   use_torch=False, log=lambda *_: None, **TINY)
  assert report['torch'] is None and list(report['results']) == ['jax_default/infer']
  assert 'not installed' in compare_torch.format_report(report)


@pytest.mark.parametrize('torch_process', ['same', 'own'])
def test_compare_torch_runs_the_same_network_in_both(torch_process):
  if not torch_alexnet.torch_available():
    pytest.skip('PyTorch is not installed')
  report = compare_torch.benchmark(batch=8, steps=2, warmup=1, xla=('default',), log=lambda *_: None,
                                   torch_process=torch_process, **TINY)
  assert report['torch']['process'] == torch_process
  check = report['logits_check']
  assert check['max_abs_diff'] < 1e-4 * max(1.0, check['max_abs_logit'])
  for mode in ('train', 'infer'):
    assert report['results'][f'jax_default/{mode}']['ratio_to_torch'] > 0
    assert report['results'][f'torch/{mode}']['images_per_s'] > 0
  assert 'ours/torch' in compare_torch.format_report(report)


def test_import_weights_benchmark_measures_each_import_in_a_fresh_process():
  """One repetition of the .safetensors case (the importer needs torchvision's full shapes: 57M parameters
  with 10 classes): the report has the file, the times and the peak memory, and the import holds about
  two copies of the weights (the file's bytes and the converted parameters), not more."""
  (case,) = [c for c in import_bench.CASES if c.name == 'safetensors']
  report = import_bench.benchmark([case], reps=1, num_classes=10, log=lambda *_: None)
  row = report['cases']['safetensors']
  shapes = dict(torch_writers.SHAPES, **{'classifier.6': (10, 4096)})
  parameters = sum(int(np.prod(shape)) + shape[0] for shape in shapes.values())   # weights and biases
  assert row['parameters'] == parameters
  assert 4 * parameters < row['file_bytes'] < 4 * parameters + 2**16
  assert row['import_s']['reps'] == 1 and 0 < row['import_s']['median_s'] < row['process_s']
  assert 0 < report['baseline']['peak_rss_bytes'] < row['peak_rss_bytes']
  assert 1.5 < row['copies_of_file'] < 2.5, row
  text = import_bench.format_report(report)
  assert 'safetensors' in text and 'copies' in text and 'after the run' in text


def test_onnx_inference_benchmark_times_both_runtimes_on_the_same_images():
  """The two-tower network (the intricate graph: grouped convolutions, LRN per tower) as a small bundle
  (width 1/8, 96x96 crop), batches 1 and 2: both runtimes timed side by side (ours as Model.logits and
  compiled with the 'tuned' options), their logits equal, the threads named. (alexnet_owt goes the same
  way at this width; at full width it is imported from a torchvision file, as the import test does.)"""
  pytest.importorskip('onnx')
  pytest.importorskip('onnxruntime')
  from benchmarks import onnx_inference
  report = onnx_inference.benchmark(('alexnet',), (1, 2), reps=2, warmup=1, width=0.125,
                                    image_size=104, crop_size=96, num_classes=10, log=lambda *_: None)
  assert list(report['networks']) == ['alexnet']
  assert 'intra_op_num_threads=' in report['threads']['onnxruntime'] and report['threads']['xla']
  for network, row in report['networks'].items():
    assert row['input_shape'] == [96, 96, 3] and row['onnx_bytes'] > 0
    assert list(row['batches']) == ['1', '2']
    for batch, b in row['batches'].items():
      assert b['logits_shape'] == [int(batch), 10]
      for side in ('ours', 'ours_tuned', 'onnxruntime'):
        assert b[side]['reps'] == 2 and b[side]['images_per_s'] > 0 and b[side]['first_call_s'] > 0
      for side in ('ours', 'ours_tuned'):   # Model.logits, and its eval step compiled with 'tuned'
        assert b[side]['max_rel_diff'] < 1e-5, (network, batch, side, b[side]['max_rel_diff'])
        assert b[side]['over_ort'] > 0
  text = onnx_inference.format_report(report)
  assert 'ours_tuned/ort' in text and 'alexnet' in text and 'intra_op_num_threads' in text
