"""A loaded model as an ONNX graph, built with the ``onnx`` package's helper API (issue 22, "Models out").

The graph takes what a deployment has -- the network's crop as pixels -- and does the rest of our
evaluation preprocessing itself::

  image         float32 [batch, height, width, channels]: NHWC, RGB (or gray), pixel values 0..255,
                the centre crop (``data.preprocess_for_eval`` before its mean subtraction); batch dynamic
  - mean        the contract's mean at the centre crop's position (image or pixel mean; none: skipped)
  Transpose     to NCHW, ONNX's convolution layout
  the layers    as the network's own module computes them at inference (no dropout)
  logits        float32 [batch, classes]
  probabilities Softmax of the logits

The model's ``metadata_props`` hold ``labels`` (a JSON list: label i is ``labels[i]``), ``preprocess``
(the contract's ``preprocess.json``: resize mode and size, crop, channels, mean mode) and ``network``.

How each of our layers maps onto ONNX (checked against onnxruntime in tests/test_onnx_export.py):

* **Towers** (the two-tower ``alexnet``): the parameters are ``[tower, ...]``. A layer whose towers each
  read the whole input (conv1, conv3, fc6, fc7) is one convolution / Gemm whose output channels are the
  towers' outputs side by side -- exactly the concatenation the next exchange makes. A layer where each
  tower reads only its own half (conv2, conv4, conv5) is a grouped convolution, ``group = towers``. fc8,
  where each tower multiplies its own half of fc7 and the partial logits are summed, is one Gemm over
  the whole fc7 with the towers' blocks stacked row-wise (``W_a x_a + W_b x_b``).
* **LRN** runs inside each tower on that tower's channels only, so the graph splits the channels per tower
  around ONNX's ``LRN``. ONNX divides ``alpha`` by ``size`` (Caffe's formula): the paper's
  ``k + alpha * sum`` is ``LRN(alpha = n * alpha, bias = k)``, Caffe's is ``LRN(alpha, bias = k)``.
  The window (two maps each side for n = 5) is the same as ``layers.local_response_norm``'s.
* **Padding**: conv1 of the two-tower net pads only at the bottom/right (cuda-convnet's rounding,
  ``layers.convnet_padding``); Flax's 'SAME' at stride 1 is symmetric for odd kernels.
* **Ceil-mode pooling** (``layers.max_pool(ceil_mode=True)``) is written as ONNX MaxPool with explicit
  bottom/right pads of ``layers.ceil_pool_padding`` rows, which MaxPool ignores in the maximum: our
  arithmetic exactly, rather than each runtime's own rounding rules for ``ceil_mode``.
* **Flatten**: our maps are NHWC when fc6 flattens them, ONNX's NCHW, so fc6's weight rows are permuted
  from (h, w, c) to (c, h, w) order once, here, instead of transposing every activation back.

Supported: ``alexnet`` (paper or Caffe LRN, any width, 'he' input scaling), ``alexnet_owt``, ``lenet`` and
``googlenet`` (its main classifier: the auxiliary ones are for training only; the inception modules' 3x3
'SAME' max-pool is MaxPool with one pad each side). Custom Flax modules are refused with a clear error.
The graph is float32 whatever ``config.model.dtype`` the model trained in.

``onnx`` is an optional extra (``pip install -e .[onnx]``); this module imports without it and
``require_onnx`` reports its absence as one line.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

try:
  import onnx
  from onnx import helper, numpy_helper
except ImportError:   # an optional extra: require_onnx() says how to install it
  onnx = None

from alexnet_jax.models import layers
from alexnet_jax.models.alexnet import PIXEL_STD
from alexnet_jax.models.googlenet import INCEPTIONS, POOL_AFTER
from alexnet_jax.models.lenet import INPUT_SCALE

OPSET = 17
INSTALL_HINT = 'pip install -e .[onnx]'
NETWORKS = ('alexnet', 'alexnet_owt', 'googlenet', 'lenet')
INPUT, LOGITS, PROBABILITIES = 'image', 'logits', 'probabilities'


def require_onnx() -> None:
  """Raises ValueError (a user error: one line, exit status 2) when the onnx package is missing."""
  if onnx is None:
    raise ValueError(f'--format=onnx needs the onnx package, which is not installed: {INSTALL_HINT}')


class _Graph:
  """Nodes and initializers under construction, with the spatial size of the current maps."""

  def __init__(self):
    self.nodes: list[Any] = []
    self.initializers: list[Any] = []
    self._names: set[str] = set()

  def _unique(self, name: str) -> str:
    out, i = name, 1
    while out in self._names:
      i += 1
      out = f'{name}_{i}'
    self._names.add(out)
    return out

  def const(self, name: str, value: np.ndarray) -> str:
    name = self._unique(name)
    self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name

  def node(self, op: str, inputs: list[str], name: str, *, outputs: int = 1, output_names=None,
           **attrs) -> Any:
    name = self._unique(name)
    outs = output_names or ([name] if outputs == 1 else [f'{name}:{i}' for i in range(outputs)])
    self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
    return outs[0] if outputs == 1 else outs


# ---- Layers --------------------------------------------------------------------------------------------

def _conv(g: _Graph, x: str, p: dict[str, np.ndarray], name: str, *, stride: int = 1,
          pads: tuple[int, int, int, int] = (0, 0, 0, 0), grouped: bool = False) -> str:
  """Flax kernels [tower, kh, kw, in, out] -> one ONNX Conv, towers' outputs side by side.

  ``grouped``: tower t reads only the t-th block of input channels (``group = towers``); otherwise every
  tower reads them all. ``pads`` are (top, left, bottom, right).
  """
  kernel = np.asarray(p['kernel'], np.float32)
  towers = kernel.shape[0]
  weight = np.concatenate([k.transpose(3, 2, 0, 1) for k in kernel], axis=0)   # [T*out, in, kh, kw]
  inputs = [x, g.const(f'{name}.weight', weight)]
  if 'bias' in p:
    inputs.append(g.const(f'{name}.bias', np.asarray(p['bias'], np.float32).reshape(-1)))
  top, left, bottom, right = pads
  return g.node('Conv', inputs, name, kernel_shape=list(weight.shape[2:]), strides=[stride, stride],
                pads=[top, left, bottom, right], group=towers if grouped else 1)


def _conv_size(n: int, kernel: int, stride: int, before: int, after: int) -> int:
  return (n + before + after - kernel) // stride + 1


def _same_pads(kernel: int) -> tuple[int, int]:
  """Flax's 'SAME' at stride 1: kernel - 1 rows in all, the extra one (even kernels) after."""
  return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2


def _max_pool(g: _Graph, x: str, hw: tuple[int, int], name: str, *, window: int, stride: int,
              ceil_mode: bool) -> tuple[str, tuple[int, int]]:
  """``layers.max_pool`` (or Flax's floor-mode ``nn.max_pool``) as MaxPool with explicit end pads."""
  ends = [layers.ceil_pool_padding(n, window, stride) if ceil_mode else 0 for n in hw]
  out = g.node('MaxPool', [x], name, kernel_shape=[window, window], strides=[stride, stride],
               pads=[0, 0, ends[0], ends[1]])
  return out, tuple(layers.pooled_size(n, window, stride, ceil_mode=ceil_mode) for n in hw)


def _lrn(g: _Graph, x: str, channels: int, towers: int, convention: str, name: str) -> str:
  """``layers.local_response_norm`` over each tower's own channels (see the module docstring)."""
  if convention == 'none':
    return x
  if convention == 'caffe_across':   # Caffe's bvlc_alexnet: one LRN over both towers' maps
    convention, towers = 'caffe', 1
  if convention not in ('paper', 'caffe'):
    raise ValueError(f"model.lrn={convention!r}: expected 'paper', 'caffe', 'caffe_across' or 'none'")
  k = layers.CAFFE_LRN_K if convention == 'caffe' else layers.LRN_K
  alpha = layers.LRN_ALPHA if convention == 'caffe' else layers.LRN_ALPHA * layers.LRN_N
  attrs = dict(size=layers.LRN_N, alpha=float(alpha), beta=float(layers.LRN_BETA), bias=float(k))
  if towers == 1:
    return g.node('LRN', [x], name, **attrs)
  split = g.const(f'{name}.split', np.full(towers, channels // towers, np.int64))
  halves = g.node('Split', [x, split], f'{name}.towers', outputs=towers, axis=1)
  normed = [g.node('LRN', [h], f'{name}.tower{t}', **attrs) for t, h in enumerate(halves)]
  return g.node('Concat', normed, name, axis=1)


def _dense(g: _Graph, x: str, p: dict[str, np.ndarray], name: str, *, split_input: bool = False,
           bias: np.ndarray | None = None, rows_from_nhwc: tuple[int, int, int] | None = None) -> str:
  """Flax kernels [tower, in, out] -> one Gemm.

  Every tower reads the whole input and the outputs sit side by side, or (``split_input``, fc8's sum
  exchange) tower t reads the t-th block of the input and the partial outputs are summed.
  ``rows_from_nhwc=(h, w, c)`` permutes the rows of a kernel that reads a flattened NHWC map so that it
  reads the flattened NCHW one instead.
  """
  kernels = [np.asarray(k, np.float32) for k in p['kernel']]
  if rows_from_nhwc is not None:
    h, w, c = rows_from_nhwc
    kernels = [k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1) for k in kernels]
  weight = np.concatenate(kernels, axis=0 if split_input else 1)
  if bias is None and 'bias' in p:
    bias = np.asarray(p['bias'], np.float32).reshape(-1)
  inputs = [x, g.const(f'{name}.weight', weight)]
  if bias is not None:
    inputs.append(g.const(f'{name}.bias', np.asarray(bias, np.float32)))
  return g.node('Gemm', inputs, name)


def _relu(g: _Graph, x: str, name: str) -> str:
  return g.node('Relu', [x], name)


def _flatten(g: _Graph, x: str, name: str) -> str:
  return g.node('Flatten', [x], name, axis=1)


def _scale(g: _Graph, x: str, factor: float, name: str, *, divide: bool = False) -> str:
  return g.node('Div' if divide else 'Mul', [x, g.const(f'{name}.factor', np.float32(factor))], name)


# ---- Networks (params: {'towers': {layer: {'kernel', 'bias'}}, 'head': {'bias'}}) ---------------------

def _alexnet(g: _Graph, x: str, hw: tuple[int, int], params: dict[str, Any], model_config) -> str:
  """``models/alexnet.py``: the paper's two towers."""
  p, head = params['towers'], params['head']['bias']
  towers = p['conv1']['kernel'].shape[0]
  if model_config.get('weight_init', 'paper') == 'he':
    x = _scale(g, x, PIXEL_STD, 'input_scale', divide=True)
  lrn = model_config.get('lrn', 'paper')
  (_, pad_h), (_, pad_w) = layers.convnet_padding(hw[0], 11, 4), layers.convnet_padding(hw[1], 11, 4)
  x = _relu(g, _conv(g, x, p['conv1'], 'conv1', stride=4, pads=(0, 0, pad_h, pad_w)), 'relu1')
  hw = (_conv_size(hw[0], 11, 4, 0, pad_h), _conv_size(hw[1], 11, 4, 0, pad_w))
  x = _lrn(g, x, towers * p['conv1']['kernel'].shape[-1], towers, lrn, 'norm1')
  x, hw = _max_pool(g, x, hw, 'pool1', window=3, stride=2, ceil_mode=True)
  before, after = _same_pads(5)
  x = _relu(g, _conv(g, x, p['conv2'], 'conv2', pads=(before, before, after, after), grouped=True),
            'relu2')
  x = _lrn(g, x, towers * p['conv2']['kernel'].shape[-1], towers, lrn, 'norm2')
  x, hw = _max_pool(g, x, hw, 'pool2', window=3, stride=2, ceil_mode=True)
  before, after = _same_pads(3)
  pads = (before, before, after, after)
  x = _relu(g, _conv(g, x, p['conv3'], 'conv3', pads=pads), 'relu3')              # the exchange
  x = _relu(g, _conv(g, x, p['conv4'], 'conv4', pads=pads, grouped=True), 'relu4')
  x = _relu(g, _conv(g, x, p['conv5'], 'conv5', pads=pads, grouped=True), 'relu5')
  x, hw = _max_pool(g, x, hw, 'pool5', window=3, stride=2, ceil_mode=True)
  channels = towers * p['conv5']['kernel'].shape[-1]
  x = _flatten(g, x, 'flatten')
  x = _relu(g, _dense(g, x, p['fc6'], 'fc6', rows_from_nhwc=(*hw, channels)), 'relu6')
  x = _relu(g, _dense(g, x, p['fc7'], 'fc7'), 'relu7')
  return _dense(g, x, p['fc8'], 'fc8', split_input=True, bias=head)


def _alexnet_owt(g: _Graph, x: str, hw: tuple[int, int], params: dict[str, Any], model_config) -> str:
  """``models/alexnet_owt.py``: one tower, symmetric padding, floor-mode pools, no LRN."""
  del model_config
  p, head = params['towers'], params['head']['bias']
  x = _relu(g, _conv(g, x, p['conv1'], 'conv1', stride=4, pads=(2, 2, 2, 2)), 'relu1')
  hw = tuple(_conv_size(n, 11, 4, 2, 2) for n in hw)
  x, hw = _max_pool(g, x, hw, 'pool1', window=3, stride=2, ceil_mode=False)
  x = _relu(g, _conv(g, x, p['conv2'], 'conv2', pads=(2, 2, 2, 2)), 'relu2')
  x, hw = _max_pool(g, x, hw, 'pool2', window=3, stride=2, ceil_mode=False)
  for name in ('conv3', 'conv4', 'conv5'):
    x = _relu(g, _conv(g, x, p[name], name, pads=(1, 1, 1, 1)), f'relu{name[-1]}')
  x, hw = _max_pool(g, x, hw, 'pool5', window=3, stride=2, ceil_mode=False)
  x = _flatten(g, x, 'flatten')
  x = _relu(g, _dense(g, x, p['fc6'], 'fc6', rows_from_nhwc=(*hw, p['conv5']['kernel'].shape[-1])),
            'relu6')
  x = _relu(g, _dense(g, x, p['fc7'], 'fc7'), 'relu7')
  return _dense(g, x, p['fc8'], 'fc8', bias=head)


def _lenet(g: _Graph, x: str, hw: tuple[int, int], params: dict[str, Any], model_config) -> str:
  """``models/lenet.py``: DIGITS' Power layer, two VALID convolutions with 2x2 floor pools."""
  del model_config
  p, head = params['towers'], params['head']['bias']
  x = _scale(g, x, INPUT_SCALE, 'input_scale')
  x = _conv(g, x, p['conv1'], 'conv1')
  hw = tuple(_conv_size(n, 5, 1, 0, 0) for n in hw)
  x, hw = _max_pool(g, x, hw, 'pool1', window=2, stride=2, ceil_mode=False)
  x = _conv(g, x, p['conv2'], 'conv2')
  hw = tuple(_conv_size(n, 5, 1, 0, 0) for n in hw)
  x, hw = _max_pool(g, x, hw, 'pool2', window=2, stride=2, ceil_mode=False)
  x = _flatten(g, x, 'flatten')
  x = _relu(g, _dense(g, x, p['ip1'], 'ip1', rows_from_nhwc=(*hw, p['conv2']['kernel'].shape[-1])),
            'relu_ip1')
  return _dense(g, x, p['ip2'], 'ip2', bias=head)


def _googlenet(g: _Graph, x: str, hw: tuple[int, int], params: dict[str, Any], model_config) -> str:
  """``models/googlenet.py`` at inference: no auxiliary classifiers (their parameters are not read)."""
  p, head = params['towers'], params['head']['bias']
  lrn = 'none' if model_config.get('lrn', 'caffe') == 'none' else 'caffe'

  def conv(name, x, hw, stride=1):
    kernel = p[name]['kernel'].shape[1]
    pad = kernel // 2   # Flax's padding=kernel // 2: symmetric
    out = _relu(g, _conv(g, x, p[name], name, stride=stride, pads=(pad,) * 4), f'{name}.relu')
    return out, tuple(_conv_size(n, kernel, stride, pad, pad) for n in hw)

  def channels(name):
    return p[name]['kernel'].shape[-1]

  x, hw = conv('conv1', x, hw, stride=2)
  x, hw = _max_pool(g, x, hw, 'pool1', window=3, stride=2, ceil_mode=True)
  x = _lrn(g, x, channels('conv1'), 1, lrn, 'norm1')
  x, hw = conv('conv2_3x3_reduce', x, hw)
  x, hw = conv('conv2_3x3', x, hw)
  x = _lrn(g, x, channels('conv2_3x3'), 1, lrn, 'norm2')
  x, hw = _max_pool(g, x, hw, 'pool2', window=3, stride=2, ceil_mode=True)
  for name, *_ in INCEPTIONS:
    prefix = f'inception_{name}_'
    b1, _ = conv(prefix + '1x1', x, hw)
    b3, _ = conv(prefix + '3x3', conv(prefix + '3x3_reduce', x, hw)[0], hw)
    b5, _ = conv(prefix + '5x5', conv(prefix + '5x5_reduce', x, hw)[0], hw)
    # nn.max_pool(3x3, stride 1, 'SAME'): one row/column of -inf each side, which MaxPool's pads are.
    pooled = g.node('MaxPool', [x], prefix + 'pool', kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    bp, _ = conv(prefix + 'pool_proj', pooled, hw)
    x = g.node('Concat', [b1, b3, b5, bp], prefix + 'output', axis=1)
    if name in POOL_AFTER:
      x, hw = _max_pool(g, x, hw, f'pool_{name}', window=3, stride=2, ceil_mode=True)
  x = _flatten(g, g.node('GlobalAveragePool', [x], 'global_average'), 'flatten')   # jnp.mean over H, W
  return _dense(g, x, p['loss3_classifier'], 'loss3_classifier', bias=head)


BUILDERS = {'alexnet': _alexnet, 'alexnet_owt': _alexnet_owt, 'lenet': _lenet, 'googlenet': _googlenet}


# ---- The model -----------------------------------------------------------------------------------------

def build_onnx(params: dict[str, Any], *, network: str, model_config, contract, classes: list[str],
               extra_metadata: dict[str, str] | None = None) -> Any:
  """The ``onnx.ModelProto`` of a network's host (numpy) parameters, checked by ``onnx.checker``.

  Args:
    params: ``Model.host_params()``: ``{'towers': {...}, 'head': {'bias'}}``, tower arrays ``[tower, ...]``.
    network: the network's name (``NETWORKS``).
    model_config: the run's ``config.model`` (``lrn``, ``weight_init``).
    contract: the ``PreprocessContract``: the input's size and channels and the mean subtracted.
    classes: the class names, label i = ``classes[i]``.
    extra_metadata: more ``metadata_props`` (e.g. the step).
  """
  require_onnx()
  if network not in BUILDERS:
    raise ValueError(f'--format=onnx: the network {network!r} cannot be exported to ONNX yet; '
                     f'supported: {", ".join(NETWORKS)}')
  if params['head']['bias'].shape[0] != len(classes):
    raise ValueError(f'the parameters have {params["head"]["bias"].shape[0]} classes, labels.txt has '
                     f'{len(classes)}')
  (h, w), channels = contract.input_hw, contract.channels
  g = _Graph()
  x = INPUT
  if contract.mean_mode != 'none':
    mean = contract.centre_mean()
    if contract.mean_mode == 'pixel':  # one value per channel: a [C] constant, broadcast
      mean = mean[0, 0]
    x = g.node('Sub', [x, g.const('mean', np.asarray(mean, np.float32))], 'subtract_mean')
  x = g.node('Transpose', [x], 'to_nchw', perm=[0, 3, 1, 2])
  logits = BUILDERS[network](g, x, (h, w), params, model_config)
  g.nodes.append(helper.make_node('Identity', [logits], [LOGITS], name='logits_out'))
  g.node('Softmax', [LOGITS], 'softmax', output_names=[PROBABILITIES], axis=-1)
  k = len(classes)
  graph = helper.make_graph(
      g.nodes, f'alexnet_jax_{network}',
      [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ['batch', h, w, channels])],
      [helper.make_tensor_value_info(LOGITS, onnx.TensorProto.FLOAT, ['batch', k]),
       helper.make_tensor_value_info(PROBABILITIES, onnx.TensorProto.FLOAT, ['batch', k])],
      initializer=g.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                            producer_name='alexnet_jax', doc_string=(
                                f'{network}: input {INPUT!r} float32 NHWC [batch, {h}, {w}, {channels}], '
                                f'{"RGB" if channels == 3 else "gray"} pixel values 0..255 (the centre '
                                f'crop; the mean is subtracted inside); outputs {LOGITS!r} and '
                                f'{PROBABILITIES!r} [batch, {k}]'))
  metadata = {'labels': json.dumps(list(classes)), 'preprocess': json.dumps(contract.to_json()),
              'network': network, **(extra_metadata or {})}
  helper.set_model_props(model, metadata)
  onnx.checker.check_model(model, full_check=True)
  return model


def metadata(model) -> dict[str, str]:
  """A model's ``metadata_props`` as a dict."""
  return {p.key: p.value for p in model.metadata_props}
