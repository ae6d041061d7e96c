"""Compile one network in several layouts and compare them: census, memory, and numbers.

Shared by the ``census`` command and the layout benchmarks. For each layout it builds the train state
(identical initial parameters in every layout), compiles the train step, reads its communication census,
and evaluates the loss, logits and gradients of one fixed batch with dropout on -- which must agree with
the ``single`` layout within float32 round-off.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import jax
import numpy as np
import optax

from alexnet_jax.models import TowerNetwork
from alexnet_jax.parallel import census as census_lib
from alexnet_jax.parallel import layouts as layouts_lib
from alexnet_jax.parallel import step as step_lib


@dataclasses.dataclass
class LayoutRun:
  """What one layout computed and how it communicates."""
  layout: layouts_lib.Layout
  collectives: list[census_lib.Collective]
  param_count: int
  param_bytes_per_device: int
  loss: float
  logits: np.ndarray
  grads: Any
  compiled: Any = None

  def to_json(self, reference: 'LayoutRun | None' = None) -> dict:
    out = {'mesh': {'data': self.layout.data, 'model': self.layout.model},
           'collectives': [c.to_json() for c in self.collectives],
           'param_bytes_per_device': self.param_bytes_per_device,
           'param_count': self.param_count,
           'loss': self.loss}
    if reference is not None:
      out['max_abs_diff_logits'] = max_abs_diff(self.logits, reference.logits)
      out['max_rel_diff_grads'] = max_rel_diff(self.grads, reference.grads)
    return out


def max_abs_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def max_rel_diff(tree, ref) -> float:
  """Largest leaf-wise ``max|a - b| / max|b|`` over two pytrees of the same structure."""
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)),
                       tree, ref)
  return max(jax.tree.leaves(diffs))


def per_device_bytes(tree) -> int:
  """Bytes of ``tree`` held on the first device (each array's shard there)."""
  total = 0
  for a in jax.tree.leaves(tree):
    shard = a.sharding.shard_shape(a.shape)
    total += int(np.prod(shard)) * a.dtype.itemsize
  return total


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
  """An input size given as one side (a square) or as (height, width) -> (height, width)."""
  return tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)


def example_batch(batch: int, image_size: int | tuple[int, int], channels: int, num_classes: int,
                  seed: int = 0):
  """A fixed batch: images [batch, H, W, C] (``image_size``: a side, or (height, width)), labels."""
  rs = np.random.RandomState(seed)
  images = rs.normal(0.0, 50.0, (batch, *_hw(image_size), channels)).astype(np.float32)
  labels = rs.randint(0, num_classes, batch).astype(np.int32)
  return images, labels


def run_layout(network: TowerNetwork, name: str, *, batch: int, image_size: int | tuple[int, int],
               channels: int = 3,
               seed: int = 0, tx: optax.GradientTransformation | None = None,
               mesh_data: int = -1, keep_compiled: bool = False) -> LayoutRun:
  """Compiles and runs ``network`` in layout ``name`` on the fixed example batch.

  ``image_size`` is the input's side, or its (height, width): a rectangle, as DIGITS' crop "none" of a
  W x H dataset gives (fc6's fan-in follows from it).
  """
  layout = layouts_lib.resolve(name, network, batch_size=batch, mesh_data=mesh_data)
  mesh = layout.make_mesh()
  tx = tx or optax.sgd(0.01, momentum=0.9)
  state = step_lib.create_train_state(network, layout, mesh, tx, seed=seed,
                                      image_shape=(*_hw(image_size), channels))
  images, labels = example_batch(batch, image_size, channels, network.num_classes, seed)
  sharding = layout.batch_sharding(mesh)
  loss_fn = step_lib.make_loss_fn(network, layout, mesh)
  train_step = step_lib.make_train_step(network, layout, mesh, tx, donate=False)
  with jax.set_mesh(mesh):
    x = jax.device_put(images, sharding)
    y = jax.device_put(labels, sharding)
    rng = jax.random.key(seed + 1)
    (loss, logits), grads = jax.jit(jax.value_and_grad(
        lambda p: loss_fn(p, x, y, rng), has_aux=True))(state.params)
    compiled = train_step.jitted.lower(state, {'image': x, 'label': y}).compile()
  return LayoutRun(layout=layout,
                   collectives=census_lib.census(
                       compiled.as_text(), mesh,
                       census_lib.parameter_shapes(state.params)
                       if layout.compiler_partitioned else None),
                   param_count=network.param_count(state.params),
                   param_bytes_per_device=per_device_bytes(state.params),
                   loss=float(loss), logits=np.asarray(logits),
                   grads=jax.tree.map(np.asarray, grads),
                   compiled=compiled if keep_compiled else None)


def format_table(name: str, report: dict) -> str:
  """One layout's ``LayoutRun.to_json`` report as text: its collectives grouped by pass, layer, op and axis,
  the bytes communicated, the parameters held per device and the difference from ``single``."""
  lines = [f'== {name}  (mesh data={report["mesh"]["data"]} x model={report["mesh"]["model"]})']
  grouped = collections.OrderedDict()
  for c in report['collectives']:
    key = (c['pass'], c['layer'], c['op'], c['axis'])
    count, total = grouped.get(key, (0, 0))
    grouped[key] = (count + 1, total + c['bytes'])
  if grouped:
    lines.append(f'  {"pass":9s} {"layer":8s} {"op":15s} {"axis":10s} {"n":>3s} {"bytes":>12s}')
    for (pass_, layer, op, axis), (count, total) in grouped.items():
      lines.append(f'  {pass_:9s} {layer:8s} {op:15s} {axis:10s} {count:3d} {total:12,d}')
  else:
    lines.append('  (no communication)')
  total = sum(c['bytes'] for c in report['collectives'])
  lines.append(f'  total communicated per device per step: {total:,d} bytes')
  lines.append(f'  parameters: {report["param_count"]:,d}; held per device: '
               f'{report["param_bytes_per_device"]:,d} bytes')
  if 'max_abs_diff_logits' in report:
    lines.append(f'  vs single: max |logits diff| {report["max_abs_diff_logits"]:.3g}, '
                 f'max relative grad diff {report["max_rel_diff_grads"]:.3g}')
  return '\n'.join(lines)
