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
from jax.sharding import Mesh, PartitionSpec as P

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
                     train: bool, example_offset=0) -> jax.Array:
  """All towers in this program, one after another; combines are concatenates and sums."""
  x = images
  towers = range(network.num_towers)
  keys = [None if rng is None else example_keys(rng, t, example_offset, images.shape[0])
          for t in towers]
  for i, stage in enumerate(network.stages):
    outs = [network.apply_stage(i, _tower_slice(params['towers'], t), x, train=train,
                                example_keys=keys[t]) for t in towers]
    with jax.named_scope(exchange_scope(stage.feeds)):
      x = jnp.concatenate(outs, axis=-1) if stage.combine == 'concat' else sum(outs[1:], outs[0])
  return network.apply_head(params, x)


def run_tower_per_device(network: TowerNetwork, params, images: jax.Array, rng: jax.Array | None, *,
                         train: bool, example_offset=0) -> jax.Array:
  """Inside ``shard_map``: this device holds tower ``axis_index('model')`` (params ``[1, ...]``)."""
  tower = jax.lax.axis_index(TOWER_AXIS)
  keys = None if rng is None else example_keys(rng, tower, example_offset, images.shape[0])
  own = _tower_slice(params['towers'], 0)
  x = images
  for i, stage in enumerate(network.stages):
    y = network.apply_stage(i, own, x, train=train, example_keys=keys)
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
