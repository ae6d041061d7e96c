"""``python -m alexnet_jax.evaluate``: loss, top-1/top-5, per-class accuracy and confusion of one split.

    python -m alexnet_jax.evaluate --workdir=DIR [--split=val|test] [--step=latest|best|N]
        [--ten_crop] [--layout=single|model|data|hybrid|weird_trick|auto]

writes ``DIR/eval/<split>-<step>.json`` and ``DIR/eval/<split>-<step>-confusion.png`` (the library:
``training/evaluation.py``). Its defaults are classify's: the run's own test-time procedure (``--ten_crop`` unset:
``config.data.ten_crop_eval``) on one device (``--layout=single``; a snapshot restores onto any layout
with the same numbers). ``--step=latest`` takes the newest snapshot that restores, skipping a damaged one.

Heavy libraries are imported after the flags are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import os

from absl import flags

from alexnet_jax.runtime import cli

DEFAULT_LAYOUT = 'single'   # the same default as classify (inference.DEFAULT_LAYOUT)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}: give --workdir (and --split, --step)')
  from alexnet_jax.runtime import devices
  from alexnet_jax.training import evaluation
  from alexnet_jax.run import workdir as workdir_lib
  from alexnet_jax.runtime import status as status_lib
  config = workdir_lib.read_config(FLAGS.workdir)   # read once: the library call below takes it
  on_layout = config.copy_and_resolve_references()   # the run's config, on the layout asked for
  on_layout.layout = FLAGS.layout
  devices.ensure_devices(workdir_lib.devices_needed(on_layout))
  ten_crop = config.data.get('ten_crop_eval', False) if FLAGS.ten_crop is None else FLAGS.ten_crop
  # Its own status beside its results (WORKDIR/eval/status.json): the run's status.json is the trainer's.
  with status_lib.StatusWriter(os.path.join(FLAGS.workdir, 'eval'), 'evaluate') as live:
    live.start(split=FLAGS.split, requested_step=FLAGS.step, ten_crop=ten_crop, layout=FLAGS.layout)
    path, summary = evaluation.run_evaluation(FLAGS.workdir, split=FLAGS.split, step=FLAGS.step,
                                              ten_crop=ten_crop, layout_name=FLAGS.layout,
                                              config=config)
    live.finish('done', results=path, **{k: summary[k] for k in ('loss', 'top1', 'top5', 'count')})
  print(f'{FLAGS.split}: loss {summary["loss"]:.4f}  top-1 {100 * summary["top1"]:.2f}%  '
        f'top-5 {100 * summary["top5"]:.2f}%  ({summary["count"]} images'
        f'{", 10 crops" if ten_crop else ""})')
  if path:
    print(f'wrote {path}')


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  flags.DEFINE_string('workdir', None, 'The training run to evaluate.')
  flags.DEFINE_string('split', 'val', 'val | test | train')
  flags.DEFINE_string('step', 'latest', 'latest | best | a step number')
  flags.DEFINE_bool('ten_crop', None, "The paper's 10-crop evaluation (default: the run's "
                    'config.data.ten_crop_eval, as classify).')
  flags.DEFINE_string('layout', DEFAULT_LAYOUT, 'Layout to evaluate in: single (default, as classify), '
                      'model, data, hybrid, weird_trick or auto.')
  flags.mark_flag_as_required('workdir')


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
