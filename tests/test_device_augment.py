"""Augmentation and evaluation crops on the device (config.data.augment_on='device'): the same pixels as
the host path, draws keyed on the example alone, layouts that agree, and an exact resume."""

import json

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import configs, data, models
from alexnet_jax.training import config_checks
from alexnet_jax.data import contract as contract_lib
from alexnet_jax.data import device_augment, synthetic, transforms
from alexnet_jax.parallel import layouts, step as step_lib
from alexnet_jax.run import workdir as workdir_lib
from tests import tiny_experiment

S, CROP = 12, 8


def _images(n, channels, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, S, S, channels), dtype=np.uint8)


def _flags(random_crop=True, flip=True, pca=True, channels=3):
  cfg = configs.default_config().data
  cfg.random_crop, cfg.flip, cfg.pca_lighting = random_crop, flip, pca
  return transforms.AugmentFlags.from_config(cfg, channels)


def _augment(mean, flags, seed=0):
  return device_augment.TrainAugment(mean=mean, eigval=transforms.IMAGENET_EIGVAL,
                                     eigvec=transforms.IMAGENET_EIGVEC, crop=CROP, flags=flags,
                                     seed=seed)


def test_augment_on_is_checked_and_a_resume_may_not_change_it():
  config = configs.default_config()
  config.data.augment_on = 'gpu'
  assert any(p.startswith("--config.data.augment_on='gpu'") for p in config_checks.problems(config))
  saved = json.loads(configs.default_config().to_json_best_effort())
  host = dict(saved, data=dict(saved['data'], augment_on='host'))
  with pytest.raises(ValueError, match="data.augment_on: 'device' -> 'host'"):
    workdir_lib.check_resume_compatible(saved, host)
  # A run from before the field existed was augmented on the host: it resumes with 'host' only.
  older = dict(saved, data={k: v for k, v in saved['data'].items() if k != 'augment_on'})
  workdir_lib.check_resume_compatible(older, host)
  with pytest.raises(ValueError, match="data.augment_on: 'host' -> 'device'"):
    workdir_lib.check_resume_compatible(older, saved)


# ---- The same pixels as the host path ---------------------------------------------------------------

@pytest.mark.parametrize('mean_mode', transforms.MEAN_MODES)
@pytest.mark.parametrize('channels', [3, 1])
def test_given_the_draws_the_device_computes_the_host_pixels(mean_mode, channels):
  rng = np.random.default_rng(1)
  mean = transforms.mean_for_mode(rng.uniform(0, 255, (S, S, channels)).astype(np.float32), mean_mode)
  flags = _flags(channels=channels)
  assert flags.lighting == (channels == 3)   # grayscale: no lighting, as on the host
  augment = _augment(mean, flags)
  n = 16
  images = _images(n, channels)
  ys, xs = rng.integers(0, S - CROP + 1, n), rng.integers(0, S - CROP + 1, n)
  mirrors = np.arange(n) % 2 == 1
  alphas = rng.normal(0, 0.1, (n, 3)).astype(np.float32) if flags.lighting else None
  draws = device_augment.Draws(ys.astype(np.int32), xs.astype(np.int32), mirrors, alphas)
  got = np.asarray(jax.jit(jax.vmap(augment.apply, in_axes=(None, 0, 0)))(
      augment.constants, images, draws))
  subtract = transforms.MeanSubtractor(mean)
  for k in range(n):
    y, x = int(ys[k]), int(xs[k])
    shift = (transforms.pca_shift(alphas[k], transforms.IMAGENET_EIGVAL, transforms.IMAGENET_EIGVEC)
             if flags.lighting else None)
    want = subtract(images[k, y:y + CROP, x:x + CROP], y, x, mirror=bool(mirrors[k]), shift=shift)
    if flags.lighting:
      np.testing.assert_allclose(got[k], want, atol=2e-5, rtol=0)   # the shift: float32 vs float64
    else:
      np.testing.assert_array_equal(got[k], want)


def test_draws_cover_the_crop_positions_and_the_switches_turn_them_off():
  mean = np.zeros((S, S, 3), np.float32)
  augment = _augment(mean, _flags())
  keys = jax.vmap(lambda r: device_augment.example_key(augment.base_key(), 0, r, 0))(np.arange(400))
  draws = jax.vmap(augment.draw)(keys)
  assert set(np.asarray(draws.y).tolist()) == set(range(S - CROP + 1)) == set(np.asarray(draws.x).tolist())
  assert 0.4 < np.asarray(draws.mirror).mean() < 0.6
  assert abs(np.asarray(draws.alpha).std() - 0.1) < 0.01
  plain = jax.vmap(_augment(mean, _flags(random_crop=False, flip=False, pca=False)).draw)(keys)
  centre = transforms.center_offsets(S, S, CROP)
  assert set(np.asarray(plain.y).tolist()) == {centre[0]} and set(np.asarray(plain.x).tolist()) == {centre[1]}
  assert not np.asarray(plain.mirror).any() and plain.alpha is None
  # Switching the mirror off leaves the crops where they were (each draw has its own sub-key).
  no_flip = jax.vmap(_augment(mean, _flags(flip=False)).draw)(keys)
  np.testing.assert_array_equal(no_flip.y, draws.y)
  np.testing.assert_array_equal(no_flip.alpha, draws.alpha)


@pytest.mark.parametrize('ten_crop', [False, True])
@pytest.mark.parametrize('resize_mode', ['squash', 'fill'])
def test_eval_crops_on_the_device_equal_preprocess_for_eval(ten_crop, resize_mode):
  mean = np.random.default_rng(2).uniform(0, 255, (S, S, 3)).astype(np.float32)
  contract = contract_lib.PreprocessContract(S, CROP, resize_mode, 3, 'image', mean)
  photos = [synthetic.photo_like(np.random.default_rng(i), 17 + i, 13) for i in range(3)]
  resized = np.stack([contract_lib.resize_for_eval(p, contract) for p in photos])
  crops = device_augment.EvalCrops.from_contract(contract)
  got = np.asarray(jax.jit(crops, static_argnums=2)(crops.constants, resized, ten_crop))
  for k, photo in enumerate(photos):
    np.testing.assert_array_equal(got[k], contract_lib.preprocess_for_eval(photo, contract, ten_crop))


# ---- DIGITS' W x H images: a square crop in both axes, or crop "none" -----------------------------------

H, W = 8, 12   # a 12 x 8 (W x H) stored image


@pytest.mark.parametrize('crop', [(6, 6), (H, W)], ids=['square-crop', 'no-crop'])
def test_a_rectangle_on_the_device_gives_the_host_pixels(crop):
  """Random offsets in both axes (each over its own span), mirror and lighting on a rectangular image:
  given the draws, the host's pixels; the draws cover every offset of each axis."""
  rng = np.random.default_rng(3)
  mean = rng.uniform(0, 255, (H, W, 3)).astype(np.float32)
  augment = device_augment.TrainAugment(mean=mean, eigval=transforms.IMAGENET_EIGVAL,
                                        eigvec=transforms.IMAGENET_EIGVEC, crop=crop, flags=_flags(),
                                        seed=0)
  keys = jax.vmap(lambda r: device_augment.example_key(augment.base_key(), 0, r, 0))(np.arange(300))
  draws = jax.vmap(augment.draw)(keys)
  assert set(np.asarray(draws.y).tolist()) == set(range(H - crop[0] + 1))
  assert set(np.asarray(draws.x).tolist()) == set(range(W - crop[1] + 1))
  n = 12
  images = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
  some = jax.tree.map(lambda a: np.asarray(a)[:n], draws)
  got = np.asarray(jax.jit(jax.vmap(augment.apply, in_axes=(None, 0, 0)))(augment.constants, images, some))
  assert got.shape == (n, *crop, 3)
  subtract = transforms.MeanSubtractor(mean)
  for k in range(n):
    y, x = int(some.y[k]), int(some.x[k])
    shift = transforms.pca_shift(some.alpha[k], transforms.IMAGENET_EIGVAL, transforms.IMAGENET_EIGVEC)
    want = subtract(images[k, y:y + crop[0], x:x + crop[1]], y, x, mirror=bool(some.mirror[k]), shift=shift)
    np.testing.assert_allclose(got[k], want, atol=2e-5, rtol=0)


@pytest.mark.parametrize('ten_crop', [False, True])
@pytest.mark.parametrize('crop', [6, 0], ids=['square-crop', 'no-crop'])
def test_eval_crops_of_a_rectangle_on_the_device_equal_preprocess_for_eval(crop, ten_crop):
  mean = np.random.default_rng(2).uniform(0, 255, (H, W, 3)).astype(np.float32)
  contract = contract_lib.PreprocessContract((W, H), crop, 'fill', 3, 'image', mean)
  photos = [synthetic.photo_like(np.random.default_rng(i), 17 + 9 * i, 13) for i in range(3)]
  resized = np.stack([contract_lib.resize_for_eval(p, contract) for p in photos])
  assert resized.shape == (3, H, W, 3)
  crops = device_augment.EvalCrops.from_contract(contract)
  got = np.asarray(jax.jit(crops, static_argnums=2)(crops.constants, resized, ten_crop))
  assert got.shape == (3,) + ((10,) if ten_crop else ()) + contract.input_shape
  for k, photo in enumerate(photos):
    np.testing.assert_array_equal(got[k], contract_lib.preprocess_for_eval(photo, contract, ten_crop))


# ---- The pipeline's stored batches; draws keyed on the example alone ----------------------------------

@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  synthetic.make_image_folder(str(root), num_classes=3, per_class=8, seed=1)
  return root


@pytest.fixture(scope='module')
def dataset(folder):
  config = tiny_experiment.get_config()
  config.data.source = str(folder)
  assert config.data.augment_on == 'device'   # the default
  return data.load_dataset(config.data, seed=0), config


def _augmented_by_example(ds, config, *, batch, shard_index=0, shard_count=1, steps=2):
  """{(epoch, record, attempt): augmented pixels} of the first `steps` local batches."""
  it = data.train_iterator(ds, config.data, global_batch_size=batch, seed=config.seed, num_epochs=2,
                           shard_index=shard_index, shard_count=shard_count)
  augment = device_augment.TrainAugment.from_dataset(ds, config.data, seed=config.seed)
  apply = jax.jit(augment)
  out = {}
  for _ in range(steps):
    b = next(it)
    assert b['image'].dtype == np.uint8 and b['image'].shape == (batch // shard_count, 72, 72, 3)
    assert all(b[k].dtype == np.int32 for k in device_augment.KEY_FIELDS + ('label',))
    pixels = np.asarray(apply(augment.constants, b))
    assert pixels.shape == (batch // shard_count, 64, 64, 3) and pixels.dtype == np.float32
    for i, key in enumerate(zip(*(b[k].tolist() for k in device_augment.KEY_FIELDS))):
      out[key] = pixels[i]
  return out


@pytest.mark.parametrize('crop', [16, 0], ids=['square-crop', 'no-crop'])
def test_a_rectangular_dataset_through_both_pipelines(folder, crop):
  """A 40 x 24 (W x H) dataset: the mean image is H x W; the device path stores H x W images and the host
  path makes crops of the input's shape; evaluation batches cut on the device equal the host's."""
  config = tiny_experiment.override(tiny_experiment.get_config(), **{
      'data.source': str(folder), 'data.image_size': (40, 24), 'data.crop_size': crop})
  ds = data.load_dataset(config.data, seed=0)
  hw = (24, 40) if crop == 0 else (crop, crop)
  assert ds.mean_image.shape == (24, 40, 3) and ds.contract.input_hw == hw
  stored = next(data.train_iterator(ds, config.data, global_batch_size=4, seed=0, num_epochs=1))
  assert stored['image'].shape == (4, 24, 40, 3) and stored['image'].dtype == np.uint8
  augment = device_augment.TrainAugment.from_dataset(ds, config.data, seed=0)
  assert np.asarray(jax.jit(augment)(augment.constants, stored)).shape == (4, *hw, 3)
  host = tiny_experiment.override(tiny_experiment.get_config(), **{
      'data.source': str(folder), 'data.image_size': (40, 24), 'data.crop_size': crop,
      'data.augment_on': 'host'})
  crops = next(data.train_iterator(ds, host.data, global_batch_size=4, seed=0, num_epochs=1))
  assert crops['image'].shape == (4, *hw, 3) and crops['image'].dtype == np.float32
  on_device = next(iter(data.eval_iterator(ds, config.data, 'val', global_batch_size=3, ten_crop=True)))
  on_host = next(iter(data.eval_iterator(ds, host.data, 'val', global_batch_size=3, ten_crop=True)))
  cut = device_augment.EvalCrops.from_contract(ds.contract)
  np.testing.assert_array_equal(np.asarray(cut(cut.constants, on_device['image'], True)), on_host['image'])


def test_an_example_is_augmented_alike_in_any_batch_size_and_on_any_host(dataset):
  ds, config = dataset
  by_four = _augmented_by_example(ds, config, batch=4, steps=4)
  by_eight = _augmented_by_example(ds, config, batch=8)
  hosts = {}
  for shard in (0, 1):
    hosts.update(_augmented_by_example(ds, config, batch=8, shard_index=shard, shard_count=2))
  assert hosts.keys() == by_eight.keys()
  common = by_four.keys() & by_eight.keys()
  assert len(common) >= 4   # one epoch's order is the same permutation in both batch sizes
  for key in common:
    np.testing.assert_array_equal(by_four[key], by_eight[key])
  for key in by_eight:
    np.testing.assert_array_equal(hosts[key], by_eight[key])


def test_eval_batches_are_stored_images_cut_on_the_device(dataset):
  ds, config = dataset
  batch = next(iter(data.eval_iterator(ds, config.data, 'val', global_batch_size=3, ten_crop=True)))
  assert batch['image'].dtype == np.uint8 and batch['image'].shape == (3, 72, 72, 3)
  path = ds.split('val').keys[0]
  crops = device_augment.EvalCrops.from_contract(ds.contract)
  np.testing.assert_array_equal(np.asarray(crops(crops.constants, batch['image'], True))[0],
                                data.preprocess_for_eval(path, ds.contract, ten_crop=True))


# ---- Real training steps: layouts agree, a resume is exact ---------------------------------------------

LAYOUTS = ('single', 'data', 'model')
STEPS, STOP_AT = 4, 2


def _setup(ds, config, layout_name, initial=None):
  """(initial state, train step, batch sharding) of a layout; ``initial`` (host arrays) is placed
  there instead of initializing again (the parameters are [tower, ...] in every layout)."""
  network = models.build(config.model, ds.num_classes)
  layout = layouts.resolve(layout_name, network, batch_size=config.batch_size)
  mesh = layout.make_mesh()
  tx = optax.sgd(0.01, momentum=0.9)
  if initial is None:
    state = step_lib.create_train_state(network, layout, mesh, tx, seed=config.seed,
                                        image_shape=(64, 64, 3))
  else:
    state = jax.device_put(initial, step_lib.state_shardings_for(network, layout, mesh, tx))
  train_step = step_lib.make_train_step(
      network, layout, mesh, tx,
      augment=device_augment.TrainAugment.from_dataset(ds, config.data, seed=config.seed))
  return state, train_step, layout.batch_sharding(mesh)


def _to_device(batch, sharding):
  return {k: jax.device_put(batch[k], sharding) for k in step_lib.BATCH_FIELDS if k in batch}


def _train(state, compiled, constants, sharding, it, steps):
  losses = []
  for _ in range(steps):
    state, metrics = compiled(state, _to_device(next(it), sharding), constants)
    losses.append(float(metrics['loss']))
  return state, losses


def _iterator(ds, config):
  return data.train_iterator(ds, config.data, global_batch_size=config.batch_size, seed=config.seed,
                             num_epochs=2)


@pytest.fixture(scope='module')
def runs(dataset):
  """Each layout trains STEPS steps on the pipeline's stored batches (compiled once, ahead of time, so
  that the compiled program can be inspected too)."""
  ds, config = dataset
  out, initial = {}, None
  for name in LAYOUTS:
    state, train_step, sharding = _setup(ds, config, name, initial)
    initial = jax.device_get(state)   # (the step donates its input state)
    first = _to_device(next(_iterator(ds, config)), sharding)
    with jax.set_mesh(sharding.mesh):
      compiled = train_step.jitted.lower(state, first, train_step.constants).compile()
    final, losses = _train(state, compiled, train_step.constants, sharding, _iterator(ds, config),
                           STEPS)
    out[name] = {'losses': losses, 'params': jax.tree.map(np.asarray, final.params),
                 'hlo': compiled.as_text(), 'compiled': compiled, 'constants': train_step.constants,
                 'sharding': sharding, 'initial': initial, 'jitted': train_step.jitted,
                 'shardings': jax.tree.map(lambda a: a.sharding, final)}
  return out


def test_layouts_agree_on_device_augmented_batches(runs):
  reference = runs['single']['losses']
  assert np.all(np.isfinite(reference))
  for name in LAYOUTS[1:]:
    np.testing.assert_allclose(runs[name]['losses'], reference, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize('name', LAYOUTS)
def test_no_image_crosses_devices(runs, name):
  """The augmentation runs on each device's rows: no collective carries uint8 pixels, and the 'data'
  layout gathers nothing at all (its only collectives are the gradient all-reduces)."""
  lines = [l for l in runs[name]['hlo'].splitlines()
           if any(op in l for op in ('all-gather', 'all-to-all', 'collective-permute'))]
  assert not [l for l in lines if 'u8[' in l]
  if name == 'data':
    assert not [l for l in lines if 'all-gather' in l or 'all-to-all' in l], lines[:3]


def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(dataset, runs):
  """Stop after STOP_AT steps (the state to the host and back, the iterator's state), resume in a fresh
  iterator: the same losses and parameters, bit for bit, as the uninterrupted run."""
  ds, config = dataset
  run = runs['single']
  state = jax.device_put(run['initial'], run['shardings'])
  it = _iterator(ds, config)
  state, first_losses = _train(state, run['compiled'], run['constants'], run['sharding'], it, STOP_AT)
  saved_state, saved_position = jax.device_get(state), it.get_state()
  resumed = _iterator(ds, config)
  resumed.set_state(saved_position)
  state = jax.device_put(saved_state, run['shardings'])
  state, rest = _train(state, run['compiled'], run['constants'], run['sharding'], resumed,
                       STEPS - STOP_AT)
  assert first_losses + rest == run['losses']
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), run['params'])


def test_the_host_path_still_feeds_the_same_step(dataset, runs):
  """augment_on='host' gives float32 crops, which the step (made with an augmentation) takes as they
  are (traced only: the shapes of the new state and metrics)."""
  ds, config = dataset
  host = tiny_experiment.override(tiny_experiment.get_config(), **{'data.source': config.data.source,
                                                                   'data.augment_on': 'host'})
  batch = next(data.train_iterator(ds, host.data, global_batch_size=4, seed=0, num_epochs=1))
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (4, 64, 64, 3)
  assert not any(k in batch for k in device_augment.KEY_FIELDS)
  run = runs['single']
  with jax.set_mesh(run['sharding'].mesh):
    new_state, metrics = jax.eval_shape(run['jitted'], run['initial'], _to_device(batch, run['sharding']),
                                        run['constants'])
  assert new_state.step.shape == () and metrics['loss'].shape == ()
