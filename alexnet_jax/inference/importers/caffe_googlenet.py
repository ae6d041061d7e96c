"""Caffe's ``bvlc_googlenet`` (and DIGITS' googlenet.prototxt, the same network) -> our ``googlenet``.

``models/googlenet.py`` is bvlc_googlenet layer for layer, so the mapping is by name: Caffe's
``conv1/7x7_s2`` is our ``conv1``, ``conv2/3x3_reduce`` and ``conv2/3x3`` ours ``conv2_3x3_reduce`` and
``conv2_3x3``, ``inception_3a/1x1`` ... ``inception_5b/pool_proj`` ours with ``/`` read as ``_``, and
``loss3/classifier`` our ``loss3_classifier`` (its bias the network's head bias). Each is checked: kernel,
stride, pad (``kernel // 2``, Flax's symmetric padding), ``num_output`` (the paper's Table 1 at the width
conv1 gives), and each inception's ``Concat`` must join its 1x1, 3x3, 5x5 and pool-proj branches in that
order (ours); the LRNs (``pool1/norm1``, ``conv2/norm2``) must be Caffe's constants and the pools Caffe's
(max 3/2, rounding up; the inception pools 3/1 pad 1; the last an average over the 7x7 map, so the input
must leave a 7x7 map: 224x224).

The **auxiliary classifiers** (``loss1/*``, ``loss2/*``: a 1x1 conv, fc 1024 and a classifier) are not in a
deploy net, but our googlenet always has them (they train with weight 0.3, section 5 of the paper, and never
run at inference). A caffemodel saved by training (a DIGITS snapshot) holds them and they are imported
(``loss1/fc`` reads a 4x4 map: its rows permuted from Caffe's C, H, W to our H, W, C); otherwise they keep
a fresh xavier start, as a new run's would, and ``Mapped.notes`` says so.
"""

from __future__ import annotations

import jax
import numpy as np

from alexnet_jax import models
from alexnet_jax.inference.importers import caffe_weights
from alexnet_jax.inference.importers.caffe_alexnet import CAFFE_LRN, Mapped, _check_pool, _expect
from alexnet_jax.inference.importers.caffe_net import Net
from alexnet_jax.inference.importers.caffe_weights import Weights
from alexnet_jax.inference.importers.torch_files import WeightsError
from alexnet_jax.models.googlenet import AUX_AFTER, INCEPTIONS
from alexnet_jax.models import layers as layers_lib

BRANCHES = ('1x1', '3x3_reduce', '3x3', '5x5_reduce', '5x5', 'pool_proj')


def _expected_convs(width: float) -> dict[str, tuple[int, int, int]]:
  """Caffe name -> (num_output, kernel, stride) of bvlc_googlenet's inference convolutions."""
  def ch(n):
    return max(1, round(n * width))
  convs = {'conv1/7x7_s2': (ch(64), 7, 2), 'conv2/3x3_reduce': (ch(64), 1, 1), 'conv2/3x3': (ch(192), 3, 1)}
  for name, *counts in INCEPTIONS:
    for branch, n in zip(BRANCHES, counts):
      convs[f'inception_{name}/{branch}'] = (ch(n), 3 if branch == '3x3' else 5 if branch == '5x5' else 1, 1)
  return convs


def ours(caffe_name: str) -> str:
  return {'conv1/7x7_s2': 'conv1'}.get(caffe_name, caffe_name.replace('/', '_'))


def _final_map(side: int) -> int:
  side = (side + 6 - 7) // 2 + 1                 # conv1 7x7/2 pad 3
  for _ in range(4):                              # pool1, pool2, pool3, pool4: max 3/2, rounding up
    side = layers_lib.pooled_size(side, ceil_mode=True)
  return side


def map_googlenet(net: Net, weights: Weights) -> Mapped:
  channels, height, width = net.input_chw
  if _final_map(height) != 7 or _final_map(width) != 7:
    raise WeightsError(f'{net.source}: input {height}x{width}: bvlc_googlenet\'s pool5/7x7_s1 averages a 7x7 '
                       f'map, which a 224x224 input leaves ({_final_map(height)}x{_final_map(width)} here)')
  by_name = {layer.name: layer for layer in net.layers}
  conv1 = by_name.get('conv1/7x7_s2')
  if conv1 is None:
    raise WeightsError(f'{net.source}: no layer conv1/7x7_s2; not bvlc_googlenet (its layer names are '
                       f'mapped by name)')
  width_mult = conv1.conv()['num_output'] / 64
  expected = _expected_convs(width_mult)
  found = {layer.name for layer in net.layers if layer.type == 'Convolution'}
  missing, extra = sorted(set(expected) - found), sorted(found - set(expected))
  if missing or extra:
    raise WeightsError(f'{net.source}: the convolutions differ from bvlc_googlenet\'s (our googlenet): '
                       f'missing {missing[:6]}, unknown {extra[:6]}')
  for layer in net.layers:
    if layer.type == 'LRN':
      for field, want in CAFFE_LRN.items():
        _expect(layer, field, layer.lrn()[field], want)
    elif layer.type == 'Pooling' and layer.name.startswith('inception_'):
      p = layer.pool()
      _expect(layer, 'pool', p['method'], 'MAX')
      _expect(layer, 'kernel/stride/pad', (p['kernel'], p['stride'], p['pad']), ((3, 3), (1, 1), (1, 1)))
    elif layer.type == 'Pooling' and layer.pool()['method'] == 'AVE':   # pool5/7x7_s1: the global average
      if not layer.pool()['global']:
        _expect(layer, 'kernel_size', layer.pool()['kernel'], (7, 7))
    elif layer.type == 'Pooling':
      _check_pool(layer, 3, 2)
    elif layer.type == 'Concat':
      name = layer.name.split('/')[0]
      want = [by_name[f'{name}/{b}'].top[0] for b in ('1x1', '3x3', '5x5', 'pool_proj')
              if f'{name}/{b}' in by_name]
      _expect(layer, 'bottom', layer.bottom, want)
  for name, (n, kernel, stride) in expected.items():
    layer = by_name[name]
    conv = layer.conv()
    _expect(layer, 'num_output', conv['num_output'], n)
    _expect(layer, 'kernel_size', conv['kernel'], (kernel, kernel))
    _expect(layer, 'stride', conv['stride'], (stride, stride))
    _expect(layer, 'pad', conv['pad'], (kernel // 2, kernel // 2))
    _expect(layer, 'group', conv['group'], 1)
  network = models.googlenet(1, width=width_mult)
  fresh = jax.eval_shape(lambda k: network.init(k, (height, width, channels)), jax.random.key(0))
  towers, names = {}, {}
  for name, (n, kernel, _) in expected.items():
    fan_in = fresh['towers'][ours(name)]['kernel'].shape[-2]     # [tower, kh, kw, in, out]
    weight, bias = weights.blobs(name, (n, fan_in, kernel, kernel))
    if name == 'conv1/7x7_s2':
      weight = caffe_weights.rgb_first_conv(weight)
    towers[ours(name)] = {'kernel': caffe_weights.conv_kernel(weight)[None], 'bias': bias[None]}
    names[ours(name)] = name
  classifier = by_name.get('loss3/classifier')
  if classifier is None or classifier.type != 'InnerProduct':
    raise WeightsError(f'{net.source}: no InnerProduct layer loss3/classifier; not bvlc_googlenet')
  num_classes = classifier.inner_product()['num_output']
  features = fresh['towers']['loss3_classifier']['kernel'].shape[-2]
  weight, bias = weights.blobs('loss3/classifier', (num_classes, features))
  towers['loss3_classifier'] = {'kernel': np.ascontiguousarray(caffe_weights.dense_kernel(weight)[None])}
  names['loss3_classifier'] = 'loss3/classifier'
  notes = _aux_classifiers(towers, names, weights, width_mult, num_classes, (height, width, channels))
  params = {'towers': towers, 'head': {'bias': bias}}
  return Mapped(params, {'name': 'googlenet', 'width': width_mult, 'lrn': 'caffe'}, (height, width),
                channels, num_classes, names, notes)


def _aux_classifiers(towers, names, weights: Weights, width: float, num_classes: int, shape) -> str:
  """The auxiliary classifiers from the caffemodel when it has them, else a fresh start (module docstring)."""
  network = models.googlenet(num_classes, width=width)
  aux = [name for loss in AUX_AFTER.values() for name in (f'{loss}_conv', f'{loss}_fc', f'{loss}_classifier')]
  shapes = jax.eval_shape(lambda k: network.init(k, shape), jax.random.key(0))['towers']
  if all(name.replace('_', '/', 1) in weights.by_name for name in aux):
    for name in aux:
      caffe = name.replace('_', '/', 1)
      kernel = shapes[name]['kernel'].shape[1:]
      if name.endswith('_conv'):
        weight, bias = weights.blobs(caffe, (kernel[-1], kernel[-2], 1, 1))
        towers[name] = {'kernel': caffe_weights.conv_kernel(weight)[None], 'bias': bias[None]}
      else:
        weight, bias = weights.blobs(caffe, (kernel[1], kernel[0]))
        conv = shapes[name.replace('_fc', '_conv')]['kernel'].shape[-1] if name.endswith('_fc') else None
        side = int(round((kernel[0] // conv) ** 0.5)) if conv else None
        chw = (conv, side, side) if conv else None
        towers[name] = {'kernel': np.ascontiguousarray(caffe_weights.dense_kernel(weight, chw)[None]),
                        'bias': bias[None]}
      names[name] = caffe
    return 'auxiliary classifiers imported from the caffemodel'
  # A fresh start as models/googlenet.py draws it: xavier kernels, biases 0.2 (the classifiers' 0). Drawn
  # here with numpy: an eager Flax init of the whole network compiles op by op (minutes on a CPU).
  rng = np.random.default_rng(0)
  for name in aux:
    kernel = shapes[name]['kernel'].shape
    bound = np.sqrt(3.0 / np.prod(kernel[1:-1]))
    towers[name] = {'kernel': rng.uniform(-bound, bound, kernel).astype(np.float32),
                    'bias': np.full(shapes[name]['bias'].shape, 0.0 if name.endswith('_classifier') else 0.2,
                                    np.float32)}
  return ('auxiliary classifiers (loss1, loss2) are not in the caffemodel: fresh xavier start (they are used '
          'in training only)')


__all__ = ['map_googlenet']
