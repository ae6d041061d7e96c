"""The inference worker's pretrained-model requests: import an upload, verify a bundle, export ONNX.

They run in the inference worker's background lane (``inference_worker.make_answer`` adds ``OPS``), never
in the web process: importing weights, checking a bundle's parameters against its network and building
an ONNX graph all need the library (JAX, numpy). Everything is the library's own code:
``inference.importers`` (torchvision; Caffe and DIGITS archives where that helper is merged),
``inference.bundle`` (unpack, the manifest's sha256 sums, the parameters), ``exporting.export_onnx``.

    {"op": "import_pretrained", "source", "output", "format"?, "labels"?, "prototxt"?, "mean"?}
        -> describe's answer for the bundle written at ``output`` (a folder)
    {"op": "verify_bundle", "path"} -> {"ok", "manifest_files", "bytes", "info", "mean_per_channel", ...}
    {"op": "export_onnx", "source", "step", "triton", "cache_dir"} -> {"path", "size", "summary", "cached"}

An upload that is an archive is read member by member before anything is unpacked: an absolute path, a
``..`` or a link is refused, naming the member (``check_archive``). A problem with the request -- a file
that is not what it says, a foreign pickle, a shape that does not fit, onnx not installed -- is a
``Refused`` with one line for the page.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import zipfile
import zlib
from typing import Any

import jax
import numpy as np

from alexnet_jax import models
from alexnet_jax.inference import bundle, exporting, importers, onnx_export
from alexnet_jax.runtime import fileio
from alexnet_jax.dashboard.workers.worker_process import one_line

TAR_SUFFIXES = ('.tar.gz', '.tgz', '.tar')
ARCHIVE_SUFFIXES = TAR_SUFFIXES + ('.zip',)
MAX_MEMBERS = 10_000


class Refused(Exception):
  """A request that cannot be served as asked; its message is for the page."""


# ---- Archives -------------------------------------------------------------------------------------------

def _unsafe(name: str) -> bool:
  parts = name.replace('\\', '/').split('/')
  return name.startswith(('/', '\\')) or '..' in parts or (len(name) > 1 and name[1] == ':')


def check_archive(path: str) -> list[str]:
  """The member names of a .tar.gz/.tgz/.tar/.zip, after refusing absolute paths, ``..``, links and
  devices (before anything is unpacked), and archives that are truncated or not archives at all."""
  shown = os.path.basename(path)
  try:
    if path.lower().endswith('.zip'):
      with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        links = [i.filename for i in infos if (i.external_attr >> 16) & 0o170000 == 0o120000]
    else:
      with tarfile.open(path, 'r:*') as t:
        members = t.getmembers()      # reads to the end: a truncated archive fails here
        names = [m.name for m in members]
        links = [m.name for m in members if not (m.isfile() or m.isdir())]
  except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
    raise Refused(f'{shown} is truncated or not a {"zip" if path.lower().endswith(".zip") else "tar"} '
                  f'archive ({type(e).__name__}: {one_line(e)})') from None
  if len(names) > MAX_MEMBERS:
    raise Refused(f'{shown}: {len(names)} members; a model archive has a handful')
  bad = [n for n in names if _unsafe(n)]
  if bad:
    raise Refused(f'{shown}: unsafe member path {bad[0]!r} (absolute or with ..); not unpacking it')
  if links:
    raise Refused(f'{shown}: member {links[0]!r} is a link or device, not a file; not unpacking it')
  return names


def _is_bundle_archive(names: list[str]) -> bool:
  return any(n.replace('\\', '/').rstrip('/').split('/')[-1] == bundle.MANIFEST_FILE and
             n.replace('\\', '/').count('/') <= 1 for n in names)


def _unpack_bundle(source: str, output: str) -> None:
  """A bundle archive unpacked into ``output`` (a staging folder beside it, then renamed)."""
  staging = fileio.make_staging_dir(output)
  try:
    folder = bundle.extract_archive(source, staging)
    bundle.verify_bundle_dir(folder, name=os.path.basename(source))
    fileio.replace_dir(folder, output)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


# ---- Import and verify ----------------------------------------------------------------------------------

def import_pretrained(request: dict) -> dict[str, Any]:
  """The upload ``source`` (with its side files) as a verified bundle folder at ``output``."""
  source, output = request.get('source'), request.get('output')
  if not source or not os.path.isfile(source) or not output:
    raise Refused('no uploaded file to import')
  fmt = request.get('format') or 'auto'
  extra = {k: request[k] for k in ('prototxt', 'mean') if request.get(k)}   # Caffe's side files
  try:
    if source.lower().endswith(ARCHIVE_SUFFIXES) and fmt in ('auto', 'bundle', 'digits'):
      names = check_archive(source)
      if fmt == 'bundle' or (fmt == 'auto' and _is_bundle_archive(names)):
        _unpack_bundle(source, output)
        return verify(output, name=os.path.basename(source))
      fmt = 'digits'
    elif fmt == 'bundle':
      raise Refused(f'{os.path.basename(source)}: a bundle is uploaded as a .tar.gz or .zip archive')
    importers.detect_format(source, fmt)
    importers.import_weights(source, output, labels=request.get('labels') or None, fmt=fmt, overwrite=True,
                             **extra)
  except Refused:
    raise
  except (ValueError, FileNotFoundError, FileExistsError, KeyError, OSError) as e:
    raise Refused(one_line(e)) from None
  return verify(output, name=os.path.basename(source))


def verify(path: str, *, name: str = '') -> dict[str, Any]:
  """Checks a bundle folder: every file against its manifest's sha256, the parameters against the
  network its config.json builds (names, shapes, dtypes). Returns what the page shows."""
  name = name or path
  try:
    manifest = bundle.verify_bundle_dir(path, name=name)
    files = bundle.read_model_files(path)          # verifies again, reads config, labels, contract
    network = models.build(files.config.model, len(files.classes))
    expected = jax.eval_shape(lambda key: network.init(key, files.contract.input_shape), jax.random.key(0))
    bundle.check_param_shapes(files.params, expected, name=name)
  except (ValueError, FileNotFoundError, KeyError, TypeError, OSError) as e:
    raise Refused(one_line(e)) from None
  mean = None if files.contract.mean_mode == 'none' else np.asarray(files.contract.mean_image, np.float64)
  entries = manifest['files']
  return {'ok': True, 'info': files.info, 'manifest_files': len(entries),
          'bytes': int(sum(int(v['bytes']) for v in entries.values())),
          'mean_per_channel': None if mean is None else [round(float(v), 3) for v in
                                                          mean.reshape(-1, mean.shape[-1]).mean(0)]}


def verify_bundle(request: dict) -> dict[str, Any]:
  path = request.get('path')
  if not path or not os.path.isdir(path):
    raise Refused(f'{path}: no such bundle folder')
  return verify(path)


# ---- ONNX -----------------------------------------------------------------------------------------------

def identity(path: str, step: Any) -> tuple[int, int]:
  """(inode, mtime) of what holds a step's parameters -- a run's ``checkpoints/<step>`` folder or a
  bundle's manifest -- so a run trained again, or a bundle replaced, under the same path differs."""
  target = os.path.join(path, 'checkpoints', str(step))
  if not os.path.isdir(target):
    target = os.path.join(path, bundle.MANIFEST_FILE)
  st = os.stat(target)
  return st.st_ino, st.st_mtime_ns


def export_onnx(request: dict) -> dict[str, Any]:
  """The run's snapshot or the bundle as ``model.onnx`` (or a Triton model repository as a .zip), made
  once per (source, step, identity) in ``cache_dir``."""
  source, step, triton = request.get('source'), request.get('step', 'latest'), bool(request.get('triton'))
  cache_dir = request.get('cache_dir')
  if onnx_export.onnx is None:     # an optional extra: say so in the page's words, not the command's flags
    raise Refused(f"ONNX export needs the onnx package on the dashboard's machine, which is not installed: "
                  f'{onnx_export.INSTALL_HINT}')
  if not source or not os.path.isdir(source) or not cache_dir:
    raise Refused(f'{source}: no such run or bundle')
  try:
    key = json.dumps([os.path.realpath(source), str(step), identity(source, step), triton])
  except OSError as e:
    raise Refused(one_line(e)) from None
  # Named as the bundle downloads are (``files.remove_bundles`` takes a deleted job's with them).
  digest = hashlib.sha1(key.encode()).hexdigest()[:12]
  stem = f'{os.path.basename(source.rstrip(os.sep)) or "model"}-step{step}-{digest}'
  path = os.path.join(cache_dir, stem + ('-triton.zip' if triton else '.onnx'))
  info_path = path + '.info.json'
  if os.path.isfile(path) and isinstance(fileio.read_json(info_path), dict):
    return {'path': path, 'size': os.path.getsize(path), 'summary': fileio.read_json(info_path),
            'cached': True}
  os.makedirs(cache_dir, exist_ok=True)
  staging = fileio.make_staging_dir(path)
  try:
    target = os.path.join(staging, 'repository' if triton else 'model.onnx')
    _, summary = exporting.export_onnx(source, target, step=step, overwrite=True, triton=triton)
    if triton:
      archive = os.path.join(staging, 'repository.zip')
      with zipfile.ZipFile(archive, 'w', compression=zipfile.ZIP_DEFLATED) as z:
        for folder, _, names in os.walk(target):
          for n in sorted(names):
            full = os.path.join(folder, n)
            z.write(full, arcname=os.path.relpath(full, target))
      target = archive
    os.replace(target, path)
  except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
    raise Refused(one_line(e)) from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  fileio.write_json(info_path, summary)
  return {'path': path, 'size': os.path.getsize(path), 'summary': summary, 'cached': False}


OPS = {'import_pretrained': import_pretrained, 'verify_bundle': verify_bundle, 'export_onnx': export_onnx}
