"""What a trained network has learned: DIGITS' "Show visualizations and statistics" and the paper's Figure 3.

    python -m alexnet_jax.visualize (--workdir=DIR [--step=latest|best|N] | --bundle=PATH)
        [--image=PATH] --output=OUT [--overwrite]

writes conv1's kernels (the towers side by side, the paper's Figure 3), per-layer weight statistics and
histograms, and with ``--image`` every layer's activations and the top-5 (``inference/visualization.py`` lists the
files). Heavy libraries are imported after the flags are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import os

from absl import flags

from alexnet_jax.runtime import cli


# ---- Command line --------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}: the image goes in --image')
  if bool(FLAGS.workdir) == bool(FLAGS.bundle):
    raise ValueError('give exactly one of --workdir and --bundle')
  from alexnet_jax import data as data_lib, inference
  from alexnet_jax.inference import bundle, visualization
  from alexnet_jax.runtime import devices
  files = bundle.read_model_files(FLAGS.workdir or FLAGS.bundle)   # a missing one is named before JAX starts
  devices.ensure_devices(1)
  model = inference.load_from_files(files, step=FLAGS.step, layout='single')
  try:
    stats = visualization.visualize(model, FLAGS.output, image=FLAGS.image, overwrite=FLAGS.overwrite)
  except data_lib.DecodeError as e:
    raise ValueError(f'--image={FLAGS.image}: {e}') from None
  colour = ', '.join(f'{v:.2f}' for v in stats['conv1_color']['per_tower'])
  print(f'wrote {len(stats["files"])} files to {os.path.abspath(FLAGS.output)} '
        f'(conv1 colour share per tower: {colour})')
  if 'image' in stats:
    print('top-5: ' + ', '.join(f'{label} {100 * p:.2f}%' for label, p in stats['image']['top5']))


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  flags.DEFINE_string('workdir', None, 'A training run.')
  flags.DEFINE_string('bundle', None, 'A bundle written by alexnet_jax.export (.tar.gz, .zip, folder).')
  flags.DEFINE_string('step', 'latest', 'latest | best | a step number (workdir only)')
  flags.DEFINE_string('image', None, 'An image to show the activations of.')
  flags.DEFINE_string('output', None, 'Folder to write the PNGs and stats.json into.')
  flags.DEFINE_bool('overwrite', False, 'Replace --output even if it holds other files.')
  flags.mark_flag_as_required('output')


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
