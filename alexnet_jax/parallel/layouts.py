"""Layouts: how the batch and the towers of a network map onto a ``('data', 'model')`` device mesh.

A layout is data, not a fork of the model (DESIGN.md). Each one says how large the two mesh axes are and
whether each device on the ``'model'`` axis holds one tower:

===========  ==================  ==============================================================
layout       mesh (data, model)  what crosses devices
===========  ==================  ==============================================================
single       1 x 1               nothing
model        1 x towers          activations at the paper's exchange points (conv3, fc6, fc7, fc8)
data         N x 1               the gradient of every parameter (all-reduce over 'data')
hybrid       N/towers x towers   both, each on its own axis
weird_trick  1 x N               convolutions data-parallel over all N devices (their gradients
                                 all-reduced); the conv features gathered before fc6; the fully-
                                 connected layers split by output units over the N devices
                                 (Krizhevsky 2014, "One weird trick", arXiv:1404.5997)
auto         N/towers x towers   no hand-written collectives: one program under ``jax.jit`` with
                                 the parameters and batch annotated (towers on 'model', batch on
                                 'data'), XLA's partitioner (GSPMD) chooses the communication
===========  ==================  ==============================================================

The first four map the tower function onto the mesh with ``jax.shard_map`` (``forward.py``); the last two
run the one-program form and leave partitioning to the compiler, steered by sharding annotations.

Every rule about a layout -- how many devices it needs, the mesh shape it takes, which networks it accepts,
what it sends between devices -- is a field of its ``LayoutRule`` in ``RULES``, the one place other
modules (the train, evaluate and classify commands, the dashboard) read them from. Invalid combinations
are rejected by ``resolve`` *before anything compiles*, with a message naming the flag to change and how.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax.models import TowerNetwork

AXES = ('data', 'model')
# Layers that the weird_trick layout splits by output units (both networks name them so).
FC_LAYERS = ('fc6', 'fc7', 'fc8')
# Data-parallel width when nothing else says (--config.mesh.data=-1) and CPU host devices are forced: two,
# so that a laptop run of a data-parallel layout really splits the batch.
DEFAULT_DATA_DEVICES = 2


class LayoutError(ValueError):
  """A layout, mesh, batch or device count that cannot work together."""


@dataclasses.dataclass(frozen=True)
class LayoutRule:
  """What a layout is, as data.

  Attributes:
    name: the ``--config.layout`` value.
    model_axis: what the 'model' axis holds: 'one' (size 1), 'towers' (one tower per device; needs a
      network of two or more towers), 'workers' (weird_trick: every device, the FC layers split over
      them) or 'towers_if_any' (auto: the towers where the network has several, else 1).
    data_axis: 'none' (size 1) or 'rest' (the devices left over; ``--config.mesh.data`` sets it).
    compiler_partitioned: XLA's partitioner chooses the collectives (jit + sharding annotations)
      instead of the hand-written ``shard_map`` programs.
    moves: one line on what crosses devices (for tables and the dashboard).
  """
  name: str
  model_axis: str
  data_axis: str
  compiler_partitioned: bool
  moves: str

  @property
  def needs_towers(self) -> bool:
    return self.model_axis == 'towers'

  def accepts(self, num_towers: int) -> bool:
    """Whether a network of ``num_towers`` towers can run in this layout."""
    return num_towers >= 2 or not self.needs_towers

  def model_size(self, num_towers: int, mesh_model: int = -1, num_devices: int | None = None) -> int:
    """The 'model' axis for a network of ``num_towers`` towers (``mesh_model`` -1: derived)."""
    if self.model_axis == 'one':
      return 1
    if self.model_axis == 'towers':
      return num_towers
    if self.model_axis == 'workers':
      if mesh_model != -1:
        return mesh_model
      return num_devices if num_devices is not None else DEFAULT_DATA_DEVICES
    return (num_towers if num_towers > 1 else 1) if mesh_model == -1 else mesh_model

  def devices_needed(self, num_towers: int, *, mesh_data: int = -1, mesh_model: int = -1) -> int:
    """The devices to force on a CPU host for this layout (an accelerator host has what it has).

    Raises ``LayoutError`` when the network does not fit the layout.
    """
    if not self.accepts(num_towers):
      raise LayoutError(_single_tower_message(self.name, num_towers))
    model = self.model_size(num_towers, mesh_model)
    data = 1 if self.data_axis == 'none' else (
        DEFAULT_DATA_DEVICES if mesh_data == -1 else mesh_data)
    return max(1, data) * max(1, model)


RULES: dict[str, LayoutRule] = {r.name: r for r in (
    LayoutRule('single', 'one', 'none', False, 'nothing'),
    LayoutRule('model', 'towers', 'none', False,
               'activations at the exchange points (conv3, fc6, fc7 inputs; fc8 partial logits)'),
    LayoutRule('data', 'one', 'rest', False, 'the gradient of every parameter (all-reduce)'),
    LayoutRule('hybrid', 'towers', 'rest', False,
               'activations at the exchange points on model, gradients on data'),
    LayoutRule('weird_trick', 'workers', 'none', True,
               'conv gradients all-reduced, conv features gathered before fc6, FC layers split'),
    LayoutRule('auto', 'towers_if_any', 'rest', True, "whatever XLA's partitioner chooses"),
)}
LAYOUT_NAMES = tuple(RULES)
COMPILER_PARTITIONED = tuple(name for name, r in RULES.items() if r.compiler_partitioned)


def rule(name: str) -> LayoutRule:
  """The rule of layout ``name``, or a ``LayoutError`` listing the layouts."""
  if name not in RULES:
    raise LayoutError(f'--config.layout={name!r} is not a layout; choose one of {list(LAYOUT_NAMES)}')
  return RULES[name]


def devices_needed(name: str, num_towers: int, *, mesh_data: int = -1, mesh_model: int = -1) -> int:
  """Devices layout ``name`` needs for a network of ``num_towers`` towers (see ``LayoutRule``)."""
  return rule(name).devices_needed(num_towers, mesh_data=mesh_data, mesh_model=mesh_model)


def _single_tower_message(name: str, num_towers: int, network: str = 'the network') -> str:
  accepting = [n for n, r in RULES.items() if r.accepts(num_towers)]
  return (f'--config.layout={name} puts one tower per device on the model axis, but {network} has a '
          f'single tower; use --config.layout={" or ".join(accepting[:2])} (layouts for it: '
          f'{", ".join(accepting)}), or --config.model.name=alexnet for the two-tower network')


@dataclasses.dataclass(frozen=True)
class Layout:
  """A resolved layout: its name, the mesh shape, and whether towers sit on the 'model' axis."""
  name: str
  data: int
  model: int
  towers_on_model_axis: bool

  @property
  def compiler_partitioned(self) -> bool:
    """True for the layouts whose collectives XLA chooses (weird_trick, auto)."""
    return self.name in COMPILER_PARTITIONED

  @property
  def num_devices(self) -> int:
    return self.data * self.model

  def make_mesh(self, devices=None) -> Mesh:
    """The ``('data', 'model')`` mesh on the first ``num_devices`` devices (or ``devices``).

    Axes are Explicit (jax's default), so a value's sharding is part of its type and a mismatch is an
    error rather than a silent copy. In a multi-process run the global device order keeps a process's
    devices together, so the 'model' axis (towers) stays inside a host and 'data' crosses hosts.
    """
    devices = list(jax.devices() if devices is None else devices)[:self.num_devices]
    # Compiler-partitioned layouts use Auto axes: shardings are hints that XLA may propagate and
    # change, which is the point of them.
    axis_types = (AxisType.Auto,) * 2 if self.compiler_partitioned else None
    return jax.make_mesh((self.data, self.model), AXES, devices=devices, axis_types=axis_types)

  def param_specs(self) -> dict:
    """PartitionSpec prefixes for the parameter tree ``{'towers': ..., 'head': ...}``.

    Towers are split along 'model' where each device holds one (model, hybrid), and annotated so for
    XLA's partitioner in ``auto``.
    """
    split = self.towers_on_model_axis or (self.name == 'auto' and self.model > 1)
    return {'towers': P('model') if split else P(), 'head': P()}

  def param_shardings(self, mesh: Mesh, params) -> dict:
    """A NamedSharding for every parameter leaf (towers split or replicated, head replicated).

    Specs are written out to the leaf's full rank (``P('model', None, None)``, not ``P('model')``), the
    form jitted functions return, so that a step's output state hits the same compilation as its input.
    """
    if self.name == 'weird_trick':
      return {'towers': {layer: {name: NamedSharding(mesh, self._weird_trick_spec(layer, a))
                                 for name, a in leaves.items()}
                         for layer, leaves in params['towers'].items()},
              'head': jax.tree.map(lambda a: NamedSharding(mesh, full_rank(P(), a.ndim)),
                                   params['head'])}
    specs = self.param_specs()
    return {key: jax.tree.map(lambda a: NamedSharding(mesh, full_rank(specs[key], a.ndim)), params[key])
            for key in params}

  def _weird_trick_spec(self, layer: str, leaf) -> P:
    """Fully-connected kernels and biases split along their output units; everything else copied."""
    if layer in FC_LAYERS and leaf.shape[-1] % self.model == 0:
      return P(*([None] * (leaf.ndim - 1)), 'model')
    return full_rank(P(), leaf.ndim)

  def batch_sharding(self, mesh: Mesh) -> NamedSharding:
    """Batches are split along 'data' (and replicated along 'model'); one device holds it whole.

    In the weird_trick layout every device is a data-parallel worker for the convolutions, so the
    batch is split along its single axis, 'model'.
    """
    if self.num_devices == 1:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, P('model' if self.name == 'weird_trick' else 'data'))

  @property
  def batch_shards(self) -> int:
    """How many pieces the batch is cut into."""
    return self.model if self.name == 'weird_trick' else self.data


def resolve(name: str, network: TowerNetwork, *, num_devices: int | None = None,
            mesh_data: int = -1, mesh_model: int = -1, batch_size: int | None = None) -> Layout:
  """Turns ``config.layout`` / ``config.mesh`` into a ``Layout``, or raises ``LayoutError``.

  ``mesh_data`` / ``mesh_model`` of -1 mean "derive": the 'model' axis as the layout's rule says, and
  the 'data' axis takes the remaining devices (``data``, ``hybrid``, ``auto``).
  """
  r = rule(name)
  if num_devices is None:
    num_devices = jax.device_count()
  towers = network.num_towers
  if not r.accepts(towers):
    raise LayoutError(_single_tower_message(name, towers, network.name))

  if r.model_axis == 'one' and mesh_model not in (-1, 1):
    raise LayoutError(f'--config.mesh.model={mesh_model}: the {name} layout keeps all towers on '
                      f'each device; set --config.mesh.model=1 or use --config.layout=hybrid')
  if r.model_axis == 'towers' and mesh_model not in (-1, towers):
    raise LayoutError(f'--config.mesh.model={mesh_model}: the {name} layout needs one device per '
                      f'tower, i.e. --config.mesh.model={towers}')
  model = r.model_size(towers, mesh_model, num_devices)
  if model < 1:
    raise LayoutError(f'--config.mesh.model={mesh_model} must be positive (or -1 for every device)')

  if r.data_axis == 'none':
    if mesh_data not in (-1, 1):
      fix = {'single': 'data', 'model': 'hybrid'}.get(name)
      hint = (f'use --config.layout={fix} to split the batch' if fix else
              'leave --config.mesh.data=-1 (the layout has one axis of workers, --config.mesh.model)')
      raise LayoutError(f'--config.mesh.data={mesh_data}: the {name} layout has no data axis; {hint}')
    data = 1
  elif mesh_data == -1:
    data = max(1, num_devices // model) if r.compiler_partitioned else num_devices // model
  elif mesh_data < 1:
    raise LayoutError(f'--config.mesh.data={mesh_data} must be positive (or -1 to use every device)')
  else:
    data = mesh_data

  layout = Layout(name, data, model, towers_on_model_axis=r.model_axis == 'towers')
  needed = max(layout.num_devices, model)
  if layout.num_devices > num_devices or data < 1:
    raise LayoutError(
        f'--config.layout={name} needs {needed} devices (mesh data={max(data, 1)} x model={model}) but '
        f'only {num_devices} are present; on CPU run with '
        f'XLA_FLAGS=--xla_force_host_platform_device_count={needed} (the train, evaluate and classify '
        f'commands do this for you), or pick a smaller mesh')
  shards = layout.batch_shards
  if batch_size is not None and batch_size % shards:
    raise LayoutError(f'--config.batch_size={batch_size} is not divisible by the {shards} devices the '
                      f'batch is split over; use a multiple of {shards}, e.g. '
                      f'{max(shards, batch_size - batch_size % shards)}')
  return layout


def full_rank(spec: P, ndim: int) -> P:
  """``spec`` padded with ``None`` to ``ndim`` entries."""
  return P(*tuple(spec), *([None] * (ndim - len(spec))))


def device_ids(mesh: Mesh) -> np.ndarray:
  """Logical device positions ``[data, model]`` as used in compiled replica groups."""
  return np.arange(mesh.devices.size).reshape(mesh.devices.shape)
