"""AlexNet as in Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks" (NIPS 2012), Figure 2: two towers, one per GPU, that talk only at the inputs of conv3, fc6, fc7
and fc8.

Per tower (full width, 224x224x3 input)::

  conv1 11x11/4, 48   -> ReLU -> LRN -> max-pool 3/2        55x55x48 -> 27x27x48
  conv2 5x5, 128      -> ReLU -> LRN -> max-pool 3/2        own 48 maps in; 27x27x128 -> 13x13x128
  ---- exchange (concat): conv3 sees all 256 maps -------------------------------------------------
  conv3 3x3, 192 -> ReLU; conv4 3x3, 192 -> ReLU; conv5 3x3, 128 -> ReLU -> max-pool 3/2 -> 6x6x128
  ---- exchange (concat): fc6 sees 6x6x256 -------------------------------------------------------
  fc6 2048 -> ReLU -> dropout 0.5
  ---- exchange (concat): fc7 sees 4096 ----------------------------------------------------------
  fc7 2048 -> ReLU -> dropout 0.5
  ---- exchange (sum): fc8 = W_a x_a + W_b x_b + b, each tower holding a 2048 x classes block -------

Shapes and parameter counts (1000 classes, both towers together)::

  layer  kernel (per tower)      params
  conv1  11x11x3x48    x2          34,944
  conv2  5x5x48x128    x2         307,456
  conv3  3x3x256x192   x2         885,120
  conv4  3x3x192x192   x2         663,936
  conv5  3x3x192x128   x2         442,624
  fc6    9216x2048     x2      37,752,832
  fc7    4096x2048     x2      16,781,312
  fc8    2048x1000     x2 + 1000 bias   4,097,000
  total                        60,965,224

The paper says "60 million parameters"; the exact count of the network it describes is the total above.
For comparison, the same network *without* the tower split in conv2, conv4 and conv5 has 62,378,344
parameters, and the one-tower "one weird trick" network that torchvision ships 61,100,840.

Figure 2 draws a 224x224 input, but 11x11 kernels at stride 4 do not give the 55x55 maps it shows
(``(224 - 11) / 4 + 1 = 54.25``). cuda-convnet rounds the output size up (``layers.convnet_padding``) and
Caffe feeds 227x227 instead; both give exactly the shapes above from conv1 on. The paper's text also
lists the neurons per layer as 253,440-186,624-64,896-64,896-43,264-4096-4096-1000. All but the first
match the shapes (27*27*256, 13*13*384, 13*13*384, 13*13*256); conv1 has 55*55*96 = **290,400** neurons,
not 253,440 -- a known erratum of the paper (tests/test_models.py checks the true figures).

Other input sizes (DIGITS' W x H datasets with crop "none"): each axis is sized on its own, and fc6's
fan-in is what the last pool leaves (H' x W' x 256), as Caffe's InnerProduct infers it. The three
max-pools round their output size *up*, as cuda-convnet's pooling layer and Caffe's do
(``ceil((n - 3) / 2) + 1``; ``layers.max_pool(..., ceil_mode=True)``); Flax and torchvision round down.
The two agree at 224, 227 and 256 (55 -> 27 -> 13 -> 6; 256: 63 -> 31 -> 15 -> 7), but not everywhere:
at 300 x 200 (W x H) with no crop, conv1 gives 74 x 49 maps, the pools 37 x 24 -> 18 x 12 -> 9 x 6, and
fc6 sees 6 x 9 x 256 = 13,824 inputs, as in Caffe (whose conv1 gives 73 x 48, ``layers.convnet_padding``);
rounding down would give 5 x 8.

Initialization: two starts, chosen by ``weight_init`` and ``bias_init`` (with ``lrn`` for the LRN constants).

* ``'paper'`` (section 5; ``experiments/paper.py``): weights ~ N(0, 0.01^2); biases 1 in conv2, conv4,
  conv5, fc6, fc7 ("to give the ReLUs positive inputs early on"), 0 elsewhere; the paper's LRN (k = 2,
  alpha = 1e-4 on the sum of squares).
* ``'digits'`` (DIGITS' standard network, ``digits/standard-networks/caffe/alexnet.prototxt``, the same
  fillers as Caffe's bvlc_alexnet; ``experiments/digits_exercise.py`` and the dashboard): gaussian 0.01
  in the convolutions and fc8, 0.005 in fc6 and fc7; biases 0.1 in the same five layers; with
  ``lrn='caffe'`` (k = 1, alpha / 5).

Under DIGITS' solver (SGD 0.01, momentum 0.9) the paper's start collapses at full width, and the bias
of 1 is the cause (``benchmarks/init_scales.py``; 224x224 generated three-class images, batch 32, one
CPU device). fc7's 4096 outputs start at O(1) (bias 1; 87% of its ReLUs on), and one SGD step on fc8
moves a logit by about lr * sum_j h_j^2 * (p - y) ~ 0.01 * 4096 * 1 * 1/3: fc8's first update is a third
of its weight norm (lr |g| / |w| = 0.33, then 0.67), the logits' spread goes 0.64 -> 22 and the loss
1.63 -> 22.8 -> 36.2 in two steps -- the 36 of issue 20's first epoch, after which that run sat at
chance. DIGITS' start on the same batch: fc7's outputs ~0.1, fc8's update ratio 0.011 (30x smaller),
loss 1.096 -> 1.088 -> 1.046 -> 0.992, every layer's ReLUs 48-99% alive. The paper's weights with
biases 0.1 and Caffe's LRN also train (1.105 -> 0.69 in four steps), so the biases decide it, not
fc6/fc7's 0.005 or the LRN constants. (Why the same start worked on ImageNet, an estimate not measured
here: with 1000 classes a logit's (p - y) is ~1/1000 for all but the few examples of its class, so the
same step moves it far less.) ``tests/test_digits_init.py`` checks both starts at 64x64 inputs, where
fc7 is still 4096 wide.
``bias_init='small'`` is the earlier name of ``'digits'``. ``weight_init='he'`` replaces the fixed
spreads by Kaiming-normal weights, which narrow copies of the network (the CPU demo) need to train at
all.

``width`` scales every layer's channels (and the fully-connected widths), so tests and the CPU demo run a
narrow copy of the same code. This module never mentions devices: how the towers map onto devices is the
layout's business (``alexnet_jax.parallel``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax.models import layers
from alexnet_jax.models.towers import Stage, TowerModule, TowerNetwork

# Channels of each layer in the whole network (both towers), Figure 2.
PAPER_CHANNELS = {'conv1': 96, 'conv2': 256, 'conv3': 384, 'conv4': 384, 'conv5': 256,
                  'fc6': 4096, 'fc7': 4096}
# Weights. 'paper' (section 5): N(0, 0.01^2) in every layer. 'digits': the fillers of DIGITS' standard
# AlexNet (digits/standard-networks/caffe/alexnet.prototxt, as Caffe's bvlc_alexnet): gaussian std 0.01
# in the convolutions and fc8, 0.005 in fc6 and fc7. 'he' (Kaiming-normal, fan-in) is offered for narrow
# copies of the network, where a fixed 0.01 shrinks the signal through eight layers until training stalls.
# He et al. assume unit-variance inputs; the network reads pixels on the paper's 0..255 scale (minus the
# mean, std ~ 64), so with 'he' the input is divided by 64 before conv1. (Scaling conv1's weights down
# instead gives the same function at init but gradients 64^2 too large for conv1: SGD diverges.)
PIXEL_STD = 64.0
WEIGHT_STDS = {'paper': {}, 'digits': {'fc6': 0.005, 'fc7': 0.005}}   # layer -> std where not 0.01
WEIGHT_INITS = ('digits', 'he', 'paper')
# Biases: these layers start positive (to give their ReLUs positive inputs early on), the others at 0.
# 'paper' (section 5): 1. 'digits' (alexnet.prototxt): 0.1. 'small' is the earlier name of 'digits'.
POSITIVE_BIAS_LAYERS = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')
BIAS_VALUES = {'paper': 1.0, 'digits': 0.1, 'small': 0.1}


def weight_initializer(kind: str, layer: str, width: float = 1.0):
  """The kernel initializer of ``layer`` under ``weight_init=kind`` (see ``WEIGHT_STDS``).

  Under ``'digits'`` a narrow copy (``width`` < 1) keeps the full network's signal scale: every layer
  after conv1 has ``width`` times the full network's fan-in, so its spread is divided by sqrt(width)
  (the variance of a pre-activation, fan-in x std^2, is then the full network's). At width 1 these are
  DIGITS' values exactly. Without it a width-1/16 copy on DIGITS' solver stays at chance (the browser
  test's model: 33% after 36 epochs); with it, it learns. ``'paper'`` keeps N(0, 0.01^2) at any width.
  """
  if kind not in WEIGHT_INITS:
    raise ValueError(f'weight_init must be one of {sorted(WEIGHT_INITS)}, got {kind!r}')
  if kind == 'he':
    return nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
  std = WEIGHT_STDS[kind].get(layer, 0.01)
  if kind == 'digits' and layer != 'conv1':
    std /= min(1.0, width) ** 0.5
  return nn.initializers.normal(stddev=std)


def bias_initializer(kind: str, layer: str):
  """The bias initializer of ``layer`` under ``bias_init=kind`` (see ``BIAS_VALUES``)."""
  if kind not in BIAS_VALUES:
    raise ValueError(f'bias_init must be one of {sorted(BIAS_VALUES)}, got {kind!r}')
  return nn.initializers.constant(BIAS_VALUES[kind] if layer in POSITIVE_BIAS_LAYERS else 0.0)


STAGES = (
    Stage('conv12', 'concat', feeds='conv3'),     # conv1..pool2 (tower-local)
    Stage('conv345', 'concat', feeds='fc6'),        # conv3 reads both towers' maps; conv4/5 their own
    Stage('fc6_block', 'concat', feeds='fc7'),
    Stage('fc78_block', 'sum', feeds='fc8'),      # fc7 and this tower's block of fc8
)
# lrn='caffe_across': Caffe's bvlc_alexnet, whose LRN layers (norm1, norm2) normalize across all 96 / 256
# maps of conv1 / conv2 -- Caffe's `group: 2` splits only the convolutions -- so a map at a tower's edge
# sees the first two maps of the other tower. The towers therefore exchange their ReLU outputs before
# each LRN (the simplest correct exchange: a concatenation, as at conv3; only the two maps beside the
# boundary are needed, but a halo exchange would need its own collective in every layout). Each tower
# then normalizes all maps and keeps its own (norm1), or normalizes and pools all of them for conv3,
# which reads both towers' maps anyway (norm2). The parameters are those of the other conventions.
CAFFE_ACROSS = 'caffe_across'
ACROSS_STAGES = (
    Stage('conv1_block', 'concat', feeds='norm1'),                    # conv1 -> ReLU
    Stage('conv2_block', 'concat', feeds='norm2', needs_tower=True),  # LRN (all maps) -> own -> pool -> conv2
    Stage('conv345_across', 'concat', feeds='fc6'),                   # LRN (all) -> pool -> conv3..pool5
    Stage('fc6_block', 'concat', feeds='fc7'),
    Stage('fc78_block', 'sum', feeds='fc8'),
)


def scaled(channels: int, width: float, towers: int) -> int:
  """Channels one tower holds at width multiplier ``width`` (at least 1)."""
  return max(1, round(channels * width / towers))


class AlexNetTower(TowerModule):
  """One of the paper's two towers (one GPU's half of every layer), stage by stage."""
  num_towers: int = 2
  num_classes: int = 1000
  width: float = 1.0
  dropout_rate: float = 0.5
  lrn: str = 'paper'
  bias_init: str = 'paper'
  weight_init: str = 'paper'
  dtype: jnp.dtype = jnp.float32

  @property
  def STAGES(self):  # noqa: N802  (TowerModule's name)
    return ACROSS_STAGES if self.lrn == CAFFE_ACROSS else STAGES

  def setup(self):
    def ch(name):
      return scaled(PAPER_CHANNELS[name], self.width, self.num_towers)

    def conv(name, kernel, stride=1, padding='SAME'):
      return nn.Conv(ch(name), (kernel, kernel), strides=stride, padding=padding, name=name,
                     kernel_init=weight_initializer(self.weight_init, name, self.width),
                     bias_init=bias_initializer(self.bias_init, name), dtype=self.dtype)

    def dense(name, features):
      return nn.Dense(features, name=name, kernel_init=weight_initializer(self.weight_init, name, self.width),
                      bias_init=bias_initializer(self.bias_init, name), dtype=self.dtype)

    self.conv1 = conv('conv1', 11, stride=4, padding='VALID')  # padded by hand: see conv12()
    self.conv2 = conv('conv2', 5)
    self.conv3 = conv('conv3', 3)
    self.conv4 = conv('conv4', 3)
    self.conv5 = conv('conv5', 3)
    self.fc6 = dense('fc6', ch('fc6'))
    self.fc7 = dense('fc7', ch('fc7'))
    # fc8's bias is not split between towers: it lives in the network's head (towers.TowerNetwork).
    self.fc8 = nn.Dense(self.num_classes, use_bias=False, name='fc8',
                        kernel_init=weight_initializer(self.weight_init, 'fc8', self.width), dtype=self.dtype)

  def conv12(self, x, *, train, example_keys):
    """conv1 -> ReLU -> LRN -> pool -> conv2 -> ReLU -> LRN -> pool, on this tower's maps only."""
    x = self.conv1_block(x, train=train, example_keys=example_keys)
    x = layers.max_pool(layers.local_response_norm(x, convention=self.lrn), ceil_mode=True)
    x = layers.max_pool(layers.local_response_norm(nn.relu(self.conv2(x)), convention=self.lrn),
                         ceil_mode=True)
    return x

  def conv1_block(self, x, *, train, example_keys):
    """conv1 -> ReLU on this tower's maps (with lrn='caffe_across' a stage: its LRN follows the exchange)."""
    del train, example_keys
    pad_h = layers.convnet_padding(x.shape[1], 11, 4)
    pad_w = layers.convnet_padding(x.shape[2], 11, 4)
    if self.weight_init == 'he':
      x = x / PIXEL_STD
    x = jnp.pad(x.astype(self.dtype), [(0, 0), pad_h, pad_w, (0, 0)])
    return nn.relu(self.conv1(x))

  def conv2_block(self, x, *, train, example_keys, tower):
    """Caffe's LRN over both towers' conv1 maps -> this tower's maps -> pool -> conv2 -> ReLU."""
    del train, example_keys
    x = layers.local_response_norm(x, convention='caffe')
    own = x.shape[-1] // self.num_towers
    x = jax.lax.dynamic_slice_in_dim(x, tower * own, own, axis=-1)
    return nn.relu(self.conv2(layers.max_pool(x, ceil_mode=True)))

  def conv345_across(self, x, *, train, example_keys):
    """Caffe's LRN over both towers' conv2 maps -> pool -> conv3 (all maps) -> conv4 -> conv5 -> pool."""
    x = layers.max_pool(layers.local_response_norm(x, convention='caffe'), ceil_mode=True)
    return self.conv345(x, train=train, example_keys=example_keys)

  def conv345(self, x, *, train, example_keys):
    """conv3 (input: both towers' maps) -> conv4 -> conv5 (own maps) -> pool."""
    del train, example_keys
    x = nn.relu(self.conv3(x))
    x = nn.relu(self.conv4(x))
    x = nn.relu(self.conv5(x))
    return layers.max_pool(x, ceil_mode=True)

  def fc6_block(self, x, *, train, example_keys):
    """fc6 on both towers' pooled conv5 maps -> ReLU -> dropout."""
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(self.fc6(x))
    return layers.dropout(x, self.dropout_rate, example_keys if train else None, layer=6)

  def fc78_block(self, x, *, train, example_keys):
    """fc7 on both towers' fc6 outputs, then this tower's partial fc8 (summed across towers)."""
    x = nn.relu(self.fc7(x))
    x = layers.dropout(x, self.dropout_rate, example_keys if train else None, layer=7)
    return self.fc8(x)


def alexnet(num_classes: int = 1000, *, width: float = 1.0, dropout: float = 0.5, lrn: str = 'paper',
            bias_init: str = 'paper', weight_init: str = 'paper', dtype=jnp.float32) -> TowerNetwork:
  """The 2012 network as two towers (see the module docstring); ``lrn``: 'paper', 'caffe' (both
  tower-local), 'caffe_across' (Caffe's bvlc_alexnet: across both towers' maps, ``ACROSS_STAGES``) or
  'none'."""
  tower = AlexNetTower(num_towers=2, num_classes=num_classes, width=width, dropout_rate=dropout,
                       lrn=lrn, bias_init=bias_init, weight_init=weight_init, dtype=dtype)
  return TowerNetwork('alexnet', tower, tower.STAGES, num_towers=2, num_classes=num_classes)

