"""Caffe's binary files without Caffe or protoc: a protobuf wire-format reader for ``.caffemodel`` and
``.binaryproto``.

A ``.caffemodel`` is a serialized ``NetParameter`` and a ``.binaryproto`` mean file a ``BlobProto``
(BVLC/caffe ``src/caffe/proto/caffe.proto``). Only the fields that carry weights are read; the network's
structure comes from its ``deploy.prototxt`` (``prototxt.py``). Field numbers (caffe.proto)::

    NetParameter      name = 1, layers = 2 (V1LayerParameter, Caffe before 2015), layer = 100 (LayerParameter)
    LayerParameter    name = 1, type = 2 (a string: "Convolution"), blobs = 7
    V1LayerParameter  name = 4, type = 5 (an enum: CONVOLUTION = 4 ...), blobs = 6
    BlobProto         num = 1, channels = 2, height = 3, width = 4 (the 4-D shape of V1 files),
                      data = 5 (float, packed or not), double_data = 8, shape = 7 (BlobShape: dim = 1)

The wire format: every field is a varint key ``(number << 3) | wire_type`` then its value: a varint (type 0),
8 bytes (1), a length-prefixed run of bytes (2: strings, sub-messages, packed repeated numbers) or 4 bytes
(5). Weights are ``data``: normally one packed run (type 2) that becomes a numpy array over the file's
bytes (``np.frombuffer``, no copy); an unpacked ``repeated float`` (one key and 4 bytes per number, type 5)
is read as one strided view of the whole run, never a Python loop per number. A file is read once into
memory (the ``bytes``), and every blob is a view of it until the importer converts it to our layout: a
240 MB ``bvlc_alexnet.caffemodel`` costs its size plus the converted parameters, and imports in a few
seconds. Anything that does not parse -- a truncated file, a length running past its message, a blob
whose data does not fit its shape -- is a ``WeightsError`` naming the file and the byte offset.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from alexnet_jax.inference.importers.torch_files import WeightsError

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
# V1LayerParameter.LayerType (caffe.proto) -> the LayerParameter type string of the same layer.
V1_TYPES = {
    0: 'None', 35: 'AbsVal', 1: 'Accuracy', 30: 'ArgMax', 2: 'BNLL', 3: 'Concat', 37: 'ContrastiveLoss',
    4: 'Convolution', 5: 'Data', 39: 'Deconvolution', 6: 'Dropout', 32: 'DummyData', 7: 'EuclideanLoss',
    25: 'Eltwise', 38: 'Exp', 8: 'Flatten', 9: 'HDF5Data', 10: 'HDF5Output', 28: 'HingeLoss', 11: 'Im2col',
    12: 'ImageData', 13: 'InfogainLoss', 14: 'InnerProduct', 15: 'LRN', 29: 'MemoryData',
    16: 'MultinomialLogisticLoss', 34: 'MVN', 17: 'Pooling', 26: 'Power', 18: 'ReLU', 19: 'Sigmoid',
    27: 'SigmoidCrossEntropyLoss', 36: 'Silence', 20: 'Softmax', 21: 'SoftmaxWithLoss', 22: 'Split',
    33: 'Slice', 23: 'TanH', 24: 'WindowData', 31: 'Threshold',
}
# The prototxt spelling of the same enum (``type: CONVOLUTION`` in a V1 deploy.prototxt).
V1_NAMES = {
    'NONE': 'None', 'ABSVAL': 'AbsVal', 'ACCURACY': 'Accuracy', 'ARGMAX': 'ArgMax', 'BNLL': 'BNLL',
    'CONCAT': 'Concat', 'CONTRASTIVE_LOSS': 'ContrastiveLoss', 'CONVOLUTION': 'Convolution', 'DATA': 'Data',
    'DECONVOLUTION': 'Deconvolution', 'DROPOUT': 'Dropout', 'DUMMY_DATA': 'DummyData',
    'EUCLIDEAN_LOSS': 'EuclideanLoss', 'ELTWISE': 'Eltwise', 'EXP': 'Exp', 'FLATTEN': 'Flatten',
    'HDF5_DATA': 'HDF5Data', 'HDF5_OUTPUT': 'HDF5Output', 'HINGE_LOSS': 'HingeLoss', 'IM2COL': 'Im2col',
    'IMAGE_DATA': 'ImageData', 'INFOGAIN_LOSS': 'InfogainLoss', 'INNER_PRODUCT': 'InnerProduct', 'LRN': 'LRN',
    'MEMORY_DATA': 'MemoryData', 'MULTINOMIAL_LOGISTIC_LOSS': 'MultinomialLogisticLoss', 'MVN': 'MVN',
    'POOLING': 'Pooling', 'POWER': 'Power', 'RELU': 'ReLU', 'SIGMOID': 'Sigmoid',
    'SIGMOID_CROSS_ENTROPY_LOSS': 'SigmoidCrossEntropyLoss', 'SILENCE': 'Silence', 'SOFTMAX': 'Softmax',
    'SOFTMAX_LOSS': 'SoftmaxWithLoss', 'SPLIT': 'Split', 'SLICE': 'Slice', 'TANH': 'TanH',
    'WINDOW_DATA': 'WindowData', 'THRESHOLD': 'Threshold',
}


@dataclasses.dataclass
class CaffeLayer:
  """A layer of a ``.caffemodel``: its name, type (LayerParameter's spelling) and weight blobs."""
  name: str
  type: str
  blobs: list[np.ndarray]


class _Reader:
  """Fields of one message, ``buf[start:end]``; ``source`` names the file in errors."""

  def __init__(self, buf: memoryview, start: int, end: int, source: str):
    self.buf, self.pos, self.end, self.source = buf, start, end, source

  def fail(self, what: str):
    raise WeightsError(f'{self.source}: {what} at byte {self.pos}; the file is truncated or not a Caffe '
                       f'protobuf file')

  def varint(self) -> int:
    result, shift, buf = 0, 0, self.buf
    while True:
      if self.pos >= self.end:
        self.fail('a number runs past the end of its message')
      byte = buf[self.pos]
      self.pos += 1
      result |= (byte & 0x7F) << shift
      if byte < 0x80:
        return result
      shift += 7
      if shift > 63:
        self.fail('a number is longer than 10 bytes')

  def fields(self):
    """Yields (field number, wire type, value): an int for varints, (start, end) for the others."""
    while self.pos < self.end:
      key = self.varint()
      number, wire = key >> 3, key & 7
      if wire == VARINT:
        yield number, wire, self.varint()
        continue
      size = {FIXED64: 8, FIXED32: 4}.get(wire)
      if wire == LENGTH:
        size = self.varint()
      elif size is None:
        self.fail(f'field {number} has wire type {wire}, which caffe.proto does not use')
      start = self.pos
      if size > self.end - start:
        self.fail(f'field {number} ({size} bytes) runs past the end of its message')
      self.pos = start + size
      yield number, wire, (start, start + size)

  def text(self, span) -> str:
    try:
      return bytes(self.buf[span[0]:span[1]]).decode('utf-8')
    except UnicodeDecodeError:
      self.pos = span[0]
      self.fail('a name is not UTF-8 text')

  def sub(self, span) -> '_Reader':
    return _Reader(self.buf, span[0], span[1], self.source)


def _packed(reader: _Reader, span, dtype: str) -> np.ndarray:
  size = np.dtype(dtype).itemsize
  if (span[1] - span[0]) % size:
    reader.pos = span[0]
    reader.fail(f'a packed run of {span[1] - span[0]} bytes is not a whole number of {dtype} values')
  return np.frombuffer(reader.buf[span[0]:span[1]], dtype)


def _unpacked(reader: _Reader, first: tuple[int, int], key: int, dtype: str) -> np.ndarray:
  """An unpacked ``repeated float/double`` starting at its first value ``first``: one key byte and the
  value, repeated. Read as one strided view (the run is scanned with numpy, not value by value)."""
  size = np.dtype(dtype).itemsize
  start = first[0] - 1                     # the key byte before the first value
  record = np.dtype([('key', 'u1'), ('value', dtype)])
  count = (reader.end - start) // record.itemsize
  records = np.frombuffer(reader.buf[start:start + count * record.itemsize], record)
  wrong = np.flatnonzero(records['key'] != key)
  run = int(wrong[0]) if wrong.size else count
  reader.pos = start + run * (1 + size)
  return records['value'][:run]


def read_blob(reader: _Reader, what: str) -> np.ndarray:
  """A ``BlobProto`` as an array of its shape (``shape.dim``, or num/channels/height/width)."""
  legacy, dims, chunks = {}, None, []
  for number, wire, value in reader.fields():
    if number in (1, 2, 3, 4) and wire == VARINT:
      legacy[number] = value
    elif number == 7 and wire == LENGTH:
      shape = reader.sub(value)
      dims = []
      for n, w, v in shape.fields():
        if n == 1 and w == VARINT:
          dims.append(v)
        elif n == 1 and w == LENGTH:     # packed dims (the default for BlobShape.dim)
          sub = reader.sub(v)
          while sub.pos < sub.end:
            dims.append(sub.varint())
    elif number == 5 and wire == LENGTH:
      chunks.append(_packed(reader, value, '<f4'))
    elif number == 5 and wire == FIXED32:
      chunks.append(_unpacked(reader, value, (5 << 3) | FIXED32, '<f4'))
    elif number == 8 and wire == LENGTH:
      chunks.append(_packed(reader, value, '<f8'))
    elif number == 8 and wire == FIXED64:
      chunks.append(_unpacked(reader, value, (8 << 3) | FIXED64, '<f8'))
  if dims is None:
    dims = [legacy.get(i, 0) for i in (1, 2, 3, 4)]   # V1's 4-D shape, as written (the importer squeezes)
  data = chunks[0] if len(chunks) == 1 else (np.concatenate(chunks) if chunks else np.zeros(0, '<f4'))
  count = int(np.prod(dims)) if dims else 0
  if data.size != count:
    raise WeightsError(f'{reader.source}: {what} holds {data.size} numbers for its shape {tuple(dims)} '
                       f'({count}); the file is truncated or corrupt')
  return data.reshape(dims)


def _layer(reader: _Reader, v1: bool, index: int) -> CaffeLayer:
  name_field, type_field, blobs_field = (4, 5, 6) if v1 else (1, 2, 7)
  name, kind, spans = f'#{index}', 'None', []
  for number, wire, value in reader.fields():
    if number == name_field and wire == LENGTH:
      name = reader.text(value)
    elif number == type_field:
      kind = V1_TYPES.get(value, f'V1 type {value}') if v1 else reader.text(value)
    elif number == blobs_field and wire == LENGTH:
      spans.append(value)
  blobs = [read_blob(reader.sub(span), f'blob {i} of layer {name!r}') for i, span in enumerate(spans)]
  return CaffeLayer(name, kind, blobs)


def _read_bytes(path: str) -> memoryview:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file')
  with open(path, 'rb') as f:
    return memoryview(f.read())


def parse_net(data: bytes | memoryview, source: str = '<bytes>') -> list[CaffeLayer]:
  """The layers of a serialized ``NetParameter`` (both the V1 ``layers`` and the newer ``layer``)."""
  buf = memoryview(data)
  reader = _Reader(buf, 0, len(buf), source)
  layers = []
  for number, wire, value in reader.fields():
    if number in (2, 100) and wire == LENGTH:
      layers.append(_layer(reader.sub(value), number == 2, len(layers)))
  if not layers:
    raise WeightsError(f'{source}: no layers found; not a Caffe .caffemodel (a NetParameter)')
  return layers


def read_caffemodel(path: str) -> list[CaffeLayer]:
  """The layers of a ``.caffemodel``; each blob a view of the file's bytes (read once)."""
  return parse_net(_read_bytes(path), path)


def read_binaryproto(path: str) -> np.ndarray:
  """A ``.binaryproto`` blob (a mean file: [1, C, H, W] or [C, H, W]) as float32 [C, H, W]."""
  buf = _read_bytes(path)
  blob = read_blob(_Reader(buf, 0, len(buf), path), 'the blob')
  shape = blob.shape
  while blob.ndim > 3 and blob.shape[0] == 1:
    blob = blob[0]
  if blob.ndim != 3 or blob.size == 0:
    raise WeightsError(f'{path}: a mean file holds one C x H x W image; this blob has shape {shape}')
  return np.asarray(blob, np.float32)


__all__ = ['CaffeLayer', 'V1_NAMES', 'V1_TYPES', 'parse_net', 'read_binaryproto', 'read_blob',
           'read_caffemodel']
