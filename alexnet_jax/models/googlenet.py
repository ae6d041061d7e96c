"""GoogLeNet (Inception v1), Szegedy et al., "Going deeper with convolutions" (CVPR 2015, arXiv:1409.4842).

DIGITS' third standard network. Table 1 of the paper, on 224x224 crops (channels of each inception
module: 1x1 | 3x3 reduce -> 3x3 | 5x5 reduce -> 5x5 | max-pool 3x3/1 -> pool proj, concatenated)::

  conv1 7x7/2, 64 -> max-pool 3/2 -> LRN                      224 -> 112 -> 56
  conv2 1x1, 64 (3x3 reduce) -> conv2 3x3, 192 -> LRN -> max-pool 3/2      56 -> 28
  inception 3a (64 | 96->128 | 16->32 | 32)  = 256
  inception 3b (128 | 128->192 | 32->96 | 64) = 480  -> max-pool 3/2        28 -> 14
  inception 4a (192 | 96->208 | 16->48 | 64)  = 512  ---> auxiliary classifier 1
  inception 4b (160 | 112->224 | 24->64 | 64) = 512
  inception 4c (128 | 128->256 | 24->64 | 64) = 512
  inception 4d (112 | 144->288 | 32->64 | 64) = 528  ---> auxiliary classifier 2
  inception 4e (256 | 160->320 | 32->128 | 128) = 832 -> max-pool 3/2       14 -> 7
  inception 5a (256 | 160->320 | 32->128 | 128) = 832
  inception 5b (384 | 192->384 | 48->128 | 128) = 1024 -> avg-pool 7x7 -> dropout 0.4 -> fc (classes)

  auxiliary classifier (section 5): avg-pool 5x5/3 (14 -> 4) -> 1x1 conv, 128 -> ReLU ->
                                    fc 1024 -> ReLU -> dropout 0.7 -> fc (classes)

Every convolution is followed by a ReLU. For 1000 classes the network has **6,998,552** parameters
without the auxiliary classifiers (the figure usually quoted for Caffe's bvlc_googlenet, "about 7M")
and 13,378,280 with them; ``tests/test_networks.py`` checks both with ``jax.eval_shape``.

Where the paper leaves details open we follow the reference implementation it was released with,
Caffe's ``bvlc_googlenet`` (and DIGITS' ``googlenet.prototxt``, which is that network):

* **Auxiliary classifiers.** In training their losses are added with weight 0.3 (section 5); "at
  inference time, these auxiliary networks are discarded". So with ``train=True`` the network returns
  ``[main | aux1 | aux2]`` logits side by side (``num_classes`` columns each) and
  ``parallel/step.py`` adds ``0.3 * loss(aux1) + 0.3 * loss(aux2)`` and reports each head's top-1/top-5;
  in evaluation only the main classifier runs. The aux heads keep their own biases; the main
  classifier's bias is the network's head bias (``towers.py``), as fc8's is for AlexNet.
* **LRN** after pool1 and after conv2 (Figure 3), with Caffe's parameters (local_size 5, alpha 1e-4,
  beta 0.75, k 1, alpha divided by the window: ``convention='caffe'``). The paper gives no constants.
  ``--config.model.lrn=none`` removes both (an ablation); any other value keeps Caffe's.
* **Pooling** rounds the output size up, as Caffe does (112 -> 56 -> 28 -> 14 -> 7):
  ``layers.max_pool(..., ceil_mode=True)``, Caffe's ``ceil((n - 3) / 2) + 1``, padding the bottom/right
  edge with -inf where needed (Flax rounds down). A map of 1 pools to nothing, as in Caffe, so the
  smallest input is 31x31 (``config_checks``). The final 7x7 average pool is a
  global average, the same at 224x224 and defined for smaller test images; likewise the auxiliary
  average pool's window shrinks to the feature map when that is smaller than 5x5.
* **The 5x5 branch is 5x5.** (torchvision's ``googlenet`` uses 3x3 there, a known slip kept for its
  pretrained weights; its count, 6,624,904, also includes batch norm.)
* **Initialization**: Caffe's xavier filler (U(+-sqrt(3 / fan_in))) for every weight; biases 0.2, except
  the classifiers' (0). The paper trained with asynchronous SGD (momentum 0.9, lr -4% every 8 epochs),
  which ``config`` expresses; the network does not.
* **Inputs** are mean-subtracted pixels on the 0..255 scale, as in Caffe.
* **DIGITS' start.** DIGITS' googlenet.prototxt has the same fillers (xavier; its ``std`` values are
  ignored by Caffe's xavier filler) and constants (0.2; 0 for the three classifiers), and trains
  batches of 32 (validation 16): its "network defaults" (``experiments/googlenet_digits.py``). So
  ``config.model.weight_init`` / ``bias_init`` do not apply here; this network always starts so.

``width`` scales every channel and unit count (not the classes), for quick tests at small sizes.
``config.model.dropout`` is the main classifier's dropout (the paper: 0.4; set it in the experiment);
the auxiliary classifiers' 0.7 is fixed as in the paper. As a ``TowerNetwork`` it has one tower and one
stage: the auxiliary classifiers branch off in the middle of the network, so there is no earlier
point where a single activation tensor could be handed over.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from alexnet_jax.models import layers
from alexnet_jax.models.towers import Stage, TowerModule, TowerNetwork

# (name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj): Table 1.
INCEPTIONS = (
    ('3a', 64, 96, 128, 16, 32, 32),
    ('3b', 128, 128, 192, 32, 96, 64),
    ('4a', 192, 96, 208, 16, 48, 64),
    ('4b', 160, 112, 224, 24, 64, 64),
    ('4c', 128, 128, 256, 24, 64, 64),
    ('4d', 112, 144, 288, 32, 64, 64),
    ('4e', 256, 160, 320, 32, 128, 128),
    ('5a', 256, 160, 320, 32, 128, 128),
    ('5b', 384, 192, 384, 48, 128, 128),
)
# Max-pool 3/2 after these modules (and after conv1 and conv2).
POOL_AFTER = ('3b', '4e')
# Auxiliary classifiers: which module feeds them, and their loss weight (section 5).
AUX_AFTER = {'4a': 'loss1', '4d': 'loss2'}
AUX_LOSS_WEIGHT = 0.3
AUX_DROPOUT = 0.7
AUX_CONV, AUX_FC = 128, 1024

# Caffe's xavier filler (variance_norm FAN_IN): U(+-sqrt(3 / fan_in)), variance 1 / fan_in.
XAVIER = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
BIAS = nn.initializers.constant(0.2)   # bvlc_googlenet's bias filler for convolutions and aux fc

STAGES = (Stage('forward', 'sum', feeds='loss3_classifier'),)


class GoogLeNetTower(TowerModule):
  """The whole network as one tower and one stage (``forward``)."""
  STAGES = STAGES
  num_towers: int = 1
  num_classes: int = 1000
  width: float = 1.0
  dropout_rate: float = 0.4
  lrn: str = 'caffe'
  aux_classifiers: bool = True
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    def ch(n):
      return max(1, round(n * self.width))

    def conv(name, features, kernel, stride=1):
      return nn.Conv(ch(features), (kernel, kernel), strides=stride, padding=kernel // 2,
                     kernel_init=XAVIER, bias_init=BIAS, dtype=self.dtype, name=name)

    convs = {'conv1': conv('conv1', 64, 7, stride=2),
             'conv2_3x3_reduce': conv('conv2_3x3_reduce', 64, 1),
             'conv2_3x3': conv('conv2_3x3', 192, 3)}
    for name, c1, r3, c3, r5, c5, pp in INCEPTIONS:
      prefix = f'inception_{name}_'
      for suffix, features, kernel in (('1x1', c1, 1), ('3x3_reduce', r3, 1), ('3x3', c3, 3),
                                       ('5x5_reduce', r5, 1), ('5x5', c5, 5), ('pool_proj', pp, 1)):
        convs[prefix + suffix] = conv(prefix + suffix, features, kernel)
    dense = {}
    if self.aux_classifiers:
      for loss in AUX_AFTER.values():
        convs[f'{loss}_conv'] = conv(f'{loss}_conv', AUX_CONV, 1)
        dense[f'{loss}_fc'] = nn.Dense(ch(AUX_FC), kernel_init=XAVIER, bias_init=BIAS,
                                       dtype=self.dtype, name=f'{loss}_fc')
        dense[f'{loss}_classifier'] = nn.Dense(self.num_classes, kernel_init=XAVIER,
                                               dtype=self.dtype, name=f'{loss}_classifier')
    # The main classifier's bias is the network's head bias.
    dense['loss3_classifier'] = nn.Dense(self.num_classes, use_bias=False, kernel_init=XAVIER,
                                         dtype=self.dtype, name='loss3_classifier')
    self.convs = convs
    self.dense = dense

  def _relu_conv(self, name, x):
    return nn.relu(self.convs[name](x))

  def _lrn(self, x):
    if self.lrn == 'none':
      return x
    return layers.local_response_norm(x, convention='caffe', k=1.0)

  def _inception(self, name, x):
    """Four branches on the same input, concatenated along channels (Figure 2b)."""
    p = f'inception_{name}_'
    b1 = self._relu_conv(p + '1x1', x)
    b3 = self._relu_conv(p + '3x3', self._relu_conv(p + '3x3_reduce', x))
    b5 = self._relu_conv(p + '5x5', self._relu_conv(p + '5x5_reduce', x))
    bp = self._relu_conv(p + 'pool_proj', nn.max_pool(x, (3, 3), strides=(1, 1), padding='SAME'))
    return jnp.concatenate([b1, b3, b5, bp], axis=-1)

  def _aux(self, loss, x, keys, layer):
    """An auxiliary classifier (section 5) on the output of inception 4a or 4d."""
    window = min(5, x.shape[1]), min(5, x.shape[2])
    x = nn.avg_pool(x, window, strides=(3, 3))
    x = self._relu_conv(f'{loss}_conv', x)
    x = nn.relu(self.dense[f'{loss}_fc'](x.reshape(x.shape[0], -1)))
    x = layers.dropout(x, AUX_DROPOUT, keys, layer=layer)
    return self.dense[f'{loss}_classifier'](x)

  def forward(self, x, *, train, example_keys):
    keys = example_keys if train else None
    # The auxiliary heads run in training, and at init so that their parameters exist.
    with_aux = self.aux_classifiers and (train or self.is_initializing())
    x = x.astype(self.dtype)
    x = self._lrn(layers.max_pool(self._relu_conv('conv1', x), ceil_mode=True))
    x = self._relu_conv('conv2_3x3', self._relu_conv('conv2_3x3_reduce', x))
    x = layers.max_pool(self._lrn(x), ceil_mode=True)
    aux = []
    for name, *_ in INCEPTIONS:
      x = self._inception(name, x)
      if with_aux and name in AUX_AFTER:
        aux.append(self._aux(AUX_AFTER[name], x, keys, layer=len(aux) + 1))
      if name in POOL_AFTER:
        x = layers.max_pool(x, ceil_mode=True)
    x = jnp.mean(x, axis=(1, 2))  # avg-pool 7x7/1 on the 7x7 map: a global average
    x = layers.dropout(x, self.dropout_rate, keys, layer=0)
    logits = self.dense['loss3_classifier'](x)
    if train and aux:
      return jnp.concatenate([logits, *aux], axis=-1)  # [main | aux1 | aux2]
    return logits


def googlenet(num_classes: int = 1000, *, width: float = 1.0, dropout: float = 0.4, lrn: str = 'caffe',
              aux_classifiers: bool = True, dtype=jnp.float32, **unused) -> TowerNetwork:
  """GoogLeNet for ``num_classes`` classes (see the module docstring).

  Args:
    width: channel multiplier (1.0: the paper's network).
    dropout: the main classifier's dropout rate (the paper: 0.4).
    lrn: 'none' removes the two LRN layers; any other value uses Caffe's LRN (the paper's network).
    aux_classifiers: the two auxiliary classifiers of section 5 (loss weight 0.3 each in training).
    dtype: compute dtype; parameters stay float32.

  ``bias_init`` and ``weight_init`` from ``config.model`` are accepted and ignored (Caffe's fillers).
  """
  del unused
  tower = GoogLeNetTower(num_towers=1, num_classes=num_classes, width=width, dropout_rate=dropout,
                         lrn=lrn, aux_classifiers=aux_classifiers, dtype=dtype)
  weights = (AUX_LOSS_WEIGHT,) * len(AUX_AFTER) if aux_classifiers else ()
  return TowerNetwork('googlenet', tower, STAGES, num_towers=1, num_classes=num_classes,
                      aux_loss_weights=weights)
