"""A self-contained model bundle for offline inference: DIGITS' "Download Model".

    python -m alexnet_jax.export --workdir=runs/demo [--step=latest|best|N] --output=demo.tar.gz
    python -m alexnet_jax.export --workdir=runs/demo --output=demo.zip
    python -m alexnet_jax.export --workdir=runs/demo --output=bundles/demo      # a folder

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


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}: give --workdir and --output')
  from alexnet_jax.inference import bundle, exporting
  from alexnet_jax.runtime import devices
  files = bundle.read_model_files(FLAGS.workdir)   # read once, and a missing run is named before JAX starts
  devices.ensure_devices(1)
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
  flags.DEFINE_string('step', 'latest', 'latest | best | a step number')
  flags.DEFINE_string('output', None, 'PATH.tar.gz, PATH.tgz, PATH.zip, or a folder.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output.')
  flags.mark_flags_as_required(['workdir', 'output'])


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
