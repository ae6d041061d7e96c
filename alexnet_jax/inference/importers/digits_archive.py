"""DIGITS' "Download Model" archives: what they hold, read safely.

DIGITS (``digits/model/views.py``, ``download``) writes a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` of a trained
classification model's files (``ImageClassificationModelJob.download_files``) plus ``info.json``::

    deploy.prototxt               the deploy net (input: the crop, or the whole image)
    snapshot_iter_N.caffemodel    the weights at the chosen epoch
    mean.binaryproto              the training set's mean image, at the dataset's image size (BGR)
    labels.txt                    one class name per line
    info.json                     the job's ``json_dict``: "framework" ("caffe"), "image dimensions"
                                  ([height, width, channels], the dataset's), "image resize mode" (squash,
                                  crop, fill, half_crop), "mean file", "snapshot file", "deploy file",
                                  "labels file", "name", "digits version" ...

The preprocessing contract is DIGITS' own: images resized to width x height with that resize mode, the
mean image subtracted, the deploy net's input as the centre crop when smaller (``caffe_model.contract_for``).
Only Caffe models are imported (a DIGITS Torch or TensorFlow model has no caffemodel: refused, named).

Reading is safe against hostile archives: a member whose path is absolute or climbs out (``../``), a link
(symbolic or hard), a device or fifo, more than ``MAX_MEMBERS`` members, a member over ``MAX_FILE_BYTES``
or a total over ``MAX_TOTAL_BYTES`` is refused with an error naming the archive and the member, before
anything is written. Members are written by basename into a fresh folder (DIGITS' archives are flat; one
enclosing folder is accepted), never by the archive's own path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
import stat
import tarfile
import zipfile
from typing import Any, Optional

from alexnet_jax.inference.importers.torch_files import WeightsError

MAX_MEMBERS = 64
MAX_FILE_BYTES = 2 << 30          # a caffemodel of a large net is < 1 GB; 2 GiB leaves room
MAX_TOTAL_BYTES = 3 << 30
ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.tar', '.zip')
SNAPSHOT = re.compile(r'_iter_(\d+)\.caffemodel$')


@dataclasses.dataclass
class DigitsModel:
  """The files of an extracted archive (paths in the extraction folder) and its info.json."""
  caffemodel: str
  prototxt: str
  mean: Optional[str]
  labels: Optional[str]
  info: dict[str, Any]

  @property
  def image_wh(self) -> Optional[tuple[int, int]]:
    dims = self.info.get('image dimensions')
    return (int(dims[1]), int(dims[0])) if dims else None

  @property
  def channels(self) -> Optional[int]:
    dims = self.info.get('image dimensions')
    return int(dims[2]) if dims and len(dims) > 2 else None

  @property
  def resize_mode(self) -> str:
    return str(self.info.get('image resize mode') or 'squash')


def is_archive(path: str) -> bool:
  return path.lower().endswith(ARCHIVE_SUFFIXES)


def _check_name(archive: str, name: str) -> str:
  """The member's basename, after refusing absolute and climbing paths."""
  normalized = name.replace('\\', '/')
  if normalized.startswith('/') or re.match(r'^[A-Za-z]:', normalized):
    raise WeightsError(f'{archive}: member {name!r} has an absolute path; refusing the archive')
  parts = [p for p in normalized.split('/') if p not in ('', '.')]
  if '..' in parts:
    raise WeightsError(f'{archive}: member {name!r} climbs out of the archive (../); refusing the archive')
  if len(parts) > 2:
    raise WeightsError(f'{archive}: member {name!r} is nested {len(parts) - 1} folders deep; a DIGITS '
                       f'archive is flat (one enclosing folder at most)')
  return posixpath.basename(normalized)


def _open(archive: str) -> tuple[Any, list[tuple[str, int, Any]]]:
  """(the open archive, [(basename, size, member info)] of its files), every member checked first
  (module docstring). The caller closes the archive."""
  out, container = [], None
  try:
    if archive.lower().endswith('.zip'):
      container = zipfile.ZipFile(archive)
      # A zip member's type is in the high bits of external_attr (0 when the writer gave permissions only).
      members = [(i.filename, i.is_dir(), stat.S_IFMT(i.external_attr >> 16) in (0, stat.S_IFREG),
                  i.file_size, i) for i in container.infolist()]
    else:
      container = tarfile.open(archive, 'r:*')
      members = [(i.name, i.isdir(), i.isfile(), i.size, i) for i in container.getmembers()]
    if len(members) > MAX_MEMBERS:
      raise WeightsError(f'{archive} has {len(members)} members; a DIGITS archive has a handful')
    for name, is_dir, regular, size, info in members:
      base = _check_name(archive, name)
      if is_dir:
        continue
      if not regular:
        raise WeightsError(f'{archive}: member {name!r} is a link or special file; refusing the archive')
      out.append((base, size, info))
  except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
    if container is not None:
      container.close()
    raise WeightsError(f'{archive} is not a readable archive ({type(e).__name__}: {e})') from None
  except WeightsError:
    container.close()
    raise
  try:
    _check_sizes(archive, out)
  except WeightsError:
    container.close()
    raise
  return container, out


def _check_sizes(archive: str, out: list[tuple[str, int, Any]]) -> None:
  names, total = [base for base, _, _ in out], 0
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise WeightsError(f'{archive} holds several files named {duplicates}; a DIGITS archive is flat')
  for base, size, _ in out:
    if size > MAX_FILE_BYTES:
      raise WeightsError(f'{archive}: member {base!r} is {size} bytes, over the {MAX_FILE_BYTES} limit')
    total += size
  if total > MAX_TOTAL_BYTES:
    raise WeightsError(f'{archive} unpacks to {total} bytes, over the {MAX_TOTAL_BYTES} limit')


def extract(archive: str, folder: str) -> dict[str, str]:
  """Extracts the archive's files into ``folder`` by basename; returns basename -> path."""
  container, members = _open(archive)
  os.makedirs(folder, exist_ok=True)
  paths = {}
  try:
    for base, size, info in members:
      path = os.path.join(folder, base)
      source = container.open(info) if isinstance(container, zipfile.ZipFile) else container.extractfile(info)
      with source, open(path, 'wb') as f:
        copied = 0
        while chunk := source.read(1 << 20):
          copied += len(chunk)
          if copied > size:
            raise WeightsError(f'{archive}: member {base!r} is longer than its header says; refusing it')
          f.write(chunk)
      paths[base] = path
  except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
    raise WeightsError(f'{archive}: cannot extract ({type(e).__name__}: {e}); truncated or corrupt') from None
  finally:
    container.close()
  return paths


def looks_like_digits(archive: str) -> bool:
  """Whether the archive holds a caffemodel (a DIGITS Caffe download; a bundle holds params.npz)."""
  container, members = _open(archive)
  container.close()
  return any(base.endswith('.caffemodel') for base, _, _ in members)


def read(archive: str, folder: str) -> DigitsModel:
  """Extracts ``archive`` into ``folder`` and finds its files (module docstring)."""
  paths = extract(archive, folder)
  info: dict[str, Any] = {}
  if 'info.json' in paths:
    try:
      with open(paths['info.json'], encoding='utf-8') as f:
        info = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise WeightsError(f'{archive}: info.json is not JSON ({e})') from None
    if not isinstance(info, dict):
      raise WeightsError(f'{archive}: info.json is not a JSON object')
  framework = str(info.get('framework', 'caffe')).lower()
  if framework != 'caffe':
    raise WeightsError(f'{archive}: a DIGITS {framework} model (info.json "framework"); only Caffe models '
                       f'(deploy.prototxt + .caffemodel) are imported')
  dims = info.get('image dimensions')
  if dims is not None and (not isinstance(dims, list) or len(dims) != 3
                           or not all(isinstance(d, int) and d > 0 for d in dims)):
    raise WeightsError(f'{archive}: info.json "image dimensions" is {dims!r}, not [height, width, channels]')

  def named(key: str, pattern: str, what: str, required: bool = True) -> Optional[str]:
    name = info.get(key)
    if name and os.path.basename(str(name)) in paths:
      return paths[os.path.basename(str(name))]
    found = sorted(base for base in paths if re.search(pattern, base))
    if not found:
      if required:
        raise WeightsError(f'{archive} has no {what}; its files: {sorted(paths)}')
      return None
    if pattern == r'\.caffemodel$':   # the latest snapshot
      found.sort(key=lambda base: int(SNAPSHOT.search(base).group(1)) if SNAPSHOT.search(base) else -1)
    return paths[found[-1]]

  return DigitsModel(
      caffemodel=named('snapshot file', r'\.caffemodel$', 'snapshot (.caffemodel)'),
      prototxt=named('deploy file', r'^deploy\.prototxt$', 'deploy.prototxt'),
      mean=named('mean file', r'\.binaryproto$', 'mean file', required=False),
      labels=named('labels file', r'^labels\.txt$', 'labels.txt', required=False),
      info=info)


__all__ = ['ARCHIVE_SUFFIXES', 'DigitsModel', 'extract', 'is_archive', 'looks_like_digits', 'read']
