"""DIGITS' LeNet: the network DIGITS offers first, for MNIST-sized grayscale digits.

It is the LeNet of Caffe's MNIST example as DIGITS ships it (``digits/standard-networks/caffe/
lenet.prototxt``), layer for layer, 431,080 parameters for 10 classes on 28x28x1 inputs::

  scale x 0.0125                                      (DIGITS' "Power" layer: 1 / std of MNIST pixels)
  conv1 5x5, 20 (stride 1, no padding) -> max-pool 2/2   28 -> 24 -> 12
  conv2 5x5, 50                         -> max-pool 2/2   12 -> 8 -> 4      (4 x 4 x 50 = 800)
  ip1 500 -> ReLU -> ip2 (classes)

How it matches the prototxt:

* **Input scaling.** DIGITS subtracts the dataset's mean image in the data layer, then a ``Power`` layer
  multiplies by 0.0125 ("1/(standard deviation on MNIST dataset)", about 1/80). Our pipeline hands the
  network mean-subtracted pixels on the 0..255 scale (``config.data.mean``), so the network's first
  operation is the same multiplication. (0.0125 is DIGITS' value since its PR #976, 2016, in every
  version of lenet.prototxt read for issue 20; the 1/256 = 0.00390625 often quoted is Caffe's MNIST
  example, which scales raw pixels to [0, 1) without a mean, and DIGITS' Torch LeNet before that PR.)
* **No ReLU after the convolutions**, only after ip1: the Caffe example has none there, and DIGITS kept it.
* **Pooling.** Caffe rounds pooled sizes up (``ceil``); with 2x2 windows, stride 2 and the even map sizes
  of 28x28 inputs (24, 8) that is the same as rounding down, which Flax does. Other input sizes work too
  (ip1 then sees a different number of features), but an odd map size loses its last row/column here
  where Caffe would pool a partial window.
* **Initialization.** Caffe's ``xavier`` filler (``variance_norm: FAN_IN``, the default) draws weights
  from U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)), i.e. variance 1 / fan_in: Flax's
  ``variance_scaling(1, 'fan_in', 'uniform')``. Biases start at 0 (``constant`` filler).
* **Names.** ``conv1``, ``conv2``, ``ip1``, ``ip2`` as in the prototxt. ip2's bias is the network's head bias
  (``params['head']['bias']``), as fc8's is for AlexNet (``towers.py``), so ip2 itself has no bias.

Caffe's ``lr_mult: 2`` on biases (DIGITS' prototxt has it) is a solver setting, not part of the network;
it is not reproduced here. The prototxt's batch sizes, DIGITS' "network defaults", are 64 for training
and 32 for validation (``experiments/lenet_digits.py``; the dashboard's blank batch size).

As a ``TowerNetwork`` it has one tower and two stages (convolutions, classifier); ``width`` scales the
channel and unit counts (20, 50, 500) for experiments with narrower or wider copies.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from alexnet_jax.models.towers import Stage, TowerModule, TowerNetwork

# DIGITS' Power layer: 1 / (standard deviation of MNIST's pixels, ~80 on the 0..255 scale).
INPUT_SCALE = 0.0125
LENET_UNITS = {'conv1': 20, 'conv2': 50, 'ip1': 500}
# Caffe's xavier filler (FAN_IN): U(+-sqrt(3 / fan_in)), variance 1 / fan_in.
XAVIER = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')

STAGES = (
    Stage('features', 'concat', feeds='ip1'),   # scale, conv1, pool1, conv2, pool2
    Stage('classifier', 'sum', feeds='ip2'),    # ip1, ReLU, ip2
)


class LeNetTower(TowerModule):
  """The whole network as one tower, in two stages."""
  STAGES = STAGES
  num_towers: int = 1
  num_classes: int = 10
  width: float = 1.0
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    def units(name):
      return max(1, round(LENET_UNITS[name] * self.width))

    self.conv1 = nn.Conv(units('conv1'), (5, 5), padding='VALID', kernel_init=XAVIER,
                         dtype=self.dtype, name='conv1')
    self.conv2 = nn.Conv(units('conv2'), (5, 5), padding='VALID', kernel_init=XAVIER,
                         dtype=self.dtype, name='conv2')
    self.ip1 = nn.Dense(units('ip1'), kernel_init=XAVIER, dtype=self.dtype, name='ip1')
    # The bias of ip2 is the network's head bias (added after the last stage).
    self.ip2 = nn.Dense(self.num_classes, use_bias=False, kernel_init=XAVIER, dtype=self.dtype,
                        name='ip2')

  def features(self, x, *, train, example_keys):
    del train, example_keys  # no dropout in LeNet
    x = x.astype(self.dtype) * INPUT_SCALE
    x = nn.max_pool(self.conv1(x), (2, 2), strides=(2, 2))
    return nn.max_pool(self.conv2(x), (2, 2), strides=(2, 2))

  def classifier(self, x, *, train, example_keys):
    del train, example_keys
    x = x.reshape(x.shape[0], -1)
    return self.ip2(nn.relu(self.ip1(x)))


def lenet(num_classes: int = 10, *, width: float = 1.0, dtype=jnp.float32, **unused) -> TowerNetwork:
  """DIGITS' LeNet (see the module docstring) for ``num_classes`` classes.

  ``dropout``, ``lrn``, ``bias_init`` and ``weight_init`` from ``config.model`` are accepted and ignored:
  LeNet has no dropout or LRN and always uses Caffe's xavier init with zero biases.
  """
  del unused
  tower = LeNetTower(num_towers=1, num_classes=num_classes, width=width, dtype=dtype)
  return TowerNetwork('lenet', tower, STAGES, num_towers=1, num_classes=num_classes)
