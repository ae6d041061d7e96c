"""PyTorch state dict files written without PyTorch, for the importer's tests and benchmarks.

torchvision's AlexNet names and shapes (``SHAPES``) with random weights drawn as torch's default init
does (``random_state_dict``), written as ``.safetensors`` by the format's spec (8-byte little-endian
header length, JSON header, raw buffers) and as ``.pth`` as ``torch.save`` writes it
(torch/serialization.py ``_save``: a zip of ``archive/data.pkl``, protocol 2, tensors as
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``, storages as
persistent ids ``('storage', torch.FloatStorage, key, 'cpu', numel)`` stored uncompressed as
``archive/data/<key>``, plus ``byteorder`` and ``version``), or in torch < 1.6's legacy format. torch's
names are pickled through stand-in modules put into ``sys.modules`` only while writing.

Used by tests/test_import_weights.py and benchmarks/import_weights.py (at full size: 61M parameters,
233 MB).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

SHAPES = {'features.0': (64, 3, 11, 11), 'features.3': (192, 64, 5, 5), 'features.6': (384, 192, 3, 3),
          'features.8': (256, 384, 3, 3), 'features.10': (256, 256, 3, 3), 'classifier.1': (4096, 9216),
          'classifier.4': (4096, 4096), 'classifier.6': (1000, 4096)}


def random_state_dict(seed: int = 0, num_classes: int = 1000) -> dict[str, np.ndarray]:
  """torch's default init for Conv2d/Linear: weight and bias U(+-1/sqrt(fan_in)); ``num_classes`` rows in
  ``classifier.6`` (a fine-tuned torchvision AlexNet's head)."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in SHAPES.items():
    shape = (num_classes, *shape[1:]) if name == 'classifier.6' else shape
    bound = 1.0 / np.sqrt(np.prod(shape[1:]))
    state[f'{name}.weight'] = rng.uniform(-bound, bound, shape).astype(np.float32)
    state[f'{name}.bias'] = rng.uniform(-bound, bound, shape[:1]).astype(np.float32)
  return state


def write_safetensors(path, state):
  header, offset, buffers = {}, 0, []
  for name, value in state.items():
    data = np.ascontiguousarray(value, '<f4').tobytes()
    header[name] = {'dtype': 'F32', 'shape': list(value.shape), 'data_offsets': [offset, offset + len(data)]}
    offset += len(data)
    buffers.append(data)
  header['__metadata__'] = {'format': 'pt'}
  text = json.dumps(header).encode()
  text += b' ' * (-len(text) % 8)
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(text)) + text)
    for data in buffers:
      f.write(data)


class _Storage:
  def __init__(self, key, flat):
    self.key, self.flat = key, flat


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

  def __reduce_ex__(self, protocol):
    return sys.modules['torch._utils']._rebuild_tensor_v2, self.args


@contextlib.contextmanager
def _torch_names():
  """Stand-ins for torch.FloatStorage and torch._utils._rebuild_tensor_v2, so pickle writes torch's names."""
  torch, utils = types.ModuleType('torch'), types.ModuleType('torch._utils')
  torch.FloatStorage = type('FloatStorage', (), {'__module__': 'torch'})

  def _rebuild_tensor_v2(*args):
    raise AssertionError('never called while writing')
  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = 'torch._utils', '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  saved = {k: sys.modules.get(k) for k in ('torch', 'torch._utils')}
  sys.modules.update({'torch': torch, 'torch._utils': utils})
  try:
    yield torch
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


def write_pth(path, state, *, payload=None, legacy=False):
  """``torch.save(state, path)``'s zip layout (``legacy``: torch < 1.6's ``_legacy_save``: the magic number,
  protocol 1001 and system info pickled, the object, the sorted storage keys, then each storage as its
  int64 element count and bytes). ``classifier.4.weight`` is stored as a transposed view
  (stride (1, 4096)) and the conv biases share one storage at offsets, as torch may save them."""
  with _torch_names() as torch:
    storages, objects = {}, collections.OrderedDict()
    biases = [k for k in state if k.startswith('features.') and k.endswith('.bias')]
    shared = _Storage('shared', np.concatenate([state[k] for k in biases] or [np.zeros(0, np.float32)]))
    offset = 0
    for name, value in state.items():
      if name in biases:
        objects[name] = _Tensor(shared, offset, value.shape, (1,))
        offset += value.size
      elif name == 'classifier.4.weight':
        storage = _Storage(str(len(storages)), np.ascontiguousarray(value.T).reshape(-1))
        storages[storage.key] = storage
        objects[name] = _Tensor(storage, 0, value.shape, (1, value.shape[0]))
      else:
        storage = _Storage(str(len(storages)), np.ascontiguousarray(value).reshape(-1))
        storages[storage.key] = storage
        objects[name] = _Tensor(storage, 0, value.shape, [int(np.prod(value.shape[i + 1:]))
                                                          for i in range(value.ndim)])
    storages['shared'] = shared
    objects._metadata = collections.OrderedDict({'': {'version': 1}})   # as Module.state_dict() sets

    class Pickler(pickle.Pickler):
      def persistent_id(self, obj):
        if isinstance(obj, _Storage):
          return ('storage', torch.FloatStorage, obj.key, 'cpu', obj.flat.size) + ((None,) if legacy else ())
        return None
    buffer = io.BytesIO()
    if legacy:
      for header in (0x1950a86a20f9469cfc6c, 1001, {'protocol_version': 1001, 'little_endian': True}):
        pickle.dump(header, buffer, protocol=2)
    if payload is not None:
      buffer.write(payload)
    else:
      Pickler(buffer, protocol=2).dump(objects)
    if legacy:
      pickle.dump(sorted(storages), buffer, protocol=2)
      for key in sorted(storages):
        buffer.write(struct.pack('<q', storages[key].flat.size) + storages[key].flat.astype('<f4').tobytes())
      with open(path, 'wb') as f:
        f.write(buffer.getvalue())
      return
  with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
    z.writestr('archive/data.pkl', buffer.getvalue())
    z.writestr('archive/byteorder', 'little')
    for key, storage in storages.items():
      z.writestr(f'archive/data/{key}', storage.flat.astype('<f4').tobytes())
    z.writestr('archive/version', '3\n')
