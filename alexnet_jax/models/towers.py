"""A network described as towers and stages: the contract between a model and the layouts.

The 2012 network is two towers that exchange activations at four points only. We describe any such
network by

- a Flax module for **one tower**, with one method per *stage* (the layers between two exchange points),
- the list of stages, each saying how the towers' outputs are **combined** before the next stage:
  ``'concat'`` (along channels: what the paper's GPUs did at the inputs of conv3, fc6 and fc7) or
  ``'sum'`` (the fc8 exchange: each tower multiplies its own half of fc7 by its block of fc8 and the
  partial logits are added, cuda-convnet's ``W_a x_a + W_b x_b``, which works for any class count),
- a small **head** of parameters that are not split (fc8's bias), applied after the last combine.

Tower parameters are stored stacked, with a leading ``[tower]`` axis, so a checkpoint looks the same
whichever layout wrote it. How a combine is carried out (a concatenate in one program, an all-gather
between devices) is decided by the layout in ``alexnet_jax.parallel``; this module never mentions devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax.models import trees

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stretch of a tower between two exchange points.

  ``method`` names the tower module's method; ``combine`` says how the towers' outputs meet; ``feeds``
  names the layer whose input that exchange is (``conv3``, ``fc6``, ...), used to label communication.
  ``needs_tower``: the method also takes ``tower``, the index of the tower running it (an int, or the
  device's index on the 'model' axis), to pick its own maps out of a concatenation (Caffe's LRN across
  both towers, ``models/alexnet.py``).
  """
  method: str
  combine: Literal['concat', 'sum']
  feeds: str
  needs_tower: bool = False


@dataclasses.dataclass(frozen=True)
class TowerNetwork:
  """A network as ``num_towers`` copies of ``tower`` run stage by stage, plus a head bias."""
  name: str
  tower: nn.Module
  stages: tuple[Stage, ...]
  num_towers: int
  num_classes: int
  head_bias_init: float = 0.0
  # Auxiliary classifiers (GoogLeNet's two): their loss weights. In training the last stage then returns
  # [main | aux1 | aux2 ...] logits side by side, num_classes columns each; in evaluation only the main.
  aux_loss_weights: tuple[float, ...] = ()

  def init(self, rng: jax.Array, image_shape: tuple[int, int, int]) -> Params:
    """Initializes parameters: tower ``t`` from ``split(rng, num_towers)[t]``, stacked on axis 0.

    The result does not depend on any device layout. ``image_shape`` is (height, width, channels).
    """
    x = jnp.zeros((1, *image_shape), jnp.float32)
    keys = jax.random.split(rng, self.num_towers)
    per_tower = [self.tower.init(k, x, method='trace_all_stages')['params'] for k in keys]
    towers = jax.tree.map(lambda *a: jnp.stack(a), *per_tower)
    head = {'bias': jnp.full((self.num_classes,), self.head_bias_init, jnp.float32)}
    return {'towers': towers, 'head': head}

  def apply_stage(self, index: int, tower_params: Params, x: jax.Array, *, train: bool,
                  example_keys: jax.Array | None = None, tower: Any = 0) -> jax.Array:
    """Runs stage ``index`` of tower ``tower`` (``tower_params`` without the tower axis)."""
    stage = self.stages[index]
    extra = {'tower': tower} if stage.needs_tower else {}
    return self.tower.apply({'params': tower_params}, x, train=train, example_keys=example_keys,
                            method=stage.method, **extra)

  def apply_stage_capturing(self, index: int, tower_params: Params, x: jax.Array,
                            tower: Any = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``apply_stage`` without dropout, also returning each layer's output (``{'conv1': ...}``).

    The outputs are those of the Flax submodules (convolutions and dense layers, before their ReLU),
    captured with Flax's ``capture_intermediates``: what the visualizations draw.
    """
    stage = self.stages[index]
    extra = {'tower': tower} if stage.needs_tower else {}
    y, state = self.tower.apply({'params': tower_params}, x, train=False, example_keys=None,
                                method=stage.method, capture_intermediates=True,
                                mutable=['intermediates'], **extra)
    captured = state['intermediates']
    return y, {name: value['__call__'][0] for name, value in captured.items()
               if isinstance(value, dict) and '__call__' in value}

  def apply_head(self, params: Params, combined: jax.Array) -> jax.Array:
    """Adds the unsplit fc8 bias to the combined partial logits (of the main classifier)."""
    with jax.named_scope('head'):
      combined = combined.astype(jnp.float32)
      bias = params['head']['bias']
      if combined.shape[-1] > bias.shape[0]:  # auxiliary classifiers' logits follow, with own biases
        bias = jnp.pad(bias, (0, combined.shape[-1] - bias.shape[0]))
      return combined + bias

  def split_heads(self, logits: jax.Array) -> list[jax.Array]:
    """[main, aux1, ...] logits from a training forward pass (just [main] without aux heads)."""
    k = self.num_classes
    return [logits[..., i * k:(i + 1) * k] for i in range(logits.shape[-1] // k)]

  def param_count(self, params: Params) -> int:
    return trees.param_count(params)


class TowerModule(nn.Module):
  """Base for tower modules: ``trace_all_stages`` runs every stage once to create the parameters.

  Each stage's input has the shape of the *combined* output of the previous stage, so for tracing the
  tower's own output is repeated ``num_towers`` times along channels where the real network
  concatenates the towers (shapes only: the values of an init pass do not matter).
  """
  STAGES: ClassVar[tuple[Stage, ...]] = ()
  num_towers: int = 1

  def trace_all_stages(self, x: jax.Array) -> jax.Array:
    for stage in self.STAGES:
      extra = {'tower': 0} if stage.needs_tower else {}
      x = getattr(self, stage.method)(x, train=False, example_keys=None, **extra)
      if stage.combine == 'concat':
        x = jnp.concatenate([x] * self.num_towers, axis=-1)
    return x
