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
===========  ==================  ==============================================================

Invalid combinations are rejected by ``resolve`` *before anything compiles*, with a message naming the
flag to change and how.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax.models import TowerNetwork

AXES = ('data', 'model')
LAYOUT_NAMES = ('single', 'model', 'data', 'hybrid')


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
  def num_devices(self) -> int:
    return self.data * self.model

  def make_mesh(self, devices=None) -> Mesh:
    """The ``('data', 'model')`` mesh on the first ``num_devices`` devices (or ``devices``).

    Axes are Explicit (jax's default), so a value's sharding is part of its type and a mismatch is an
    error rather than a silent copy. In a multi-process run the global device order keeps a process's
    devices together, so the 'model' axis (towers) stays inside a host and 'data' crosses hosts.
    """
    devices = list(jax.devices() if devices is None else devices)[:self.num_devices]
    return jax.make_mesh((self.data, self.model), AXES, devices=devices)

  def param_specs(self) -> dict:
    """PartitionSpec prefixes for the parameter tree ``{'towers': ..., 'head': ...}``."""
    return {'towers': P('model') if self.towers_on_model_axis else P(), 'head': P()}

  def param_shardings(self, mesh: Mesh, params) -> dict:
    """A NamedSharding for every parameter leaf (towers split or replicated, head replicated).

    Specs are written out to the leaf's full rank (``P('model', None, None)``, not ``P('model')``), the
    form jitted functions return, so that a step's output state hits the same compilation as its input.
    """
    specs = self.param_specs()
    return {key: jax.tree.map(lambda a: NamedSharding(mesh, full_rank(specs[key], a.ndim)), params[key])
            for key in params}

  def batch_sharding(self, mesh: Mesh) -> NamedSharding:
    """Batches are split along 'data' (and replicated along 'model'); one device holds it whole."""
    return NamedSharding(mesh, P('data') if self.num_devices > 1 else P())


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

  if name in ('model', 'hybrid'):
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

  if name in ('single', 'model'):
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
  if batch_size is not None and batch_size % data:
    raise LayoutError(f'--config.batch_size={batch_size} is not divisible by the data axis ({data} '
                      f'devices); use a multiple of {data}, e.g. {max(data, batch_size - batch_size % data)}')
  return layout


def full_rank(spec: P, ndim: int) -> P:
  """``spec`` padded with ``None`` to ``ndim`` entries."""
  return P(*tuple(spec), *([None] * (ndim - len(spec))))


def device_ids(mesh: Mesh) -> np.ndarray:
  """Logical device positions ``[data, model]`` as used in compiled replica groups."""
  return np.arange(mesh.devices.size).reshape(mesh.devices.shape)
