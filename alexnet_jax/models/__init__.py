"""The networks, described as towers and stages (see ``towers.py``), and a registry by name.

``build(model_config, num_classes)`` turns ``config.model`` into a ``TowerNetwork``. DIGITS' standard
networks are in ``REGISTRY``:

=============  ======  =========================================================================
name           towers  what
=============  ======  =========================================================================
alexnet        2       the 2012 paper's network (``alexnet.py``)
alexnet_owt    1       "One weird trick" / torchvision's one-tower AlexNet (``alexnet_owt.py``)
lenet          1       DIGITS' LeNet, 28x28 grayscale (``lenet.py``)
googlenet      1       Inception v1 with its two auxiliary classifiers (``googlenet.py``)
=============  ======  =========================================================================

Any other Flax module can be named ``package.module:ClassName`` (``custom.py``). Nothing in this package
knows about devices or meshes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import jax.numpy as jnp

from alexnet_jax.models.alexnet import alexnet
from alexnet_jax.models.alexnet_owt import alexnet_owt
from alexnet_jax.models.custom import custom_network, is_custom_name
from alexnet_jax.models.googlenet import googlenet
from alexnet_jax.models.lenet import lenet
from alexnet_jax.models.towers import Stage, TowerNetwork

if TYPE_CHECKING:  # a type only: the models import without ml_collections (benchmarks/device_check.py)
  import ml_collections

REGISTRY: dict[str, Callable[..., TowerNetwork]] = {
    'alexnet': alexnet,
    'alexnet_owt': alexnet_owt,
    'lenet': lenet,
    'googlenet': googlenet,
}

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def build(model_config: ml_collections.ConfigDict, num_classes: int) -> TowerNetwork:
  """Builds the network named by ``model_config.name`` for ``num_classes`` classes.

  The name is a ``REGISTRY`` key or ``package.module:ClassName`` (a custom Flax module, ``custom.py``).
  """
  name = model_config.name
  if is_custom_name(name):
    return custom_network(name, num_classes)
  if name not in REGISTRY:
    raise ValueError(f'--config.model.name={name!r} is not a known network; choose one of '
                     f'{sorted(REGISTRY)} or name a Flax module as package.module:ClassName')
  if model_config.dtype not in DTYPES:
    raise ValueError(f'--config.model.dtype={model_config.dtype!r}: use one of {sorted(DTYPES)}')
  if model_config.width <= 0:
    raise ValueError(f'--config.model.width must be positive, got {model_config.width}')
  return REGISTRY[name](num_classes, width=model_config.width, dropout=model_config.dropout,
                        lrn=model_config.lrn, bias_init=model_config.bias_init,
                        weight_init=model_config.get('weight_init', 'paper'),
                        dtype=DTYPES[model_config.dtype])


__all__ = ['REGISTRY', 'Stage', 'TowerNetwork', 'alexnet', 'alexnet_owt', 'build', 'custom_network',
           'googlenet', 'lenet']
