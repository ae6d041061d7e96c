"""A Caffe ``deploy.prototxt`` as a list of layers with their hyperparameters, in Caffe's semantics.

Reads both of Caffe's formats: the newer ``layer { type: "Convolution" ... }`` and V1's ``layers { type:
CONVOLUTION ... }`` (its enum spelled as in ``caffe_proto.V1_NAMES``), with the input given by
``input_dim`` x 4, ``input_shape { dim ... }`` or an ``Input`` layer. Layers are kept as Caffe would build
them for inference: phase TEST and stage ``deploy`` (DIGITS' standard networks are train_val files whose
layers say ``include { stage: "deploy" }`` or ``exclude { stage: "deploy" }``); data, loss and accuracy
layers are dropped, and so are ``Dropout`` (the identity at test time), ``Softmax`` (the probabilities:
ours come from the logits) and ``Split``/``Silence``.

The hyperparameters are read with caffe.proto's defaults (``ConvolutionParameter``: pad 0, stride 1,
group 1, bias_term true; ``PoolingParameter``: MAX, pad 0, stride 1; ``LRNParameter``: local_size 5, alpha
1, beta 0.75, k 1, ACROSS_CHANNELS; ``PowerParameter``: power 1, scale 1, shift 0). ``Layer.conv()`` and
friends return them as plain tuples for the network mappings (``caffe_alexnet.py``, ``caffe_googlenet.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from alexnet_jax.inference.importers import prototxt
from alexnet_jax.inference.importers.caffe_proto import V1_NAMES
from alexnet_jax.inference.importers.torch_files import WeightsError

# Layers that feed or score a training net: not part of the network we import.
SKIPPED = {'Data', 'ImageData', 'HDF5Data', 'MemoryData', 'WindowData', 'DummyData', 'Accuracy',
           'SoftmaxWithLoss', 'EuclideanLoss', 'HingeLoss', 'InfogainLoss', 'MultinomialLogisticLoss',
           'SigmoidCrossEntropyLoss', 'ContrastiveLoss', 'Silence', 'Split', 'Dropout', 'Softmax', 'Python'}
PHASE_TEST, DEPLOY_STAGE = 'TEST', 'deploy'


@dataclasses.dataclass
class Layer:
  """One layer of a deploy net: name, type (LayerParameter's spelling), bottoms, tops, its message."""
  name: str
  type: str
  bottom: list[str]
  top: list[str]
  message: prototxt.Message
  source: str

  def _param(self, field: str) -> prototxt.Message:
    return self.message.get_one(field) or prototxt.Message()

  def _pair(self, p: prototxt.Message, name: str, default: int) -> tuple[int, int]:
    """Caffe's ``kernel_size``/``kernel_h``+``kernel_w`` (and pad, stride): (h, w)."""
    h, w = p.get_one(f'{name}_h'), p.get_one(f'{name}_w')
    if h is not None or w is not None:
      return int(h if h is not None else default), int(w if w is not None else default)
    values = p.get_all(name if name != 'kernel' else 'kernel_size')
    if not values:
      return default, default
    if len(values) > 2:
      self.fail(f'{name} has {len(values)} values; only 2-D layers are imported')
    return int(values[0]), int(values[-1])

  def fail(self, what: str):
    raise WeightsError(f'{self.source}: layer {self.name!r} ({self.type}): {what}')

  def conv(self) -> dict[str, Any]:
    p = self._param('convolution_param')
    if p.get_all('dilation') and any(int(d) != 1 for d in p.get_all('dilation')):
      self.fail('dilated convolutions are not imported')
    return {'num_output': int(p.get_one('num_output', 0)), 'kernel': self._pair(p, 'kernel', 0),
            'stride': self._pair(p, 'stride', 1), 'pad': self._pair(p, 'pad', 0),
            'group': int(p.get_one('group', 1)), 'bias_term': _bool(p.get_one('bias_term', True))}

  def inner_product(self) -> dict[str, Any]:
    p = self._param('inner_product_param')
    if _bool(p.get_one('transpose', False)):
      self.fail('transpose: true is not imported')
    return {'num_output': int(p.get_one('num_output', 0)), 'bias_term': _bool(p.get_one('bias_term', True))}

  def pool(self) -> dict[str, Any]:
    p = self._param('pooling_param')
    return {'method': str(p.get_one('pool', 'MAX')), 'kernel': self._pair(p, 'kernel', 0),
            'stride': self._pair(p, 'stride', 1), 'pad': self._pair(p, 'pad', 0),
            'global': _bool(p.get_one('global_pooling', False))}

  def lrn(self) -> dict[str, Any]:
    p = self._param('lrn_param')
    return {'local_size': int(p.get_one('local_size', 5)), 'alpha': float(p.get_one('alpha', 1.0)),
            'beta': float(p.get_one('beta', 0.75)), 'k': float(p.get_one('k', 1.0)),
            'region': str(p.get_one('norm_region', 'ACROSS_CHANNELS'))}

  def power(self) -> dict[str, float]:
    p = self._param('power_param')
    return {'power': float(p.get_one('power', 1.0)), 'scale': float(p.get_one('scale', 1.0)),
            'shift': float(p.get_one('shift', 0.0))}


@dataclasses.dataclass
class Net:
  """A deploy net: its name, input [C, H, W] and the layers that compute, in order."""
  name: str
  input_chw: tuple[int, int, int]
  layers: list[Layer]
  source: str

  def chain(self) -> list[Layer]:
    """The layers, checked to form one chain from the input (each reads the previous one's output;
    in-place layers, top == bottom, as Caffe's ReLUs are, included)."""
    current = None
    for layer in self.layers:
      if len(layer.bottom) != 1 or len(layer.top) != 1:
        layer.fail(f'has {len(layer.bottom)} inputs and {len(layer.top)} outputs; this network is not a '
                   f'chain of layers')
      if current is not None and layer.bottom[0] != current:
        layer.fail(f'reads {layer.bottom[0]!r}, not the previous layer\'s output {current!r}; this network '
                   f'is not a chain of layers')
      current = layer.top[0]
    return self.layers


def _bool(value) -> bool:
  if isinstance(value, str):
    return value.lower() == 'true'
  return bool(value)


def _rule_matches(rule: prototxt.Message) -> bool:
  """NetStateRule against the state (phase TEST, stage 'deploy', level 0)."""
  phase = rule.get_one('phase')
  if phase is not None and str(phase) != PHASE_TEST:
    return False
  if any(str(s) != DEPLOY_STAGE for s in rule.get_all('stage')):
    return False
  if any(str(s) == DEPLOY_STAGE for s in rule.get_all('not_stage')):
    return False
  min_level, max_level = rule.get_one('min_level'), rule.get_one('max_level')
  too_high = min_level is not None and int(min_level) > 0
  return not (too_high or (max_level is not None and int(max_level) < 0))


def _included(layer: prototxt.Message) -> bool:
  include, exclude = layer.get_all('include'), layer.get_all('exclude')
  if include:
    return any(_rule_matches(r) for r in include)
  return not any(_rule_matches(r) for r in exclude)


def _input_chw(net: prototxt.Message, layers: list[prototxt.Message], source: str) -> Optional[tuple]:
  dims = None
  if net.get('input_shape'):
    dims = net.get_all('input_shape')[0].get_all('dim')
  elif net.get('input_dim'):
    dims = net.get_all('input_dim')[:4]
  else:
    for layer in layers:
      if str(layer.get_one('type', '')) == 'Input':
        shapes = (layer.get_one('input_param') or prototxt.Message()).get_all('shape')
        if shapes:
          dims = shapes[0].get_all('dim')
        break
  if dims is None:
    return None
  dims = [int(d) for d in dims]
  if len(dims) != 4 or min(dims[1:]) <= 0:
    raise WeightsError(f'{source}: the input shape {dims} is not N x C x H x W')
  return tuple(dims[1:])


def read_deploy(path: str, *, text: str | None = None) -> Net:
  """The deploy net of ``path`` (a deploy.prototxt, or a train_val one with deploy-stage rules)."""
  message = prototxt.parse(text, path) if text is not None else prototxt.read(path)
  v1 = bool(message.get('layers'))
  if v1 and message.get('layer'):
    raise WeightsError(f'{path} mixes V1 `layers` and `layer` blocks; Caffe reads one or the other')
  raw = message.get_all('layers' if v1 else 'layer')
  if not raw:
    raise WeightsError(f'{path} has no layers; not a Caffe network description (deploy.prototxt)')
  raw = [m for m in raw if isinstance(m, prototxt.Message)]
  layers = []
  for m in raw:
    kind = str(m.get_one('type', ''))
    if v1:
      kind = V1_NAMES.get(kind, kind)
    if kind in SKIPPED or kind == 'Input' or not _included(m):
      continue
    name = str(m.get_one('name', f'#{len(layers)}'))
    layers.append(Layer(name, kind, [str(b) for b in m.get_all('bottom')], [str(t) for t in m.get_all('top')],
                        m, path))
  chw = _input_chw(message, raw, path)
  if chw is None:
    raise WeightsError(f'{path} gives no input shape (input_dim, input_shape or an Input layer); a '
                       f'deploy.prototxt has one')
  return Net(str(message.get_one('name', '')), chw, layers, path)


__all__ = ['Layer', 'Net', 'read_deploy']
