"""The train and eval steps: pure functions of (state, batch), compiled once per layout.

``make_train_step`` follows the pattern checked in API_NOTES.md section 2 (c1/c2): the layout's
forward pass (a ``shard_map`` where devices are involved) returns the logits sharded along 'data', and the
loss and ``jax.grad`` stay *outside* the ``shard_map``. Autodiff then inserts exactly the collectives the
layout needs -- the transposes of the tower exchanges, and an all-reduce over 'data' for parameters that
are replicated there -- with none of the 2x/4x gradient-scaling traps of taking gradients inside.

Randomness comes from the step: the dropout key of step ``s`` is ``fold_in(state.rng, s)``, so a resumed
run draws the same masks as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax import metrics as metrics_lib
from alexnet_jax.models import TowerNetwork
from alexnet_jax.parallel.forward import make_forward
from alexnet_jax.parallel.layouts import Layout


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes: the step counter, parameters, optimizer state and the base RNG key.

  ``rng`` is raw key data (``uint32[2]``) so that a checkpoint holds plain arrays.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def create_train_state(network: TowerNetwork, layout: Layout, mesh: Mesh,
                       tx: optax.GradientTransformation, *, seed: int,
                       image_shape: tuple[int, int, int]) -> TrainState:
  """Initializes parameters (the same values in every layout) straight into the layout's shardings."""
  init_key, train_key = jax.random.split(jax.random.key(seed))
  shapes = jax.eval_shape(lambda k: network.init(k, image_shape), init_key)
  shardings = layout.param_shardings(mesh, shapes)
  with jax.set_mesh(mesh):
    params = jax.jit(lambda k: network.init(k, image_shape), out_shardings=shardings)(init_key)
    opt_shardings = optimizer_shardings(jax.eval_shape(tx.init, params), shardings, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), NamedSharding(mesh, P()))
    rng = jax.device_put(jax.random.key_data(train_key), NamedSharding(mesh, P(None)))
  return TrainState(step=step, params=params, opt_state=opt_state, rng=rng)


def abstract_train_state(network: TowerNetwork, layout: Layout, mesh: Mesh,
                         tx: optax.GradientTransformation, *,
                         image_shape: tuple[int, int, int]) -> TrainState:
  """The train state as ``jax.ShapeDtypeStruct``s with the layout's shardings, allocating nothing.

  This is the restore target of a checkpoint (any layout can read any checkpoint: the arrays are
  ``[tower, ...]`` whatever wrote them) and the input of ahead-of-time compilation.
  """
  params = abstract_params(network, layout, mesh, image_shape=image_shape)
  shardings = jax.tree.map(lambda a: a.sharding, params)
  with jax.set_mesh(mesh):
    opt_shapes = jax.eval_shape(tx.init, params)
  opt_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                           opt_shapes, optimizer_shardings(opt_shapes, shardings, mesh))
  return TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P())),
      params=params, opt_state=opt_state,
      rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, P(None))))


def abstract_params(network: TowerNetwork, layout: Layout, mesh: Mesh, *,
                    image_shape: tuple[int, int, int]) -> Any:
  """The parameters as ``jax.ShapeDtypeStruct``s in ``layout``'s shardings (nothing allocated): the
  restore target of a reader, which needs no optimizer."""
  shapes = jax.eval_shape(lambda k: network.init(k, image_shape), jax.random.key(0))
  shardings = layout.param_shardings(mesh, shapes)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      shapes, shardings)


def optimizer_shardings(opt_shapes, param_shardings, mesh: Mesh):
  """Shardings for an optimizer state: a leaf that mirrors a parameter (momentum, Adam moments...)
  is placed like that parameter, everything else (step counts, learning rates) is replicated.

  A leaf mirrors a parameter when its tree path ends with the parameter's path and the shapes agree,
  which holds for every optax state built from the parameter tree.
  """
  by_path = {jax.tree_util.keystr(path): sharding for path, sharding in
             jax.tree_util.tree_flatten_with_path(param_shardings)[0]}

  def place(path, leaf):
    name = jax.tree_util.keystr(path)
    for suffix, sharding in by_path.items():
      if name.endswith(suffix) and len(sharding.spec) <= len(leaf.shape):
        return sharding
    return NamedSharding(mesh, P(*([None] * len(leaf.shape))))

  return jax.tree_util.tree_map_with_path(place, opt_shapes)


def state_shardings(state: TrainState) -> TrainState:
  """The sharding of every leaf of ``state`` (for restoring a checkpoint onto the same layout)."""
  return jax.tree.map(lambda a: a.sharding, state)


def make_loss_fn(network: TowerNetwork, layout: Layout, mesh: Mesh) -> Callable:
  """``loss_fn(params, images, labels, rng) -> (mean loss, logits)`` for the layout (dropout on)."""
  forward = make_forward(network, layout, mesh)

  def loss_fn(params, images, labels, rng):
    heads = network.split_heads(forward(params, images, rng, True))
    with jax.named_scope('loss'):
      # The main classifier's loss, plus the auxiliary classifiers' weighted (GoogLeNet: 0.3 each).
      loss = jnp.mean(metrics_lib.cross_entropy(heads[0], labels))
      for weight, aux in zip(network.aux_loss_weights, heads[1:]):
        loss = loss + weight * jnp.mean(metrics_lib.cross_entropy(aux, labels))
    return loss, heads[0] if len(heads) == 1 else heads

  return loss_fn


def make_train_step(network: TowerNetwork, layout: Layout, mesh: Mesh,
                    tx: optax.GradientTransformation, *, donate: bool = True) -> Callable:
  """``train_step(state, batch) -> (state, metrics)``, jitted once, with the state donated.

  ``batch`` holds ``'image'`` [B, H, W, C] and ``'label'`` [B] (global arrays, split along 'data').
  ``metrics`` are global means over the batch: loss, top1, top5, and the gradient's global norm.
  """
  loss_fn = make_loss_fn(network, layout, mesh)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    labels = batch['label']
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch['image'], labels, rng)
    with jax.named_scope('update'):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    with jax.named_scope('metrics'):
      heads = logits if isinstance(logits, list) else [logits]
      metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
      for i, head in enumerate(heads):  # top-1/top-5 of the main classifier, then aux1, aux2 ...
        correct = metrics_lib.topk_correct(head, labels, (1, 5))
        prefix = f'aux{i}_' if i else ''
        metrics[prefix + 'top1'] = correct[1] / labels.shape[0]
        metrics[prefix + 'top5'] = correct[5] / labels.shape[0]
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  donate_argnums = (0,) if donate else ()
  if layout.compiler_partitioned:
    # XLA chooses output shardings freely here; pin the new state to the old one's placement so the
    # next step hits the same compilation (and the census/benchmarks see the intended layout).
    shardings = state_shardings_for(network, layout, mesh, tx)
    jitted = jax.jit(train_step, donate_argnums=donate_argnums, out_shardings=(shardings, None))
  else:
    jitted = jax.jit(train_step, donate_argnums=donate_argnums)

  def step(state, batch):
    with jax.set_mesh(mesh):
      return jitted(state, batch)

  step.jitted = jitted
  return step


def state_shardings_for(network: TowerNetwork, layout: Layout, mesh: Mesh,
                        tx: optax.GradientTransformation) -> TrainState:
  """The sharding of every leaf of the train state in ``layout`` (from a 1-pixel-free shape trace)."""
  return jax.tree.map(lambda a: a.sharding, _abstract_for_shardings(network, layout, mesh, tx))


def _abstract_for_shardings(network, layout, mesh, tx):
  # Parameter *shapes* depend on the image size only through fc6's input; the shardings do not. A
  # small image gives the same tree and specs cheaply.
  return abstract_train_state(network, layout, mesh, tx, image_shape=(67, 67, 3))


def make_eval_step(network: TowerNetwork, layout: Layout, mesh: Mesh) -> Callable:
  """``eval_step(params, images) -> logits`` (no dropout), jitted once.

  Ten-crop inputs ``[B, 10, H, W, C]`` are folded into the batch and their softmax probabilities
  averaged, as the paper's test-time procedure (section 4.1); the result is then log-probabilities.
  """
  forward = make_forward(network, layout, mesh)

  def eval_step(params, images):
    if images.ndim == 5:
      # Image-major [B * 10, ...]: each device keeps its own images' crops (no data moves).
      b, n = images.shape[:2]
      batch_spec = P(jax.typeof(images).sharding.spec[0])
      crops = jnp.reshape(images, (b * n, *images.shape[2:]), out_sharding=batch_spec)
      logits = forward(params, crops, None, False)
      probs = jnp.reshape(jax.nn.softmax(logits, axis=-1), (b, n, -1),
                          out_sharding=P(*batch_spec, None, None))
      return jnp.log(jnp.mean(probs, axis=1))
    return forward(params, images, None, False)

  jitted = jax.jit(eval_step)

  def step(params, images):
    with jax.set_mesh(mesh):
      return jitted(params, images)

  step.jitted = jitted
  return step
