"""The model bundle format: what ``export`` writes and what ``load``/``classify --bundle`` read, side by side.

A bundle holds, flat at its root:

    params.npz       the parameters, one array per leaf: 'towers/conv1/kernel' f32[2, 11, 11, 3, 48], ...
    config.json      the run's resolved config (the network to build, the test-time procedure)
    labels.txt       class names, line i = label i
    mean.npy         the training split's mean image
    preprocess.json  the preprocessing contract (resize mode, sizes, channels, mean mode)
    info.json        model, classes, contract, step, metrics at that step, versions, creation time
    manifest.json    the sha256 and size of every file above

Readers check every file against ``manifest.json`` before reading any of them (``verify_bundle_dir``), so
a truncated download or an edited file is reported as such, naming the file. ``read_model_files`` also
reads a training workdir's labels, contract and config the same way (``ModelFiles``), so the inference
library sees one shape whatever the path holds. ``.npz`` files are read with ``allow_pickle=False``: a
bundle can never run code. Why ``.npz`` and not an orbax checkpoint: see ``export.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from importlib import metadata
import json
import os
import platform
import shutil
import tarfile
import tempfile
from typing import Any, Optional
import zipfile
import zlib

import flax
import jax
import ml_collections
import numpy as np

from alexnet_jax import data as data_lib
from alexnet_jax.data import lists as lists_lib
from alexnet_jax.models import trees
from alexnet_jax.run import metrics_writer
from alexnet_jax.run.workdir import CONFIG_FILE, read_config
from alexnet_jax.runtime import fileio

PARAMS_FILE = 'params.npz'
MANIFEST_FILE = 'manifest.json'
INFO_FILE = 'info.json'
ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.zip')
FORMAT = 'alexnet_jax-bundle'
FORMAT_VERSION = 1
BUNDLE_FILES = (PARAMS_FILE, CONFIG_FILE, data_lib.contract.LABELS_FILE,
                data_lib.contract.MEAN_FILE, data_lib.contract.CONTRACT_FILE, INFO_FILE)


class BundleError(ValueError):
  """A bundle that is not one, is truncated, or does not match its manifest (tampered or corrupted)."""


# ---- What a path holds ---------------------------------------------------------------------------------

def is_archive(path: str | os.PathLike) -> bool:
  return os.fspath(path).lower().endswith(ARCHIVE_SUFFIXES)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while True:
      block = f.read(chunk)
      if not block:
        return h.hexdigest()
      h.update(block)


def verify_bundle_dir(directory: str, *, name: Optional[str] = None) -> dict[str, Any]:
  """Checks every file of ``manifest.json`` (present, size, sha256); returns the manifest.

  Raises ``BundleError`` saying which file is missing, truncated or altered. Files the manifest does not
  list are never read, so they are ignored.
  """
  name = name or directory
  path = os.path.join(directory, MANIFEST_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      manifest = json.load(f)
    files = manifest['files']
  except FileNotFoundError:
    raise BundleError(f'{name} is not an alexnet_jax model bundle: it has no {MANIFEST_FILE} '
                      f'(write bundles with python -m alexnet_jax.export)') from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise BundleError(f'{name}: {MANIFEST_FILE} is unreadable ({e}); the bundle is truncated or '
                      f'corrupted, export it again') from None
  if not isinstance(files, dict):
    raise BundleError(f'{name}: {MANIFEST_FILE} has no file list; the bundle is corrupted')
  for rel, expected in sorted(files.items()):
    file_path = os.path.join(directory, rel)
    if os.path.isabs(rel) or '..' in rel.replace('\\', '/').split('/'):
      raise BundleError(f'{name}: the manifest names an unsafe path {rel!r}; not reading this bundle')
    if not isinstance(expected, dict) or not {'bytes', 'sha256'} <= set(expected):
      raise BundleError(f'{name}: {MANIFEST_FILE} has no size and sha256 for {rel}; the bundle is '
                        f'corrupted')
    if not os.path.isfile(file_path):
      raise BundleError(f'{name} is incomplete: {rel} is missing (the manifest lists it)')
    size = os.path.getsize(file_path)
    if size != expected['bytes']:
      raise BundleError(f'{name} is truncated or altered: {rel} has {size} bytes, the manifest says '
                        f'{expected["bytes"]}; copy or export the bundle again')
    if sha256_file(file_path) != expected['sha256']:
      raise BundleError(f'{name}: {rel} does not match its sha256 in the manifest: the bundle was '
                        f'modified or corrupted after export; copy or export it again')
  return manifest


def extract_archive(path: str, destination: str) -> str:
  """Unpacks a .tar.gz/.tgz/.zip bundle into ``destination``; returns the folder holding the manifest.

  Member paths are checked (no absolute paths, no ``..``, no links), and a truncated or corrupt archive
  is a ``BundleError`` rather than a library traceback.
  """
  try:
    if path.lower().endswith('.zip'):
      with zipfile.ZipFile(path) as z:
        bad = z.testzip()  # reads every member and checks its CRC
        if bad is not None:
          raise BundleError(f'{path} is corrupt: the zip member {bad} fails its CRC check')
        for member in z.namelist():
          parts = member.replace('\\', '/').split('/')
          if member.startswith(('/', '\\')) or '..' in parts:
            raise BundleError(f'{path}: unsafe member path {member!r}; not extracting this archive')
        z.extractall(destination)
    else:
      with tarfile.open(path, 'r:*') as t:
        t.extractall(destination, filter='data')  # refuses absolute paths, '..' and links outside
  except BundleError:
    raise
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such bundle') from None
  except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
    raise BundleError(f'{path} is truncated or corrupt and cannot be unpacked ({type(e).__name__}: '
                      f'{e}); copy or export the bundle again') from None
  if os.path.exists(os.path.join(destination, MANIFEST_FILE)):
    return destination
  entries = [e for e in os.listdir(destination) if not e.startswith('.')]
  if len(entries) == 1 and os.path.isfile(os.path.join(destination, entries[0], MANIFEST_FILE)):
    return os.path.join(destination, entries[0])  # an archive of the bundle folder itself
  raise BundleError(f'{path} is not an alexnet_jax model bundle: it has no {MANIFEST_FILE}')


@dataclasses.dataclass
class ModelFiles:
  """Everything but the parameters, read from a workdir or a (verified) bundle.

  Attributes:
    path: what the user gave.
    kind: 'workdir' or 'bundle'.
    config: the run's resolved config (``config.json``).
    classes: class names, label i = ``classes[i]`` (``labels.txt``).
    contract: the preprocessing the network was trained with.
    info: a bundle's ``info.json`` (empty for a workdir).
    params: a bundle's parameters as numpy arrays (None for a workdir: they come from a checkpoint).
  """
  path: str
  kind: str
  config: ml_collections.ConfigDict
  classes: list[str]
  contract: data_lib.PreprocessContract
  info: dict[str, Any]
  params: Optional[dict[str, Any]] = None


def _read_common(directory: str, *, what: str) -> tuple[ml_collections.ConfigDict, list[str],
                                                          data_lib.PreprocessContract]:
  config = read_config(directory)   # one reader of config.json, one set of messages (run/workdir.py)
  labels_path = os.path.join(directory, data_lib.contract.LABELS_FILE)
  if not os.path.isfile(labels_path):
    raise FileNotFoundError(f'{what} has no labels.txt: was the run started by this version of '
                            f'alexnet_jax.train?')
  classes = lists_lib.read_labels_file(labels_path, what=what)
  contract = data_lib.load_contract(directory)
  return config, classes, contract


def read_model_files(path: str | os.PathLike) -> ModelFiles:
  """Reads a workdir or a bundle (folder or archive, verified against its manifest)."""
  path = os.fspath(path)
  if is_archive(path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path}: no such bundle')
    scratch = tempfile.mkdtemp(prefix='alexnet_bundle_')
    try:
      return _read_bundle_dir(extract_archive(path, scratch), name=path)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)  # everything was read into memory
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no such workdir or bundle (expected a training run directory, '
                            f'a bundle directory, or a {"/".join(ARCHIVE_SUFFIXES)} bundle)')
  if os.path.exists(os.path.join(path, MANIFEST_FILE)):
    return _read_bundle_dir(path, name=path)
  config, classes, contract = _read_common(path, what=path)
  return ModelFiles(path, 'workdir', config, classes, contract, {})


def _read_bundle_dir(directory: str, *, name: str) -> ModelFiles:
  manifest = verify_bundle_dir(directory, name=name)
  for required in (PARAMS_FILE, CONFIG_FILE, INFO_FILE, data_lib.contract.LABELS_FILE,
                   data_lib.contract.CONTRACT_FILE, data_lib.contract.MEAN_FILE):
    if required not in manifest['files']:
      raise BundleError(f'{name}: the manifest does not list {required}; not a complete bundle')
  config, classes, contract = _read_common(directory, what=name)
  with open(os.path.join(directory, INFO_FILE), encoding='utf-8') as f:
    info = json.load(f)
  params = load_params_npz(os.path.join(directory, PARAMS_FILE), name=name)
  return ModelFiles(name, 'bundle', config, classes, contract, info, params)


# ---- Parameters as one .npz file -----------------------------------------------------------------------

def flatten_params(params: Any, *, to_host: bool = True) -> dict[str, Any]:
  """``{'towers': {'conv1': {'kernel': a}}}`` -> ``{'towers/conv1/kernel': a}``; with ``to_host`` the
  leaves become numpy arrays (gathered from whatever devices hold them)."""
  flat = trees.flatten(params)
  return {name: np.asarray(jax.device_get(value)) for name, value in flat.items()} if to_host else flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  return trees.unflatten(flat)


def save_params_npz(params: Any, path: str) -> None:
  """Writes the parameter tree as an uncompressed ``.npz`` (numpy only, no pickle)."""
  with open(path, 'wb') as f:
    np.savez(f, **flatten_params(params))


def load_params_npz(path: str, *, name: str = '') -> dict[str, Any]:
  """Reads what ``save_params_npz`` wrote (``allow_pickle=False``: a bundle can never run code)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return unflatten_params({k: z[k] for k in z.files})
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
    raise BundleError(f'{name or path}: cannot read {PARAMS_FILE} ({type(e).__name__}: {e})') from None


def check_param_shapes(params: dict[str, Any], expected: dict[str, Any], *, name: str) -> None:
  """Raises ``BundleError`` listing every parameter whose name, shape or dtype differs from the network's."""
  have = {k: (tuple(v.shape), np.dtype(v.dtype))
          for k, v in flatten_params(params, to_host=False).items()}
  want = {k: (tuple(v.shape), np.dtype(v.dtype))
          for k, v in flatten_params(expected, to_host=False).items()}
  problems = [f'{k} missing' for k in sorted(set(want) - set(have))]
  problems += [f'{k} unexpected' for k in sorted(set(have) - set(want))]
  problems += [f'{k}: {have[k][0]} {have[k][1]}, the network needs {want[k][0]} {want[k][1]}'
               for k in sorted(set(have) & set(want)) if have[k] != want[k]]
  if problems:
    raise BundleError(f'{name}: the parameters do not fit the network of its config.json: '
                      + '; '.join(problems[:8]) + (' ...' if len(problems) > 8 else ''))


# ---- Writing -------------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
  """Versions of what computed and wrote the bundle."""
  out = {'python': platform.python_version(), 'numpy': np.__version__, 'jax': jax.__version__,
         'flax': flax.__version__}
  try:
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
              'files': {name: {'sha256': sha256_file(os.path.join(directory, name)),
                               'bytes': os.path.getsize(os.path.join(directory, name))}
                        for name in names}}
  fileio.write_json(os.path.join(directory, MANIFEST_FILE), manifest, indent=2, sort_keys=True)
  return manifest


def write_bundle_dir(directory: str, *, workdir: str, host_params: dict[str, Any], network,
                     config, classes: list[str], step: int, step_metrics: Optional[dict[str, Any]],
                     ten_crop: bool) -> dict[str, Any]:
  """Writes the bundle files of snapshot ``step`` of the run in ``workdir`` into ``directory``.

  ``host_params`` are the snapshot's parameters as numpy arrays (``[tower, ...]`` for tower-split
  layers); returns the bundle's info.json.
  """
  os.makedirs(directory, exist_ok=True)
  save_params_npz(host_params, os.path.join(directory, PARAMS_FILE))
  for name in (CONFIG_FILE, data_lib.contract.LABELS_FILE, data_lib.contract.MEAN_FILE,
               data_lib.contract.CONTRACT_FILE):
    shutil.copyfile(os.path.join(workdir, name), os.path.join(directory, name))
  with open(os.path.join(workdir, data_lib.contract.CONTRACT_FILE), encoding='utf-8') as f:
    contract = json.load(f)
  info = {
      'format': FORMAT, 'format_version': FORMAT_VERSION,
      'model': {'name': network.name, 'width': config.model.width,
                'towers': network.num_towers, 'num_classes': len(classes),
                'dtype': config.model.dtype, 'lrn': config.model.lrn,
                'parameters': trees.param_count(host_params)},
      'classes': list(classes),
      'preprocess': contract,
      'ten_crop': bool(ten_crop),
      'step': int(step),
      'metrics': metrics_at_step(workdir, int(step), step_metrics),
      'trained_layout': config.layout,
      'parameters_file': {'name': PARAMS_FILE, 'format': 'npz',
                          'note': "tower-split arrays are [tower, ...]; 'head/bias' is fc8's bias"},
      'versions': versions(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'source_workdir': os.path.abspath(workdir),
  }
  fileio.write_json(os.path.join(directory, INFO_FILE), info, indent=2)
  write_manifest(directory)
  return info

