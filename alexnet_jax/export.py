"""A self-contained model bundle for offline inference: DIGITS' "Download Model".

    python -m alexnet_jax.export --workdir=runs/demo [--step=latest|best|N] --output=demo.tar.gz
    python -m alexnet_jax.export --workdir=runs/demo --output=demo.zip
    python -m alexnet_jax.export --workdir=runs/demo --output=bundles/demo      # a folder

A bundle holds, flat at its root:

    params.npz       the parameters, one array per leaf: 'towers/conv1/kernel' f32[2, 11, 11, 3, 48], ...
    config.json      the run's resolved config (the network to build, the test-time procedure)
    labels.txt       class names, line i = label i
    mean.npy         the training split's mean image
    preprocess.json  the preprocessing contract (resize mode, sizes, channels, mean mode)
    info.json        model, classes, contract, step, metrics at that step, versions, creation time
    manifest.json    the sha256 and size of every file above

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
an existing bundle is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import tempfile
from typing import Any, Optional

import numpy as np
from absl import flags

from alexnet_jax import cli, fileio, inference, metrics_writer
from alexnet_jax import data as data_lib

FORMAT = 'alexnet_jax-bundle'
FORMAT_VERSION = 1
BUNDLE_FILES = (inference.PARAMS_FILE, inference.CONFIG_FILE, data_lib.contract.LABELS_FILE,
                data_lib.contract.MEAN_FILE, data_lib.contract.CONTRACT_FILE, inference.INFO_FILE)


def versions() -> dict[str, str]:
  """Versions of what computed and wrote the bundle."""
  import flax
  import jax
  out = {'python': platform.python_version(), 'numpy': np.__version__, 'jax': jax.__version__,
         'flax': flax.__version__}
  try:
    from importlib import metadata
    out['alexnet_jax'] = metadata.version('alexnet_jax')
  except Exception:  # noqa: BLE001  (not installed: running from a checkout)
    out['alexnet_jax'] = 'unknown'
  return out


def metrics_at_step(workdir: str, step: int, saved: Optional[dict[str, Any]] = None) -> dict[str, Any]:
  """The metrics logged at ``step`` per split (``{'val': {...}, 'train': {...}}``) from metrics.jsonl,
  plus those saved with the checkpoint (``'checkpoint'``)."""
  out: dict[str, Any] = {}
  for record in metrics_writer.read_metrics(workdir):
    if record.get('step') == step:
      out[record['split']] = {k: v for k, v in record.items() if k not in ('split', 'step')}
  if saved:
    out['checkpoint'] = dict(saved)
  return out


def write_manifest(directory: str, names: tuple[str, ...] = BUNDLE_FILES) -> dict[str, Any]:
  """Writes ``manifest.json`` with the sha256 and size of ``names``; returns it."""
  manifest = {'format': FORMAT, 'version': FORMAT_VERSION,
              'files': {name: {'sha256': inference.sha256_file(os.path.join(directory, name)),
                               'bytes': os.path.getsize(os.path.join(directory, name))}
                        for name in names}}
  with open(os.path.join(directory, inference.MANIFEST_FILE), 'w', encoding='utf-8') as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  return manifest


def write_bundle_dir(model: inference.Model, directory: str) -> dict[str, Any]:
  """Writes the bundle files of ``model`` (loaded from a workdir) into ``directory``; returns info.json."""
  workdir = model.path
  os.makedirs(directory, exist_ok=True)
  inference.save_params_npz(model.host_params(), os.path.join(directory, inference.PARAMS_FILE))
  for name in (inference.CONFIG_FILE, data_lib.contract.LABELS_FILE, data_lib.contract.MEAN_FILE,
               data_lib.contract.CONTRACT_FILE):
    shutil.copyfile(os.path.join(workdir, name), os.path.join(directory, name))
  with open(os.path.join(workdir, data_lib.contract.CONTRACT_FILE), encoding='utf-8') as f:
    contract = json.load(f)
  config = model.config
  info = {
      'format': FORMAT, 'format_version': FORMAT_VERSION,
      'model': {'name': model.network.name, 'width': config.model.width,
                'towers': model.network.num_towers, 'num_classes': model.num_classes,
                'dtype': config.model.dtype, 'lrn': config.model.lrn,
                'parameters': int(sum(a.size for a in _leaves(model.host_params())))},
      'classes': model.classes,
      'preprocess': contract,
      'ten_crop': model.ten_crop,
      'step': model.step,
      'metrics': metrics_at_step(workdir, model.step, model.step_metrics),
      'trained_layout': config.layout,
      'parameters_file': {'name': inference.PARAMS_FILE, 'format': 'npz',
                          'note': "tower-split arrays are [tower, ...]; 'head/bias' is fc8's bias"},
      'versions': versions(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'source_workdir': os.path.abspath(workdir),
  }
  with open(os.path.join(directory, inference.INFO_FILE), 'w', encoding='utf-8') as f:
    json.dump(info, f, indent=2)
  write_manifest(directory)
  return info


def _leaves(tree):
  for value in tree.values():
    if isinstance(value, dict):
      yield from _leaves(value)
    else:
      yield value


def _archive_format(output: str) -> str:
  lower = output.lower()
  if lower.endswith(('.tar.gz', '.tgz')):
    return 'tar.gz'
  if lower.endswith('.zip'):
    return 'zip'
  return 'dir'


def export_model(workdir: str | os.PathLike, output: str | os.PathLike, *, step: str | int = 'latest',
                 overwrite: bool = False) -> tuple[str, dict[str, Any]]:
  """Exports snapshot ``step`` of the run in ``workdir`` to ``output`` (.tar.gz, .tgz, .zip or a folder).

  Returns (the bundle's path, its info.json). Raises FileExistsError if ``output`` exists and not
  ``overwrite``; FileNotFoundError for a workdir without checkpoints or a missing step.
  """
  workdir, output = os.fspath(workdir), os.path.abspath(os.fspath(output))
  kind = _archive_format(output)
  if os.path.lexists(output) and not overwrite:
    raise FileExistsError(f'--output={output} exists; pass --overwrite to replace it')
  if kind == 'dir' and os.path.isfile(output):
    raise FileExistsError(f'--output={output} is a file; a folder bundle needs a folder path (or '
                          f'name it .tar.gz / .zip)')
  if os.path.isdir(workdir) and os.path.exists(os.path.join(workdir, inference.MANIFEST_FILE)):
    raise ValueError(f'--workdir={workdir} is already a bundle; copy it instead of exporting it')
  # Restore on one device: the arrays come back [tower, ...] whatever layout trained them.
  model = inference.load(workdir, step=step, layout='single')
  if model.kind != 'workdir':
    raise ValueError(f'--workdir={workdir} is not a training run')
  staging = make_staging_dir(output)
  try:
    files = os.path.join(staging, 'bundle')
    info = write_bundle_dir(model, files)
    inference.verify_bundle_dir(files)  # what we ship is what the loader accepts
    if kind == 'dir':
      replace_dir(files, output)
    else:
      archive = os.path.join(staging, 'archive')
      if kind == 'zip':
        import zipfile
        with zipfile.ZipFile(archive, 'w', compression=zipfile.ZIP_DEFLATED) as z:
          for name in sorted(os.listdir(files)):
            z.write(os.path.join(files, name), arcname=name)
      else:
        import tarfile
        with tarfile.open(archive, 'w:gz') as t:
          for name in sorted(os.listdir(files)):
            t.add(os.path.join(files, name), arcname=name)
      os.chmod(archive, 0o666 & ~fileio.umask())
      os.replace(archive, output)  # atomic on one filesystem: staging is beside output
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return output, info


def make_staging_dir(output: str) -> str:
  """A fresh temporary folder beside ``output`` (same filesystem, so renames are atomic)."""
  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  return tempfile.mkdtemp(prefix='.' + os.path.basename(output) + '.', suffix='.tmp', dir=parent)


def replace_dir(new: str, output: str) -> None:
  """Moves the finished folder ``new`` to ``output``; an old ``output`` is swapped out only once ``new`` is
  complete, and deleted after (``new`` must be on the same filesystem, e.g. a temp folder beside it)."""
  if not os.path.lexists(output):
    os.rename(new, output)
    return
  old = output + '.old-' + str(os.getpid())
  os.rename(output, old)
  try:
    os.rename(new, output)
  except BaseException:
    os.rename(old, output)
    raise
  if os.path.isdir(old) and not os.path.islink(old):
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.unlink(old)


# ---- Command line --------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}: give --workdir and --output')
  from alexnet_jax.devices import ensure_devices
  ensure_devices(1)
  path, info = export_model(FLAGS.workdir, FLAGS.output, step=FLAGS.step, overwrite=FLAGS.overwrite)
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
