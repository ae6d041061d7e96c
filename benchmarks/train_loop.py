r"""The training loop's own cost: steps per second and the share of wall time it waits, before and after.

    python -m benchmarks.train_loop [--cases=demo,digits_exercise,owt32] [--steps=demo:40,...]
                                    [--repeats=3] [--set=KEY=VALUE,...] [--json=PATH]

On a GPU (one device: the two-tower cases need ``layout=single``), for example:

    python -m benchmarks.train_loop --cases=digits_exercise,owt32 --steps=digits_exercise:30,owt32:30 \
        --set=layout=single,model.dtype=bfloat16,batch_size=256,data.num_threads=16 --repeats=2

Issue 23: the loop used to read every step's metrics at once (`jax.device_get`, a host sync per step)
and only then read and copy the next batch while the device idled. Now the batches are placed on the
devices ahead in a background thread (`config.data.device_prefetch`, 2 by default) and the metrics are
read at log points. This runs the real trainer (`trainer.train_and_evaluate`) on a generated JPEG folder
for each case, both ways, side by side, round-robin over ``--repeats`` rounds (medians; a loaded host
drifts, compare numbers of one run only):

* ``before`` -- ``data.device_prefetch=0``: each batch read and copied when the step needs it, each
  step's metrics read before the next step is dispatched (the old loop, kept as an option);
* ``after``  -- ``data.device_prefetch=2``: the default.

Cases: ``demo`` (experiments/demo.py: width-0.25 AlexNet, two towers on two CPU devices, 64x64 crops,
batch 32), ``digits_exercise`` (experiments/digits_exercise.py: the full AlexNet at 224, batch 100) and
``owt32`` (the one-tower AlexNet, full width, 224, batch 32, one device). Each run is one epoch of
``steps`` steps with no validation; the first ``warmup`` steps (compilation included) are one log window
and are not timed; the rest are the second window. Per run it reports:

* ``steps/s``: the timed window's steps over its wall time (from the read after the warm-up to the
  read after the last step, which waits for the device: the steps are done, not just dispatched);
* ``data wait``: the share of that time the loop spent blocked in the batch iterator (reading,
  decoding and copying in the old loop; only an empty prefetch queue in the new one);
* ``host sync``: the share spent blocked reading metrics back (every step in the old loop; at the log
  point in the new one, where the host waits for queued device work).

On a CPU host the "device" is the same two cores as the reader threads, so overlap buys less than on a
GPU; the GPU numbers come from benchmarks/device_check.py's trainer case when a device is lent.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import statistics
import tempfile
import time
from typing import Any

from absl import app, flags

from alexnet_jax.runtime import devices

CASES = {
    # name: (experiment module, overrides, default steps, image size of the generated JPEGs)
    'demo': ('experiments.demo', {}, 60, (80, 80)),
    'digits_exercise': ('experiments.digits_exercise', {}, 6, (300, 200)),
    'owt32': ('experiments.digits_exercise', {'model.name': 'alexnet_owt', 'layout': 'single',
                                              'batch_size': 32}, 10, (300, 200)),
}
MODES = {'before': 0, 'after': 2}


class _Timer:
  """Wall time spent inside wrapped calls, from the moment ``start()`` is called."""

  def __init__(self):
    self.on, self.data, self.sync = False, 0.0, 0.0

  @contextlib.contextmanager
  def timing(self, field: str):
    t = time.perf_counter()
    try:
      yield
    finally:
      if self.on:
        setattr(self, field, getattr(self, field) + time.perf_counter() - t)


def _instrument(timer: _Timer):
  """Wraps DevicePrefetch.__next__ (data wait) and jax.device_get in the trainer (host sync); returns
  an undo function. The timed window starts at the first log point's read (the warm-up's end)."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax.training import trainer  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  original_next, original_get = pipeline.DevicePrefetch.__next__, trainer.jax.device_get

  def timed_next(self):
    with timer.timing('data'):
      return original_next(self)

  class _Jax:   # the trainer's `jax` with a timed device_get; everything else is jax's
    def __getattr__(self, name):
      return getattr(jax, name)

    @staticmethod
    def device_get(x):
      with timer.timing('sync'):
        return original_get(x)

  pipeline.DevicePrefetch.__next__ = timed_next
  trainer.jax = _Jax()

  def undo():
    pipeline.DevicePrefetch.__next__ = original_next
    trainer.jax = jax
  return undo


def run_once(case: str, mode: str, folder: str, steps: int, warmup: int,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
  import importlib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.training import trainer  # pylint: disable=g-import-not-at-top
  from alexnet_jax.run import metrics_writer  # pylint: disable=g-import-not-at-top
  from alexnet_jax.training.cadence import Cadence  # pylint: disable=g-import-not-at-top
  module, overrides, _, _ = CASES[case]
  config = importlib.import_module(module).get_config()
  config.update_from_flattened_dict(overrides)
  config.update_from_flattened_dict(extra or {})
  config.update_from_flattened_dict({
      'data.source': folder, 'data.val_percent': 0.0, 'data.test_percent': 0.0, 'num_epochs': 1,
      'snapshot_interval': 1.0, 'val_interval': 1.0,
      'data.device_prefetch': MODES[mode], 'lr.warmup_epochs': 0.0})
  timer = _Timer()
  undo = _instrument(timer)
  original_write = metrics_writer.MetricsWriter.write
  marks = []

  def write(self, split, step, *args, **kwargs):   # log points: the window's edges
    marks.append((step, time.perf_counter(), timer.data, timer.sync))
    timer.on = True
    return original_write(self, split, step, *args, **kwargs)

  metrics_writer.MetricsWriter.write = write
  original_log = Cadence.log
  Cadence.log = lambda self, step: step in (warmup, self.total_steps)   # two windows: warm-up, timed
  try:
    with tempfile.TemporaryDirectory() as workdir:
      trainer.train_and_evaluate(config, workdir)
  finally:
    metrics_writer.MetricsWriter.write = original_write
    Cadence.log = original_log
    undo()
  (s0, t0, d0, h0), (s1, t1, d1, h1) = marks[0], marks[-1]
  if s1 - s0 < 1:
    raise ValueError(f'{case}: no timed steps (steps={steps}, warmup={warmup})')
  wall = t1 - t0
  return {'steps_per_s': (s1 - s0) / wall, 'images_per_s': (s1 - s0) * config.batch_size / wall,
          'data_wait': (d1 - d0) / wall, 'host_sync': (h1 - h0) / wall, 'timed_steps': s1 - s0,
          'batch': config.batch_size}


def benchmark(cases, steps: dict[str, int], repeats: int, warmup: int, extra: dict[str, Any] | None = None,
              log=print) -> dict[str, Any]:
  from alexnet_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  samples: dict[str, dict[str, list[dict]]] = {c: {m: [] for m in MODES} for c in cases}
  with tempfile.TemporaryDirectory() as root:
    folders = {}
    for case in cases:
      n = steps[case] * (extra or {}).get('batch_size', CASES[case][1].get('batch_size', _batch(case)))
      folders[case] = os.path.join(root, case)
      synthetic.make_image_folder(folders[case], num_classes=4, per_class=-(-n // 4),
                                  size=CASES[case][3], seed=1)
    for r in range(repeats):
      for case in cases:
        for mode in MODES:
          result = run_once(case, mode, folders[case], steps[case], warmup, extra)
          samples[case][mode].append(result)
          log(f'round {r + 1}/{repeats} {case:16s} {mode:6s} {result["steps_per_s"]:.3f} steps/s  '
              f'data wait {100 * result["data_wait"]:.1f}%  host sync {100 * result["host_sync"]:.1f}%')
  medians = {c: {m: {k: statistics.median(s[k] for s in samples[c][m])
                     for k in ('steps_per_s', 'images_per_s', 'data_wait', 'host_sync')}
                 for m in MODES} for c in cases}
  return {'machine': common.machine_info(probe=False), 'load_average': common.load_average(),
          'repeats': repeats, 'warmup_steps': warmup, 'steps': steps, 'set': extra or {},
          'medians': medians,
          'samples': samples}


def _batch(case: str) -> int:
  import importlib  # pylint: disable=g-import-not-at-top
  return importlib.import_module(CASES[case][0]).get_config().batch_size


def format_report(report: dict) -> str:
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  rows = []
  for case, by_mode in report['medians'].items():
    before, after = by_mode['before'], by_mode['after']
    rows.append([case, f'{before["steps_per_s"]:.3f}', f'{after["steps_per_s"]:.3f}',
                 f'{after["steps_per_s"] / before["steps_per_s"]:.2f}x',
                 f'{100 * before["data_wait"]:.1f}%', f'{100 * after["data_wait"]:.1f}%',
                 f'{100 * before["host_sync"]:.1f}%', f'{100 * after["host_sync"]:.1f}%'])
  table = common.format_table(['case', 'steps/s before', 'after', 'speed-up', 'data wait before',
                               'after', 'host sync before', 'after'], rows)
  return (f'{common.describe(report["machine"])}; medians of '
          f'{report["repeats"]} rounds\n{table}')


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_list('cases', list(CASES), 'cases to run: ' + ', '.join(CASES))
  flags.DEFINE_list('steps', [], 'CASE:STEPS overrides of the steps per run (warm-up included)')
  flags.DEFINE_integer('repeats', 3, 'rounds (each runs every case both ways)')
  flags.DEFINE_integer('warmup', 2, 'untimed steps at the start of each run (compilation included)')
  flags.DEFINE_list('set', [], 'KEY=VALUE config overrides for every case (values parsed as Python '
                    'literals where they are one: batch_size=256, model.dtype=bfloat16)')
  flags.DEFINE_string('json', '', 'also write the report here')


def main(argv):
  del argv
  devices.force_cpu_devices(2)   # the demo's two towers on two CPU devices (as experiments/demo.py)
  unknown = [c for c in FLAGS.cases if c not in CASES]
  if unknown:
    raise app.UsageError(f'--cases: unknown {unknown}; choose from {list(CASES)}')
  steps = {c: CASES[c][2] for c in FLAGS.cases}
  for item in FLAGS.steps:
    case, _, n = item.partition(':')
    if case not in steps or not n.isdigit() or int(n) <= FLAGS.warmup:
      raise app.UsageError(f'--steps={item}: expected CASE:N with a case of --cases and N > --warmup')
    steps[case] = int(n)
  extra = {}
  for item in FLAGS.set:
    key, sep, value = item.partition('=')
    if not sep:
      raise app.UsageError(f'--set={item}: expected KEY=VALUE')
    try:
      extra[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      extra[key] = value
  report = benchmark(FLAGS.cases, steps, FLAGS.repeats, FLAGS.warmup, extra)
  print(format_report(report))
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(report, f, indent=1, default=str)


if __name__ == '__main__':
  define_flags()
  app.run(main)
