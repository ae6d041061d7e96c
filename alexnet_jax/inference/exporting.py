"""Exporting a run's snapshot as a self-contained bundle, atomically: the library behind
``python -m alexnet_jax.export`` (``export.py`` says what a bundle is for; ``bundle.py`` is the format),
and as an ONNX model or a Triton model repository (``export_onnx``; the graph: ``onnx_export.py``).

The bundle is assembled in a temporary folder beside the output and renamed into place once complete
(archives are written to a temporary file and renamed), so a failure leaves nothing behind and an
existing bundle is only replaced with ``overwrite``.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from typing import Any, Callable
import zipfile

from alexnet_jax import inference
from alexnet_jax.inference import bundle, onnx_export, triton as triton_lib
from alexnet_jax.runtime import fileio


def _archive_format(output: str) -> str:
  lower = output.lower()
  if lower.endswith(('.tar.gz', '.tgz')):
    return 'tar.gz'
  if lower.endswith('.zip'):
    return 'zip'
  return 'dir'


def export_model(workdir: str | os.PathLike, output: str | os.PathLike, *, step: str | int = 'latest',
                 overwrite: bool = False, files: bundle.ModelFiles | None = None
                 ) -> tuple[str, dict[str, Any]]:
  """Exports snapshot ``step`` of the run in ``workdir`` to ``output`` (.tar.gz, .tgz, .zip or a folder).

  ``files`` is ``bundle.read_model_files(workdir)`` when the caller has read them already (the command
  does, before JAX starts); by default they are read here.

  Returns (the bundle's path, its info.json). Raises FileExistsError if ``output`` exists and not
  ``overwrite``; FileNotFoundError for a workdir without checkpoints or a missing step.
  """
  workdir, output = os.fspath(workdir), os.path.abspath(os.fspath(output))
  check_output(output, overwrite)
  if os.path.isdir(workdir) and os.path.exists(os.path.join(workdir, bundle.MANIFEST_FILE)):
    raise ValueError(f'--workdir={workdir} is already a bundle; copy it instead of exporting it')
  # Restore on one device: the arrays come back [tower, ...] whatever layout trained them.
  if files is None:
    files = bundle.read_model_files(workdir)
  model = inference.load_from_files(files, step=step, layout='single')
  if model.kind != 'workdir':
    raise ValueError(f'--workdir={workdir} is not a training run')
  info = publish(output, lambda folder: bundle.write_bundle_dir(
      folder, workdir=model.path, host_params=model.host_params(), network=model.network,
      config=model.config, classes=model.classes, step=model.step,
      step_metrics=model.step_metrics, ten_crop=model.ten_crop))
  return output, info


def check_output(output: str, overwrite: bool) -> None:
  """Refuses an existing ``output`` unless ``overwrite``, and a file where a folder bundle is asked for."""
  if os.path.lexists(output) and not overwrite:
    raise FileExistsError(f'--output={output} exists; pass --overwrite to replace it')
  if _archive_format(output) == 'dir' and os.path.isfile(output):
    raise FileExistsError(f'--output={output} is a file; a folder bundle needs a folder path (or '
                          f'name it .tar.gz / .zip)')


def publish(output: str, write: Callable[[str], Any]) -> Any:
  """Runs ``write(folder)`` (it writes the bundle files into ``folder``) in a staging folder beside
  ``output``, verifies the bundle, and moves it, or its archive, into place; returns what ``write``
  returned. A failure leaves nothing behind."""
  kind = _archive_format(output)
  staging = fileio.make_staging_dir(output)
  try:
    files = os.path.join(staging, 'bundle')
    result = write(files)
    bundle.verify_bundle_dir(files)  # what we ship is what the loader accepts
    if kind == 'dir':
      fileio.replace_dir(files, output)
    else:
      archive = os.path.join(staging, 'archive')
      if kind == 'zip':
        with zipfile.ZipFile(archive, 'w', compression=zipfile.ZIP_DEFLATED) as z:
          for name in sorted(os.listdir(files)):
            z.write(os.path.join(files, name), arcname=name)
      else:
        with tarfile.open(archive, 'w:gz') as t:
          for name in sorted(os.listdir(files)):
            t.add(os.path.join(files, name), arcname=name)
      os.chmod(archive, 0o666 & ~fileio.umask())
      os.replace(archive, output)  # atomic on one filesystem: staging is beside output
  except OSError as e:   # a full disk, a read-only place: name --output, not the staging folder
    raise fileio.write_error(e, output) from e
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return result


# ---- ONNX (issue 22: models out) -----------------------------------------------------------------------

def export_onnx(source: str | os.PathLike, output: str | os.PathLike, *, step: str | int = 'latest',
                overwrite: bool = False, triton: bool = False, model_name: str = '',
                max_batch_size: int = 0, files: bundle.ModelFiles | None = None
                ) -> tuple[str, dict[str, Any]]:
  """Exports a run's snapshot or a bundle (``source``) as an ONNX model (``onnx_export.py``).

  ``output`` is the ``.onnx`` file, or with ``triton`` a Triton model repository folder that receives
  ``<model_name>/1/model.onnx``, ``<model_name>/config.pbtxt`` and ``<model_name>/labels.txt``
  (``model_name`` defaults to the network's name; ``max_batch_size`` to the model's batch size).
  Written atomically (a temporary file or folder beside ``output``, renamed into place).

  Returns (the path written, a summary: network, step, classes, input shape, bytes).
  """
  onnx_export.require_onnx()   # before any parameters are read
  target = os.path.abspath(os.fspath(output))
  if not triton and not target.lower().endswith('.onnx'):
    raise ValueError(f'--output={target}: an ONNX model is a PATH.onnx file (or pass --triton to write '
                     f'a Triton model repository folder)')
  if triton and os.path.isfile(target):
    raise FileExistsError(f'--output={target} is a file; --triton writes a model repository folder')
  if files is None:
    files = bundle.read_model_files(source)
  model = inference.load_from_files(files, step=step, layout='single')
  proto = onnx_export.build_onnx(model.host_params(), network=model.network.name,
                                 model_config=model.config.model, contract=model.contract,
                                 classes=model.classes,
                                 extra_metadata={'step': str(model.step), 'source': model.path})
  payload = proto.SerializeToString()
  summary = {'network': model.network.name, 'step': model.step, 'classes': model.num_classes,
             'input_shape': list(model.image_shape), 'bytes': len(payload)}
  if not triton:
    if os.path.lexists(target) and not overwrite:
      raise FileExistsError(f'--output={target} exists; pass --overwrite to replace it')
    try:
      fileio.write_bytes(target, payload)
    except OSError as e:
      raise fileio.write_error(e, target) from e
    return target, summary
  name = model_name or model.network.name
  if not triton_lib.valid_name(name):
    raise ValueError(f'--model_name={name!r}: a Triton model name is letters, digits, "_", "-" and "."')
  folder = os.path.join(target, name)
  if os.path.lexists(folder) and not overwrite:
    raise FileExistsError(f'{folder} exists in the model repository; pass --overwrite to replace it')
  staging = fileio.make_staging_dir(folder)
  try:
    staged = os.path.join(staging, name)
    os.makedirs(os.path.join(staged, '1'))
    with open(os.path.join(staged, '1', 'model.onnx'), 'wb') as f:
      f.write(payload)
    with open(os.path.join(staged, triton_lib.LABELS_FILE), 'w', encoding='utf-8') as f:
      f.write(''.join(c + '\n' for c in model.classes))
    with open(os.path.join(staged, 'config.pbtxt'), 'w', encoding='utf-8') as f:
      f.write(triton_lib.config_pbtxt(name, model.image_shape, model.num_classes,
                                      max_batch_size or model.batch_size))
    fileio.replace_dir(staged, folder)
  except OSError as e:
    raise fileio.write_error(e, folder) from e
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return folder, summary
