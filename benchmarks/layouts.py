r"""``python -m benchmarks.layouts``: the train step of one network in several device layouts, side by side.

    python -m benchmarks.layouts --layouts=single,model,data,hybrid,weird_trick,auto --devices=4 \
        --model=alexnet --width=0.25 --batch=32 --image_size=224 --dtype=float32 --steps=10 \
        [--json=layouts.json] [--plot=layouts.png] [--peak_tflops=...] [--xla=default]

For each layout (``alexnet_jax.parallel.layouts.LAYOUT_NAMES``; ``single`` is always run, as the
reference) it reports

* compile time (trace + lower + compile of the donated train step);
* step time (median, min, max over ``--steps`` timed steps after ``--warmup`` untimed ones) and images/s;
  the layouts are timed **round-robin, one step each per round**, so a busy host slows them alike;
  ``x single`` is the median over rounds of the paired ratio to ``single``;
* FLOPs per step (XLA's cost analysis of the per-device program, times the devices), the achieved
  FLOP/s and the MFU against the peak of ``--peak_tflops`` or ``benchmarks.common.PEAK_TFLOPS``
  (forced CPU host devices share one CPU, so there the peak is the host's, not one per device);
* bytes communicated per device per step, by collective kind (the census of ``alexnet_jax.parallel``);
* parameter bytes held per device, and the compiled program's argument and temporary bytes per device;
* whether the first step's loss matches ``single`` (same initial parameters, batch and dropout masks).

A table on stdout, the same fields as JSON (``--json``), a bar chart (``--plot``). With no accelerator
the ``--devices`` are forced CPU host devices (they share the CPU: compare communication and memory
there, not speed); on a GPU machine the real devices are used.
"""

from __future__ import annotations

import collections
import time
from typing import Sequence

from absl import flags

from benchmarks import common

FLAGS = flags.FLAGS

LOSS_RTOL = {'float32': 1e-5, 'bfloat16': 2e-2}
COLLECTIVE_KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')


def benchmark(layouts: Sequence[str], *, devices: int, model: str = 'alexnet', width: float = 0.25,
              batch: int = 32, image_size: int = 224, num_classes: int = 1000, dtype: str = 'float32',
              steps: int = 10, warmup: int = 2, peak_tflops: float | None = None, xla: str = 'default',
              log=print) -> dict:
  """Runs the benchmark and returns the report (what ``--json`` writes). Call ``ensure_devices`` first."""
  import jax
  import ml_collections
  import optax
  from alexnet_jax import models
  from alexnet_jax.parallel import census as census_lib
  from alexnet_jax.parallel import compare
  from alexnet_jax.parallel import layouts as layouts_lib
  from alexnet_jax.parallel import step as step_lib

  network = models.build(ml_collections.ConfigDict(dict(
      name=model, width=width, dropout=0.5, lrn='paper', bias_init='paper', dtype=dtype)), num_classes)
  names = ['single'] + [n for n in layouts if n != 'single']
  resolved = {n: layouts_lib.resolve(n, network, num_devices=devices, batch_size=batch) for n in names}
  device = jax.devices()[0]
  options = common.xla_options(xla, device.platform)
  # Forced CPU host devices all run on the same cores: the whole host is the peak of any layout there.
  device_peak, peak_source = common.peak(device, dtype, peak_tflops)
  shared_host = device.platform == 'cpu'
  images, labels = compare.example_batch(batch, image_size, 3, num_classes)
  tx = optax.sgd(0.01, momentum=0.9)

  runs, calls = {}, {}
  for name in names:
    layout = resolved[name]
    mesh = layout.make_mesh()
    state = step_lib.create_train_state(network, layout, mesh, tx, seed=0,
                                        image_shape=(image_size, image_size, 3))
    sharding = layout.batch_sharding(mesh)
    batch_arrays = {'image': jax.device_put(images, sharding), 'label': jax.device_put(labels, sharding)}
    train_step = step_lib.make_train_step(network, layout, mesh, tx, donate=True)
    t = time.perf_counter()
    with jax.set_mesh(mesh):
      compiled = train_step.jitted.lower(state, batch_arrays).compile(compiler_options=options)
    compile_s = time.perf_counter() - t
    param_shapes = (census_lib.parameter_shapes(state.params)
                    if getattr(layout, 'compiler_partitioned', False) else None)
    collectives = census_lib.census(compiled.as_text(), mesh, param_shapes)
    run = {'layout': layout, 'mesh': mesh, 'compiled': compiled, 'state': state, 'batch': batch_arrays,
           'compile_s': compile_s, 'collectives': collectives,
           'param_bytes_per_device': compare.per_device_bytes(state.params)}
    # The first step is the loss check (the same start in every layout) and the first warm-up step.
    with jax.set_mesh(mesh):
      run['state'], metrics = compiled(run['state'], batch_arrays)
    run['first_loss'] = float(metrics['loss'])
    runs[name] = run
    log(f'{name}: compiled in {compile_s:.1f} s, first loss {run["first_loss"]:.6f}')

    def call(run=run):
      with jax.set_mesh(run['mesh']):
        run['state'], metrics = run['compiled'](run['state'], run['batch'])
      jax.block_until_ready((run['state'], metrics))
    calls[name] = call

  load_before = common.load_average()
  timings = common.interleave(calls, reps=steps, warmup=max(0, warmup - 1))
  load_after = common.load_average()

  reference = runs['single']
  out_layouts = {}
  for name in names:
    run, timing = runs[name], timings[name]
    layout = run['layout']
    per_device_flops = common.cost_flops(run['compiled'])
    flops = per_device_flops * layout.num_devices if per_device_flops is not None else None
    achieved = flops / timing.median if flops else None
    peak_total = None
    if device_peak:
      peak_total = device_peak if shared_host else device_peak * layout.num_devices
    by_kind = collections.Counter()
    for c in run['collectives']:
      by_kind[c.op] += c.bytes
    loss_diff = abs(run['first_loss'] - reference['first_loss'])
    out_layouts[name] = {
        'mesh': {'data': layout.data, 'model': layout.model},
        'devices': layout.num_devices,
        'compile_s': run['compile_s'],
        'step': timing.to_json(),
        'images_per_s': timing.rate(batch),
        'speed_vs_single': common.paired_ratio(timing, timings['single']),
        'flops_per_step': flops,
        'flops_per_step_per_device': per_device_flops,
        'achieved_flops_per_s': achieved,
        'mfu': achieved / peak_total if achieved and peak_total else None,
        'comm_bytes_per_device': dict(by_kind),
        'comm_bytes_per_device_total': sum(by_kind.values()),
        'collectives': [c.to_json() for c in run['collectives']],
        'param_bytes_per_device': run['param_bytes_per_device'],
        'memory_per_device': common.memory(run['compiled']),
        'first_step_loss': run['first_loss'],
        'loss_abs_diff_vs_single': loss_diff,
        'loss_matches_single': loss_diff <= LOSS_RTOL[dtype] * max(1.0, abs(reference['first_loss'])),
    }
  return {
      'benchmark': 'layouts',
      'config': {'layouts': names, 'devices': devices, 'model': model, 'width': width, 'batch': batch,
                 'image_size': image_size, 'num_classes': num_classes, 'dtype': dtype, 'steps': steps,
                 'warmup': warmup, 'xla': xla, 'xla_options': options},
      'peak_flops_per_device': device_peak, 'peak_source': peak_source,
      'peak_is_shared_by_all_devices': shared_host,
      'machine': common.machine_info(),
      'load_average_during': [load_before, load_after],
      'layouts': out_layouts,
  }


def format_report(report: dict) -> str:
  cfg = report['config']
  rows = []
  for name, r in report['layouts'].items():
    comm = r['comm_bytes_per_device']
    mem = r['memory_per_device']
    rows.append([
        name, f'{r["mesh"]["data"]}x{r["mesh"]["model"]}', r['compile_s'],
        r['step']['median_s'] * 1e3, f'{r["step"]["min_s"] * 1e3:.0f}-{r["step"]["max_s"] * 1e3:.0f}',
        r['images_per_s'], r['speed_vs_single'],
        None if r['flops_per_step'] is None else r['flops_per_step'] / 1e9,
        None if r['achieved_flops_per_s'] is None else r['achieved_flops_per_s'] / 1e9,
        None if r['mfu'] is None else 100 * r['mfu'],
        *[common.mib(comm.get(k, 0)) for k in ('all-reduce', 'all-gather', 'reduce-scatter')],
        common.mib(sum(v for k, v in comm.items() if k not in ('all-reduce', 'all-gather',
                                                                'reduce-scatter'))),
        common.mib(r['param_bytes_per_device']), common.mib(mem['argument_bytes']),
        common.mib(mem['temp_bytes']), r['loss_matches_single'],
    ])
  headers = ['layout', 'mesh', 'compile s', 'step ms', 'min-max', 'img/s', 'x single', 'GFLOP/step',
             'GFLOP/s', 'MFU %', 'AR MiB', 'AG MiB', 'RS MiB', 'other MiB', 'param MiB', 'arg MiB',
             'temp MiB', 'loss ok']
  peak = report['peak_flops_per_device']
  lines = [
      f'{cfg["model"]} width {cfg["width"]}, batch {cfg["batch"]}, {cfg["image_size"]}px, {cfg["dtype"]}, '
      f'{cfg["devices"]} devices, xla={cfg["xla"]}; {cfg["steps"]} timed steps per layout, round-robin',
      common.describe(report['machine']),
      f'peak {peak / 1e9:.0f} GFLOP/s per device ({report["peak_source"]})' if peak else
      f'peak unknown ({report["peak_source"]}): no MFU',
      common.format_table(headers, rows),
      'communication and memory are per device per step (AR all-reduce, AG all-gather, RS reduce-'
      'scatter); MFU divides by the ' + ('host peak (forced host devices share the CPU)'
                                        if report['peak_is_shared_by_all_devices'] else 'devices\' peak'),
      f'load average before/after timing: {report["load_average_during"][0]} / '
      f'{report["load_average_during"][1]}',
  ]
  return '\n'.join(lines)


def plot(report: dict, path: str) -> None:
  """Images/s, communication and memory per layout, as three bar panels."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names = list(report['layouts'])
  rs = [report['layouts'][n] for n in names]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  ax = axes[0]
  ax.bar(names, [r['images_per_s'] for r in rs], color='tab:blue')
  b = report['config']['batch']
  ax.errorbar(names, [r['images_per_s'] for r in rs],
              yerr=[[r['images_per_s'] - b / r['step']['max_s'] for r in rs],
                    [b / r['step']['min_s'] - r['images_per_s'] for r in rs]],
              fmt='none', ecolor='black', capsize=3)
  ax.set_ylabel('images / s (median; bars: min-max)')
  ax.set_title('throughput')
  ax = axes[1]
  bottom = [0.0] * len(names)
  for kind in COLLECTIVE_KINDS:
    vals = [common.mib(r['comm_bytes_per_device'].get(kind, 0)) for r in rs]
    if any(vals):
      ax.bar(names, vals, bottom=bottom, label=kind)
      bottom = [b + v for b, v in zip(bottom, vals)]
  ax.set_ylabel('MiB per device per step')
  ax.set_title('communication')
  if any(bottom):
    ax.legend(fontsize=8)
  ax = axes[2]
  width = 0.27
  xs = range(len(names))
  for i, (key, label) in enumerate([('param', 'parameters'), ('argument_bytes', 'arguments'),
                                    ('temp_bytes', 'temporaries')]):
    vals = [common.mib(r['param_bytes_per_device'] if key == 'param' else
                       r['memory_per_device'][key] or 0) for r in rs]
    ax.bar([x + (i - 1) * width for x in xs], vals, width, label=label)
  ax.set_xticks(list(xs), names)
  ax.set_ylabel('MiB per device')
  ax.set_title('memory')
  ax.legend(fontsize=8)
  for ax in axes:
    ax.tick_params(axis='x', labelrotation=30)
  cfg = report['config']
  fig.suptitle(f'{cfg["model"]} width {cfg["width"]}, batch {cfg["batch"]}, {cfg["image_size"]}px, '
               f'{cfg["dtype"]}, {cfg["devices"]} x {report["machine"]["device_kind"]}', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def define_flags() -> None:
  """The command-line flags (defined only when run as a command, so modules can be imported together)."""
  flags.DEFINE_list('layouts', ['single', 'model', 'data', 'hybrid', 'weird_trick', 'auto'],
                    'Layouts to benchmark (single is always run as the reference).')
  flags.DEFINE_integer('devices', 4, 'Devices (forced CPU host devices when no accelerator).')
  flags.DEFINE_enum('model', 'alexnet', ['alexnet', 'alexnet_owt', 'lenet'],
                    'Network (lenet: one small tower, for quick checks of the command).')
  flags.DEFINE_float('width', 0.25, 'Channel multiplier (1.0 = the paper).')
  flags.DEFINE_integer('batch', 32, 'Global batch size.')
  flags.DEFINE_integer('image_size', 224, 'Input height and width.')
  flags.DEFINE_integer('num_classes', 1000, 'Classes.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype (parameters stay float32).')
  flags.DEFINE_integer('steps', 10, 'Timed steps per layout.')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps per layout before timing (the first gives the loss).')
  flags.DEFINE_float('peak_tflops', None, 'Peak TFLOP/s of one device (default: the known-device table).')
  flags.DEFINE_string('xla', 'default', f'XLA option set for compiling ({", ".join(common.XLA_OPTIONS)}).')
  flags.DEFINE_string('json', None, 'Write the report as JSON here.')
  flags.DEFINE_string('plot', None, 'Write a PNG bar chart here.')


def main(argv):
  del argv
  from alexnet_jax.runtime.devices import ensure_devices
  ensure_devices(FLAGS.devices)
  report = benchmark(FLAGS.layouts, devices=FLAGS.devices, model=FLAGS.model, width=FLAGS.width,
                     batch=FLAGS.batch, image_size=FLAGS.image_size, num_classes=FLAGS.num_classes,
                     dtype=FLAGS.dtype, steps=FLAGS.steps, warmup=FLAGS.warmup,
                     peak_tflops=FLAGS.peak_tflops, xla=FLAGS.xla)
  common.print_and_save(format_report(report), report, FLAGS.json)
  if FLAGS.plot:
    plot(report, FLAGS.plot)
    print(f'wrote {FLAGS.plot}')


if __name__ == '__main__':
  from alexnet_jax.runtime import cli
  define_flags()
  cli.run(main)
