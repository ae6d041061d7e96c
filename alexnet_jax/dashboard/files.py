"""The dashboard's own files under ``<jobs_dir>/.dashboard``: uploads, visualizations, bundles.

They are for the user who runs the dashboard, not for every local user: the folders are kept 0700
(``private_dir``), an upload 0600 under a fresh name, removed when its request is done. Download bundles
are pruned to the newest few (``prune_bundles``); Delete takes a job's with it (``remove_bundles``).
A file is served from them only by a name that stays inside its folder (``safe_join``).
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Optional

ARCHIVE_FORMATS = ('tar.gz', 'zip')
BUNDLES_KEPT = 2                  # download bundles kept in the cache (the newest)
NAME_RE = re.compile(r'^[A-Za-z0-9_.-]+$')


def save_upload(state_dir: str, data: bytes, filename_hint: str = '') -> str:
  """Keeps an uploaded file under ``uploads/`` (0700; the file 0600) for one request: a fresh name per
  upload, removed by the caller when the request is done (``classify_one``), so uploads never pile up."""
  folder = private_dir(os.path.join(state_dir, 'uploads'))
  ext = os.path.splitext(filename_hint)[1].lower()
  ext = ext if NAME_RE.match(ext.lstrip('.') or 'x') and len(ext) <= 6 else ''
  path = os.path.join(folder, uuid.uuid4().hex[:24] + ext)
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(fd, 'wb') as f:
    f.write(data)
  return path


def private_dir(path: str) -> str:
  """``path`` made (if missing) and kept 0700: what the dashboard keeps under ``.dashboard`` -- uploads,
  visualizations, bundles -- is for the user who runs it, not for every local user."""
  os.makedirs(path, mode=0o700, exist_ok=True)
  os.chmod(path, 0o700)
  return path


def prune_bundles(cache_dir: str, keep: str, *, limit: int = BUNDLES_KEPT) -> None:
  """Keeps the ``limit`` newest bundles of ``cache_dir`` (``keep``, the one being answered, always): a
  bundle is ~240 MB at full size, and every epoch of every model could be asked for."""
  try:
    endings = tuple('.' + f for f in ARCHIVE_FORMATS + ('onnx',))     # ONNX downloads too
    names = [n for n in os.listdir(cache_dir) if n.endswith(endings)]
  except OSError:
    return
  paths = sorted((os.path.join(cache_dir, n) for n in names), key=_mtime, reverse=True)
  for path in [p for p in paths if p != keep][max(0, limit - 1):]:
    for victim in (path, path + '.info.json'):
      try:
        os.unlink(victim)
      except OSError:
        pass


def remove_bundles(cache_dir: str, job_id: str) -> None:
  """Deletes the bundles made from job ``job_id`` (named ``<job id>-step<N>-...``): Delete takes them too."""
  try:
    names = os.listdir(cache_dir)
  except OSError:
    return
  for name in names:
    if name.startswith(job_id + '-step'):
      try:
        os.unlink(os.path.join(cache_dir, name))
      except OSError:
        pass


def _mtime(path: str) -> float:
  try:
    return os.path.getmtime(path)
  except OSError:
    return 0.0


def safe_join(folder: str, relative: str) -> Optional[str]:
  """``folder/relative`` if it stays inside ``folder`` (no ``..``, no links out); else None."""
  path = os.path.realpath(os.path.join(folder, relative))
  base = os.path.realpath(folder)
  return path if path.startswith(base + os.sep) and os.path.isfile(path) else None
