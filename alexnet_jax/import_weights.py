"""Weights from elsewhere as an ordinary bundle (issue 22, "Weights in"): start from ImageNet weights.

    python -m alexnet_jax.import_weights --source=alexnet.pth --output=bundles/torchvision_alexnet
    python -m alexnet_jax.import_weights --source=alexnet.safetensors --labels=imagenet_labels.txt \\
        --output=alexnet.tar.gz

The bundle (``inference/bundle.py``) is what ``export`` writes, so it classifies at once
(``python -m alexnet_jax.classify --bundle=bundles/torchvision_alexnet cat.jpg``,
``alexnet_jax.load(...)``) and starts a fine-tuning run (``--config.init_from=bundles/torchvision_alexnet``).

Supported: torchvision's ``alexnet`` state dict, ``.pth`` (read without PyTorch, by an unpickler that admits
tensors' storages only: a pickle naming any other class is refused, never run) or ``.safetensors``, into
``alexnet_owt`` with torchvision's preprocessing folded in, so the bundle's logits are torchvision's. Caffe
models and DIGITS archives (``--format=caffe|digits``) are not supported yet and say so. ``--labels``: a
labels.txt with one class name per line (default: class_0, class_1, ...). The library is
``inference/importers/``; heavy libraries are imported after the flags are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import os

from absl import flags

from alexnet_jax.runtime import cli

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}: give --source and --output')
  if not os.path.isfile(FLAGS.source):
    raise FileNotFoundError(f'--source={FLAGS.source}: no such file')
  if FLAGS.labels and not os.path.isfile(FLAGS.labels):
    raise FileNotFoundError(f'--labels={FLAGS.labels}: no such file')
  from alexnet_jax.inference import importers
  from alexnet_jax.runtime import devices
  importers.detect_format(FLAGS.source, FLAGS.format)   # an unsupported format is named before JAX starts
  devices.ensure_devices(1)
  path, info = importers.import_weights(FLAGS.source, FLAGS.output, labels=FLAGS.labels, fmt=FLAGS.format,
                                        overwrite=FLAGS.overwrite)
  print(f'wrote {path}: {info["model"]["name"]}, {info["model"]["num_classes"]} classes, '
        f'{info["model"]["parameters"]} parameters, from {info["imported_from"]["format"]} '
        f'{FLAGS.source}')


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  flags.DEFINE_string('source', None, 'The weights file: a torchvision AlexNet .pth or .safetensors.')
  flags.DEFINE_string('labels', None, 'labels.txt: one class name per line (default: class_0, ...).')
  flags.DEFINE_enum('format', 'auto', ['auto', 'torchvision', 'caffe', 'digits'],
                    'The source\'s format (auto: from the file). caffe and digits are not supported yet.')
  flags.DEFINE_string('output', None, 'PATH.tar.gz, PATH.tgz, PATH.zip, or a folder.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output.')
  flags.mark_flags_as_required(['source', 'output'])


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
