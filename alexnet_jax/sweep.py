"""Hyper-parameter sweeps: DIGITS' comma-separated learning rates and batch sizes, as a grid.

    python -m alexnet_jax.sweep --config=experiments/lenet_digits.py --workdir=runs/lenet_sweep \
        --grid=config.learning_rate=0.01,0.001 --grid=config.batch_size=64,128 [--config.X=...]

In DIGITS, typing "0.01, 0.001" as the base learning rate (or several batch sizes) queued one training
job per combination. Here every ``--grid`` flag names one config field and its values; the sweep runs
the Cartesian product (2 x 2 = 4 runs above), one run after another, each with
``trainer.train_and_evaluate`` (``training/sweeping.py``) in its own sub-workdir named after its values::

    runs/lenet_sweep/learning_rate=0.01,batch_size=64/      (config.json, checkpoints, metrics, plots)
    runs/lenet_sweep/learning_rate=0.01,batch_size=128/
    ...
    runs/lenet_sweep/sweep_summary.json                     each point's best validation top-1
    runs/lenet_sweep/sweep_summary.png                      the same as a bar chart, best first

Running the same command again **resumes** the sweep: a point that finished is skipped (its
``sweep_point.json`` records the config it finished with), an interrupted one resumes from its last
snapshot exactly as ``train`` does, and the points not started yet run. A SIGTERM/SIGINT stops the
current point after a snapshot and ends the sweep there. The summary is rewritten after every point, so
it can be read while the sweep runs.

``--config.X=V`` overrides apply to every point; ``--grid`` values are converted to the type of the field
they replace (``--grid=config.data.flip=true,false`` gives booleans). The library function
``run_sweep(config, workdir, grid)`` is what a notebook or a test calls; the command parses the grid itself
(to choose the devices before JAX starts) and calls its second half, ``run_sweep_points``.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from alexnet_jax.runtime import cli, distributed


# ---- Command line ------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def main(argv):
  del argv
  from alexnet_jax.training import sweeping
  import jax
  config = cli.experiment('config')
  axes = sweeping.parse_grid(FLAGS.grid, config)   # parsed once, before JAX starts
  points = sweeping.make_points(config, axes)
  from alexnet_jax.run import workdir as workdir_lib
  distributed.initialize_from_flags(max(workdir_lib.devices_needed(p.config) for p in points))
  summary = sweeping.run_sweep_points(FLAGS.workdir, axes, points)
  if jax.process_index() == 0:
    print(sweeping.format_table(summary))
    print(f'summary: {os.path.join(os.path.abspath(FLAGS.workdir), sweeping.SUMMARY_JSON)}')
    if summary.get('interrupted'):
      print(f'interrupted during {summary["interrupted"]}; run the same command to resume')
    elif summary.get('best'):
      print(f'best: {summary["best"]}')
  return cli.STOPPED_EXIT_STATUS if summary.get('interrupted') else 0


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'Experiment file (experiments/*.py), the base of '
                                  'every point.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Sweep directory: one sub-workdir per point, and the summary. '
                      'Running again on the same workdir resumes.')
  flags.DEFINE_multi_string('grid', [], 'config.FIELD=V1,V2,... : one axis of the grid (repeatable).')
  distributed.define_flags()
  flags.mark_flags_as_required(['config', 'workdir'])


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
