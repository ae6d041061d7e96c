"""Caffe's AlexNet (``bvlc_alexnet``, DIGITS' alexnet.prototxt) and DIGITS' LeNet -> ``alexnet`` / ``lenet``.

**AlexNet.** bvlc_alexnet's deploy net is the paper's network with Caffe's ``group: 2`` in conv2, conv4 and
conv5, which *is* the two towers: group ``g`` of a grouped convolution reads input maps ``g`` and writes
output maps ``g``, exactly as tower ``g`` does here. So every layer's outputs split in two halves, tower 0
the first (conv1..conv5, fc6, fc7), and fc8's *inputs* split (tower ``t`` holds the rows for its half of
fc7; fc8's bias is the network's head bias)::

    conv1 11x11/4, pad 0 -> ReLU -> norm1 -> pool1 3/2 -> conv2 5x5 pad 2 group 2 -> ReLU -> norm2 -> pool2
    -> conv3 3x3 pad 1 -> ReLU -> conv4 (group 2) -> ReLU -> conv5 (group 2) -> ReLU -> pool5
    -> fc6 -> ReLU -> fc7 -> ReLU -> fc8

Caffe's LRN (``norm1``, ``norm2``: local_size 5, alpha 1e-4, beta 0.75, k 1, ACROSS_CHANNELS) is not split
by the groups: it runs over all 96 / 256 maps, so the bundle's network is ``alexnet`` with
``lrn='caffe_across'`` (``models/alexnet.py``). The pools are max 3/2 with Caffe's rounding up
(``layers.max_pool(ceil_mode=True)``): 227 -> 55 -> 27 -> 13 -> 6, as in Caffe. Caffe's conv1 rounds its
output size *down*, ours (cuda-convnet's) up; the two agree when ``(side - 11)`` is a multiple of 4 (227,
DIGITS' 227 crops), and other input sizes are refused. A narrower copy (every layer's outputs scaled
alike, as ``config.model.width`` does) is imported at that width.

**CaffeNet** (``bvlc_reference_caffenet``) pools *before* it normalizes (conv1 -> ReLU -> pool1 -> norm1);
the LRN and the max-pool do not commute, and our network normalizes first, so it is refused with an error
saying so, rather than imported into a network that computes something else.

**LeNet** (DIGITS' lenet.prototxt): ``scale`` (Power, scale 0.0125) -> conv1 5x5, 20 -> pool 2/2 -> conv2
5x5, 50 -> pool 2/2 -> ip1 500 -> ReLU -> ip2. The Power layer's 0.0125 is our ``lenet.INPUT_SCALE``
(another scale is refused). Caffe rounds pooled sizes up, Flax (our lenet) down: sizes where that differs
(an odd map before a pool) are refused; 28x28 maps (MNIST) agree.

Every hyperparameter the mapping relies on is checked, and a difference names the layer, the field and
both values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from alexnet_jax.inference.importers import caffe_weights
from alexnet_jax.inference.importers.caffe_net import Layer, Net
from alexnet_jax.inference.importers.caffe_weights import Weights
from alexnet_jax.inference.importers.torch_files import WeightsError
from alexnet_jax.models.alexnet import CAFFE_ACROSS, PAPER_CHANNELS, scaled
from alexnet_jax.models import layers as layers_lib
from alexnet_jax.models.lenet import INPUT_SCALE, LENET_UNITS

ALEXNET = ['Convolution', 'ReLU', 'LRN', 'Pooling', 'Convolution', 'ReLU', 'LRN', 'Pooling',
           'Convolution', 'ReLU', 'Convolution', 'ReLU', 'Convolution', 'ReLU', 'Pooling',
           'InnerProduct', 'ReLU', 'InnerProduct', 'ReLU', 'InnerProduct']
CAFFENET = ['Convolution', 'ReLU', 'Pooling', 'LRN', 'Convolution', 'ReLU', 'Pooling', 'LRN'] + ALEXNET[8:]
LENET = ['Power', 'Convolution', 'Pooling', 'Convolution', 'Pooling', 'InnerProduct', 'ReLU', 'InnerProduct']
# (kernel, stride, pad, group) of conv1..conv5 in bvlc_alexnet.
ALEXNET_CONVS = {'conv1': (11, 4, 0, 1), 'conv2': (5, 1, 2, 2), 'conv3': (3, 1, 1, 1), 'conv4': (3, 1, 1, 2),
                 'conv5': (3, 1, 1, 2)}
CAFFE_LRN = {'local_size': layers_lib.LRN_N, 'alpha': layers_lib.LRN_ALPHA, 'beta': layers_lib.LRN_BETA,
             'k': layers_lib.CAFFE_LRN_K, 'region': 'ACROSS_CHANNELS'}


@dataclasses.dataclass
class Mapped:
  """A Caffe net in our terms: the parameter tree (numpy), the model config fields and the input."""
  params: dict[str, Any]
  model: dict[str, Any]              # config.model fields: name, width, lrn
  input_hw: tuple[int, int]
  channels: int
  num_classes: int
  caffe_names: dict[str, str]        # our layer -> the Caffe layer it came from
  notes: str = ''                    # what the bundle's info.json should say about the import


def types_of(net: Net) -> list[str]:
  return [layer.type for layer in net.layers]


def _expect(layer: Layer, field: str, found, want) -> None:
  if isinstance(want, float):
    same = abs(float(found) - want) <= 1e-6 * max(1.0, abs(want))
  else:
    same = found == want
  if not same:
    layer.fail(f'{field} is {found}, the network imported into needs {want}')


def _check_conv(layer: Layer, kernel: int, stride: int, pad: int, group: int) -> dict[str, Any]:
  conv = layer.conv()
  _expect(layer, 'kernel_size', conv['kernel'], (kernel, kernel))
  _expect(layer, 'stride', conv['stride'], (stride, stride))
  _expect(layer, 'pad', conv['pad'], (pad, pad))
  if conv['group'] != group and group == 2:
    layer.fail(f'group is {conv["group"]}; the two-tower alexnet is Caffe\'s group: 2 in conv2, conv4 and '
               f'conv5 (a one-tower AlexNet is not imported into it)')
  _expect(layer, 'group', conv['group'], group)
  _expect(layer, 'bias_term', conv['bias_term'], True)
  return conv


def _check_pool(layer: Layer, kernel: int, stride: int) -> None:
  pool = layer.pool()
  _expect(layer, 'pool', pool['method'], 'MAX')
  _expect(layer, 'kernel_size', pool['kernel'], (kernel, kernel))
  _expect(layer, 'stride', pool['stride'], (stride, stride))
  _expect(layer, 'pad', pool['pad'], (0, 0))


def _split(a: np.ndarray, axis: int, towers: int = 2) -> np.ndarray:
  """[tower, ...]: ``a`` cut in ``towers`` equal parts along ``axis``."""
  return np.ascontiguousarray(np.stack(np.split(a, towers, axis=axis)), np.float32)


def map_alexnet(net: Net, weights: Weights) -> Mapped:
  """bvlc_alexnet (or a DIGITS alexnet) -> two-tower ``alexnet`` parameters (see the module docstring)."""
  kinds = types_of(net)
  if kinds == CAFFENET:
    raise WeightsError(f'{net.source}: this is CaffeNet (bvlc_reference_caffenet: pool before norm in '
                       f'{net.layers[2].name}/{net.layers[3].name}), whose max-pool comes before the LRN; '
                       f'alexnet_jax\'s alexnet normalizes first (bvlc_alexnet\'s order), and the two do not '
                       f'compute the same function, so CaffeNet is not imported. Use bvlc_alexnet.')
  layers = net.chain()
  channels, height, width = net.input_chw
  for side, axis in ((height, 'height'), (width, 'width')):
    if (side - 11) % 4:
      raise WeightsError(f'{net.source}: input {axis} {side}: Caffe\'s conv1 (11x11, stride 4) rounds '
                         f'(side - 11) / 4 down, alexnet_jax\'s alexnet up; they agree only when side - 11 '
                         f'is a multiple of 4 (227, 231, ...)')
  convs = [l for l in layers if l.type == 'Convolution']
  fcs = [l for l in layers if l.type == 'InnerProduct']
  for layer in (l for l in layers if l.type == 'LRN'):
    lrn = layer.lrn()
    for field, want in CAFFE_LRN.items():
      _expect(layer, field, lrn[field], want)
  for layer in (l for l in layers if l.type == 'Pooling'):
    _check_pool(layer, 3, 2)
  first = convs[0].conv()['num_output']
  if first % 2 or first <= 0:
    convs[0].fail(f'num_output is {first}; the two towers need an even number of conv1 maps')
  width_mult = first / PAPER_CHANNELS['conv1']
  ours = ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7']
  h, w = (height - 11) // 4 + 1, (width - 11) // 4 + 1
  for _ in range(3):
    h, w = layers_lib.pooled_size(h, ceil_mode=True), layers_lib.pooled_size(w, ceil_mode=True)
  towers: dict[str, dict[str, np.ndarray]] = {}
  in_channels, names = channels, {}
  for name, layer in zip(ours, convs + fcs[:2]):
    per_tower = scaled(PAPER_CHANNELS[name], width_mult, 2)
    names[name] = layer.name
    if name.startswith('conv'):
      kernel, stride, pad, group = ALEXNET_CONVS[name]
      conv = _check_conv(layer, kernel, stride, pad, group)
      if conv['num_output'] != 2 * per_tower:
        layer.fail(f'num_output is {conv["num_output"]}; a two-tower alexnet {first} conv1 maps wide '
                   f'(width {width_mult:g}) has {2 * per_tower} here')
      weight, bias = weights.blobs(layer.name, (2 * per_tower, in_channels // group, kernel, kernel))
      if name == 'conv1':
        weight = caffe_weights.rgb_first_conv(weight)
      towers[name] = {'kernel': _split(caffe_weights.conv_kernel(weight), -1), 'bias': _split(bias, 0)}
      in_channels = 2 * per_tower
    else:
      fc = layer.inner_product()
      if fc['num_output'] != 2 * per_tower or not fc['bias_term']:
        layer.fail(f'num_output is {fc["num_output"]} (bias_term {fc["bias_term"]}); a two-tower alexnet of '
                   f'width {width_mult:g} has {2 * per_tower}, with a bias')
      fan_in = in_channels * h * w if name == 'fc6' else in_channels
      weight, bias = weights.blobs(layer.name, (2 * per_tower, fan_in))
      chw = (in_channels, h, w) if name == 'fc6' else None
      towers[name] = {'kernel': caffe_weights.tower_dense_kernel(weight, 2, chw), 'bias': _split(bias, 0)}
      in_channels = 2 * per_tower
  fc8 = fcs[2]
  names['fc8'] = fc8.name
  num_classes = fc8.inner_product()['num_output']
  weight, bias = weights.blobs(fc8.name, (num_classes, in_channels))
  towers['fc8'] = {'kernel': _split(caffe_weights.dense_kernel(weight), 0)}
  params = {'towers': towers, 'head': {'bias': bias}}
  return Mapped(params, {'name': 'alexnet', 'width': width_mult, 'lrn': CAFFE_ACROSS},
                (height, width), channels, num_classes, names)


def map_lenet(net: Net, weights: Weights) -> Mapped:
  """DIGITS' LeNet -> ``lenet`` parameters (see the module docstring)."""
  layers = net.chain()
  channels, height, width = net.input_chw
  power = layers[0].power()
  _expect(layers[0], 'power', power['power'], 1.0)
  _expect(layers[0], 'shift', power['shift'], 0.0)
  _expect(layers[0], 'scale', power['scale'], float(INPUT_SCALE))
  h, w = height, width
  for side in (h, w):
    after1 = side - 4
    if after1 <= 0 or after1 % 2 or (after1 // 2 - 4) <= 0 or (after1 // 2 - 4) % 2:
      raise WeightsError(f'{net.source}: input {height}x{width}: Caffe rounds LeNet\'s pooled sizes up, '
                         f'alexnet_jax\'s lenet down; they agree only when both maps before the pools are '
                         f'even (28x28, MNIST\'s size, is)')
  for layer in (l for l in layers if l.type == 'Pooling'):
    _check_pool(layer, 2, 2)
  convs = [l for l in layers if l.type == 'Convolution']
  fcs = [l for l in layers if l.type == 'InnerProduct']
  width_mult = convs[0].conv()['num_output'] / LENET_UNITS['conv1']
  towers, names, in_channels = {}, {}, channels
  h, w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
  for name, layer in zip(['conv1', 'conv2', 'ip1'], convs + fcs[:1]):
    units = max(1, round(LENET_UNITS[name] * width_mult))
    names[name] = layer.name
    if layer.type == 'Convolution':
      conv = _check_conv(layer, 5, 1, 0, 1)
      if conv['num_output'] != units:
        layer.fail(f'num_output is {conv["num_output"]}; a lenet of width {width_mult:g} has {units}')
      weight, bias = weights.blobs(layer.name, (units, in_channels, 5, 5))
      if name == 'conv1':
        weight = caffe_weights.rgb_first_conv(weight)
      towers[name] = {'kernel': caffe_weights.conv_kernel(weight)[None], 'bias': bias[None]}
    else:
      fc = layer.inner_product()
      if fc['num_output'] != units or not fc['bias_term']:
        layer.fail(f'num_output is {fc["num_output"]}; a lenet of width {width_mult:g} has {units}')
      weight, bias = weights.blobs(layer.name, (units, in_channels * h * w))
      kernel = caffe_weights.dense_kernel(weight, (in_channels, h, w))
      towers[name] = {'kernel': np.ascontiguousarray(kernel[None]), 'bias': bias[None]}
    in_channels = units
  ip2 = fcs[1]
  names['ip2'] = ip2.name
  num_classes = ip2.inner_product()['num_output']
  weight, bias = weights.blobs(ip2.name, (num_classes, in_channels))
  towers['ip2'] = {'kernel': np.ascontiguousarray(caffe_weights.dense_kernel(weight)[None])}
  params = {'towers': towers, 'head': {'bias': bias}}
  return Mapped(params, {'name': 'lenet', 'width': width_mult}, (height, width), channels, num_classes, names)


__all__ = ['ALEXNET', 'CAFFENET', 'LENET', 'Mapped', 'map_alexnet', 'map_lenet', 'types_of']
