"""Weights from elsewhere as an ordinary bundle (issue 22, "Weights in"): start from ImageNet weights.

    python -m alexnet_jax.import_weights --source=alexnet.pth --output=bundles/torchvision_alexnet
    python -m alexnet_jax.import_weights --source=alexnet.safetensors --labels=imagenet_labels.txt \\
        --output=alexnet.tar.gz
    python -m alexnet_jax.import_weights --source=bvlc_alexnet.caffemodel --prototxt=deploy.prototxt \\
        --mean=ilsvrc_2012_mean.binaryproto --labels=synset_words.txt --output=bundles/bvlc_alexnet
    python -m alexnet_jax.import_weights --source=20160101-120000-ab12_epoch_30.0.tar.gz \\
        --output=bundles/my_digits_model

The bundle (``inference/bundle.py``) is what ``export`` writes, so it classifies at once
(``python -m alexnet_jax.classify --bundle=bundles/torchvision_alexnet cat.jpg``,
``alexnet_jax.load(...)``) and starts a fine-tuning run (``--config.init_from=bundles/torchvision_alexnet``;
``--config.init_from`` also takes these source files directly).

Supported (the format recognised from the file, or ``--format``):

* torchvision's ``alexnet`` state dict, ``.pth`` (read without PyTorch, by an unpickler that admits tensors'
  storages only: a pickle naming any other class is refused, never run) or ``.safetensors``, into
  ``alexnet_owt`` with torchvision's preprocessing folded in, so the bundle's logits are torchvision's;
* a Caffe ``.caffemodel`` (both of Caffe's formats) with its ``--prototxt`` (default: ``deploy.prototxt``
  beside it) and ``--mean`` (a ``.binaryproto`` mean image, e.g. ``ilsvrc_2012_mean.binaryproto``):
  ``bvlc_alexnet`` into the two-tower ``alexnet`` (``lrn=caffe_across``), DIGITS' LeNet into ``lenet``,
  ``bvlc_googlenet`` into ``googlenet``; BGR turned RGB; CaffeNet is refused (it pools before its LRN);
* a DIGITS "Download Model" archive (``.tar.gz``/``.tgz``/``.tar``/``.zip``), with DIGITS' preprocessing
  contract (image size, resize mode, channels, mean) and its labels.txt.

``--labels``: a labels.txt with one class name per line (default: the archive's, else class_0, class_1,
...). The library is ``inference/importers/``; heavy libraries are imported after the flags are parsed, so
``--help`` answers at once.
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
  for flag in ('labels', 'prototxt', 'mean'):
    value = getattr(FLAGS, flag)
    if value and not os.path.isfile(value):
      raise FileNotFoundError(f'--{flag}={value}: no such file')
  from alexnet_jax.inference import importers
  from alexnet_jax.runtime import devices
  # A format or flag combination that cannot work is named before JAX starts.
  importers.detect_format(FLAGS.source, FLAGS.format, prototxt=FLAGS.prototxt, mean=FLAGS.mean)
  devices.ensure_devices(1)
  path, info = importers.import_weights(FLAGS.source, FLAGS.output, labels=FLAGS.labels, fmt=FLAGS.format,
                                        overwrite=FLAGS.overwrite, prototxt=FLAGS.prototxt, mean=FLAGS.mean)
  print(f'wrote {path}: {info["model"]["name"]}, {info["model"]["num_classes"]} classes, '
        f'{info["model"]["parameters"]} parameters, from {info["imported_from"]["format"]} '
        f'{FLAGS.source}')


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  flags.DEFINE_string('source', None, 'The weights: a torchvision AlexNet .pth or .safetensors, a Caffe '
                      '.caffemodel, or a DIGITS "Download Model" archive (.tar.gz, .tgz, .tar, .zip).')
  flags.DEFINE_string('prototxt', None,
                      'A .caffemodel\'s deploy.prototxt (default: deploy.prototxt beside it).')
  flags.DEFINE_string('mean', None,
                      'A .caffemodel\'s mean image, .binaryproto (ilsvrc_2012_mean.binaryproto); '
                      'default: none.')
  flags.DEFINE_string('labels', None, 'labels.txt: one class name per line (default: a DIGITS archive\'s, '
                      'else class_0, ...).')
  flags.DEFINE_enum('format', 'auto', ['auto', 'torchvision', 'caffe', 'digits'],
                    'The source\'s format (auto: from the file\'s name, and an archive\'s contents).')
  flags.DEFINE_string('output', None, 'PATH.tar.gz, PATH.tgz, PATH.zip, or a folder.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output.')
  flags.mark_flags_as_required(['source', 'output'])


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
