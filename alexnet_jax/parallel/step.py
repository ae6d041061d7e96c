"""The train and eval steps: pure functions of (state, batch), compiled once per layout.

``make_train_step`` follows the pattern checked in API_NOTES.md section 2 (c1/c2): the layout's
forward pass (a ``shard_map`` where devices are involved) returns the logits sharded along 'data', and the
loss and ``jax.grad`` stay *outside* the ``shard_map``. Autodiff then inserts exactly the collectives the
layout needs -- the transposes of the tower exchanges, and an all-reduce over 'data' for parameters that
are replicated there -- with none of the 2x/4x gradient-scaling traps of taking gradients inside.

Randomness comes from the step: the dropout key of step ``s`` is ``fold_in(state.rng, s)``, so a resumed
run draws the same masks as an uninterrupted one.

Both steps take finished float32 crops, or -- the input pipeline's default, ``augment_on='device'`` --
the stored uint8 images, which they augment or crop first (``data/device_augment.py``; the training
augmentation runs on each device's own rows of the batch). The mean image and PCA basis this needs are put
on the mesh once, when the step is made, and passed to every call.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax import metrics as metrics_lib
from alexnet_jax.data import device_augment
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


# What a train step reads from a batch (the trainer sends these fields to the devices; 'replaced' stays).
BATCH_FIELDS = ('image', 'label') + device_augment.KEY_FIELDS


def device_constants(constants, mesh: Mesh):
  """Arrays a step needs on every call (the mean image, the PCA basis), put on the mesh once, replicated."""
  if constants is None:
    return None
  return jax.device_put(constants, NamedSharding(mesh, P()))


def _augment_per_shard(augment: device_augment.TrainAugment, layout: Layout, mesh: Mesh) -> Callable:
  """``augment(constants, batch)`` run on each device's own rows of the batch: no image crosses devices
  (in the ``model`` layout the batch is replicated over the towers, and so is the work)."""
  spec = layout.batch_sharding(mesh).spec
  return jax.shard_map(augment, mesh=mesh, in_specs=(P(), spec), out_specs=spec)


def make_train_step(network: TowerNetwork, layout: Layout, mesh: Mesh,
                    tx: optax.GradientTransformation, *, donate: bool = True,
                    augment: device_augment.TrainAugment | None = None) -> Callable:
  """``train_step(state, batch) -> (state, metrics)``, jitted once, with the state donated.

  ``batch`` holds ``'image'`` float32 [B, H, W, C] and ``'label'`` [B] (global arrays, split along 'data'),
  or, with ``augment``, the pipeline's stored batches: ``'image'`` uint8 [B, S, S, C] and the int32
  ``epoch``/``record``/``attempt`` fields, which the step augments first. ``metrics`` are global means
  over the batch: loss, top1, top5, and the gradient's global norm.
  """
  loss_fn = make_loss_fn(network, layout, mesh)
  augment_batch = _augment_per_shard(augment, layout, mesh) if augment is not None else None

  def train_step(state: TrainState, batch, constants=None):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    labels = batch['label']
    images = batch['image']
    if device_augment.is_stored_batch(batch):
      if augment_batch is None:
        raise ValueError('a batch of stored uint8 images needs make_train_step(..., augment=...)')
      with jax.named_scope('augment'):
        images = augment_batch(constants, {k: batch[k] for k in device_augment.STORED_FIELDS})
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, images, labels, rng)
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
  constants = device_constants(None if augment is None else augment.constants, mesh)

  def step(state, batch):
    with jax.set_mesh(mesh):
      return jitted(state, batch, constants)

  step.jitted = jitted
  step.constants = constants
  return step


def state_shardings_for(network: TowerNetwork, layout: Layout, mesh: Mesh,
                        tx: optax.GradientTransformation) -> TrainState:
  """The sharding of every leaf of the train state in ``layout`` (from a 1-pixel-free shape trace)."""
  return jax.tree.map(lambda a: a.sharding, _abstract_for_shardings(network, layout, mesh, tx))


def _abstract_for_shardings(network, layout, mesh, tx):
  # Parameter *shapes* depend on the image size only through fc6's input; the shardings do not. A
  # small image gives the same tree and specs cheaply.
  return abstract_train_state(network, layout, mesh, tx, image_shape=(67, 67, 3))


def make_eval_step(network: TowerNetwork, layout: Layout, mesh: Mesh,
                   crops: device_augment.EvalCrops | None = None) -> Callable:
  """``eval_step(params, images, ten_crop=False) -> logits`` (no dropout), jitted once per ``ten_crop``.

  ``images`` are float32 crops ``[B, H, W, C]`` or ``[B, 10, H, W, C]``, or, with ``crops``, the stored
  uint8 images ``[B, S, S, C]``, cut on the device into the centre crop or (``ten_crop``) the 10 crops.
  Ten-crop inputs are folded into the batch and their softmax probabilities averaged, as the paper's
  test-time procedure (section 4.1); the result is then log-probabilities.
  """
  forward = make_forward(network, layout, mesh)

  def eval_step(params, images, constants=None, ten_crop=False):
    if images.dtype == jnp.uint8:
      if crops is None:
        raise ValueError('stored uint8 images need make_eval_step(..., crops=...)')
      with jax.named_scope('crops'):
        images = crops(constants, images, ten_crop)
    if images.ndim == 5:
      # Image-major [B * 10, ...]: each device keeps its own images' crops (no data moves).
      b, n = images.shape[:2]
      batch_spec = P(jax.typeof(images).sharding.spec[0])
      folded = jnp.reshape(images, (b * n, *images.shape[2:]), out_sharding=batch_spec)
      logits = forward(params, folded, None, False)
      probs = jnp.reshape(jax.nn.softmax(logits, axis=-1), (b, n, -1),
                          out_sharding=P(*batch_spec, None, None))
      return jnp.log(jnp.mean(probs, axis=1))
    return forward(params, images, None, False)

  jitted = jax.jit(eval_step, static_argnames=('ten_crop',))
  constants = device_constants(None if crops is None else crops.constants, mesh)

  def step(params, images, ten_crop: bool = False):
    with jax.set_mesh(mesh):
      return jitted(params, images, constants, ten_crop=bool(ten_crop))

  step.jitted = jitted
  return step
