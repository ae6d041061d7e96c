r"""Prepare a dataset once, as DIGITS' "New Image Classification Dataset" did.

    python -m alexnet_jax.prepare --source=DIR_OR_LIST_OR_tfds:NAME --output=DIR \
        [--image_size=256,256] [--resize_mode=squash|crop|fill|half_crop] [--channels=3] \
        [--val_percent=25] [--test_percent=0] [--val_source=...] [--test_source=...] \
        [--min_per_class=2] [--max_per_class=N] [--encoding=jpg|png|raw] [--seed=0] [--workers=N] \
        [--overwrite]

Decodes and resizes every image once and writes ArrayRecord files per split, DIGITS-style lists,
labels.txt, mean.npy/mean.png, stats.json, histogram.png and contact sheets (see
alexnet_jax/data/preparation.py). Train on the result with `--config.data.source=DIR`.
Exit status 0 on success; 2 on a bad option or an unusable source (one line on stderr, ``error: ...``,
saying which), or when another prepare of the same --output is running (the message names its process
and command), as the other commands; 130 when interrupted.

While it runs, ``<parent>/.<name>.lock`` keeps other prepares of the same output away and
``<parent>/.<name>.status.json`` says how far it is (``python -m alexnet_jax.runs`` shows it); at the end
the status moves into ``<output>/status.json``. A failed or interrupted prepare leaves no half dataset,
only that status, saying failed or stopped and why.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import flags

from alexnet_jax.data import errors
from alexnet_jax.data import preparation
from alexnet_jax.runtime import cli
from alexnet_jax.runtime import confinement
from alexnet_jax.runtime import process

FLAGS = flags.FLAGS


def _parse_size(text: str) -> tuple[int, int]:
  parts = [p for p in text.replace('x', ',').split(',') if p.strip()]
  try:
    values = [int(p) for p in parts]
  except ValueError:
    values = []
  if len(values) == 1:
    values = values * 2
  if len(values) != 2:
    raise errors.DataError(f'--image_size={text}: expected WIDTH,HEIGHT such as 256,256')
  return values[0], values[1]


def _confine_roots(text: str):
  try:
    return confinement.parse_roots(text)
  except ValueError as e:
    raise errors.DataError(str(e)) from None


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  std_logging.basicConfig(level=std_logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  opts = preparation.PrepareOptions(
      source=FLAGS.source, output=FLAGS.output, image_size=_parse_size(FLAGS.image_size),
      resize_mode=FLAGS.resize_mode, channels=FLAGS.channels, val_percent=FLAGS.val_percent,
      test_percent=FLAGS.test_percent, val_source=FLAGS.val_source, test_source=FLAGS.test_source,
      image_root=FLAGS.image_root, labels_file=FLAGS.labels_file, tfds_data_dir=FLAGS.tfds_data_dir,
      min_per_class=FLAGS.min_per_class, max_per_class=FLAGS.max_per_class, encoding=FLAGS.encoding,
      seed=FLAGS.seed, workers=FLAGS.workers, overwrite=FLAGS.overwrite,
      confine_to=tuple(_confine_roots(FLAGS.confine_to)))
  try:
    stats = preparation.prepare_dataset(opts, track=True)
  except KeyboardInterrupt:
    print('prepare: interrupted; no dataset was written', file=sys.stderr)
    return process.EXIT_INTERRUPTED
  print(preparation.summary_text(stats))
  return 0


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  flags.DEFINE_string('source', None, 'Image folder (root/<class>/<image>), DIGITS list file '
                      '("path label" lines, labels.txt beside it) or tfds:NAME[:SPLIT].')
  flags.DEFINE_string('output', None, 'Folder to create for the prepared dataset.')
  flags.DEFINE_string('image_size', '256,256', 'WIDTH,HEIGHT (or one number for a square).')
  flags.DEFINE_enum('resize_mode', 'squash', ['squash', 'crop', 'fill', 'half_crop'],
                    "DIGITS' resize mode.")
  flags.DEFINE_integer('channels', 3, '3 (color) or 1 (grayscale).')
  flags.DEFINE_float('val_percent', 25.0, '% of each class for validation.')
  flags.DEFINE_float('test_percent', 0.0, '% of each class for testing.')
  flags.DEFINE_string('val_source', '', 'Separate validation folder/list (replaces --val_percent).')
  flags.DEFINE_string('test_source', '', 'Separate test folder/list (replaces --test_percent).')
  flags.DEFINE_string('image_root', '', 'Base folder of relative paths in list files.')
  flags.DEFINE_string('labels_file', '', 'labels.txt of a list source (default: beside it).')
  flags.DEFINE_string('tfds_data_dir', '', 'data_dir for tfds: sources.')
  flags.DEFINE_integer('min_per_class', 2, 'Classes with fewer images are dropped.')
  flags.DEFINE_integer('max_per_class', 0, 'Seeded random sample per class; 0: no limit.')
  flags.DEFINE_enum('encoding', 'jpg', ['jpg', 'png', 'raw'],
                    'Record encoding: jpg (q90, fast to read), png (lossless, slow to read), raw.')
  flags.DEFINE_integer('seed', 0, 'Split, sampling and fill-noise seed.')
  flags.DEFINE_integer('workers', 0, 'Decoding threads; 0: one per core.')
  flags.DEFINE_string('confine_to', '', 'ROOT[,ROOT]: refuse the job unless every image it '
                      'would read (links resolved) lies inside these folders (the dashboard sets it).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output.')
  flags.mark_flags_as_required(['source', 'output'])
  # Its decoding threads each keep their own malloc arena (cli's one arena for all threads would make
  # them wait on each other), and it holds no large buffers from one image to the next.
  flags.FLAGS.set_default('retain_host_memory', False)


def run():
  """Console-script entry point (``alexnet-prepare``)."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
