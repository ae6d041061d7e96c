r"""CPU inference, alexnet_jax against onnxruntime on the model it exports (issue 22, "Models out").

    python -m benchmarks.onnx_inference [--networks=alexnet_owt,alexnet] [--batches=1,32] [--reps=10]
        [--warmup=3] [--threads=0] [--xla=tuned] [--json=PATH]

Two full-size networks with random weights, each exported with ``exporting.export_onnx`` (the code behind
``python -m alexnet_jax.export --format=onnx``):

* ``alexnet_owt``: torchvision's AlexNet, written as a ``.safetensors`` file (``tests/torch_writers.py``)
  and imported with ``importers.import_weights``: the path a user takes from torchvision to ONNX;
* ``alexnet``: the paper's two-tower network, a freshly initialised bundle (``tests/onnx_bundles.py``).

For each batch size, on identical images (random 0..255 pixels of the network's crop): **ours** is
``Model.logits(images - centre_mean)`` (the bundle loaded with ``alexnet_jax.load``, layout ``single``,
the eval step jitted once, the mean subtraction included because the ONNX graph does it too) and
**onnxruntime** is ``InferenceSession.run(['logits'], {'image': images})`` with the CPU provider, all graph
optimizations, ``intra_op_num_threads = --threads`` (0: the usable cores) and one inter-op thread. XLA's
CPU client runs its operations on its own intra-op pool, one thread per usable core (not settable per
call), so both sides use the same cores.

``alexnet_jax.load`` compiles with the XLA options the process has (XLA_FLAGS; unset: jaxlib's defaults,
YNNPACK convolutions), while the project's commands (``classify``, ``train``) add ``CPU_XLA_FLAGS``
(runtime/devices.py: convolutions on XLA's own kernels). So **ours_SET** for each set of ``--xla``
(default ``tuned``, the commands' options; ``common.XLA_OPTIONS``) is the same eval step compiled with
that set. All sides are timed round-robin after ``--warmup`` calls each (``common.interleave``);
``SIDE/ort`` is the median of per-round ratios of images/s (> 1: ours faster). ``max_rel_diff`` is
``max |ours - onnxruntime| / max |ours|`` on the timed batch (the export's tests hold it under 1e-5). The
first call of each side (compiling, or onnxruntime's first run) is reported apart.

``--width`` below 1 (with ``--image_size``/``--crop_size``/``--num_classes``) builds both networks as small
bundles instead, for tests/test_benchmarks.py. Benchmarks are not tests (STYLE.md): nothing here asserts a
speed; results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort

import alexnet_jax
from alexnet_jax.inference import exporting, importers
from benchmarks import common
from tests import torch_writers
from tests.onnx_bundles import make_bundle

NETWORKS = ('alexnet_owt', 'alexnet')


def build_bundle(folder: str, network: str, *, width: float, image_size: int, crop_size: int,
                 num_classes: int) -> tuple[str, str]:
  """(a bundle of ``network`` in ``folder``, how it was made)."""
  os.makedirs(folder, exist_ok=True)
  if network == 'alexnet_owt' and width == 1.0:
    source = os.path.join(folder, 'alexnet.safetensors')
    torch_writers.write_safetensors(source, torch_writers.random_state_dict(num_classes=num_classes))
    path, _ = importers.import_weights(source, os.path.join(folder, 'bundle'))
    return path, 'torchvision .safetensors (random weights) imported with import_weights'
  path = make_bundle(folder, network, width=width, image_size=image_size, crop_size=crop_size,
                     num_classes=num_classes)
  return path, f'freshly initialised bundle (random weights), width {width}'


def session_for(path: str, threads: int) -> ort.InferenceSession:
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def _compiled_logits(model, batch: int, xla: str) -> Callable[[np.ndarray], np.ndarray]:
  """``model.logits``' computation (the model's own eval step) for ``batch`` images, compiled with the XLA
  option set ``xla`` of ``common.XLA_OPTIONS`` (per compilation: no XLA_FLAGS needed)."""
  sharding = model.layout.batch_sharding(model.mesh)
  images = jax.ShapeDtypeStruct((batch, *model.image_shape), jnp.float32, sharding=sharding)
  options = common.xla_options(xla, jax.devices()[0].platform)
  with jax.set_mesh(model.mesh):
    compiled = model.eval_step().jitted.lower(model.params, images, None, ten_crop=False).compile(
        compiler_options=options)
  return lambda x: np.asarray(compiled(model.params, jax.device_put(np.asarray(x, np.float32), sharding),
                                       None))


def _first(fn: Callable[[], Any]) -> tuple[float, Any]:
  t = time.perf_counter()
  out = fn()
  return time.perf_counter() - t, out


def benchmark(networks: tuple[str, ...] = NETWORKS, batches: tuple[int, ...] = (1, 32), *, reps: int = 10,
              warmup: int = 3, threads: int = 0, xla: tuple[str, ...] = ('tuned',), width: float = 1.0,
              image_size: int = 256, crop_size: int = 224, num_classes: int = 1000,
              log: Callable[[str], None] = print) -> dict[str, Any]:
  threads = threads or common.usable_cores()
  report: dict[str, Any] = {
      'machine': common.machine_info(), 'load_before': common.load_average(),
      'onnxruntime': ort.__version__, 'reps': reps, 'warmup': warmup,
      'threads': {'onnxruntime': f'intra_op_num_threads={threads}, inter_op_num_threads=1, sequential, '
                                 f'ORT_ENABLE_ALL, CPUExecutionProvider',
                  'xla': f'its CPU client\'s intra-op pool: one thread per usable core '
                         f'({common.usable_cores()}); XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}'},
      'networks': {}}
  with tempfile.TemporaryDirectory(prefix='onnx-inference-bench-') as tmp:
    for network in networks:
      folder = os.path.join(tmp, network)
      t = time.perf_counter()
      bundle, made = build_bundle(folder, network, width=width, image_size=image_size, crop_size=crop_size,
                                  num_classes=num_classes)
      onnx_path, summary = exporting.export_onnx(bundle, os.path.join(folder, 'model.onnx'))
      log(f'{network}: bundle and export in {time.perf_counter() - t:.1f} s ({summary["bytes"] / 2**20:.0f} '
          f'MiB of ONNX)')
      model = alexnet_jax.load(bundle)
      t = time.perf_counter()
      session = session_for(onnx_path, threads)
      row: dict[str, Any] = {'made': made, 'onnx_bytes': summary['bytes'],
                             'input_shape': summary['input_shape'],
                             'parameters': model.info.get('model', {}).get('parameters'),
                             'ort_session_s': time.perf_counter() - t, 'batches': {}}
      centre = model.contract.centre_mean()
      for batch in batches:
        images = np.random.default_rng(batch).integers(0, 256, (batch, *model.image_shape)).astype(np.float32)
        sides: dict[str, Callable[[], np.ndarray]] = {'ours': lambda: model.logits(images - centre)}
        compile_s = {}
        for name in xla:
          compile_s[f'ours_{name}'], logits = _first(lambda: _compiled_logits(model, batch, name))
          sides[f'ours_{name}'] = lambda logits=logits: logits(images - centre)
        sides['onnxruntime'] = lambda: session.run(['logits'], {'image': images})[0]
        firsts = {name: _first(fn) for name, fn in sides.items()}
        timings = common.interleave(sides, reps=reps, warmup=warmup)
        ort_logits = firsts['onnxruntime'][1]
        row['batches'][str(batch)] = b = {'logits_shape': list(ort_logits.shape)}
        for name, timing in timings.items():
          first_s, logits = firsts[name]
          b[name] = {**timing.to_json(), 'images_per_s': timing.rate(batch),
                     'first_call_s': first_s + compile_s.get(name, 0.0)}
          if name != 'onnxruntime':
            b[name]['over_ort'] = common.paired_ratio(timing, timings['onnxruntime'])
            b[name]['max_rel_diff'] = float(np.abs(logits - ort_logits).max() / np.abs(logits).max())
        log(f'{network} batch {batch}: ' + ', '.join(f'{name} {b[name]["images_per_s"]:.1f} img/s'
                                                      for name in sides) +
            f'; ours/ort {b["ours"]["over_ort"]:.2f}, max rel diff {b["ours"]["max_rel_diff"]:.1e}')
      report['networks'][network] = row
  report['load_after'] = common.load_average()
  return report


def format_report(report: dict[str, Any]) -> str:
  rows = []
  for network, row in report['networks'].items():
    for batch, b in row['batches'].items():
      ours = [name for name in b if name.startswith('ours')]
      rows.append([network, int(batch), b['onnxruntime']['images_per_s'], 1000 * b['onnxruntime']['median_s']]
                  + [v for name in ours for v in (b[name]['images_per_s'], b[name]['over_ort'])]
                  + [b['onnxruntime']['first_call_s']] + [b[name]['first_call_s'] for name in ours]
                  + [max(b[name]['max_rel_diff'] for name in ours)])
  ours = [name for name in next(iter(next(iter(report['networks'].values()))['batches'].values()))
          if name.startswith('ours')]
  return '\n'.join([
      common.describe_run(report),
      f'onnxruntime {report["onnxruntime"]}: {report["threads"]["onnxruntime"]}; XLA: '
      f'{report["threads"]["xla"]}; medians of {report["reps"]} round-robin reps after {report["warmup"]} '
      f'warm-up calls; "ours" is Model.logits (XLA_FLAGS as the process has them), "ours_SET" the same '
      f'eval step compiled with the option set SET',
      common.format_table(['network', 'batch', 'ort img/s', 'ort ms']
                          + [h for name in ours for h in (f'{name} img/s', f'{name}/ort')]
                          + ['ort 1st s'] + [f'{name} 1st s' for name in ours] + ['max rel diff'], rows)])


def _ints(text: str, flag: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in text.split(',') if v)
  except ValueError:
    values = ()
  if not values or min(values) < 1:
    raise SystemExit(f'{flag}={text}: expected positive integers separated by commas')
  return values


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--networks', default=','.join(NETWORKS))
  parser.add_argument('--batches', default='1,32')
  parser.add_argument('--reps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--threads', type=int, default=0, help="onnxruntime's intra-op threads (0: the cores)")
  parser.add_argument('--xla', default='tuned',
                      help='XLA option sets (common.XLA_OPTIONS) timed besides Model.logits, comma-separated')
  parser.add_argument('--width', type=float, default=1.0, help='below 1: small bundles (tests)')
  parser.add_argument('--image_size', type=int, default=256)
  parser.add_argument('--crop_size', type=int, default=224)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  networks = tuple(n for n in args.networks.split(',') if n)
  if not networks or any(n not in NETWORKS for n in networks):
    parser.error(f'--networks={args.networks}: choose from {", ".join(NETWORKS)}')
  if args.reps < 1 or args.warmup < 0:
    parser.error('--reps must be at least 1 and --warmup at least 0')
  xla = tuple(x for x in args.xla.split(',') if x)
  for name in xla:
    try:
      common.xla_options_requested(name)
    except ValueError as e:
      parser.error(str(e))
  report = benchmark(networks, _ints(args.batches, '--batches'), reps=args.reps, warmup=args.warmup,
                     threads=args.threads, xla=xla, width=args.width, image_size=args.image_size,
                     crop_size=args.crop_size, num_classes=args.num_classes)
  common.print_and_save(format_report(report), report, args.json)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
