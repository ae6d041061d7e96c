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

Invalid combinations are rejected by ``resolve`` *before anything compiles*, with a message naming the
flag to change and how.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax.models import TowerNetwork

AXES = ('data', 'model')
LAYOUT_NAMES = ('single', 'model', 'data', 'hybrid', 'weird_trick', 'auto')
COMPILER_PARTITIONED = ('weird_trick', 'auto')
# Layers that the weird_trick layout splits by output units (both networks name them so).
FC_LAYERS = ('fc6', 'fc7', 'fc8')


class LayoutError(ValueError):
  """A layout, mesh, batch or device count that cannot work together."""


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

  ``mesh_data`` / ``mesh_model`` of -1 mean "derive": the 'model' axis holds one tower per device in
  the tower layouts, and the 'data' axis takes the remaining devices (``data``, ``hybrid``).
  """
  if num_devices is None:
    num_devices = jax.device_count()
  towers = network.num_towers
  if name not in LAYOUT_NAMES:
    raise LayoutError(f'--config.layout={name!r} is not a layout; choose one of {list(LAYOUT_NAMES)}')

  if name == 'weird_trick':
    model = num_devices if mesh_model == -1 else mesh_model
    if mesh_data not in (-1, 1):
      raise LayoutError(f'--config.mesh.data={mesh_data}: the weird_trick layout uses one axis of '
                        f'workers (--config.mesh.model); leave --config.mesh.data=-1')
    if model < 1:
      raise LayoutError(f'--config.mesh.model={mesh_model} must be positive (or -1 for every device)')
    data = 1
  elif name == 'auto':
    model = (towers if towers > 1 else 1) if mesh_model == -1 else mesh_model
    if model < 1:
      raise LayoutError(f'--config.mesh.model={mesh_model} must be positive (or -1)')
    data = max(1, num_devices // model) if mesh_data == -1 else mesh_data
  elif name in ('model', 'hybrid'):
    if towers < 2:
      raise LayoutError(
          f'--config.layout={name} puts one tower per device on the model axis, but '
          f'{network.name} has a single tower; use --config.layout=single or data '
          f'(or --config.model.name=alexnet for the two-tower network)')
    if mesh_model not in (-1, towers):
      raise LayoutError(f'--config.mesh.model={mesh_model}: the {name} layout needs one device per '
                        f'tower, i.e. --config.mesh.model={towers}')
    model = towers
  else:
    if mesh_model not in (-1, 1):
      raise LayoutError(f'--config.mesh.model={mesh_model}: the {name} layout keeps all towers on '
                        f'each device; set --config.mesh.model=1 or use --config.layout=hybrid')
    model = 1

  if name in ('weird_trick', 'auto'):
    pass
  elif name in ('single', 'model'):
    if mesh_data not in (-1, 1):
      raise LayoutError(f'--config.mesh.data={mesh_data}: the {name} layout has no data axis; use '
                        f'--config.layout={"data" if name == "single" else "hybrid"} to split the batch')
    data = 1
  elif mesh_data == -1:
    data = num_devices // model
  elif mesh_data < 1:
    raise LayoutError(f'--config.mesh.data={mesh_data} must be positive (or -1 to use every device)')
  else:
    data = mesh_data

  layout = Layout(name, data, model, towers_on_model_axis=name in ('model', 'hybrid'))
  if layout.num_devices > num_devices or data < 1:
    raise LayoutError(
        f'--config.layout={name} needs {max(layout.num_devices, model)} devices (mesh data={data} x '
        f'model={model}) but only {num_devices} are present; on CPU run with '
        f'XLA_FLAGS=--xla_force_host_platform_device_count={max(layout.num_devices, model)} '
        f'(the train and census commands do this for you), or pick a smaller mesh')
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
