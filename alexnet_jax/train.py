"""``python -m alexnet_jax.train``: train (or resume) one experiment in a workdir.

    python -m alexnet_jax.train --config=experiments/demo.py --workdir=runs/demo [--config.FIELD=VALUE]

Running the same command again on the same workdir **resumes** exactly where the last snapshot left off
(``training/trainer.py`` holds the library, ``train_and_evaluate``). While it runs, ``WORKDIR/status.json`` says
how far it is (``python -m alexnet_jax.runs`` lists runs), ``WORKDIR/train.log`` keeps its log, and a
second trainer on the same workdir stops at once, naming this one.

Exit status: 0 when the run finished (or stopped early by its own rule), 2 for a user error (one line on
stderr), ``STOPPED_EXIT_STATUS`` (75, EX_TEMPFAIL) when a signal (SIGTERM/SIGINT, e.g. a preemption)
stopped it after a snapshot -- run the same command to resume -- and 1 for anything else.

Heavy libraries (jax, flax, orbax, grain, tfds) are imported after the flags are parsed, so ``--help``
answers at once.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from alexnet_jax.runtime import cli, distributed

STOPPED_EXIT_STATUS = cli.STOPPED_EXIT_STATUS
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}: options are --config, --workdir and '
                     f'--config.FIELD=VALUE')
  from alexnet_jax.training import config_checks
  from alexnet_jax.run import workdir as workdir_lib
  config = cli.experiment('config')
  config_checks.validate(config)   # before devices or processes are set up
  distributed.initialize_from_flags(workdir_lib.devices_needed(config))
  from alexnet_jax.training import trainer
  import jax
  results = trainer.train_and_evaluate(config, FLAGS.workdir)
  val = results.get('val') or {}
  line = f'done at step {results["step"]}'
  if val:
    line += f': val top-1 {100 * val["top1"]:.2f}%, top-5 {100 * val["top5"]:.2f}%'
  if results.get('stopped'):
    line += f' ({results["stopped"]})'
  if jax.process_index() == 0:
    print(line)
  return STOPPED_EXIT_STATUS if results.get('stopped_by_signal') else 0


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'Experiment file (experiments/*.py).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run directory: config, checkpoints, metrics, plots. '
                      'Running again on the same workdir resumes.')
  distributed.define_flags()
  flags.mark_flags_as_required(['config', 'workdir'])


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
