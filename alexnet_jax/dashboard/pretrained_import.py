"""Adding a pretrained model: the upload (or files on the server) in, a verified bundle in the store out.

``POST /pretrained.json`` takes, as multipart fields, ``weights_file`` (a bundle or DIGITS "Download
Model" archive, torchvision ``.pth``/``.safetensors``, or a ``.caffemodel``) and optionally
``prototxt_file`` (Caffe's deploy.prototxt), ``mean_file`` (mean.binaryproto) and ``labels_file``
(labels.txt); or the same files already on the server as ``weights_path``, ``prototxt_path`` ...
(confined to the data roots, as every path a form names); ``name`` and ``format`` (auto, bundle,
torchvision, caffe, digits) beside them.

``receive`` reads the form within the caps: each upload streams from the request's spooled part into
``<jobs_dir>/.dashboard/pretrained/<new id>/source/`` (never a name the client chose: ``safe_filename``),
a file past its cap or with a wrong ending is refused naming the field and the file. ``add`` then has
the inference worker import or unpack it into ``<id>/bundle`` and verify it (``workers/pretrained_ops``:
sha256 sums, parameters against the network), synchronously, as Download's export is; a failure removes
the entry and answers 400 with the worker's reason, the stored names replaced by the user's. Imports of
full-size files take seconds, not minutes (the importer reads them without holding several copies).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import pretrained_store as store_lib
from alexnet_jax.dashboard import security
from alexnet_jax.dashboard.errors import refused
from alexnet_jax.dashboard.workers import inference_client as predictor_lib

CHUNK = 1 << 20
MAX_FIELD_BYTES = 64 * 1024


async def receive(request: Request, store: store_lib.Store, roots) -> dict[str, Any]:
  """The form's fields and files: ``{"fields", "entry_id", "folder", "paths": {role: path},
  "shown": {path: the user's name for it}}``; the entry's folder exists from here on (``store.discard``
  it on any later refusal)."""
  content_type = request.headers.get('content-type', '')
  if not content_type.startswith(('multipart/form-data', 'application/x-www-form-urlencoded')):
    raise refused('weights_file', 'send the model as a multipart form (weights_file, or weights_path)')
  form = await request.form(max_files=len(store_lib.ROLES), max_fields=20, max_part_size=MAX_FIELD_BYTES)
  try:
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    uploads = {k: v for k, v in form.multi_items() if isinstance(v, UploadFile) and v.filename}
    errors: dict[str, str] = {}
    for role in store_lib.ROLES:                  # the names first: nothing is copied for a wrong one
      upload, path_text = uploads.get(f'{role}_file'), (fields.get(f'{role}_path') or '').strip()
      name = os.path.basename(upload.filename) if upload is not None else os.path.basename(path_text)
      if name and (problem := store_lib.check_name(role, name)):
        errors[f'{role}_file' if upload is not None else f'{role}_path'] = problem
    if not (uploads.get('weights_file') or (fields.get('weights_path') or '').strip()):
      errors['weights_file'] = ('give the model: upload it (weights_file) or name a file on the server '
                                '(weights_path)')
    fmt = (fields.get('format') or 'auto').strip()
    if fmt not in store_lib.FORMATS:
      errors['format'] = f'format={fmt!r}: choose one of {", ".join(store_lib.FORMATS)}'
    if errors:
      raise errors_lib.DashboardError(errors)
    entry_id, folder = store.new_entry()
    paths, shown = {}, {}
    try:
      for role in store_lib.ROLES:
        upload = uploads.get(f'{role}_file')
        if upload is not None:
          cap = store_lib.MAX_WEIGHTS_BYTES if role == 'weights' else store_lib.MAX_SIDE_BYTES
          target = os.path.join(folder, store_lib.SOURCE_DIR,
                                f'{role}-{store_lib.safe_filename(upload.filename)}')
          await _copy(upload, target, cap, f'{role}_file')
          paths[role], shown[target] = target, os.path.basename(upload.filename)
        elif (fields.get(f'{role}_path') or '').strip():
          try:
            paths[role] = str(security.confine(fields[f'{role}_path'], roots, want='file'))
          except security.PathError as e:
            raise refused(f'{role}_path', str(e)) from None
    except BaseException:
      store.discard(entry_id)
      raise
  finally:
    await form.close()
  return {'fields': fields, 'format': fmt, 'entry_id': entry_id, 'folder': folder, 'paths': paths,
          'shown': shown}


async def _copy(upload: UploadFile, target: str, cap: int, field: str) -> None:
  size = 0
  fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(fd, 'wb') as out:
    while chunk := await upload.read(CHUNK):
      size += len(chunk)
      if size > cap:
        raise refused(field, f'{upload.filename}: larger than {cap // 2**20} MiB', 413)
      out.write(chunk)
  if not size:
    raise refused(field, f'{upload.filename}: the file is empty')


def add(dash, received: dict[str, Any]) -> dict[str, Any]:
  """Imports what ``receive`` kept, in the worker, and records the entry; returns it."""
  store, entry_id, folder = dash.pretrained, received['entry_id'], received['folder']
  paths, shown = received['paths'], received['shown']
  try:
    answer = dash.inference.predictor.import_pretrained(
        paths['weights'], os.path.join(folder, store_lib.BUNDLE_DIR), fmt=received['format'],
        labels=paths.get('labels'), prototxt=paths.get('prototxt'), mean=paths.get('mean'))
  except predictor_lib.PredictorError as e:
    store.discard(entry_id)
    message = str(e)
    for stored, name in shown.items():          # name the files the user sent, not our copies
      message = message.replace(stored, name).replace(os.path.basename(stored), name)
    message = message.replace(os.path.join(folder, store_lib.BUNDLE_DIR), 'the bundle')
    field = next((f'{role}_file' if path in shown else f'{role}_path' for role, path in paths.items()
                  if role != 'weights' and (shown.get(path) or os.path.basename(path)) in message), None)
    weights = 'weights_file' if paths['weights'] in shown else 'weights_path'
    raise refused(field or weights, message, 400 if e.user_error else 503) from None
  except BaseException:
    store.discard(entry_id)
    raise
  shutil.rmtree(os.path.join(folder, store_lib.SOURCE_DIR), ignore_errors=True)
  names = [shown.get(p) or p for p in paths.values()]
  name = (received['fields'].get('name') or '').strip()[:200] or os.path.basename(names[0])
  info = answer.get('info') or {}
  record = {'name': name, 'state': 'ready', 'created_unix': time.time(),
            'source': {'files': names, 'format': (info.get('imported_from') or {}).get('format') or 'bundle'},
            'summary': store_lib.summary(info)}
  store.save_record(entry_id, record)
  entry = store.get(entry_id)
  store.save_verified(entry, answer)
  return store.get(entry_id)
