"""Classify images with a trained run or an exported bundle: DIGITS' "Classify One" and "Classify Many".

    python -m alexnet_jax.classify (--workdir=DIR [--step=latest|best|N] | --bundle=PATH)
        [--layout=single|model|data|hybrid] [--top_k=5] [--[no]ten_crop] [--format=table|json|csv]
        [--output=PATH] [--report_dir=DIR] [--top_n_per_category=N] [--batch_size=B] [--status_dir=DIR]
        (IMAGE ... | --image_list=FILE [--image_root=DIR] [--limit=N])

For example, on the demo run:

    $ python -m alexnet_jax.classify --workdir=runs/demo runs/demo/synthetic/circle/0.jpg
    runs/demo/synthetic/circle/0.jpg
       #  label          confidence
       1  circle             97.85%
       2  ring                1.63%
       ...

* ``IMAGE ...``: every image must be readable; otherwise the command stops, naming it, and writes nothing.
* ``--image_list``: DIGITS' list format, one ``path [label]`` per line (blank lines and ``#`` comments
  skipped; relative paths taken against ``--image_root``, else against the list's folder, as the data
  sources do). Labels are all-or-nothing; a label must name one of the model's classes. A malformed line
  stops the command before any work, naming the file and the line. An image that cannot be read does
  not: it is reported in the output (``"errors"``, or an ``error`` column/line) and the rest goes on.
  With labels: top-1/top-5, per-class accuracy and the confusion matrix (``"accuracy"`` in the JSON,
  and ``confusion.png``), computed by the same code as ``evaluate`` (``metrics.EvalAccumulator``).
* ``--top_n_per_category=N``: for each class, the N images scoring highest for it (JSON and a
  contact sheet PNG), DIGITS' "Top N Predictions per Category".
* ``--format=json``: ``{"model": {...}, "predictions": {"<path>": [["<label>", p], ...]}, "errors": [...],
  "accuracy": {...}, "top_n_per_category": {"<class>": [["<path>", p], ...]}}`` with p in [0, 1], highest
  first. ``csv``: one row per image and rank (``path,line,rank,label,probability,true_label,error``).
  ``table``: confidences in percent with two decimals.

Where the files go: ``--output`` (default stdout) gets the predictions; the PNGs, and for table/csv
the accuracy and top-N JSON, go to ``--report_dir`` or else beside ``--output``, named after it
(``preds.csv`` -> ``preds-confusion.png``, ``preds-accuracy.json``, ...). Every file is written to a temp
file and renamed, after all the work is done, so an error leaves nothing half-written.

The preprocessing is the run's own (``inference/model.py``: ``data.preprocess_for_eval`` with the saved
contract; ten-crop per the run's ``config.data.ten_crop_eval`` unless ``--[no]ten_crop``), so classify
and ``evaluate`` agree image for image. The default layout is ``single`` (one device); any layout gives
the same probabilities.

The library is ``inference/classification.py``; heavy libraries are imported after the flags are parsed, so
``--help`` answers at once.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Sequence

from absl import flags

from alexnet_jax.runtime import cli
from alexnet_jax.runtime import confinement

FORMATS = ('table', 'json', 'csv')   # classification.write_results' formats
DEFAULT_LAYOUT = 'single'            # inference.DEFAULT_LAYOUT


# ---- Command line --------------------------------------------------------------------------------------

FLAGS = flags.FLAGS

# ``scheme://``: what a URL looks like on the command line (http, https, ftp, s3, gs, file, ...).
_URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')


def check_image_arguments(images: Sequence[str]) -> None:
  """Checks that every ``IMAGE`` argument names an image file, before anything is loaded.

  Raises:
    FileNotFoundError: some arguments are missing files (all of them named, in one line).
    ValueError: an argument is a URL (the tool works offline and fetches nothing) or a directory;
      the message says what to pass instead, with the missing files too if there are any.
  """
  urls = [name for name in images if _URL.match(name)]
  folders = [name for name in images if name not in urls and os.path.isdir(name)]
  missing = [name for name in images
             if name not in urls and name not in folders and not os.path.isfile(name)]
  problems = []
  if urls:
    problems.append(f'{", ".join(urls)}: {"is a URL" if len(urls) == 1 else "are URLs"}, and '
                    'classify works offline (it fetches nothing); download the file first and pass '
                    'its path')
  for name in folders:
    pattern = os.path.join(name, '*.jpg')
    problems.append(f'{name} is a directory, not an image: pass its images (e.g. {pattern}) or '
                    'list them in a file for --image_list=FILE')
  if missing:
    problems.append('no such image file: ' + ', '.join(missing))
  if not problems:
    return
  message = '; '.join(problems)   # one line: the CLI prints it as "error: ..."
  if urls or folders:
    raise ValueError(message)
  raise FileNotFoundError(message)


def main(argv):
  images = argv[1:]
  if bool(FLAGS.workdir) == bool(FLAGS.bundle):
    raise ValueError('give exactly one of --workdir and --bundle')
  if bool(images) == bool(FLAGS.image_list):
    raise ValueError('give images to classify, or --image_list=FILE (not both)')
  if FLAGS.format not in FORMATS:
    raise ValueError(f'--format={FLAGS.format!r}: choose one of {", ".join(FORMATS)}')
  if FLAGS.top_k < 1:
    raise ValueError(f'--top_k={FLAGS.top_k} must be at least 1')
  if FLAGS.limit < 0 or FLAGS.top_n_per_category < 0:
    raise ValueError('--limit and --top_n_per_category must be >= 0')
  if FLAGS.image_root and not FLAGS.image_list:
    raise ValueError('--image_root applies to --image_list only')
  check_image_arguments(images)  # before loading anything
  roots = confinement.parse_roots(FLAGS.confine_to)
  if roots:  # --confine_to (the dashboard's jobs): every image inside the roots, links resolved, first of all
    from alexnet_jax.data import lists as image_lists  # pylint: disable=g-import-not-at-top
    paths = ([e.path for e in image_lists.parse_image_list(
        FLAGS.image_list, num_classes=2**31, image_root=FLAGS.image_root, limit=FLAGS.limit)]
             if FLAGS.image_list else list(images))
    confinement.check_all(paths, roots, what='--image_list' if FLAGS.image_list else 'images')
  if not FLAGS.status_dir:
    _classify(images)
    return
  from alexnet_jax.runtime import status as status_lib
  with status_lib.StatusWriter(FLAGS.status_dir, 'classify', min_interval_s=1.0) as status:
    status.update(force=True, phase='loading the model')
    _classify(images, status)


def _classify(images: Sequence[str], status=None) -> None:
  from alexnet_jax import inference, models
  from alexnet_jax.data import lists as image_lists
  from alexnet_jax.inference import bundle, classification
  from alexnet_jax.runtime import devices
  from alexnet_jax.parallel import layouts
  files = bundle.read_model_files(FLAGS.workdir or FLAGS.bundle)
  devices.ensure_devices(layouts.devices_needed(
      FLAGS.layout, models.build(files.config.model, len(files.classes)).num_towers))
  if FLAGS.image_list:  # a malformed list stops us before any device work
    entries = image_lists.parse_image_list(FLAGS.image_list, num_classes=len(files.classes),
                               image_root=FLAGS.image_root, limit=FLAGS.limit)
  else:
    entries = [image_lists.Entry(name, name) for name in images]
  model = inference.load_from_files(files, step=FLAGS.step, layout=FLAGS.layout,
                                    batch_size=FLAGS.batch_size or None)
  if status is not None:
    status.update(force=True, phase='classifying', total=len(entries), done=0, step=model.step,
                  layout=model.layout.name)
  results = classification.classify_entries(model, entries, top_k=FLAGS.top_k, ten_crop=FLAGS.ten_crop,
                                            top_n_per_category=FLAGS.top_n_per_category, status=status)
  if results.errors and not FLAGS.image_list:
    # One image or a few named on the command line: each must work, and nothing is written.
    raise ValueError('; '.join(f'cannot classify {entries[i].name}: {msg}'
                               for i, msg in sorted(results.errors.items())))
  written = classification.write_results(results, FLAGS.format, FLAGS.output, FLAGS.report_dir,
                                         csv_output=FLAGS.csv)
  if status is not None:
    acc = results.accuracy or {}
    status.update(force=True, phase='written', failed=len(results.errors), top1=acc.get('top1'),
                  top5=acc.get('top5'), outputs=written)
  if results.errors:
    print(f'{len(results.errors)} of {len(entries)} images could not be read (listed in the output)',
          file=sys.stderr)
  if written:
    print('wrote ' + ', '.join(written), file=sys.stderr)
  elif results.accuracy is not None or results.top_n_per_category is not None:
    print('(give --output or --report_dir to also write the confusion matrix / top-N PNGs)',
          file=sys.stderr)


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  flags.DEFINE_string('workdir', None, 'A training run (its checkpoints, labels and preprocessing).')
  flags.DEFINE_string('bundle', None, 'A bundle written by alexnet_jax.export (.tar.gz, .zip, folder).')
  flags.DEFINE_string('step', 'latest', 'latest | best | a step number (workdir only)')
  flags.DEFINE_string('layout', DEFAULT_LAYOUT, 'single | model | data | hybrid | weird_trick | auto '
                      '(the same default as evaluate)')
  flags.DEFINE_integer('top_k', 5, 'Classes to show per image.')
  flags.DEFINE_bool('ten_crop', None, "The paper's 10-crop procedure (default: the run's "
                    'config.data.ten_crop_eval).')
  flags.DEFINE_string('format', 'table', 'table | json | csv')
  flags.DEFINE_string('output', '', 'File for the predictions (default: stdout).')
  flags.DEFINE_string('report_dir', '', 'Folder for the confusion / top-N PNGs and JSON '
                      '(default: beside --output).')
  flags.DEFINE_string('image_list', '', 'A DIGITS list file: "path [label]" per line.')
  flags.DEFINE_string('image_root', '', 'Base folder of relative paths in --image_list '
                      "(default: the list's folder).")
  flags.DEFINE_integer('limit', 0, 'Classify only the first N entries of --image_list (0: all).')
  flags.DEFINE_integer('top_n_per_category', 0, 'For each class, the N images scoring highest for it.')
  flags.DEFINE_integer('batch_size', 0, "Images per device call (default: the run's, at most 64).")
  flags.DEFINE_string('csv', '', 'Also write the predictions as CSV to this file (with --format=json).')
  flags.DEFINE_string('confine_to', '', 'ROOT[,ROOT]: refuse to run unless every image to classify '
                      'resolves (links followed) inside these folders (the dashboard sets it).')
  flags.DEFINE_string('status_dir', '', 'Keep DIR/status.json with the progress (done, total, ETA) '
                      "and the outcome, as the other tools keep their workdir's (the dashboard's jobs).")


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
