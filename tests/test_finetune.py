"""Starting from an earlier model (``--config.init_from``): copied layers, a new class count, errors.

One short LeNet run on a three-class folder is the earlier model; the tests start new runs from it (its
workdir, a snapshot of it, its exported bundle) on a four-class folder and in other layouts.
"""

import logging

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import configs, models
from alexnet_jax.inference import exporting
from alexnet_jax.training import finetune, trainer
from alexnet_jax.run import checkpoints
from alexnet_jax.data import synthetic
from alexnet_jax.parallel import layouts, step as step_lib
from tests import tiny_experiment

SIZE = 28

# The runs here compile the same LeNet programs again and again: with conftest's compilation cache an
# identical program is compiled once per process.
pytestmark = pytest.mark.usefixtures('compilation_cache')


def lenet_config(source, **overrides):
  c = configs.default_config()
  c.layout = 'single'
  c.model.name = 'lenet'
  c.data.source = str(source)
  c.data.image_size = SIZE
  c.data.crop_size = SIZE
  c.data.channels = 1
  c.data.random_crop = False
  c.data.flip = False
  c.data.pca_lighting = False
  c.data.num_threads = 1
  c.batch_size = 6
  c.num_epochs = 2
  c.lr.policy = 'fixed'
  c.log_every_steps = 1
  return tiny_experiment.override(c, **overrides)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  three = tmp_path_factory.mktemp('three')
  four = tmp_path_factory.mktemp('four')
  synthetic.make_image_folder(str(three), num_classes=3, per_class=8, size=(32, 32), seed=3)
  synthetic.make_image_folder(str(four), num_classes=4, per_class=8, size=(32, 32), seed=4)
  return three, four


@pytest.fixture(scope='module')
def earlier(folders, tmp_path_factory):
  """A finished two-epoch LeNet run on three classes (snapshots at steps 3 and 6)."""
  workdir = tmp_path_factory.mktemp('earlier')
  results = trainer.train_and_evaluate(lenet_config(folders[0]), str(workdir))
  assert results['step'] == 6
  return workdir


def snapshot_params(workdir, step=None):
  with checkpoints.Checkpointer(workdir) as ckpt:
    state, _ = ckpt.restore(step)
  return jax.tree.map(np.asarray, state['params'])


def fresh_params(num_classes, layout_name='single', width=1.0, seed=0):
  model = configs.default_config().model
  model.name, model.width = 'lenet', width
  network = models.build(model, num_classes)
  layout = layouts.resolve(layout_name, network, mesh_data=2 if layout_name == 'data' else -1)
  mesh = layout.make_mesh()
  state = step_lib.create_train_state(network, layout, mesh, optax.sgd(0.1), seed=seed,
                                      image_shape=(SIZE, SIZE, 1))
  return network, layout, mesh, state.params


def test_new_class_count_copies_the_rest_and_reinitializes_the_classifier(earlier, caplog):
  network, layout, mesh, params = fresh_params(4)
  fresh = jax.tree.map(np.asarray, params)
  with caplog.at_level(logging.INFO):
    started = finetune.initialize_from(str(earlier), network, layout, mesh, params)
  old = snapshot_params(earlier)  # latest: step 6
  for layer in ('conv1', 'conv2', 'ip1'):
    for leaf in ('kernel', 'bias'):
      np.testing.assert_array_equal(started['towers'][layer][leaf], old['towers'][layer][leaf])
  # ip2's kernel [1, 500, K] and the head bias [K] depend on the class count: kept as initialized.
  np.testing.assert_array_equal(started['towers']['ip2']['kernel'], fresh['towers']['ip2']['kernel'])
  np.testing.assert_array_equal(started['head']['bias'], fresh['head']['bias'])
  assert started['towers']['ip2']['kernel'].shape == (1, 500, 4)
  assert 're-initialized head, towers/ip2' in caplog.text and '3 classes, this dataset 4' in caplog.text


def test_a_step_and_another_layout(earlier):
  """``:STEP`` picks a snapshot; the copies land in the new layout's shardings."""
  network, layout, mesh, params = fresh_params(3, 'data')
  shardings = jax.tree.map(lambda a: a.sharding, params)
  started = finetune.initialize_from(f'{earlier}:3', network, layout, mesh, params)
  old = snapshot_params(earlier, 3)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, started), old)
  assert jax.tree.map(lambda a: a.sharding, started) == shardings
  assert not np.array_equal(snapshot_params(earlier, 6)['towers']['conv1']['kernel'],
                            old['towers']['conv1']['kernel'])


def test_from_an_exported_bundle(earlier, tmp_path):
  bundle, _ = exporting.export_model(str(earlier), str(tmp_path / 'lenet.tar.gz'))
  network, layout, mesh, params = fresh_params(4)
  started = finetune.initialize_from(bundle, network, layout, mesh, params)
  np.testing.assert_array_equal(started['towers']['conv2']['kernel'],
                                snapshot_params(earlier)['towers']['conv2']['kernel'])
  with pytest.raises(ValueError, match='holds step 6 only'):
    finetune.initialize_from(f'{bundle}:3', network, layout, mesh, params)


def test_other_shapes_stop_with_the_layers_named(earlier):
  network, layout, mesh, params = fresh_params(4, width=0.5)
  with pytest.raises(ValueError, match=r'in layer\(s\) towers/conv1, towers/conv2, towers/ip1, '
                                       r'towers/ip2:.*towers/conv1/kernel: \(1, 5, 5, 1, 20\) in the '
                                       r'earlier model, \(1, 5, 5, 1, 10\) here'):
    finetune.initialize_from(str(earlier), network, layout, mesh, params)


def test_another_input_shape_stops_at_ip1_naming_the_sizes(earlier):
  """The same LeNet on 40 x 28 inputs (a W x H dataset, crop none): ip1's fan-in follows the input, so
  only ip1 differs, and the message says which input the earlier model took and which flags set it."""
  network, layout, mesh, _ = fresh_params(3)
  params = step_lib.create_train_state(network, layout, mesh, optax.sgd(0.1), seed=0,
                                       image_shape=(SIZE, 40, 1)).params
  with pytest.raises(ValueError) as e:
    finetune.initialize_from(str(earlier), network, layout, mesh, params)
  message = str(e.value)
  assert 'in layer(s) towers/ip1: towers/ip1/kernel: (1, 800, 500) in the earlier model, (1, 1400, 500) here' \
      in message
  assert '(lenet, 3 classes, 28x28 inputs)' in message
  assert '--config.data.image_size and --config.data.crop_size giving 28x28 inputs' in message


def test_bad_specs(earlier, tmp_path):
  network, layout, mesh, params = fresh_params(3)
  with pytest.raises(FileNotFoundError, match='no such workdir or bundle'):
    finetune.initialize_from(str(tmp_path / 'nothing'), network, layout, mesh, params)
  with pytest.raises(FileNotFoundError, match='available steps: .*3, 6'):
    finetune.initialize_from(f'{earlier}:4', network, layout, mesh, params)
  with pytest.raises(ValueError, match="'soon' is not a step"):
    finetune.initialize_from(f'{earlier}:soon', network, layout, mesh, params)


def test_training_starts_from_the_earlier_model_with_more_classes(earlier, folders, tmp_path):
  """The whole path through ``train``: init_from on a four-class folder, then training goes on; a
  restart of the same workdir resumes its own snapshot instead of initializing again."""
  workdir = tmp_path / 'tuned'
  config = lenet_config(folders[1], init_from=str(earlier), num_epochs=1)
  results = trainer.train_and_evaluate(config, str(workdir))
  assert results['step'] == 4 and np.isfinite(results['val']['loss'])  # 24 train images / 6
  tuned = snapshot_params(workdir)
  old = snapshot_params(earlier)
  assert tuned['towers']['ip2']['kernel'].shape == (1, 500, 4)
  # Four steps of SGD at lr 0.01 move conv1 only a little from where the earlier run left it.
  delta = np.abs(tuned['towers']['conv1']['kernel'] - old['towers']['conv1']['kernel']).max()
  assert 0 < delta < 0.5 * np.abs(old['towers']['conv1']['kernel']).max()
