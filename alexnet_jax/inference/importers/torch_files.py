"""Reading a PyTorch state dict without PyTorch: ``.pth`` (torch's zip format) and ``.safetensors``.

**``.pth``** files are what ``torch.save(model.state_dict(), path)`` writes (torch/serialization.py,
``_save``): a zip archive whose records sit under one folder (``archive/`` or the file's stem)::

    archive/data.pkl     the pickled object: an OrderedDict of name -> tensor
    archive/data/0 ...   each storage's raw bytes, one record per storage (stored, not compressed)
    archive/byteorder    'little' or 'big' (absent in files older than torch 1.13: little)

In ``data.pkl`` a tensor is ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
requires_grad, backward_hooks[, metadata])``, and a storage is a persistent id ``('storage',
torch.FloatStorage, key, location, numel)`` whose bytes are ``data/<key>``. A pickle can name any
callable, and unpickling calls it: reading an untrusted ``.pth`` with plain ``pickle`` runs whatever it
names. ``RestrictedUnpickler`` therefore admits only the names a state dict of tensors uses
(``collections.OrderedDict``, the two tensor rebuild functions, the storage types) and builds numpy arrays
itself; any other name (``os.system``, a model class from a ``torch.save(model)``) is a ``WeightsError``
naming it, before anything is called. The legacy format of torch < 1.6 (several pickles one after
another, then the storages' bytes; no zip), in which torchvision's older published weights are saved, is
read the same way (``read_legacy_pth``).

**``.safetensors``** (the format of Hugging Face's ``safetensors``): an 8-byte little-endian header length,
a JSON header ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``, then the
raw little-endian buffers. It holds no code at all. It is read with the ``safetensors`` package's numpy API
when that is installed, else by ``read_safetensors`` here (a few lines: the format is that simple).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np

try:  # optional: the package's own reader; the format is simple enough to read without it
  from safetensors import numpy as safetensors_numpy
except ImportError:
  safetensors_numpy = None


class WeightsError(ValueError):
  """A weights file that cannot or must not be read: not a state dict, foreign pickle, bad layout."""


# torch's storage types (the persistent id's second item) and safetensors' dtype names -> numpy dtypes.
STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'BFloat16Storage': 'bfloat16',
}
SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': 'bfloat16', 'I64': np.int64,
    'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}
ZIP_MAGIC = b'PK\x03\x04'
LEGACY_MAGIC = b'\x80'   # a pickle's PROTO opcode: the legacy format starts with a pickled magic number
LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL = 0x1950a86a20f9469cfc6c, 1001


def _from_bytes(buffer, dtype, *, byteorder: str = 'little') -> np.ndarray:
  """A flat array over ``buffer``; bfloat16 is widened to float32 (exactly: its bits are float32's top half)."""
  if dtype == 'bfloat16':
    halves = np.frombuffer(buffer, '<u2' if byteorder == 'little' else '>u2')
    return (halves.astype(np.uint32) << 16).view(np.float32)
  return np.frombuffer(buffer, np.dtype(dtype).newbyteorder('<' if byteorder == 'little' else '>'))


# ---- .pth: the restricted unpickler --------------------------------------------------------------------

class _StorageType:
  """What ``torch.FloatStorage`` & co. unpickle to: only its name (no torch here)."""

  def __init__(self, name: str):
    self.name = name


class _PendingStorage:
  """A legacy file's storage, whose bytes follow the pickle: tensors on it are built once they are read."""

  def __init__(self, type_name: str, numel: int, offset: int = 0):
    self.type_name, self.numel, self.offset = type_name, numel, offset
    self.array: np.ndarray | None = None


class _PendingTensor:
  def __init__(self, storage: _PendingStorage, args: tuple):
    self.storage, self.args = storage, args

  def build(self) -> np.ndarray:
    offset, size, stride = self.args
    return _rebuild_tensor(self.storage.array, self.storage.offset + int(offset), size, stride)


def _rebuild_tensor(storage, offset: int, size, stride, *unused):
  """``torch._utils._rebuild_tensor_v2`` (and v1, without ``requires_grad``): a strided view, copied."""
  if isinstance(storage, _PendingStorage):
    return _PendingTensor(storage, (offset, size, stride))
  size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
  if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
    raise WeightsError(f'a tensor of size {size}, stride {stride}, offset {offset} is malformed')
  if 0 not in size:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
      raise WeightsError(f'a tensor of size {size} at offset {offset} runs past its storage of '
                         f'{storage.size} elements; the file is truncated or corrupt')
  view = np.lib.stride_tricks.as_strided(storage[offset:], size,
                                         tuple(s * storage.itemsize for s in stride), writeable=False)
  # A contiguous tensor stays a (read-only) view of its storage's bytes: no second copy of the file.
  return view if view.flags.c_contiguous else np.array(view)


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a state dict of tensors and nothing else (see the module docstring)."""

  ALLOWED = {('collections', 'OrderedDict'): collections.OrderedDict,
             ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
             ('torch._utils', '_rebuild_tensor'): _rebuild_tensor}

  def __init__(self, file, load_storage, *, name: str):
    super().__init__(file)
    self._load_storage = load_storage   # (key, storage type name, numel[, view]) -> a storage
    self._name = name

  def find_class(self, module: str, name: str):
    if (module, name) in self.ALLOWED:
      return self.ALLOWED[(module, name)]
    if module == 'torch' and name in STORAGE_DTYPES:
      return _StorageType(name)
    raise WeightsError(
        f'{self._name}: the pickle names {module}.{name}, which is not part of a state dict of tensors; '
        f'refusing to load it (only tensors are read from a .pth, never arbitrary pickle: save '
        f'model.state_dict(), or convert the file to .safetensors)')

  def persistent_load(self, pid):
    if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != 'storage'
        or not isinstance(pid[1], _StorageType)):
      raise WeightsError(f'{self._name}: the pickle refers to {str(pid)[:80]!r}, not a tensor storage')
    if len(pid) > 5 and pid[5] is not None:   # the legacy format's storage views
      return self._load_storage(str(pid[2]), pid[1].name, int(pid[4]), pid[5])
    return self._load_storage(str(pid[2]), pid[1].name, int(pid[4]))


def read_pth(path: str) -> dict[str, np.ndarray]:
  """The tensors of a ``torch.save``d state dict, as numpy arrays (see the module docstring)."""
  with open(path, 'rb') as f:
    head = f.read(4)
  if head != ZIP_MAGIC:
    if head.startswith(LEGACY_MAGIC):
      return read_legacy_pth(path)
    raise WeightsError(f'{path} is not a PyTorch .pth file (no zip archive, no pickle)')
  try:
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
      pickles = [n for n in names if n.endswith('/data.pkl') and n.count('/') == 1] or \
                [n for n in names if n == 'data.pkl']
      if len(pickles) != 1:
        raise WeightsError(f'{path} is a zip archive but not a PyTorch .pth file (no data.pkl record)')
      prefix = pickles[0][:-len('data.pkl')]
      byteorder = 'little'
      if prefix + 'byteorder' in names:
        byteorder = z.read(prefix + 'byteorder').decode('ascii', 'replace').strip()
        if byteorder not in ('little', 'big'):
          raise WeightsError(f'{path}: unknown byteorder {byteorder!r}')
      storages: dict[str, np.ndarray] = {}

      def load_storage(key: str, type_name: str, numel: int) -> np.ndarray:
        if key not in storages:
          record = f'{prefix}data/{key}'
          if record not in names:
            raise WeightsError(f'{path}: the storage {record} is missing; the file is truncated')
          flat = _from_bytes(z.read(record), STORAGE_DTYPES[type_name], byteorder=byteorder)
          if flat.size < numel:
            raise WeightsError(f'{path}: the storage {record} holds {flat.size} elements, the pickle '
                               f'says {numel}; the file is truncated or corrupt')
          storages[key] = flat
        return storages[key]

      obj = RestrictedUnpickler(io.BytesIO(z.read(pickles[0])), load_storage, name=path).load()
  except WeightsError:
    raise
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError,
          AttributeError, IndexError, KeyError) as e:
    raise WeightsError(f'{path} is truncated or corrupt ({type(e).__name__}: {e})') from None
  return _as_state_dict(obj, path)


def read_legacy_pth(path: str) -> dict[str, np.ndarray]:
  """torch < 1.6's format (``_legacy_save``): pickles of the magic number, the protocol version (1001) and
  the system's info, then the object (storages as persistent ids ``('storage', type, key, location, numel,
  view)``), then the sorted list of storage keys, then each storage as an int64 element count followed
  by its bytes. The same restricted unpickler reads every pickle."""
  storages: dict[str, _PendingStorage] = {}

  def pending(key: str, type_name: str, numel: int, view=None) -> _PendingStorage:
    root = storages.setdefault(key, _PendingStorage(type_name, numel))
    if view is None:
      return root
    view_offset = int(view[1])   # (view_key, offset, size): a view into the root storage
    shared = _PendingStorage(type_name, int(view[2]), view_offset)
    shared.root = root
    return shared

  try:
    with open(path, 'rb') as f:
      header = [RestrictedUnpickler(f, pending, name=path).load() for _ in range(3)]
      if header[0] != LEGACY_MAGIC_NUMBER or header[1] != LEGACY_PROTOCOL:
        raise WeightsError(f'{path} is not a PyTorch .pth file (a pickle, but not torch.save\'s)')
      if isinstance(header[2], dict) and not header[2].get('little_endian', True):
        raise WeightsError(f'{path} was saved on a big-endian machine; re-save it on a little-endian one')
      obj = RestrictedUnpickler(f, pending, name=path).load()
      keys = RestrictedUnpickler(f, pending, name=path).load()
      for key in keys:
        storage = storages.get(str(key))
        if storage is None:
          raise WeightsError(f'{path}: the storage {key} is listed but never used; the file is corrupt')
        (numel,) = struct.unpack('<q', f.read(8))
        itemsize = 2 if storage.type_name == 'BFloat16Storage' else np.dtype(
            STORAGE_DTYPES[storage.type_name]).itemsize
        data = f.read(numel * itemsize)
        if numel < 0 or len(data) != numel * itemsize:
          raise WeightsError(f'{path}: the storage {key} is cut short; the file is truncated')
        storage.array = _from_bytes(data, STORAGE_DTYPES[storage.type_name])
  except WeightsError:
    raise
  except (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError, AttributeError,
          IndexError, KeyError) as e:
    raise WeightsError(f'{path} is truncated or corrupt ({type(e).__name__}: {e})') from None
  if not isinstance(obj, dict):
    raise WeightsError(f'{path} does not hold a state dict (a mapping of names to tensors)')
  for name, value in list(obj.items()):
    if isinstance(value, _PendingTensor):
      root = getattr(value.storage, 'root', None)
      if root is not None:
        value.storage.array = root.array
      if value.storage.array is None:
        raise WeightsError(f'{path}: the storage of {name} is missing; the file is truncated')
      obj[name] = value.build()
  return _as_state_dict(obj, path)


def _as_state_dict(obj, path: str) -> dict[str, np.ndarray]:
  if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    obj = obj['state_dict']   # a training checkpoint {'state_dict': ..., 'epoch': ...}
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise WeightsError(f'{path} does not hold a state dict (a mapping of names to tensors)')
  return {str(k): v for k, v in obj.items()}


# ---- .safetensors --------------------------------------------------------------------------------------

def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of a ``.safetensors`` file (the package's reader when installed, else this one)."""
  if safetensors_numpy is not None:
    try:
      return dict(safetensors_numpy.load_file(path))
    except Exception as e:  # noqa: BLE001  (the package raises its own error types)
      raise WeightsError(f'{path} is not a readable .safetensors file ({e})') from None
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) < 8:
      raise WeightsError(f'{path} is not a .safetensors file (shorter than its 8-byte header length)')
    (length,) = struct.unpack('<Q', head)
    if length > size - 8:
      raise WeightsError(f'{path}: the header claims {length} bytes, the file has {size}; truncated or '
                         f'not a .safetensors file')
    try:
      header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise WeightsError(f'{path}: the header is not JSON ({e}); not a .safetensors file') from None
    if not isinstance(header, dict):
      raise WeightsError(f'{path}: the header is not a JSON object; not a .safetensors file')
    # Read into one buffer of the data's size (f.read() of the rest may hold two copies while growing);
    # the slices below are views of it, not copies.
    data = memoryview(bytearray(size - 8 - length))
    data = data[:f.readinto(data)]
  out = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    try:
      dtype = SAFETENSORS_DTYPES[entry['dtype']]
      shape = tuple(int(n) for n in entry['shape'])
      begin, end = (int(n) for n in entry['data_offsets'])
    except (KeyError, TypeError, ValueError):
      raise WeightsError(f'{path}: the header entry of {name!r} is malformed ({str(entry)[:100]})') from None
    if not 0 <= begin <= end <= len(data):
      raise WeightsError(f'{path}: the bytes of {name!r} ({begin}..{end}) lie outside the file\'s '
                         f'{len(data)} bytes of data; the file is truncated')
    flat = _from_bytes(data[begin:end], dtype)
    if flat.size != int(np.prod(shape)):
      raise WeightsError(f'{path}: {name!r} has {flat.size} elements for the shape {shape}')
    out[name] = flat.reshape(shape)
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state dict from ``.safetensors`` (by its name) or a ``.pth``/``.pt`` (anything else)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--source={path}: no such file')
  if path.lower().endswith('.safetensors'):
    return read_safetensors(path)
  return read_pth(path)
