r"""Prepare a dataset once, as DIGITS' "New Image Classification Dataset" did.

    python -m alexnet_jax.prepare --source=DIR_OR_LIST_OR_tfds:NAME --output=DIR \
        [--image_size=256,256] [--resize_mode=squash|crop|fill|half_crop] [--channels=3] \
        [--val_percent=25] [--test_percent=0] [--val_source=...] [--test_source=...] \
        [--min_per_class=2] [--max_per_class=N] [--encoding=jpg|png|raw] [--seed=0] [--workers=N] \
        [--overwrite]

Decodes and resizes every image once and writes ArrayRecord files per split, DIGITS-style lists,
labels.txt, mean.npy/mean.png, stats.json, histogram.png and contact sheets (see
alexnet_jax/data/preparation.py). Train on the result with `--config.data.source=DIR`.
Exit status 0 on success, 1 on a bad option or an unusable source (the message says which), or when
another prepare of the same --output is running (the message names its process and command).

While it runs, ``<parent>/.<name>.lock`` keeps other prepares of the same output away and
``<parent>/.<name>.status.json`` says how far it is (``python -m alexnet_jax.runs`` shows it); at the end
the status moves into ``<output>/status.json``. A failed or interrupted prepare leaves no half dataset,
only that status, saying failed or stopped and why.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app
from absl import flags

from alexnet_jax.runtime import confinement
from alexnet_jax.data import errors
from alexnet_jax.data import preparation
from alexnet_jax.runtime import lock as lock_lib

_SOURCE = flags.DEFINE_string('source', None, 'Image folder (root/<class>/<image>), DIGITS list file '
                              '("path label" lines, labels.txt beside it) or tfds:NAME[:SPLIT].')
_OUTPUT = flags.DEFINE_string('output', None, 'Folder to create for the prepared dataset.')
_IMAGE_SIZE = flags.DEFINE_string('image_size', '256,256', 'WIDTH,HEIGHT (or one number for a square).')
_RESIZE_MODE = flags.DEFINE_enum('resize_mode', 'squash', ['squash', 'crop', 'fill', 'half_crop'],
                                 "DIGITS' resize mode.")
_CHANNELS = flags.DEFINE_integer('channels', 3, '3 (color) or 1 (grayscale).')
_VAL_PERCENT = flags.DEFINE_float('val_percent', 25.0, '% of each class for validation.')
_TEST_PERCENT = flags.DEFINE_float('test_percent', 0.0, '% of each class for testing.')
_VAL_SOURCE = flags.DEFINE_string('val_source', '', 'Separate validation folder/list (replaces --val_percent).')
_TEST_SOURCE = flags.DEFINE_string('test_source', '', 'Separate test folder/list (replaces --test_percent).')
_IMAGE_ROOT = flags.DEFINE_string('image_root', '', 'Base folder of relative paths in list files.')
_LABELS_FILE = flags.DEFINE_string('labels_file', '', 'labels.txt of a list source (default: beside it).')
_TFDS_DATA_DIR = flags.DEFINE_string('tfds_data_dir', '', 'data_dir for tfds: sources.')
_MIN_PER_CLASS = flags.DEFINE_integer('min_per_class', 2, 'Classes with fewer images are dropped.')
_MAX_PER_CLASS = flags.DEFINE_integer('max_per_class', 0, 'Seeded random sample per class; 0: no limit.')
_ENCODING = flags.DEFINE_enum('encoding', 'jpg', ['jpg', 'png', 'raw'],
                              'Record encoding: jpg (q90, fast to read), png (lossless, slow to read), raw.')
_SEED = flags.DEFINE_integer('seed', 0, 'Split, sampling and fill-noise seed.')
_WORKERS = flags.DEFINE_integer('workers', 0, 'Decoding threads; 0: one per core.')
_CONFINE_TO = flags.DEFINE_string('confine_to', '', 'ROOT[,ROOT]: refuse the job unless every image it '
                                   'would read (links resolved) lies inside these folders (the dashboard sets it).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing --output.')


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
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  std_logging.basicConfig(level=std_logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  try:
    opts = preparation.PrepareOptions(
        source=_SOURCE.value, output=_OUTPUT.value, image_size=_parse_size(_IMAGE_SIZE.value),
        resize_mode=_RESIZE_MODE.value, channels=_CHANNELS.value, val_percent=_VAL_PERCENT.value,
        test_percent=_TEST_PERCENT.value, val_source=_VAL_SOURCE.value, test_source=_TEST_SOURCE.value,
        image_root=_IMAGE_ROOT.value, labels_file=_LABELS_FILE.value, tfds_data_dir=_TFDS_DATA_DIR.value,
        min_per_class=_MIN_PER_CLASS.value, max_per_class=_MAX_PER_CLASS.value, encoding=_ENCODING.value,
        seed=_SEED.value, workers=_WORKERS.value, overwrite=_OVERWRITE.value,
        confine_to=tuple(_confine_roots(_CONFINE_TO.value)))
    stats = preparation.prepare_dataset(opts, track=True)
  except (errors.DataError, lock_lib.WorkdirBusyError) as e:
    print(f'prepare: error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print('prepare: interrupted; no dataset was written', file=sys.stderr)
    return 130
  print(preparation.summary_text(stats))
  return 0


def run():
  """Console-script entry point (``alexnet-prepare``)."""
  flags.mark_flags_as_required(['source', 'output'])
  app.run(main)


if __name__ == '__main__':
  run()
