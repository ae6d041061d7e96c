"""Caffe files written without Caffe, for tests and benchmarks: a protobuf wire-format *encoder* for
``NetParameter``/``BlobProto`` (``.caffemodel``, ``.binaryproto``) and deploy.prototxt writers.

Independent of the importer's reader (``inference/importers/caffe_proto.py``): the field numbers are
caffe.proto's (NetParameter: layers = 2 (V1), layer = 100; LayerParameter: name 1, type 2, bottom 3, top 4,
blobs 7; V1LayerParameter: bottom 2, top 3, name 4, type 5 (enum), blobs 6; BlobProto: num/channels/
height/width 1-4, data 5, shape 7 (BlobShape.dim = 1, packed), double_data 8).

    write_caffemodel(path, alexnet_blobs(width=1/8), v1=False)    # the newer `layer` format
    write_caffemodel(path, blobs, v1=True, packed=False)           # V1 `layers`, unpacked floats
    alexnet_deploy(width=1/8, num_classes=5)                       # bvlc_alexnet's deploy.prototxt

A full-size ``bvlc_alexnet.caffemodel`` (61M floats, 244 MB) is ``alexnet_blobs(width=1.0)``.
"""

from __future__ import annotations

import numpy as np

V1_ENUM = {'Convolution': 'CONVOLUTION', 'ReLU': 'RELU', 'LRN': 'LRN', 'Pooling': 'POOLING',
           'InnerProduct': 'INNER_PRODUCT', 'Dropout': 'DROPOUT', 'Softmax': 'SOFTMAX', 'Power': 'POWER',
           'Concat': 'CONCAT'}
V1_NUMBERS = {'Convolution': 4, 'ReLU': 18, 'LRN': 15, 'Pooling': 17, 'InnerProduct': 14, 'Dropout': 6,
              'Softmax': 20, 'Power': 26, 'Concat': 3}
PAPER = {'conv1': 96, 'conv2': 256, 'conv3': 384, 'conv4': 384, 'conv5': 256, 'fc6': 4096, 'fc7': 4096}


# ---- wire format ----------------------------------------------------------------------------------------

def varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def key(field: int, wire: int) -> bytes:
  return varint((field << 3) | wire)


def length_field(field: int, payload: bytes) -> bytes:
  return key(field, 2) + varint(len(payload)) + payload


def varint_field(field: int, value: int) -> bytes:
  return key(field, 0) + varint(value)


def blob(array: np.ndarray, *, v1: bool = False, packed: bool = True, double: bool = False) -> bytes:
  """A BlobProto: V1's num/channels/height/width (leading 1s) or a BlobShape, then the data."""
  array = np.asarray(array)
  out = b''
  if v1:
    dims = (1,) * (4 - array.ndim) + tuple(array.shape)
    out += b''.join(varint_field(i + 1, d) for i, d in enumerate(dims))
  else:
    out += length_field(7, length_field(1, b''.join(varint(d) for d in array.shape)))
  field, wire, dtype = (8, 1, '<f8') if double else (5, 5, '<f4')
  flat = np.ascontiguousarray(array, dtype).reshape(-1)
  if packed:
    out += length_field(field, flat.tobytes())
  else:   # one key byte + the value, per number (protobuf's unpacked repeated field)
    records = np.empty(flat.size, np.dtype([('key', 'u1'), ('value', dtype)]))
    records['key'], records['value'] = (field << 3) | wire, flat
    out += records.tobytes()
  return out


def layer(name: str, kind: str, blobs: list[np.ndarray], *, v1: bool = False, packed: bool = True) -> bytes:
  if v1:
    body = length_field(4, name.encode()) + varint_field(5, V1_NUMBERS[kind])
    body += b''.join(length_field(6, blob(b, v1=True, packed=packed)) for b in blobs)
    return length_field(2, body)
  body = length_field(1, name.encode()) + length_field(2, kind.encode())
  body += b''.join(length_field(7, blob(b, packed=packed)) for b in blobs)
  return length_field(100, body)


def write_caffemodel(path, layers: list[tuple[str, str, list[np.ndarray]]], *, v1: bool = False,
                     packed: bool = True, name: str = 'net') -> None:
  """A NetParameter: its name, then one layer message per (name, type, blobs), written as it is built."""
  with open(path, 'wb') as f:
    f.write(length_field(1, name.encode()))
    for layer_name, kind, blobs in layers:
      f.write(layer(layer_name, kind, blobs, v1=v1, packed=packed))


def write_binaryproto(path, mean_chw: np.ndarray) -> None:
  """A mean file as Caffe's compute_image_mean writes it: num 1, channels, height, width, data."""
  with open(path, 'wb') as f:
    f.write(blob(np.asarray(mean_chw)[None], v1=True))


# ---- networks ---------------------------------------------------------------------------------------------

def alexnet_channels(width: float) -> dict[str, int]:
  return {name: 2 * max(1, round(n * width / 2)) for name, n in PAPER.items()}


def alexnet_blobs(width: float = 1.0, num_classes: int = 1000, *, channels: int = 3, seed: int = 0,
                  size: int = 227) -> list[tuple[str, str, list[np.ndarray]]]:
  """Random weights of bvlc_alexnet's shapes (at ``width``): conv2/4/5 grouped in two."""
  rng = np.random.default_rng(seed)
  ch = alexnet_channels(width)
  side = (size - 11) // 4 + 1
  for _ in range(3):
    side = -(-(side - 3) // 2) + 1
  shapes = {'conv1': (ch['conv1'], channels, 11, 11), 'conv2': (ch['conv2'], ch['conv1'] // 2, 5, 5),
            'conv3': (ch['conv3'], ch['conv2'], 3, 3), 'conv4': (ch['conv4'], ch['conv3'] // 2, 3, 3),
            'conv5': (ch['conv5'], ch['conv4'] // 2, 3, 3), 'fc6': (ch['fc6'], ch['conv5'] * side * side),
            'fc7': (ch['fc7'], ch['fc6']), 'fc8': (num_classes, ch['fc7'])}
  out = []
  for name, shape in shapes.items():
    std = np.sqrt(2.0 / np.prod(shape[1:]))
    kind = 'Convolution' if name.startswith('conv') else 'InnerProduct'
    out.append((name, kind, [rng.normal(0, std, shape).astype(np.float32),
                             rng.normal(0, 0.1, shape[:1]).astype(np.float32)]))
  return out


def _param_text(params: dict) -> str:
  parts = []
  for k, v in params.items():
    if isinstance(v, dict):
      parts.append(f'{k} {{ {_param_text(v)} }}')
    elif isinstance(v, str) and v.isupper():
      parts.append(f'{k}: {v}')
    elif isinstance(v, str):
      parts.append(f'{k}: "{v}"')
    else:
      parts.append(f'{k}: {v}')
  return ' '.join(parts)


def deploy_text(layers: list[tuple], *, input_chw: tuple[int, int, int], v1: bool = False,
                input_style: str = 'input_layer', name: str = 'net') -> str:
  """A deploy.prototxt: ``layers`` are (name, type, bottom, top, {param_field: {...}}) tuples."""
  c, h, w = input_chw
  if v1 and input_style == 'input_layer':   # an Input layer is a `layer` block, which V1 files cannot mix in
    input_style = 'input_dim'
  lines = [f'name: "{name}"  # written by tests/caffe_files.py']
  if input_style == 'input_dim':
    lines += ['input: "data"', f'input_dim: 10\ninput_dim: {c}\ninput_dim: {h}\ninput_dim: {w}']
  elif input_style == 'input_shape':
    lines += ['input: "data"', f'input_shape {{\n  dim: 10\n  dim: {c}\n  dim: {h}\n  dim: {w}\n}}']
  else:
    lines.append(f'layer {{ name: "data" type: "Input" top: "data" '
                 f'input_param {{ shape: {{ dim: 10 dim: {c} dim: {h} dim: {w} }} }} }}')
  for layer_name, kind, bottom, top, params in layers:
    kind_text = V1_ENUM[kind] if v1 else f'"{kind}"'
    bottoms = ' '.join(f'bottom: "{b}"' for b in ([bottom] if isinstance(bottom, str) else bottom))
    block = 'layers' if v1 else 'layer'
    lines.append(f'{block} {{\n  name: "{layer_name}"\n  type: {kind_text}\n  {bottoms}\n'
                 f'  top: "{top}"\n  {_param_text(params)}\n}}')
  return '\n'.join(lines) + '\n'


def alexnet_layers(width: float = 1.0, num_classes: int = 1000, *, caffenet: bool = False) -> list[tuple]:
  """bvlc_alexnet's deploy layers (models/bvlc_alexnet/deploy.prototxt), at ``width``."""
  ch = alexnet_channels(width)
  lrn = {'lrn_param': {'local_size': 5, 'alpha': 0.0001, 'beta': 0.75}}
  pool = {'pooling_param': {'pool': 'MAX', 'kernel_size': 3, 'stride': 2}}
  drop = {'dropout_param': {'dropout_ratio': 0.5}}

  def conv(n, k, s=1, p=0, g=1):
    params = {'num_output': n, 'kernel_size': k, 'stride': s}
    if p:
      params['pad'] = p
    if g > 1:
      params['group'] = g
    return {'convolution_param': params}

  first = [('conv1', 'Convolution', 'data', 'conv1', conv(ch['conv1'], 11, 4)),
           ('relu1', 'ReLU', 'conv1', 'conv1', {})]
  if caffenet:
    first += [('pool1', 'Pooling', 'conv1', 'pool1', pool), ('norm1', 'LRN', 'pool1', 'norm1', lrn),
              ('conv2', 'Convolution', 'norm1', 'conv2', conv(ch['conv2'], 5, p=2, g=2)),
              ('relu2', 'ReLU', 'conv2', 'conv2', {}),
              ('pool2', 'Pooling', 'conv2', 'pool2', pool), ('norm2', 'LRN', 'pool2', 'norm2', lrn)]
    last = 'norm2'
  else:
    first += [('norm1', 'LRN', 'conv1', 'norm1', lrn), ('pool1', 'Pooling', 'norm1', 'pool1', pool),
              ('conv2', 'Convolution', 'pool1', 'conv2', conv(ch['conv2'], 5, p=2, g=2)),
              ('relu2', 'ReLU', 'conv2', 'conv2', {}),
              ('norm2', 'LRN', 'conv2', 'norm2', lrn), ('pool2', 'Pooling', 'norm2', 'pool2', pool)]
    last = 'pool2'
  return first + [
      ('conv3', 'Convolution', last, 'conv3', conv(ch['conv3'], 3, p=1)),
      ('relu3', 'ReLU', 'conv3', 'conv3', {}),
      ('conv4', 'Convolution', 'conv3', 'conv4', conv(ch['conv4'], 3, p=1, g=2)),
      ('relu4', 'ReLU', 'conv4', 'conv4', {}),
      ('conv5', 'Convolution', 'conv4', 'conv5', conv(ch['conv5'], 3, p=1, g=2)),
      ('relu5', 'ReLU', 'conv5', 'conv5', {}), ('pool5', 'Pooling', 'conv5', 'pool5', pool),
      ('fc6', 'InnerProduct', 'pool5', 'fc6', {'inner_product_param': {'num_output': ch['fc6']}}),
      ('relu6', 'ReLU', 'fc6', 'fc6', {}), ('drop6', 'Dropout', 'fc6', 'fc6', drop),
      ('fc7', 'InnerProduct', 'fc6', 'fc7', {'inner_product_param': {'num_output': ch['fc7']}}),
      ('relu7', 'ReLU', 'fc7', 'fc7', {}), ('drop7', 'Dropout', 'fc7', 'fc7', drop),
      ('fc8', 'InnerProduct', 'fc7', 'fc8', {'inner_product_param': {'num_output': num_classes}}),
      ('prob', 'Softmax', 'fc8', 'prob', {}),
  ]


def lenet_layers(num_classes: int = 10) -> list[tuple]:
  """DIGITS' lenet.prototxt deploy layers."""
  pool = {'pooling_param': {'pool': 'MAX', 'kernel_size': 2, 'stride': 2}}
  return [
      ('scale', 'Power', 'data', 'scaled', {'power_param': {'scale': 0.0125}}),
      ('conv1', 'Convolution', 'scaled', 'conv1', {'convolution_param': {'num_output': 20, 'kernel_size': 5,
                                                                         'stride': 1}}),
      ('pool1', 'Pooling', 'conv1', 'pool1', pool),
      ('conv2', 'Convolution', 'pool1', 'conv2', {'convolution_param': {'num_output': 50, 'kernel_size': 5,
                                                                        'stride': 1}}),
      ('pool2', 'Pooling', 'conv2', 'pool2', pool),
      ('ip1', 'InnerProduct', 'pool2', 'ip1', {'inner_product_param': {'num_output': 500}}),
      ('relu1', 'ReLU', 'ip1', 'ip1', {}),
      ('ip2', 'InnerProduct', 'ip1', 'ip2', {'inner_product_param': {'num_output': num_classes}}),
      ('softmax', 'Softmax', 'ip2', 'softmax', {}),
  ]


def lenet_blobs(num_classes: int = 10, *, channels: int = 1, seed: int = 0):
  rng = np.random.default_rng(seed)
  shapes = {'conv1': (20, channels, 5, 5), 'conv2': (50, 20, 5, 5), 'ip1': (500, 800),
            'ip2': (num_classes, 500)}
  return [(name, 'Convolution' if name.startswith('conv') else 'InnerProduct',
           [rng.normal(0, np.sqrt(2.0 / np.prod(s[1:])), s).astype(np.float32),
            rng.normal(0, 0.1, s[:1]).astype(np.float32)]) for name, s in shapes.items()]


# Table 1 of the GoogLeNet paper, bvlc_googlenet's inception modules: (name, 1x1, 3x3 reduce, 3x3, 5x5 reduce,
# 5x5, pool proj).
INCEPTIONS = (('3a', 64, 96, 128, 16, 32, 32), ('3b', 128, 128, 192, 32, 96, 64),
              ('4a', 192, 96, 208, 16, 48, 64), ('4b', 160, 112, 224, 24, 64, 64),
              ('4c', 128, 128, 256, 24, 64, 64), ('4d', 112, 144, 288, 32, 64, 64),
              ('4e', 256, 160, 320, 32, 128, 128), ('5a', 256, 160, 320, 32, 128, 128),
              ('5b', 384, 192, 384, 48, 128, 128))


def googlenet_layers(width: float = 1.0, num_classes: int = 1000) -> tuple[list[tuple], dict[str, tuple]]:
  """bvlc_googlenet's deploy layers (models/bvlc_googlenet/deploy.prototxt) at ``width``, and the weight
  shapes of its convolutions and classifier."""
  def ch(n):
    return max(1, round(n * width))

  layers, shapes = [], {}

  def conv(name, bottom, n, k, c_in, s=1):
    params = {'num_output': ch(n), 'kernel_size': k}
    if k // 2:
      params['pad'] = k // 2
    if s > 1:
      params['stride'] = s
    layers.append((name, 'Convolution', bottom, name, {'convolution_param': params}))
    layers.append((name.replace('/', '/relu_', 1), 'ReLU', name, name, {}))
    shapes[name] = (ch(n), c_in, k, k)
    return name, ch(n)

  def pool(name, bottom, k, s, pad=0, method='MAX'):
    params = {'pool': method, 'kernel_size': k, 'stride': s}
    if pad:
      params['pad'] = pad
    layers.append((name, 'Pooling', bottom, name, {'pooling_param': params}))
    return name

  lrn = {'lrn_param': {'local_size': 5, 'alpha': 0.0001, 'beta': 0.75}}
  x, c = conv('conv1/7x7_s2', 'data', 64, 7, 3, s=2)
  x = pool('pool1/3x3_s2', x, 3, 2)
  layers.append(('pool1/norm1', 'LRN', x, 'pool1/norm1', lrn))
  x, c = conv('conv2/3x3_reduce', 'pool1/norm1', 64, 1, c)
  x, c = conv('conv2/3x3', x, 192, 3, c)
  layers.append(('conv2/norm2', 'LRN', x, 'conv2/norm2', lrn))
  x = pool('pool2/3x3_s2', 'conv2/norm2', 3, 2)
  for name, c1, r3, c3, r5, c5, pp in INCEPTIONS:
    p = f'inception_{name}'
    b1, n1 = conv(f'{p}/1x1', x, c1, 1, c)
    b3, n3 = conv(f'{p}/3x3', conv(f'{p}/3x3_reduce', x, r3, 1, c)[0], c3, 3, ch(r3))
    b5, n5 = conv(f'{p}/5x5', conv(f'{p}/5x5_reduce', x, r5, 1, c)[0], c5, 5, ch(r5))
    bp, npp = conv(f'{p}/pool_proj', pool(f'{p}/pool', x, 3, 1, pad=1), pp, 1, c)
    layers.append((f'{p}/output', 'Concat', [b1, b3, b5, bp], f'{p}/output', {}))
    x, c = f'{p}/output', n1 + n3 + n5 + npp
    if name in ('3b', '4e'):
      x = pool(f'pool{3 if name == "3b" else 4}/3x3_s2', x, 3, 2)
  x = pool('pool5/7x7_s1', x, 7, 1, method='AVE')
  layers.append(('pool5/drop_7x7_s1', 'Dropout', x, x, {'dropout_param': {'dropout_ratio': 0.4}}))
  layers.append(('loss3/classifier', 'InnerProduct', x, 'loss3/classifier',
                 {'inner_product_param': {'num_output': num_classes}}))
  layers.append(('prob', 'Softmax', 'loss3/classifier', 'prob', {}))
  shapes['loss3/classifier'] = (num_classes, c)
  return layers, shapes


def random_blobs(shapes: dict[str, tuple], seed: int = 0) -> list[tuple[str, str, list[np.ndarray]]]:
  """He-scaled random weights and small random biases for ``shapes`` (name -> weight shape)."""
  rng = np.random.default_rng(seed)
  return [(name, 'Convolution' if len(shape) == 4 else 'InnerProduct',
           [rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape).astype(np.float32),
            rng.normal(0, 0.1, shape[:1]).astype(np.float32)]) for name, shape in shapes.items()]
