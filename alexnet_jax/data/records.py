"""The record format of prepared datasets: one ArrayRecord file per split, one image per record.

A record is a small fixed header followed by the original path (UTF-8) and the pixels:

    magic b'AXR1' | label u32 | height u16 | width u16 | channels u8 | encoding u8 | path_len u16 | path | data

`encoding` is 0 (raw uint8 HxWxC bytes), 1 (PNG) or 2 (JPEG, quality 90 as DIGITS used). Pixels are stored
already resized to the dataset's image size (DIGITS' create_db does the same), so reading a record needs
no resize; for JPEG and PNG it needs one small decode.

Measured on this 2-core machine (256x256 photo-like images, one thread): decoding costs about 0.23 ms for
JPEG q90 (24 KiB per image), 1.7 ms for PNG (116 KiB: slower than decoding the original 500x375 JPEG) and
nothing for raw (192 KiB). That is why the prepare tool defaults to `jpg` (DIGITS defaulted to PNG).
ArrayRecord files are written with `group_size:1` so that every record can be read at random.
"""

from __future__ import annotations

import dataclasses
import io
import struct

import numpy as np
import PIL.Image

from alexnet_jax.data import errors

ENCODINGS = {'raw': 0, 'png': 1, 'jpg': 2}
_ENCODING_NAMES = {v: k for k, v in ENCODINGS.items()}
_MAGIC = b'AXR1'
_HEADER = struct.Struct('<4sIHHBBH')
JPEG_QUALITY = 90
WRITER_OPTIONS = 'group_size:1'


@dataclasses.dataclass
class Record:
  """One decoded record: uint8 pixels [H, W, C], the label and the original path."""
  image: np.ndarray
  label: int
  path: str


def encode_record(image: np.ndarray, label: int, path: str, encoding: str) -> bytes:
  """Serializes a uint8 [H, W, C] image (C = 1 or 3) with its label and source path."""
  if encoding not in ENCODINGS:
    raise ValueError(f'encoding {encoding!r} is not one of {tuple(ENCODINGS)}')
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
    raise ValueError(f'expected uint8 [H, W, 1|3], got {image.dtype} {image.shape}')
  h, w, c = image.shape
  if encoding == 'raw':
    data = np.ascontiguousarray(image).tobytes()
  else:
    pil = PIL.Image.fromarray(image[:, :, 0] if c == 1 else image)
    buf = io.BytesIO()
    if encoding == 'png':
      pil.save(buf, format='PNG', compress_level=1)   # lossless either way; level 1 encodes ~4x faster
    else:
      pil.save(buf, format='JPEG', quality=JPEG_QUALITY)
    data = buf.getvalue()
  path_b = path.encode('utf-8', 'surrogateescape')[:65535]
  return _HEADER.pack(_MAGIC, label, h, w, c, ENCODINGS[encoding], len(path_b)) + path_b + data


def decode_record(blob: bytes) -> Record:
  """Parses a record written by `encode_record`; raises DecodeError if it is damaged."""
  try:
    magic, label, h, w, c, enc, plen = _HEADER.unpack_from(blob, 0)
  except struct.error as e:
    raise errors.DecodeError(errors.TRUNCATED, f'record header: {e}') from None
  if magic != _MAGIC:
    raise errors.DecodeError(errors.NOT_AN_IMAGE, 'not an alexnet_jax record (bad magic)')
  start = _HEADER.size
  path = bytes(blob[start:start + plen]).decode('utf-8', 'surrogateescape')
  data = memoryview(blob)[start + plen:]
  name = _ENCODING_NAMES.get(enc)
  if name == 'raw':
    if len(data) != h * w * c:
      raise errors.DecodeError(errors.TRUNCATED, f'{path}: {len(data)} bytes for {h}x{w}x{c}')
    image = np.frombuffer(data, np.uint8).reshape(h, w, c)
  elif name in ('png', 'jpg'):
    try:
      pil = PIL.Image.open(io.BytesIO(data))
      pil.load()
    except Exception as e:  # pylint: disable=broad-except
      raise errors.DecodeError(errors.TRUNCATED, f'{path}: {type(e).__name__}: {e}') from None
    image = np.asarray(pil)
    if image.ndim == 2:
      image = image[:, :, None]
    if image.shape != (h, w, c):
      raise errors.DecodeError(errors.TRUNCATED, f'{path}: decoded {image.shape}, header {(h, w, c)}')
  else:
    raise errors.DecodeError(errors.UNSUPPORTED, f'{path}: encoding id {enc}')
  return Record(image, int(label), path)


class Writer:
  """Appends records to one ArrayRecord file."""

  def __init__(self, path: str):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    self.path = path
    self.count = 0
    self._w = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)

  def write(self, blob: bytes) -> None:
    self._w.write(blob)
    self.count += 1

  def close(self) -> None:
    self._w.close()
