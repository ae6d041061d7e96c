r"""``python -m benchmarks.model_step``: train-step and inference throughput of the networks on one device.

    python -m benchmarks.model_step --models=alexnet,alexnet_owt --dtypes=float32,bfloat16 \
        --batches=32,64 --width=1.0 --image_size=224 --steps=5 [--xla=default,tuned] [--json=PATH] \
        [--profile_dir=DIR]

Every (model, dtype, batch, XLA option set) is compiled up front -- the train step of the ``single``
layout (SGD with momentum 0.9, dropout on, state donated) and the eval step (no dropout) -- and then all
of them are timed **round-robin, one call each per round**, so that a busy host slows them alike. Per
configuration: images/s (median, min-max), XLA's FLOPs per image, the achieved FLOP/s, and the MFU against
the peak of the dtype (``--peak_tflops`` or ``benchmarks.common.PEAK_TFLOPS``; on this CPU the fp32 peak
is 2 cores x 64 FLOP/cycle x 2.6 GHz, checked by the FMA probe). With several ``--xla`` sets, ``x first``
is the paired speed ratio to the first set. The summary line compares the FLOP *rate* of the two-tower
``alexnet`` with ``alexnet_owt`` (the issue's target: the towers must not cost FLOP rate).

``--profile_dir=DIR`` then records a ``jax.profiler`` trace of ``--profile_steps`` more calls of the first
train configuration (``alexnet_jax.training.profiling.StepProfiler``; view it with ``tensorboard --logdir=DIR`` or
open its ``*.trace.json.gz`` in https://ui.perfetto.dev); the timings above are taken before, untraced.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import time
from typing import Any, Callable, Sequence

from absl import flags

from benchmarks import common

FLAGS = flags.FLAGS


class Programs:
  """One network's train and eval steps on one device (layout ``single``, SGD with momentum 0.9, dropout
  on, the state donated) and the train state they thread through their calls.

  What ``benchmark`` and the device check (``benchmarks.device_parts``) compile and time. ``share``: a
  ``Programs`` of the same network in another dtype whose state to use when it has the same shapes
  (parameters stay float32 whatever the compute dtype: one initialization to compile instead of two).
  """

  def __init__(self, model: str, dtype: str, tx, *, width: float, image_size: int, num_classes: int,
               share: Programs | None = None):
    from alexnet_jax import models as models_lib
    from alexnet_jax.parallel import layouts as layouts_lib
    from alexnet_jax.parallel import step as step_lib
    network = models_lib.REGISTRY[model](num_classes, width=width, dropout=0.5, lrn='paper',
                                         bias_init='paper', weight_init='paper',
                                         dtype=models_lib.DTYPES[dtype])
    layout = layouts_lib.resolve('single', network, num_devices=1)
    self.mesh = layout.make_mesh()
    self.image_size, self.num_classes = image_size, num_classes
    image_shape = (image_size, image_size, 3)
    self._abstract_state = functools.partial(step_lib.abstract_train_state, network, layout, self.mesh, tx,
                                             image_shape=image_shape)
    if share is not None and share.signature == self.signature:
      self.box = share.box
    else:
      self.box = {'state': step_lib.create_train_state(network, layout, self.mesh, tx, seed=0,
                                                       image_shape=image_shape)}
    self.train_step = step_lib.make_train_step(network, layout, self.mesh, tx, donate=True)
    self.eval_step = step_lib.make_eval_step(network, layout, self.mesh)

  @functools.cached_property
  def signature(self) -> tuple:
    """The tree structure, shapes and dtypes of the train state (traced, nothing allocated)."""
    import jax
    leaves, treedef = jax.tree.flatten(self._abstract_state())
    return str(treedef), [(a.shape, str(a.dtype)) for a in leaves]

  def example_batch(self, batch: int) -> dict:
    """A fixed batch of ``batch`` images and labels in device memory."""
    import jax
    from alexnet_jax.parallel import compare
    images, labels = compare.example_batch(batch, self.image_size, 3, self.num_classes)
    return {'image': jax.device_put(images), 'label': jax.device_put(labels)}

  def lower(self, mode: str, batch: dict):
    """The train (``mode='train'``) or eval program for ``batch``, lowered."""
    import jax
    with jax.set_mesh(self.mesh):
      if mode == 'train':
        return self.train_step.jitted.lower(self.box['state'], batch)
      return self.eval_step.jitted.lower(self.box['state'].params, batch['image'])

  def compile(self, lowered, options: dict | None = None):
    import jax
    with jax.set_mesh(self.mesh):
      return lowered.compile(compiler_options=options)

  def launcher(self, mode: str, compiled, batch: dict) -> Callable[[], Any]:
    """A call of ``compiled`` on ``batch`` that returns without waiting (a train call moves the shared
    state on); ``jax.block_until_ready`` its result to wait."""
    import jax
    box, mesh = self.box, self.mesh
    if mode == 'train':
      def launch():
        with jax.set_mesh(mesh):
          box['state'], metrics = compiled(box['state'], batch)
        return box['state'], metrics
    else:
      def launch():
        with jax.set_mesh(mesh):
          return compiled(box['state'].params, batch['image'])
    return launch


def trace(call: Callable[[], Any], directory: str, steps: int, *, name: str, log=print, **options):
  """Traces ``steps`` calls of ``call`` (each blocks until done) into ``directory`` with
  ``alexnet_jax.training.profiling.StepProfiler`` (``options``: its other arguments); returns it."""
  from alexnet_jax.training import profiling
  profiler = profiling.StepProfiler(directory, 0, steps, name=name, log=log, **options)
  with profiler:
    for i in range(steps + 1):
      profiler.step(i)
      if i < steps:
        call()
  return profiler


def benchmark(models: Sequence[str] = ('alexnet', 'alexnet_owt'),
              dtypes: Sequence[str] = ('float32', 'bfloat16'), batches: Sequence[int] = (32, 64),
              modes: Sequence[str] = ('train', 'infer'), xla: Sequence[str] = ('default',), *,
              width: float = 1.0, image_size: int = 224, num_classes: int = 1000, steps: int = 5,
              warmup: int = 2, peak_tflops: float | None = None, profile_dir: str | None = None,
              profile_steps: int = 3, log=print) -> dict:
  """Runs the benchmark on the first device and returns the report (what ``--json`` writes).

  With ``profile_dir``, ``profile_steps`` further calls of the first train configuration (else the first
  one) are traced there after the timings; the report's ``'profile'`` says which, and the files.
  """
  import jax
  import optax

  for mode in modes:
    if mode not in ('train', 'infer'):
      raise ValueError(f'--modes: {mode!r} is neither train nor infer')
  device = jax.devices()[0]
  tx = optax.sgd(0.01, momentum=0.9)
  entries, calls = [], {}
  for model, dtype in itertools.product(models, dtypes):
    # One state per network and dtype, threaded through all its train programs (they share its shapes).
    programs = Programs(model, dtype, tx, width=width, image_size=image_size, num_classes=num_classes)
    for batch, xla_name, mode in itertools.product(batches, xla, modes):
      options = common.xla_options(xla_name, device.platform)
      arrays = programs.example_batch(batch)
      t = time.perf_counter()
      compiled = programs.compile(programs.lower(mode, arrays), options)
      compile_s = time.perf_counter() - t
      key = f'{model}/{dtype}/b{batch}/{xla_name}/{mode}'
      log(f'{key}: compiled in {compile_s:.1f} s')
      entries.append({'key': key, 'model': model, 'dtype': dtype, 'batch': batch, 'xla': xla_name,
                      'mode': mode, 'compile_s': compile_s, 'compiled': compiled})
      launch = programs.launcher(mode, compiled, arrays)
      calls[key] = lambda launch=launch: jax.block_until_ready(launch())

  load_before = common.load_average()
  timings = common.interleave(calls, reps=steps, warmup=warmup,
                              on_round=lambda r: log(f'round {r + 1}/{steps}, load {common.load_average()[0]}'))
  load_after = common.load_average()
  profile = _profile(calls, [e['key'] for e in entries if e['mode'] == 'train'] or list(calls),
                     profile_dir, profile_steps, log) if profile_dir else None

  peaks = {dtype: common.peak(device, dtype, peak_tflops) for dtype in dtypes}
  results = {}
  for e in entries:
    timing = timings[e['key']]
    flops = common.cost_flops(e['compiled'])
    achieved = flops / timing.median if flops else None
    peak, _ = peaks[e['dtype']]
    reference = e['key'].replace(f'/{e["xla"]}/', f'/{xla[0]}/')
    results[e['key']] = {
        **{k: e[k] for k in ('model', 'dtype', 'batch', 'xla', 'mode', 'compile_s')},
        'time': timing.to_json(),
        'images_per_s': timing.rate(e['batch']),
        'images_per_s_min': e['batch'] / timing.max, 'images_per_s_max': e['batch'] / timing.min,
        'speed_vs_first_xla': common.paired_ratio(timing, timings[reference]),
        'flops_per_call': flops,
        'flops_per_image': flops / e['batch'] if flops else None,
        'achieved_flops_per_s': achieved,
        'mfu': achieved / peak if achieved and peak else None,
        'memory': common.memory(e['compiled']),
    }
  # The tower target: alexnet's FLOP rate over alexnet_owt's, paired round by round.
  tower_rate = {}
  if 'alexnet' in models and 'alexnet_owt' in models:
    for dtype, batch, xla_name, mode in itertools.product(dtypes, batches, xla, modes):
      a = f'alexnet/{dtype}/b{batch}/{xla_name}/{mode}'
      o = f'alexnet_owt/{dtype}/b{batch}/{xla_name}/{mode}'
      fa, fo = results[a]['flops_per_call'], results[o]['flops_per_call']
      if fa and fo:
        tower_rate[f'{dtype}/b{batch}/{xla_name}/{mode}'] = statistics.median(
            (fa / ta) / (fo / to) for ta, to in zip(timings[a].seconds, timings[o].seconds))
  return {
      'benchmark': 'model_step',
      'config': {'models': list(models), 'dtypes': list(dtypes), 'batches': list(batches),
                 'modes': list(modes), 'xla': list(xla), 'xla_options': {
                     x: common.xla_options(x, device.platform) for x in xla},
                 'width': width, 'image_size': image_size, 'num_classes': num_classes, 'steps': steps,
                 'warmup': warmup},
      'peak_flops': {d: p for d, (p, _) in peaks.items()},
      'peak_source': {d: s for d, (_, s) in peaks.items()},
      'machine': common.machine_info(),
      'load_average_during': [load_before, load_after],
      'results': results,
      'alexnet_over_owt_flop_rate': tower_rate,
      **({'profile': profile} if profile else {}),
  }


def _profile(calls: dict, keys: Sequence[str], directory: str, steps: int, log) -> dict:
  """Traces ``steps`` calls of ``calls[keys[0]]`` into ``directory`` (each call blocks until done)."""
  key = keys[0]
  profiler = trace(calls[key], directory, steps, name=key.replace('/', '_'), log=log)
  return {'key': key, 'steps': steps, 'directory': directory, 'session_dir': profiler.session_dir,
          'files': profiler.files(), 'skipped': profiler.skipped}


def format_report(report: dict) -> str:
  cfg = report['config']
  rows = []
  for r in report['results'].values():
    rows.append([r['model'], r['dtype'], r['batch'], r['xla'], r['mode'], r['compile_s'],
                 r['images_per_s'], f'{r["images_per_s_min"]:.1f}-{r["images_per_s_max"]:.1f}',
                 r['speed_vs_first_xla'],
                 None if r['flops_per_image'] is None else r['flops_per_image'] / 1e9,
                 None if r['achieved_flops_per_s'] is None else r['achieved_flops_per_s'] / 1e9,
                 None if r['mfu'] is None else 100 * r['mfu']])
  headers = ['model', 'dtype', 'batch', 'xla', 'mode', 'compile s', 'img/s', 'min-max',
             f'x {cfg["xla"][0]}', 'GFLOP/img', 'GFLOP/s', 'MFU %']
  peaks = ', '.join(f'{d} {p / 1e9:.0f} GFLOP/s ({report["peak_source"][d]})' if p else
                    f'{d} unknown' for d, p in report['peak_flops'].items())
  lines = [f'width {cfg["width"]}, {cfg["image_size"]}px, one device; {cfg["steps"]} timed calls each, '
           f'round-robin over all rows',
           common.describe(report['machine']), f'peak: {peaks}',
           common.format_table(headers, rows)]
  if report['alexnet_over_owt_flop_rate']:
    lines.append('alexnet FLOP rate / alexnet_owt FLOP rate (paired per round; target >= 1): ' + ', '.join(
        f'{k} {v:.2f}' for k, v in report['alexnet_over_owt_flop_rate'].items()))
  lines.append(f'load average before/after timing: {report["load_average_during"][0]} / '
               f'{report["load_average_during"][1]}')
  if report.get('profile'):
    p = report['profile']
    lines.append(f'profile: {p["steps"]} calls of {p["key"]} traced into '
                 f'{p["session_dir"] or p["directory"]}' + (f' (skipped: {p["skipped"]})'
                                                          if p['skipped'] else ''))
  return '\n'.join(lines)


def define_flags() -> None:
  """The command-line flags (defined only when run as a command, so modules can be imported together)."""
  flags.DEFINE_list('models', ['alexnet', 'alexnet_owt'], 'Networks.')
  flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes (parameters stay float32).')
  flags.DEFINE_list('batches', ['32', '64'], 'Batch sizes.')
  flags.DEFINE_list('modes', ['train', 'infer'], 'train and/or infer.')
  flags.DEFINE_list('xla', ['default'], f'XLA option sets ({", ".join(common.XLA_OPTIONS)}); the first is '
                    'the reference of the ratios.')
  flags.DEFINE_float('width', 1.0, 'Channel multiplier (1.0 = full size).')
  flags.DEFINE_integer('image_size', 224, 'Input height and width.')
  flags.DEFINE_integer('num_classes', 1000, 'Classes.')
  flags.DEFINE_integer('steps', 5, 'Timed calls per configuration.')
  flags.DEFINE_integer('warmup', 2, 'Untimed calls per configuration first.')
  flags.DEFINE_float('peak_tflops', None, 'Peak TFLOP/s of the device (default: the known-device table).')
  flags.DEFINE_string('json', None, 'Write the report as JSON here.')
  flags.DEFINE_string('profile_dir', None, 'After timing, trace --profile_steps calls of the first train '
                      'configuration here (jax.profiler; TensorBoard or Perfetto).')
  flags.DEFINE_integer('profile_steps', 3, 'Calls traced with --profile_dir.')


def main(argv):
  del argv
  from alexnet_jax.runtime.devices import ensure_devices
  ensure_devices(1)
  report = benchmark(FLAGS.models, FLAGS.dtypes, [int(b) for b in FLAGS.batches], FLAGS.modes, FLAGS.xla,
                     width=FLAGS.width, image_size=FLAGS.image_size, num_classes=FLAGS.num_classes,
                     steps=FLAGS.steps, warmup=FLAGS.warmup, peak_tflops=FLAGS.peak_tflops,
                     profile_dir=FLAGS.profile_dir, profile_steps=FLAGS.profile_steps)
  common.print_and_save(format_report(report), report, FLAGS.json)


if __name__ == '__main__':
  from alexnet_jax.runtime import cli
  define_flags()
  cli.run(main)
