"""Running a ``TowerNetwork`` in a layout: one program, towers either local or one per device.

The network is a sequence of stages separated by the paper's exchange points (``models/towers.py``).
Between two stages the towers' outputs are *combined*:

===============  =================================  ==============================================
combine          towers local (single, data)         one tower per device (model, hybrid)
===============  =================================  ==============================================
``concat``       ``jnp.concatenate`` along channels  ``all_gather(x, 'model', axis=-1, tiled=True)``
``sum``          ``+``                               ``psum(x, 'model')``
===============  =================================  ==============================================

Both columns run the *same stage functions* on the *same values*, so the layouts compute the same
numbers by construction. Running local towers as separate convolutions (rather than ``vmap`` over the
tower axis, which XLA lowers to grouped convolutions) also keeps the one-device program fast on CPU,
where the gradients of grouped convolutions are slow (PERF_NOTES.md section 3).

Every exchange runs under ``jax.named_scope('exchange_<layer>')``, which the communication census reads
back from the compiled program to say which layer a collective serves.

Dropout keys are derived per example from the step key, the tower and the example's *global* index in
the batch (``example_keys``), so the masks are the same in every layout for the same seed, differ between
towers and between examples, and do not depend on how the batch is split across 'data' shards.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax.models import TowerNetwork
from alexnet_jax.parallel.layouts import Layout

TOWER_AXIS = 'model'
DATA_AXIS = 'data'


def exchange_scope(layer: str) -> str:
  return f'exchange_{layer}'


def example_keys(rng: jax.Array, tower, offset, batch: int) -> jax.Array:
  """One dropout key per example: ``fold_in(fold_in(rng, tower), global_index)``."""
  tower_key = jax.random.fold_in(rng, tower)
  return jax.vmap(lambda i: jax.random.fold_in(tower_key, i))(offset + jnp.arange(batch))


def _tower_slice(tree, t: int):
  return jax.tree.map(lambda a: a[t], tree)


def run_local_towers(network: TowerNetwork, params, images: jax.Array, rng: jax.Array | None, *,
                     train: bool, example_offset=0, after_combine=None) -> jax.Array:
  """All towers in this program, one after another; combines are concatenates and sums.

  ``after_combine(stage, x)``, if given, may annotate the combined activations (the compiler-partitioned
  layouts use it to say where the batch is gathered).
  """
  x = images
  towers = range(network.num_towers)
  keys = [None if rng is None else example_keys(rng, t, example_offset, images.shape[0])
          for t in towers]
  for i, stage in enumerate(network.stages):
    outs = [network.apply_stage(i, _tower_slice(params['towers'], t), x, train=train,
                                example_keys=keys[t], tower=t) for t in towers]
    with jax.named_scope(exchange_scope(stage.feeds)):
      x = jnp.concatenate(outs, axis=-1) if stage.combine == 'concat' else sum(outs[1:], outs[0])
      if after_combine is not None:
        x = after_combine(stage, x)
  return network.apply_head(params, x)


def layer_activations(network: TowerNetwork, params, images: jax.Array
                      ) -> tuple[jax.Array, dict[str, list[jax.Array]]]:
  """(logits, {layer: [output of tower 0, tower 1, ...]}) on one device, without dropout.

  The same stages and combines as ``run_local_towers``; used by the visualizations.
  """
  x = images
  activations: dict[str, list[jax.Array]] = {}
  for i, stage in enumerate(network.stages):
    outs = []
    for t in range(network.num_towers):
      y, captured = network.apply_stage_capturing(i, _tower_slice(params['towers'], t), x, tower=t)
      outs.append(y)
      for name, value in captured.items():
        activations.setdefault(name, []).append(value)
    x = jnp.concatenate(outs, axis=-1) if stage.combine == 'concat' else sum(outs[1:], outs[0])
  return network.apply_head(params, x), activations


def run_tower_per_device(network: TowerNetwork, params, images: jax.Array, rng: jax.Array | None, *,
                         train: bool, example_offset=0) -> jax.Array:
  """Inside ``shard_map``: this device holds tower ``axis_index('model')`` (params ``[1, ...]``)."""
  tower = jax.lax.axis_index(TOWER_AXIS)
  keys = None if rng is None else example_keys(rng, tower, example_offset, images.shape[0])
  own = _tower_slice(params['towers'], 0)
  x = images
  for i, stage in enumerate(network.stages):
    y = network.apply_stage(i, own, x, train=train, example_keys=keys, tower=tower)
    with jax.named_scope(exchange_scope(stage.feeds)):
      if stage.combine == 'concat':
        x = jax.lax.all_gather(y, TOWER_AXIS, axis=-1, tiled=True)
      else:
        x = jax.lax.psum(y, TOWER_AXIS)
  return network.apply_head(params, x)


def make_forward(network: TowerNetwork, layout: Layout, mesh: Mesh) -> Callable:
  """``forward(params, images, rng, train) -> logits`` for ``layout`` on ``mesh``.

  ``rng`` may be None (no dropout). The returned function is traceable (call it inside ``jax.jit``
  under ``jax.set_mesh(mesh)``); images are resharded along 'data' as the layout needs.
  """
  if layout.num_devices == 1:
    def forward(params, images, rng, train):
      return run_local_towers(network, params, images, rng, train=train)
    return forward
  if layout.compiler_partitioned:
    return _make_annotated_forward(network, layout, mesh)

  run = run_tower_per_device if layout.towers_on_model_axis else run_local_towers
  param_specs = layout.param_specs()

  def body(params, images, rng, train):
    offset = jax.lax.axis_index(DATA_AXIS) * images.shape[0]
    return run(network, params, images, rng, train=train, example_offset=offset)

  def forward(params, images, rng, train):
    images = jax.reshard(images, P(DATA_AXIS))
    if rng is None:
      fn = jax.shard_map(lambda p, x: body(p, x, None, train), mesh=mesh,
                         in_specs=(param_specs, P(DATA_AXIS)), out_specs=P(DATA_AXIS))
      return fn(params, images)
    fn = jax.shard_map(lambda p, x, k: body(p, x, k, train), mesh=mesh,
                       in_specs=(param_specs, P(DATA_AXIS), P()), out_specs=P(DATA_AXIS))
    return fn(params, images, rng)

  return forward


def _make_annotated_forward(network: TowerNetwork, layout: Layout, mesh: Mesh) -> Callable:
  """The one-program forward pass, with sharding annotations instead of explicit collectives.

  ``auto``: only the inputs are annotated (parameters by their shardings, the batch along 'data');
  XLA's partitioner propagates them and inserts whatever communication it finds best.

  ``weird_trick`` (Krizhevsky 2014): the batch is split over all devices for the convolutions, and the
  features entering fc6 are constrained to be *replicated* -- every worker gathers the whole batch's
  conv features -- while the fully-connected parameters are split by output units
  (``Layout.param_shardings``), so each worker computes its slice of every fc layer for the whole batch.
  """
  batch = layout.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())

  def gather_before_classifier(stage, x):
    if layout.name == 'weird_trick' and stage.feeds == 'fc6':
      return jax.lax.with_sharding_constraint(x, replicated)
    return x

  def forward(params, images, rng, train):
    images = jax.lax.with_sharding_constraint(images, batch)
    logits = run_local_towers(network, params, images, rng, train=train,
                              after_combine=gather_before_classifier)
    return jax.lax.with_sharding_constraint(logits, batch)

  return forward
