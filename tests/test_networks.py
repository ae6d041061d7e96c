"""DIGITS' other networks: LeNet, GoogLeNet and custom Flax modules.

Parameter counts against the published figures (with ``jax.eval_shape``: nothing is allocated), the
auxiliary-classifier contract, the layouts each network runs in, a few training steps of each on a
generated folder, and the custom-network path with every error a user can hit.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import configs, models
from alexnet_jax.training import trainer
from alexnet_jax.run import metrics_writer
from alexnet_jax.data import synthetic
from alexnet_jax.models import custom, layers
from alexnet_jax.models.googlenet import googlenet
from alexnet_jax.parallel import layouts, step as step_lib
from tests import tiny_experiment

CUSTOM = 'tests.test_networks:SmallCNN'


# ---- Custom modules the tests load by name (``tests.test_networks:ClassName``) ---------------------------

class SmallCNN(nn.Module):
  """What a user might write: conv, dropout, a nested block, logits."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x / 64.0))
    x = nn.Dropout(0.5, deterministic=not train)(x.mean(axis=(1, 2)))
    x = Block()(x)
    return nn.Dense(self.num_classes)(x)


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Dense(16)(x))


class NoClasses(nn.Module):
  features: int = 3

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features)(x.mean(axis=(1, 2)))


class WithBatchNorm(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(x.mean(axis=(1, 2)))
    return nn.Dense(self.num_classes)(x)


class WrongOutput(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes + 1)(x.mean(axis=(1, 2)))


NOT_A_MODULE = object


# ---- Helpers ----------------------------------------------------------------------------------------------

def model_config(name, **fields):
  c = configs.default_config().model
  c.name = name
  for key, value in fields.items():
    c[key] = value
  return c


def abstract_params(network, image_shape):
  return jax.eval_shape(lambda k: network.init(k, image_shape), jax.random.key(0))


def tiny_config(source, name, *, size, channels=3, **overrides):
  """One epoch at a tiny size in the one-device layout (seconds on a CPU)."""
  c = configs.default_config()
  c.layout = 'single'
  c.model.name = name
  c.data.source = str(source)
  c.data.image_size = size
  c.data.crop_size = size
  c.data.channels = channels
  c.data.random_crop = False
  c.data.pca_lighting = False
  c.data.num_threads = 1
  c.batch_size = 6
  c.num_epochs = 1
  c.optimizer = 'adam'
  c.learning_rate = 1e-3
  c.lr.policy = 'fixed'
  c.log_every_steps = 1
  return tiny_experiment.override(c, **overrides)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  synthetic.make_image_folder(str(root), num_classes=3, per_class=8, size=(40, 36), seed=2)
  return root


# ---- Parameter counts and shapes -----------------------------------------------------------------------

def test_lenet_matches_digits_prototxt():
  network = models.build(model_config('lenet'), 10)
  params = abstract_params(network, (28, 28, 1))
  # conv1 520 + conv2 25,050 + ip1 400,500 + ip2 5,000 + head bias 10 (ip2's bias).
  assert network.param_count(params) == 431_080
  towers = params['towers']
  assert towers['conv1']['kernel'].shape == (1, 5, 5, 1, 20)
  assert towers['conv2']['kernel'].shape == (1, 5, 5, 20, 50)
  assert towers['ip1']['kernel'].shape == (1, 4 * 4 * 50, 500)
  assert towers['ip2']['kernel'].shape == (1, 500, 10) and 'bias' not in towers['ip2']
  assert network.num_towers == 1 and network.aux_loss_weights == ()


def test_lenet_scales_inputs_and_uses_xavier():
  network = models.build(model_config('lenet'), 10)
  params = network.init(jax.random.key(0), (28, 28, 1))
  kernel = np.asarray(params['towers']['ip1']['kernel'])
  bound = np.sqrt(3.0 / 800)  # Caffe's xavier: U(+-sqrt(3 / fan_in))
  assert kernel.min() >= -bound and kernel.max() <= bound and kernel.std() > 0.8 * bound / np.sqrt(3)
  assert not np.any(np.asarray(params['towers']['conv1']['bias']))
  # Pixels are multiplied by 0.0125 before conv1 (DIGITS' Power layer).
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1)) * 80.0
  p = jax.tree.map(lambda a: a[0], params['towers'])
  _, captured = network.apply_stage_capturing(0, p, x)
  conv1 = nn.Conv(20, (5, 5), padding='VALID').apply({'params': p['conv1']}, x * 0.0125)
  np.testing.assert_allclose(captured['conv1'], conv1, rtol=1e-5, atol=1e-5)


def test_googlenet_parameter_count_is_the_published_one():
  with_aux = models.build(model_config('googlenet'), 1000)
  without = googlenet(1000, aux_classifiers=False)
  # 6,998,552: Caffe's bvlc_googlenet without its auxiliary classifiers ("about 7M", the paper's 12x
  # fewer than AlexNet's 60M); each auxiliary classifier adds ~3.2M (mostly its 2048x1024 fc).
  assert without.param_count(abstract_params(without, (224, 224, 3))) == 6_998_552
  params = abstract_params(with_aux, (224, 224, 3))
  assert with_aux.param_count(params) == 13_378_280
  towers = params['towers']
  assert towers['conv1']['kernel'].shape == (1, 7, 7, 3, 64)
  assert towers['inception_3a_5x5']['kernel'].shape == (1, 5, 5, 16, 32)   # a real 5x5
  assert towers['loss1_conv']['kernel'].shape == (1, 1, 1, 512, 128)       # after 4a: 512 channels
  assert towers['loss2_conv']['kernel'].shape == (1, 1, 1, 528, 128)       # after 4d: 528
  assert towers['loss1_fc']['kernel'].shape == (1, 4 * 4 * 128, 1024)      # 14x14 -> avg-pool 5/3 -> 4x4
  assert towers['loss3_classifier']['kernel'].shape == (1, 1024, 1000)
  assert 'bias' not in towers['loss3_classifier'] and 'bias' in towers['loss1_classifier']
  assert with_aux.aux_loss_weights == (0.3, 0.3)


def test_googlenet_returns_aux_logits_in_training_only():
  network = models.build(model_config('googlenet'), 1000)
  params = abstract_params(network, (224, 224, 3))

  def run(p, x, train):
    keys = jax.random.split(jax.random.key(0), x.shape[0]) if train else None
    tower = jax.tree.map(lambda a: a[0], p['towers'])
    return network.apply_head(p, network.apply_stage(0, tower, x, train=train, example_keys=keys))

  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  assert jax.eval_shape(lambda p, x: run(p, x, True), params, x).shape == (2, 3 * 1000)
  assert jax.eval_shape(lambda p, x: run(p, x, False), params, x).shape == (2, 1000)


def test_googlenet_pools_round_up_like_caffe():
  x = jnp.zeros((1, 112, 112, 1))
  sizes = []
  for _ in range(4):
    x = layers.max_pool(x, ceil_mode=True)
    sizes.append(x.shape[1])
  assert sizes == [56, 28, 14, 7]


def test_registry_and_unknown_names():
  assert {'alexnet', 'alexnet_owt', 'lenet', 'googlenet'} <= set(models.REGISTRY)
  assert models.build(model_config('alexnet'), 10).num_towers == 2  # unchanged
  with pytest.raises(ValueError, match='not a known network.*package.module:ClassName'):
    models.build(model_config('resnet'), 10)


@pytest.mark.parametrize('name', ['lenet', 'googlenet', CUSTOM])
def test_one_tower_networks_refuse_tower_layouts(name):
  network = models.build(model_config(name, width=0.125), 3)
  for layout in ('model', 'hybrid'):
    with pytest.raises(layouts.LayoutError, match='single tower'):
      layouts.resolve(layout, network, num_devices=4)


# ---- The same step in every layout -----------------------------------------------------------------------

@pytest.mark.parametrize('name,shape', [('lenet', (28, 28, 1)), (CUSTOM, (16, 16, 3))])
def test_train_step_agrees_across_single_data_and_auto(name, shape):
  """One SGD step from the same init gives the same loss and parameters in each layout.

  (GoogLeNet runs the same generic code; its training test below uses the data layout. It is left out
  here because initializing it compiles ~60 random draws, ~20 s on a loaded 2-core CPU per layout.)
  """
  network = models.build(model_config(name, width=0.125), 3)
  images = np.random.default_rng(0).normal(0, 50, (4, *shape)).astype(np.float32)
  labels = np.array([0, 1, 2, 1], np.int32)
  tx = optax.sgd(0.01)
  results = {}
  for layout_name in ('single', 'data', 'auto'):
    layout = layouts.resolve(layout_name, network, mesh_data=2 if layout_name != 'single' else -1)
    mesh = layout.make_mesh()
    state = step_lib.create_train_state(network, layout, mesh, tx, seed=0, image_shape=shape)
    sharding = layout.batch_sharding(mesh)
    batch = {'image': jax.device_put(images, sharding), 'label': jax.device_put(labels, sharding)}
    state, metrics = step_lib.make_train_step(network, layout, mesh, tx)(state, batch)
    results[layout_name] = (jax.device_get(metrics), jax.device_get(state.params))
  reference_metrics, reference_params = results.pop('single')
  for layout_name, (metrics, params) in results.items():
    if name != CUSTOM:  # a custom module's dropout draws one mask per batch shard
      np.testing.assert_allclose(metrics['loss'], reference_metrics['loss'], rtol=1e-4,
                                 err_msg=layout_name)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                   params, reference_params)
    assert np.isfinite(metrics['loss'])


# ---- A few training steps on a generated folder --------------------------------------------------------

def test_lenet_trains_on_a_grayscale_folder(folder, tmp_path):
  config = tiny_config(folder, 'lenet', size=28, channels=1)
  results = trainer.train_and_evaluate(config, str(tmp_path / 'lenet'))
  assert results['step'] == 3 and results['val'] is not None
  records = metrics_writer.read_metrics(tmp_path / 'lenet', split='train')
  assert all(np.isfinite(r['loss']) for r in records)


def test_googlenet_trains_and_reports_each_head(folder, tmp_path):
  """At 1/8 width on 64x64 inputs (inception 4a's map is 4x4: the aux pool shrinks to it), with the
  batch split over two devices."""
  config = tiny_config(folder, 'googlenet', size=64, layout='data',
                       **{'model.width': 0.125, 'mesh.data': 2})
  results = trainer.train_and_evaluate(config, str(tmp_path / 'googlenet'))
  assert results['step'] == 3 and results['val'] is not None
  record = metrics_writer.read_metrics(tmp_path / 'googlenet', split='train')[-1]
  assert {'aux1_top1', 'aux1_top5', 'aux2_top1', 'aux2_top5', 'top1', 'top5'} <= set(record)
  assert np.isfinite(record['loss'])
  val = metrics_writer.read_metrics(tmp_path / 'googlenet', split='val')[-1]
  assert 'aux1_top1' not in val  # validation runs the main classifier only


def test_custom_network_trains(folder, tmp_path):
  config = tiny_config(folder, CUSTOM, size=32, layout='data', **{'mesh.data': 2})
  results = trainer.train_and_evaluate(config, str(tmp_path / 'custom'))
  assert results['step'] == 3 and np.isfinite(results['val']['loss'])


# ---- The custom-network path ----------------------------------------------------------------------------

def test_custom_network_parameters_are_two_levels_and_round_trip():
  network = models.build(model_config(CUSTOM), 5)
  params = network.init(jax.random.key(0), (16, 16, 3))
  assert set(params['towers']) == {'Conv_0', 'Block_0__Dense_0', 'Dense_0'}
  assert params['towers']['Block_0__Dense_0']['kernel'].shape == (1, 8, 16)
  assert params['head']['bias'].shape == (5,)
  nested = custom.unflatten_layers(custom.flatten_layers({'Block_0': {'Dense_0': {'kernel': 1}},
                                                          'w': 2}))
  assert nested == {'Block_0': {'Dense_0': {'kernel': 1}}, 'w': 2}
  # Dropout is on in training (fed from the example keys) and off in evaluation.
  tower = jax.tree.map(lambda a: a[0], params['towers'])
  x = jnp.ones((4, 16, 16, 3))
  keys = jax.random.split(jax.random.key(1), 4)
  evaluation = network.apply_stage(0, tower, x, train=False)
  assert evaluation.shape == (4, 5)
  assert not np.allclose(network.apply_stage(0, tower, x, train=True, example_keys=keys), evaluation)


@pytest.mark.parametrize('name,message', [
    ('tests.no_such_module:Net', "cannot import 'tests.no_such_module'.*PYTHONPATH"),
    ('tests.test_networks:Missing', "has no 'Missing'.*SmallCNN"),
    ('tests.test_networks:NoClasses', 'must take num_classes.*features'),
    ('tests.test_networks:NOT_A_MODULE', 'not a flax.linen.Module'),
    ('tests.test_networks:', 'package.module:ClassName'),
])
def test_custom_network_errors_at_build(name, message):
  with pytest.raises(ValueError, match=message):
    models.build(model_config(name), 3)


@pytest.mark.parametrize('name,message', [
    ('tests.test_networks:WithBatchNorm', 'state besides parameters.*batch_stats'),
    ('tests.test_networks:WrongOutput', r'logits of shape \[batch, num_classes\]'),
])
def test_custom_network_errors_at_init(name, message):
  network = models.build(model_config(name), 3)
  with pytest.raises(ValueError, match=message):
    network.init(jax.random.key(0), (8, 8, 3))


def test_custom_network_error_from_the_command_line(folder, tmp_path):
  """The training command reports a bad module as one line, without a traceback."""
  import subprocess
  import sys
  import os
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [sys.executable, '-m', 'alexnet_jax.train', '--config=experiments/lenet_digits.py',
             f'--workdir={tmp_path / "w"}', f'--config.data.source={folder}',
             '--config.model.name=tests.test_networks:NoClasses']
  proc = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'error: --config.model.name=tests.test_networks:NoClasses: NoClasses must take num_classes' \
      in proc.stderr
  assert 'Traceback' not in proc.stderr
