"""Every layout computes the same numbers: logits, loss, gradients and an optimizer step.

Runs on the four forced CPU devices of conftest.py, with a narrow AlexNet (width 1/8, 67x67 inputs).
The tests build each layout's train state and step several times; with conftest's compilation cache an
identical program is compiled once. Dropout is *on*: the masks must agree across layouts too. The
one-tower network and a rectangular input are test_layouts_shapes.py's (a second file, for a second
test process).
"""

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import models
from alexnet_jax.parallel import compare, layouts, step as step_lib

# Every test here builds the train state of the same network in the same layouts: compiled once each.
pytestmark = pytest.mark.usefixtures('compilation_cache')

BATCH, SIZE = 8, 67
LAYOUTS = ('single', 'model', 'data', 'hybrid', 'weird_trick', 'auto')


@pytest.fixture(scope='module')
def network():
  return models.alexnet(10, width=0.125)


@pytest.fixture(scope='module')
def runs(network):
  return {name: compare.run_layout(network, name, batch=BATCH, image_size=SIZE) for name in LAYOUTS}


@pytest.mark.parametrize('name', LAYOUTS[1:])
def test_logits_loss_and_gradients_match_single(runs, name):
  ref, run = runs['single'], runs[name]
  np.testing.assert_allclose(run.logits, ref.logits, atol=1e-5, rtol=1e-5)
  assert abs(run.loss - ref.loss) < 1e-5
  assert compare.max_rel_diff(run.grads, ref.grads) < 1e-5
  # The check is not vacuous: gradients are non-zero in every layer of every tower.
  for leaf in jax.tree.leaves(ref.grads['towers']):
    assert np.all(np.abs(leaf).reshape(leaf.shape[0], -1).max(axis=1) > 0)


def test_dropout_is_active_in_the_compared_loss(network, runs):
  """The loss with dropout differs from the loss without it (so masks were compared, not skipped)."""
  layout = layouts.resolve('single', network)
  mesh = layout.make_mesh()
  state = step_lib.create_train_state(network, layout, mesh, optax.sgd(0.01), seed=0,
                                      image_shape=(SIZE, SIZE, 3))
  images, labels = compare.example_batch(BATCH, SIZE, 3, 10)
  logits = step_lib.make_eval_step(network, layout, mesh)(state.params, images)
  assert not np.allclose(np.asarray(logits), runs['single'].logits)


def test_model_layout_holds_half_the_parameters_per_device(runs):
  single = runs['single'].param_bytes_per_device
  model = runs['model'].param_bytes_per_device
  head = 10 * 4  # fc8's bias is replicated
  assert model == (single - head) // 2 + head
  assert runs['data'].param_bytes_per_device == single
  assert runs['hybrid'].param_bytes_per_device == model
  # weird_trick: the convolutions are copied, the fully-connected layers split four ways.
  assert runs['weird_trick'].param_bytes_per_device < model


def three_steps(network, name):
  """Three SGD-momentum steps on a fixed batch: (losses, final params, state, compiled cache size).

  The step is the one ``compare.run_layout`` compiled for ``runs`` (same state, batch and optimizer, not
  donated), so with the module's compilation cache it is read back rather than compiled again; the jit
  cache it counts is this function's own, so a second compilation still shows as a second entry.
  """
  layout = layouts.resolve(name, network, batch_size=BATCH)
  mesh = layout.make_mesh()
  tx = optax.sgd(0.01, momentum=0.9)
  state = step_lib.create_train_state(network, layout, mesh, tx, seed=0, image_shape=(SIZE, SIZE, 3))
  images, labels = compare.example_batch(BATCH, SIZE, 3, 10)
  sharding = layout.batch_sharding(mesh)
  batch = {'image': jax.device_put(images, sharding), 'label': jax.device_put(labels, sharding)}
  train_step = step_lib.make_train_step(network, layout, mesh, tx, donate=False)
  losses = []
  for _ in range(3):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics['loss']))
  return losses, jax.tree.map(np.asarray, state.params), state, train_step.jitted._cache_size()


@pytest.fixture(scope='module')
def stepped(network):
  return {name: three_steps(network, name) for name in LAYOUTS}


@pytest.mark.parametrize('name', LAYOUTS)
def test_optimizer_steps_agree_and_never_recompile(stepped, name):
  losses, params, state, cache_size = stepped[name]
  assert cache_size == 1
  assert int(state.step) == 3
  ref_losses, ref_params, _, _ = stepped['single']
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert np.all(np.isfinite(losses)) and len(set(losses)) == 3  # the parameters did move
  assert compare.max_rel_diff(params, ref_params) < 1e-5
  # Tower parameters stay split along 'model' where the layout says so, after the update too.
  kernel = state.params['towers']['conv1']['kernel']
  expected = 'model' if name in ('model', 'hybrid', 'auto') else None
  assert kernel.sharding.spec[0] == expected


def test_parameters_are_initialized_identically_in_every_layout(network):
  values = []
  for name in ('single', 'hybrid'):
    layout = layouts.resolve(name, network)
    state = step_lib.create_train_state(network, layout, layout.make_mesh(), optax.sgd(0.1),
                                        seed=7, image_shape=(SIZE, SIZE, 3))
    values.append(jax.tree.map(np.asarray, state.params))
  jax.tree.map(np.testing.assert_array_equal, values[0], values[1])


@pytest.mark.parametrize('name', ['model', 'hybrid'])
def test_ten_crop_eval_matches_averaging_crops_by_hand(network, name):
  layout = layouts.resolve(name, network)
  mesh = layout.make_mesh()
  state = step_lib.create_train_state(network, layout, mesh, optax.sgd(0.1), seed=0,
                                      image_shape=(SIZE, SIZE, 3))
  eval_step = step_lib.make_eval_step(network, layout, mesh)
  crops = np.random.RandomState(1).normal(0, 50, (2, 10, SIZE, SIZE, 3)).astype(np.float32)
  combined = np.asarray(eval_step(state.params, crops))
  by_hand = [jax.nn.softmax(np.asarray(eval_step(state.params, crops[:, i]))) for i in range(10)]
  np.testing.assert_allclose(np.exp(combined), np.mean(by_hand, axis=0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('kwargs, flag', [
    (dict(name='model', num_devices=1), 'xla_force_host_platform_device_count=2'),
    (dict(name='data', batch_size=6, num_devices=4), '--config.batch_size=6'),
    (dict(name='hybrid', mesh_model=4, num_devices=4), '--config.mesh.model=4'),
    (dict(name='single', mesh_data=2), '--config.mesh.data=2'),
    (dict(name='pipeline'), '--config.layout'),
])
def test_invalid_layouts_name_the_flag(network, kwargs, flag):
  name = kwargs.pop('name')
  with pytest.raises(layouts.LayoutError) as err:
    layouts.resolve(name, network, **kwargs)
  assert flag in str(err.value)


def test_one_tower_network_cannot_use_the_tower_layouts():
  with pytest.raises(layouts.LayoutError, match='single tower'):
    layouts.resolve('model', models.alexnet_owt(10))


def assert_weird_trick_census(run):
  """Krizhevsky 2014: convolutions data-parallel (their gradients all-reduced over every worker),
  fully-connected layers model-parallel (their weight gradients stay where the weights are)."""
  update = {c.layer for c in run.collectives if c.pass_ == 'update' and c.op == 'all-reduce'}
  assert {'conv1', 'conv2', 'conv3', 'conv4', 'conv5'} <= update
  assert not {'fc6', 'fc7'} & update
  assert {c.axis for c in run.collectives} == {'model'}  # one axis of N workers


def test_weird_trick_reduces_conv_gradients_and_never_fc_weights(runs):
  assert_weird_trick_census(runs['weird_trick'])
