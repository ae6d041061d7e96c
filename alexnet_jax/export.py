"""A self-contained model bundle for offline inference: DIGITS' "Download Model".

    python -m alexnet_jax.export --workdir=runs/demo [--step=latest|best|N] --output=demo.tar.gz
    python -m alexnet_jax.export --workdir=runs/demo --output=demo.zip
    python -m alexnet_jax.export --workdir=runs/demo --output=bundles/demo      # a folder
    python -m alexnet_jax.export --workdir=runs/demo --format=onnx --output=demo.onnx
    python -m alexnet_jax.export --bundle=demo.tar.gz --format=onnx --output=model_repository --triton

``--format=onnx`` (issue 22) writes the network as an ONNX graph for onnxruntime, TensorRT or Triton,
from a run's snapshot or a bundle: input ``image`` (the crop as float32 NHWC pixel values 0..255, batch
dynamic; the mean is subtracted inside), outputs ``logits`` and ``probabilities``, labels and the
preprocessing contract in its metadata (``inference/onnx_export.py``). ``--triton`` writes a Triton model
repository instead: ``<output>/<name>/1/model.onnx`` and ``<name>/config.pbtxt`` (``inference/triton.py``).
It needs the optional extra: ``pip install -e .[onnx]``.

A bundle (its files, writer and reader: ``inference/bundle.py``) holds the parameters as ``params.npz``, the run's
config, labels, mean image and preprocessing contract, ``info.json`` and a sha256 ``manifest.json``,
and classifies without the workdir: ``python -m alexnet_jax.classify --bundle=demo.tar.gz IMAGE`` or
``alexnet_jax.load('demo.tar.gz').predict(images)``.

Why ``.npz`` and not the orbax checkpoint: a checkpoint is a folder of OCDBT shards holding the optimizer
state and the data-iterator position as well (three times the parameters' size here), and reading it
needs orbax and tensorstore of a compatible version. An ``.npz`` is one file of plain float32 arrays that
numpy alone reads (``np.load``, also outside JAX -- e.g. to port the weights), loaded with
``allow_pickle=False`` so that opening a bundle from elsewhere can never run code. The arrays keep the
layout-free ``[tower, ...]`` form, so a bundle restores onto any layout.

Integrity: ``classify`` and ``load`` check every file against ``manifest.json`` before reading any of
them, so a truncated download or an edited file is reported as such, naming the file, instead of
producing wrong predictions. (The manifest protects against accidents, not against someone who rewrites
the manifest too; sign the archive for that.)

Atomic: the bundle is assembled in a temporary folder beside ``--output`` and renamed into place once
complete (archives are written to a temporary file and renamed), so a failure leaves nothing behind and
an existing bundle is only replaced with ``--overwrite``. The library is ``inference/exporting.py``; heavy
libraries are imported after the flags are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import os

from absl import flags

from alexnet_jax.runtime import cli


# ---- Command line --------------------------------------------------------------------------------------

FLAGS = flags.FLAGS
FORMATS = ('bundle', 'onnx')


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}: give --workdir (or --bundle) and --output')
  if FLAGS.format not in FORMATS:
    raise ValueError(f'--format={FLAGS.format!r}: expected one of {", ".join(FORMATS)}')
  if bool(FLAGS.workdir) == bool(FLAGS.bundle):
    raise ValueError('give exactly one of --workdir=RUN and --bundle=BUNDLE')
  if FLAGS.format == 'bundle' and FLAGS.bundle:
    raise ValueError(f'--bundle={FLAGS.bundle} is a bundle already; --bundle is for --format=onnx')
  if FLAGS.triton and FLAGS.format != 'onnx':
    raise ValueError('--triton writes an ONNX model repository: add --format=onnx')
  from alexnet_jax.inference import bundle, exporting, onnx_export
  from alexnet_jax.runtime import devices
  if FLAGS.format == 'onnx':
    onnx_export.require_onnx()   # one line naming the extra, before any model is read
  source = FLAGS.workdir or FLAGS.bundle
  files = bundle.read_model_files(source)   # read once, and a missing run is named before JAX starts
  devices.ensure_devices(1)
  if FLAGS.format == 'onnx':
    path, summary = exporting.export_onnx(
        source, FLAGS.output, step=FLAGS.step, overwrite=FLAGS.overwrite, triton=FLAGS.triton,
        model_name=FLAGS.model_name, max_batch_size=FLAGS.max_batch_size, files=files)
    print(f'wrote {path} ({summary["bytes"]} bytes of ONNX: {summary["network"]}, step {summary["step"]}, '
          f'{summary["classes"]} classes, input [batch, {", ".join(map(str, summary["input_shape"]))}])')
    return
  path, info = exporting.export_model(FLAGS.workdir, FLAGS.output, step=FLAGS.step, overwrite=FLAGS.overwrite,
                                      files=files)
  val = info['metrics'].get('val') or {}
  summary = f'step {info["step"]}'
  if 'top1' in val:
    summary += f', val top-1 {100 * val["top1"]:.2f}%'
  print(f'wrote {path} ({os.path.getsize(path) if os.path.isfile(path) else _dir_size(path)} bytes: '
        f'{info["model"]["name"]}, {info["model"]["num_classes"]} classes, {summary})')


def _dir_size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  flags.DEFINE_string('workdir', None, 'The training run to export.')
  flags.DEFINE_string('bundle', None, 'A bundle to export (with --format=onnx), instead of --workdir.')
  flags.DEFINE_string('step', 'latest', 'latest | best | a step number')
  flags.DEFINE_string('format', 'bundle', 'bundle (an alexnet_jax bundle) | onnx (an ONNX model).')
  flags.DEFINE_string('output', None, 'PATH.tar.gz, PATH.tgz, PATH.zip, or a folder; PATH.onnx for '
                      '--format=onnx; the model repository folder with --triton.')
  flags.DEFINE_bool('triton', False, 'With --format=onnx: write a Triton model repository layout.')
  flags.DEFINE_string('model_name', '', 'With --triton: the model\'s name (default: the network\'s).')
  flags.DEFINE_integer('max_batch_size', 0, 'With --triton: max_batch_size (default: the run\'s '
                       'batch size, at most 64).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output.')
  flags.mark_flags_as_required(['output'])


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
