"""Custom networks: any Flax linen module taking ``num_classes``, named ``package.module:ClassName``.

DIGITS' "Custom Network" tab, for Flax::

    python -m alexnet_jax.train --config=experiments/demo.py --workdir=runs/mine \
        --config.layout=single --config.model.name=my_models.small:SmallCNN

``my_models/small.py`` (importable: on ``PYTHONPATH`` or in the working directory) holds e.g.::

    class SmallCNN(nn.Module):
      num_classes: int
      @nn.compact
      def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(16, (3, 3))(x / 64.0))        # inputs: mean-subtracted pixels, 0..255 scale
        x = nn.Dropout(0.5, deterministic=not train)(x.mean(axis=(1, 2)))
        return nn.Dense(self.num_classes)(x)               # logits [batch, num_classes]

What the wrapper does, so that such a module trains, evaluates, snapshots and exports like the standard
networks:

* It becomes a one-tower ``TowerNetwork`` with one stage, so it runs in the ``single``, ``data`` and
  ``auto`` layouts (``model``/``hybrid`` need towers and say so).
* ``__call__`` gets ``train=`` (or ``deterministic=``/``training=``/``is_training=``, whichever it
  declares); with none of them it is called with the images only.
* Dropout: the module's ``'dropout'`` RNG stream is fed in training from the step's per-example keys
  (one key per batch shard, so masks are reproducible for a given layout, but, unlike the standard
  networks' per-example masks, differ between layouts).
* Its parameters are stored as ``{'towers': {layer: {leaf: [1, ...]}}}`` like every network's, the layer
  name being the module path joined by ``__`` (``Conv_0``, ``Block_0__Dense_0``); the class-count
  dependent layer is recognized by its shape when fine-tuning to a new class count (``training/finetune.py``).
* The network's head bias (zeros, ``num_classes`` values) is added to the module's logits; it is
  redundant with the module's own last bias and costs nothing.

Not supported, with a message saying so: state other than parameters (BatchNorm's ``batch_stats``: use
``use_running_average=True``, LayerNorm or GroupNorm), and outputs that are not ``[batch, num_classes]``.
``config.model``'s width, dropout, lrn, init and dtype fields do not apply to a custom module.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import flax.linen as nn
import jax

from alexnet_jax.models import trees
from alexnet_jax.models.towers import Stage, TowerModule, TowerNetwork

SEPARATOR = '__'
ROOT_LAYER = 'root'      # the layer name of parameters declared by the top module itself
STAGES = (Stage('forward', 'sum', feeds='logits'),)
# Keyword arguments of ``__call__`` that switch training behaviour on, and the value for training.
TRAIN_ARGUMENTS = {'train': True, 'training': True, 'is_training': True, 'deterministic': False}


def is_custom_name(name: str) -> bool:
  """True for ``package.module:ClassName`` (the form that names a custom network)."""
  return ':' in name


def load_class(spec: str) -> type[nn.Module]:
  """Imports ``package.module:ClassName`` and checks that it is a Flax module taking ``num_classes``.

  Raises ValueError naming ``--config.model.name`` and what to fix.
  """
  flag = f'--config.model.name={spec}'
  module_name, _, class_name = spec.partition(':')
  if not module_name or not class_name or ':' in class_name:
    raise ValueError(f'{flag}: a custom network is named package.module:ClassName')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f'{flag}: cannot import {module_name!r} ({type(e).__name__}: {e}); is it on '
                     f'PYTHONPATH (or in the working directory)?') from None
  except Exception as e:  # pylint: disable=broad-except  # the user's module failed while importing
    raise ValueError(f'{flag}: importing {module_name!r} failed ({type(e).__name__}: {e})') from e
  cls = getattr(module, class_name, None)
  if cls is None:
    public = sorted(n for n, v in vars(module).items()
                    if isinstance(v, type) and issubclass(v, nn.Module) and not n.startswith('_'))
    raise ValueError(f'{flag}: {module_name} has no {class_name!r}'
                     + (f'; its Flax modules: {", ".join(public)}' if public else ''))
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ValueError(f'{flag}: {class_name} is not a flax.linen.Module subclass')
  fields = [n for n in inspect.signature(cls).parameters if n not in ('parent', 'name')]
  if 'num_classes' not in fields:
    raise ValueError(f'{flag}: {class_name} must take num_classes (declare the field '
                     f'"num_classes: int"); its fields are {fields or "none"}')
  return cls


def train_argument(cls: type[nn.Module]) -> str | None:
  """The keyword of ``cls.__call__`` that selects training mode, or None when it takes none."""
  names = inspect.signature(cls.__call__).parameters
  return next((name for name in TRAIN_ARGUMENTS if name in names), None)


def flatten_layers(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """A module's nested parameters as ``{layer: {leaf: array}}``, nested module names joined by ``__``."""
  out: dict[str, dict[str, Any]] = {}
  for path, value in trees.leaves_by_path(tree):
    for depth, key in enumerate(path):
      if SEPARATOR in key:
        raise ValueError(f'custom network: the parameter path {"/".join(path[:depth + 1])} contains '
                         f'{SEPARATOR!r}, which this wrapper uses to join module names; rename it')
    out.setdefault(SEPARATOR.join(path[:-1]) if len(path) > 1 else ROOT_LAYER, {})[path[-1]] = value
  return out


def unflatten_layers(flat: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The inverse of ``flatten_layers``."""
  tree: dict[str, Any] = {}
  for layer, leaves in flat.items():
    node = tree
    if layer != ROOT_LAYER:
      for part in layer.split(SEPARATOR):
        node = node.setdefault(part, {})
    node.update(leaves)
  return tree


class CustomTower(TowerModule):
  """Runs a user module, whose parameters it declares as its own (flattened to two levels).

  The user module is built unbound (``parent=None``) and run with ``init``/``apply`` inside the stage,
  so that we can hand it a dropout RNG (``TowerNetwork.apply_stage`` passes none) and store its
  parameters in the ``{layer: {leaf}}`` form the layouts and tools expect.
  """
  STAGES = STAGES
  num_towers: int = 1
  num_classes: int = 10
  module_class: Any = None
  spec: str = ''

  def _call_kwargs(self, train: bool) -> dict[str, bool]:
    name = train_argument(self.module_class)
    if name is None:
      return {}
    return {name: train if TRAIN_ARGUMENTS[name] else not train}

  @nn.compact
  def forward(self, x, *, train, example_keys):
    net = self.module_class(num_classes=self.num_classes, parent=None)
    kwargs = self._call_kwargs(train)
    if self.is_initializing():
      rng = self.make_rng('params')
      variables = net.init({'params': rng, 'dropout': jax.random.fold_in(rng, 1)}, x, **kwargs)
      extra = sorted(set(variables) - {'params'})
      if extra:
        raise ValueError(f'--config.model.name={self.spec}: the module keeps state besides '
                         f'parameters ({", ".join(extra)}); only parameters are trained and saved. '
                         f'For BatchNorm use use_running_average=True, or LayerNorm/GroupNorm')
      for layer, leaves in flatten_layers(dict(variables.get('params', {}))).items():
        self.param(layer, lambda _, v=leaves: v)
    params = unflatten_layers({k: dict(v) for k, v in self.variables.get('params', {}).items()})
    rngs = {}
    if train and example_keys is not None:
      # One key for this batch shard, from the shard's first example key.
      rngs['dropout'] = jax.random.fold_in(example_keys[0], 0)
    logits = net.apply({'params': params}, x, rngs=rngs, **kwargs)
    if not hasattr(logits, 'shape') or logits.shape != (x.shape[0], self.num_classes):
      raise ValueError(f'--config.model.name={self.spec}: the module must return logits of shape '
                       f'[batch, num_classes] = {(x.shape[0], self.num_classes)}, got '
                       f'{getattr(logits, "shape", type(logits).__name__)}')
    return logits


def custom_network(spec: str, num_classes: int, **unused) -> TowerNetwork:
  """The Flax module named ``spec`` (``package.module:ClassName``) as a one-tower ``TowerNetwork``.

  Raises ValueError when it cannot be imported, the class is missing, or it does not take
  ``num_classes``.
  """
  del unused
  cls = load_class(spec)
  tower = CustomTower(num_towers=1, num_classes=num_classes, module_class=cls, spec=spec)
  return TowerNetwork(spec, tower, STAGES, num_towers=1, num_classes=num_classes)
