"""The one-tower AlexNet of Krizhevsky, "One weird trick for parallelizing convolutional neural networks"
(arXiv:1404.5997, 2014) -- the network torchvision ships as ``alexnet``.

64-192-384-256-256 convolution channels, no LRN, no tower split, dropout *before* fc6 and fc7 (as
torchvision orders it), 61,100,840 parameters for 1000 classes::

  conv1 11x11/4 pad 2, 64 -> ReLU -> max-pool 3/2        224 -> 55 -> 27
  conv2 5x5 pad 2, 192    -> ReLU -> max-pool 3/2        27 -> 13
  conv3 3x3, 384 -> ReLU; conv4 3x3, 256 -> ReLU; conv5 3x3, 256 -> ReLU -> max-pool 3/2 -> 6x6x256
  dropout -> fc6 4096 -> ReLU -> dropout -> fc7 4096 -> ReLU -> fc8

It is here for comparisons with peers (PyTorch's model, benchmarks/compare_torch.py) and for the
``weird_trick`` layout, which splits the convolutions by data and the classifier by model. torchvision
ends the features with an adaptive average pool to 6x6, the identity at 224x224; we keep the pooled map
as it is, so smaller test images give a smaller fc6. Weights are initialized as PyTorch's default
(Kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in))), biases 0.

As a ``TowerNetwork`` it has one tower, so every combine is the identity; ``width`` scales the channels.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from alexnet_jax.models import layers
from alexnet_jax.models.towers import Stage, TowerModule, TowerNetwork

OWT_CHANNELS = {'conv1': 64, 'conv2': 192, 'conv3': 384, 'conv4': 256, 'conv5': 256,
                'fc6': 4096, 'fc7': 4096}

STAGES = (
    Stage('features', 'concat', feeds='fc6'),     # conv1..pool5: what weird_trick splits by data
    Stage('classifier', 'sum', feeds='fc8'),      # fc6..fc8: what weird_trick splits by model
)


class AlexNetOWTTower(TowerModule):
  """The whole one-tower network, in two stages (convolutions, classifier)."""
  STAGES = STAGES
  num_towers: int = 1
  num_classes: int = 1000
  width: float = 1.0
  dropout_rate: float = 0.5
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    # PyTorch's default init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    weight_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')

    def ch(name):
      return max(1, round(OWT_CHANNELS[name] * self.width))

    def conv(name, kernel, stride=1, padding=1):
      return nn.Conv(ch(name), (kernel, kernel), strides=stride, padding=padding, name=name,
                     kernel_init=weight_init, dtype=self.dtype)

    self.conv1 = conv('conv1', 11, stride=4, padding=2)
    self.conv2 = conv('conv2', 5, padding=2)
    self.conv3 = conv('conv3', 3)
    self.conv4 = conv('conv4', 3)
    self.conv5 = conv('conv5', 3)
    self.fc6 = nn.Dense(ch('fc6'), name='fc6', kernel_init=weight_init, dtype=self.dtype)
    self.fc7 = nn.Dense(ch('fc7'), name='fc7', kernel_init=weight_init, dtype=self.dtype)
    # The bias of fc8 lives in the network's head, as for the two-tower model.
    self.fc8 = nn.Dense(self.num_classes, use_bias=False, name='fc8', kernel_init=weight_init,
                        dtype=self.dtype)

  def features(self, x, *, train, example_keys):
    del train, example_keys
    x = x.astype(self.dtype)
    x = layers.max_pool(nn.relu(self.conv1(x)))
    x = layers.max_pool(nn.relu(self.conv2(x)))
    x = nn.relu(self.conv3(x))
    x = nn.relu(self.conv4(x))
    x = nn.relu(self.conv5(x))
    return layers.max_pool(x)

  def classifier(self, x, *, train, example_keys):
    keys = example_keys if train else None
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(self.fc6(layers.dropout(x, self.dropout_rate, keys, layer=6)))
    x = nn.relu(self.fc7(layers.dropout(x, self.dropout_rate, keys, layer=7)))
    return self.fc8(x)


def alexnet_owt(num_classes: int = 1000, *, width: float = 1.0, dropout: float = 0.5,
                dtype=jnp.float32, **unused) -> TowerNetwork:
  """The one-tower network of "One weird trick" (see the module docstring).

  ``lrn``, ``bias_init`` and ``weight_init`` are accepted and ignored (the network has no LRN and uses PyTorch's init),
  so one model config can name either network.
  """
  del unused
  tower = AlexNetOWTTower(num_towers=1, num_classes=num_classes, width=width, dropout_rate=dropout,
                          dtype=dtype)
  return TowerNetwork('alexnet_owt', tower, STAGES, num_towers=1, num_classes=num_classes)
