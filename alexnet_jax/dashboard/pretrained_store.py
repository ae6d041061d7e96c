"""The pretrained models the dashboard knows: those uploaded to it, and those of a ``--models_dir`` store.

DIGITS had no such page (its users asked for one in about fifteen threads: start from ImageNet weights);
here a pretrained model is an ordinary bundle (``inference/bundle.py``), so it classifies straight away
and starts a fine-tuning run through ``--config.init_from``. Two kinds, one listing:

* **uploaded** (id ``up-<hex>``): kept under ``<jobs_dir>/.dashboard/pretrained/<id>/`` -- ``bundle/``
  (the bundle the inference worker imported or unpacked and verified) and ``pretrained.json`` (what the
  dashboard records: name, the uploaded files' names, the verification, the bundle's summary). The
  upload itself lives in ``<id>/source/`` only while it is imported. Delete removes the folder.
* **store** (id ``store-<hex of its relative path>``): a bundle folder under ``--models_dir`` (at most two
  levels deep), listed read-only from its ``info.json`` and ``manifest.json``; its sha256 sums are
  checked by the worker on Verify and whenever it is loaded.

Everything here reads JSON files only (no JAX, no numpy): the web process lists, the worker imports
(``workers/pretrained_ops.py``). Ids are made here and checked against ``ID_RE`` before they touch a path,
so a request can never name a folder outside these two places.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from typing import Any, Optional

from alexnet_jax.runtime import fileio
from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import files

FOLDER = 'pretrained'             # under <jobs_dir>/.dashboard
RECORD_FILE = 'pretrained.json'
BUNDLE_DIR = 'bundle'
SOURCE_DIR = 'source'
MANIFEST_FILE = 'manifest.json'   # inference/bundle.py's names (the web process does not import it)
INFO_FILE = 'info.json'
ID_RE = re.compile(r'^(up|store)-[0-9a-f]{12,32}$')
STORE_DEPTH = 2                   # --models_dir/<bundle> or --models_dir/<group>/<bundle>
MAX_WEIGHTS_BYTES = 2 * 2**30     # a full-size caffemodel or .pth is ~240 MB, a bundle archive too
MAX_SIDE_BYTES = 64 * 2**20       # deploy.prototxt, mean.binaryproto, labels.txt
# Each upload field: the file name endings it takes, and what the user is told when it has another.
ROLES = {
    'weights': (('.tar.gz', '.tgz', '.zip', '.tar', '.pth', '.pt', '.safetensors', '.caffemodel'),
                'a bundle or DIGITS "Download Model" archive (.tar.gz, .tgz, .zip, .tar), torchvision '
                'weights (.pth, .safetensors) or a .caffemodel'),
    'prototxt': (('.prototxt',), 'a Caffe deploy.prototxt'),
    'mean': (('.binaryproto',), "a Caffe mean file (.binaryproto)"),
    'labels': (('.txt',), 'a labels.txt (one class name per line)'),
}
FORMATS = ('auto', 'bundle', 'torchvision', 'caffe', 'digits')


def check_name(role: str, name: str) -> Optional[str]:
  """Why a file named ``name`` cannot be the ``role`` file (None when it can)."""
  endings, what = ROLES[role]
  if not name.lower().endswith(endings):
    return f'{name}: not {what} (the file name must end with {", ".join(endings)})'
  return None


def safe_filename(name: str) -> str:
  """A file name that is safe to create in a folder of ours, keeping the user's ending."""
  base = os.path.basename(name.replace('\\', '/'))
  clean = re.sub(r'[^A-Za-z0-9_.-]+', '_', base).lstrip('.') or 'upload'
  return clean[-120:]


def summary(info: dict[str, Any]) -> dict[str, Any]:
  """What the pages show of a bundle, from its ``info.json``: the network and the preprocessing contract
  (image size, crop, resize mode, channels, mean) a user must feed it."""
  info = info if isinstance(info, dict) else {}
  model = info.get('model') if isinstance(info.get('model'), dict) else {}
  contract = info.get('preprocess') if isinstance(info.get('preprocess'), dict) else {}
  classes = info.get('classes') if isinstance(info.get('classes'), list) else []
  source = info.get('imported_from') if isinstance(info.get('imported_from'), dict) else {}
  return {
      'network': model.get('name'), 'width': model.get('width'), 'towers': model.get('towers'),
      'lrn': model.get('lrn'), 'parameters': model.get('parameters'),
      'num_classes': model.get('num_classes') or len(classes), 'classes': [str(c) for c in classes[:1000]],
      'step': info.get('step'), 'ten_crop': info.get('ten_crop'),
      'contract': {k: contract.get(k) for k in ('image_size', 'crop_size', 'input_size', 'resize_mode',
                                                'channels', 'mean', 'scale', 'layout')},
      'imported_from': {k: source.get(k) for k in ('format', 'sha256', 'preprocessing') if k in source},
      'created': info.get('created'),
  }


class Store:
  """The uploaded models and the ``--models_dir`` store of one dashboard.

  Args:
    state_dir: the dashboard's own folder (``<jobs_dir>/.dashboard``).
    models_dir: the read-only store of bundles, or None.
  """

  def __init__(self, state_dir: str, models_dir: Optional[str] = None):
    self.root = files.private_dir(os.path.join(state_dir, FOLDER))
    self.models_dir = os.path.realpath(models_dir) if models_dir else None
    if self.models_dir and not os.path.isdir(self.models_dir):
      raise ValueError(f'--models_dir={models_dir}: no such folder')

  # -- Uploaded ------------------------------------------------------------------------------------

  def new_entry(self) -> tuple[str, str]:
    """(id, folder) of a fresh uploaded entry, with its ``source/`` folder made."""
    entry_id = 'up-' + uuid.uuid4().hex[:16]
    folder = os.path.join(self.root, entry_id)
    files.private_dir(os.path.join(folder, SOURCE_DIR))
    return entry_id, folder

  def save_record(self, entry_id: str, record: dict[str, Any]) -> None:
    fileio.write_json(os.path.join(self.root, entry_id, RECORD_FILE), record, indent=1)

  def discard(self, entry_id: str) -> None:
    """Removes an uploaded entry (a failed import, or Delete)."""
    if ID_RE.match(entry_id) and entry_id.startswith('up-'):
      shutil.rmtree(os.path.join(self.root, entry_id), ignore_errors=True)

  def _uploaded(self) -> list[dict[str, Any]]:
    out = []
    for name in sorted(os.listdir(self.root)):
      record = fileio.read_json(os.path.join(self.root, name, RECORD_FILE)) if ID_RE.match(name) else None
      if isinstance(record, dict) and record.get('state') == 'ready':
        out.append(dict(record, id=name, kind='uploaded', read_only=False,
                        bundle=os.path.join(self.root, name, BUNDLE_DIR)))
    return out

  # -- The --models_dir store ------------------------------------------------------------------------

  def _store(self) -> list[dict[str, Any]]:
    if not self.models_dir:
      return []
    out = []
    for folder in self._bundle_folders(self.models_dir, STORE_DEPTH):
      rel = os.path.relpath(folder, self.models_dir)
      info = fileio.read_json(os.path.join(folder, INFO_FILE))
      try:
        created = os.path.getmtime(os.path.join(folder, MANIFEST_FILE))
      except OSError:
        continue
      entry_id = 'store-' + hashlib.sha1(rel.encode('utf-8', 'surrogateescape')).hexdigest()[:16]
      verified = fileio.read_json(os.path.join(self.root, entry_id + '.verified.json'))
      out.append({'id': entry_id, 'kind': 'store', 'read_only': True, 'name': rel.replace(os.sep, '/'),
                  'state': 'ready', 'bundle': folder, 'created_unix': created,
                  'summary': summary(info if isinstance(info, dict) else {}),
                  'verified': verified if isinstance(verified, dict) and
                  verified.get('manifest_mtime') == created else None,
                  'source': {'files': [rel.replace(os.sep, '/')], 'format': 'bundle'}})
    return out

  def _bundle_folders(self, base: str, depth: int) -> list[str]:
    found = []
    try:
      names = sorted(os.listdir(base))
    except OSError:
      return found
    for name in names:
      path = os.path.join(base, name)
      # A link out of the store is not followed: the store is what lies inside --models_dir.
      if name.startswith('.') or not os.path.isdir(path) or not os.path.realpath(path).startswith(
          self.models_dir + os.sep):
        continue
      if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
        found.append(path)
      elif depth > 1:
        found += self._bundle_folders(path, depth - 1)
    return found

  def save_verified(self, entry: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Records a Verify of a store bundle (beside the uploads: the store itself is never written)."""
    verified = {'time': time.time(), 'ok': bool(result.get('ok')), 'error': result.get('error'),
                'manifest_files': result.get('manifest_files'), 'bytes': result.get('bytes'),
                'mean_per_channel': result.get('mean_per_channel'),
                'manifest_mtime': entry.get('created_unix')}
    if entry['kind'] == 'store':
      fileio.write_json(os.path.join(self.root, entry['id'] + '.verified.json'), verified)
    else:
      record = fileio.read_json(os.path.join(self.root, entry['id'], RECORD_FILE)) or {}
      record['verified'] = verified
      self.save_record(entry['id'], record)
    return verified

  # -- Look-ups --------------------------------------------------------------------------------------

  def entries(self) -> list[dict[str, Any]]:
    """Every pretrained model, uploaded ones first (newest first), then the store's (by path)."""
    uploaded = sorted(self._uploaded(), key=lambda e: -(e.get('created_unix') or 0))
    return uploaded + self._store()

  def get(self, entry_id: str) -> dict[str, Any]:
    """One entry; 404 for an id that is not one of ours."""
    if ID_RE.match(entry_id or ''):
      for entry in (self._uploaded() if entry_id.startswith('up-') else self._store()):
        if entry['id'] == entry_id:
          return entry
    raise errors_lib.not_found(f'no pretrained model {entry_id}')

  def for_form(self) -> dict[str, dict[str, Any]]:
    """id -> what New Model needs of a pretrained model: its bundle, network, width, crop, channels."""
    out = {}
    for e in self.entries():
      s = e.get('summary') or {}
      out[e['id']] = {'name': e['name'], 'bundle': e['bundle'], 'network': s.get('network'),
                      'width': s.get('width'), 'lrn': s.get('lrn'), 'num_classes': s.get('num_classes'),
                      'crop_size': (s.get('contract') or {}).get('crop_size'),
                      'channels': (s.get('contract') or {}).get('channels'),
                      'image_size': (s.get('contract') or {}).get('image_size')}
    return out


def public(entry: dict[str, Any]) -> dict[str, Any]:
  """An entry as the JSON routes show it (no server paths of the dashboard's own folder)."""
  out = {k: v for k, v in entry.items() if k != 'bundle'}
  out['url'] = f'/pretrained/{entry["id"]}'
  out['classify_one_url'] = f'/pretrained/{entry["id"]}/classify_one.json'
  out['classify_many_url'] = f'/pretrained/{entry["id"]}/classify_many.json'
  if entry['kind'] == 'store':
    out['path'] = entry['bundle']
  return out
