"""Fine-tuning controls: freeze (bit-identical), lr_mult (Caffe's, with bias_lr_mult), the head preset,
their config checks, and an exact resume with a frozen layer (training/finetune_controls.py)."""

import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import configs, models
from alexnet_jax.data import synthetic
from alexnet_jax.models import trees
from alexnet_jax.run import checkpoints
from alexnet_jax.training import config_checks, finetune_controls, optim, trainer
from tests import tiny_experiment


def _config(**fields):
  c = configs.default_config()
  c.lr.policy = 'fixed'
  return tiny_experiment.override(c, **fields)


def _params():
  """A small two-tower tree named like AlexNet's (tower-split biases are [2, C])."""
  rng = np.random.default_rng(0)
  shapes = {'towers/conv1/kernel': (2, 3, 3, 3, 4), 'towers/conv1/bias': (2, 4),
            'towers/fc7/kernel': (2, 8, 6), 'towers/fc7/bias': (2, 6),
            'towers/fc8/kernel': (2, 6, 5), 'head/bias': (5,)}
  return trees.unflatten({n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in shapes.items()})


def _train(config, steps=4, params=None):
  """``steps`` updates of ``make_optimizer(config)`` on random gradients; the params after each."""
  tx = optim.make_optimizer(config, None)
  params = _params() if params is None else params
  state = tx.init(params)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(1)
  history = [params]
  for _ in range(steps):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return history, state


def _same_bits(a, b):
  return np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_frozen_parameters_stay_bit_identical_and_keep_no_momentum():
  config = _config(**{'finetune.freeze': 'conv1', 'weight_decay': 5e-4, 'momentum': 0.9})
  history, state = _train(config, steps=5)
  first, last = trees.flatten(history[0]), trees.flatten(history[-1])
  for name in first:
    if 'conv1' in name:
      assert _same_bits(first[name], last[name]), name
    else:
      assert not np.allclose(first[name], last[name]), name
  # The solver keeps no state (momentum) for the frozen group: only the 4 trained leaves have a trace.
  shaped = [leaf for leaf in jax.tree.leaves(state) if np.ndim(leaf) >= 1]
  assert len(shaped) == 4
  assert float(optim.get_learning_rate(state)) == pytest.approx(0.01)   # found inside the partition


def test_lr_mult_zero_equals_freeze_for_sgd_without_weight_decay():
  frozen, _ = _train(_config(**{'finetune.freeze': 'fc7', 'weight_decay': 0.0}))
  zero, _ = _train(_config(**{'finetune.lr_mult': 'fc7:0', 'weight_decay': 0.0}))
  for (name, a), b in zip(trees.flatten(frozen[-1]).items(), trees.flatten(zero[-1]).values()):
    assert _same_bits(a, b), name


def _first_update(config):
  """The first update of ``make_optimizer(config)`` for a gradient of ones, by parameter name."""
  tx = optim.make_optimizer(config, None)
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  return {n: np.asarray(u) for n, u in trees.flatten(tx.update(grads, tx.init(params), params)[0]).items()}


@pytest.mark.parametrize('momentum', [0.0, 0.9])
def test_lr_mult_two_doubles_the_first_sgd_update_exactly_and_multiplies_bias_lr_mult(momentum):
  base = _first_update(_config(momentum=momentum, bias_lr_mult=3.0))
  fast = _first_update(_config(momentum=momentum, bias_lr_mult=3.0,
                               **{'finetune.lr_mult': 'fc8:2,fc.*:0.5'}))
  # The first pattern that matches wins (fc8 takes 2, fc7 0.5); a bias's multiplier is
  # lr_mult * bias_lr_mult, so it is still 3x a kernel's (checked against plain updates below).
  expected = {'towers/fc8/kernel': 2.0, 'towers/fc7/kernel': 0.5, 'towers/fc7/bias': 0.5,
              'towers/conv1/kernel': 1.0, 'towers/conv1/bias': 1.0, 'head/bias': 1.0}
  for name, mult in expected.items():
    np.testing.assert_array_equal(fast[name], base[name] * np.float32(mult), err_msg=name)
  plain = _first_update(_config(momentum=momentum, weight_decay=0.0))
  biased = _first_update(_config(momentum=momentum, weight_decay=0.0, bias_lr_mult=3.0))
  np.testing.assert_array_equal(biased['head/bias'], plain['head/bias'] * np.float32(3))
  np.testing.assert_array_equal(biased['towers/fc8/kernel'], plain['towers/fc8/kernel'])


@pytest.mark.parametrize('name,size,trained', [
    ('alexnet', 64, {'towers/fc8/kernel', 'head/bias'}),
    ('alexnet_owt', 64, {'towers/fc8/kernel', 'head/bias'}),
    ('lenet', 28, {'towers/ip2/kernel', 'head/bias'}),
    ('googlenet', 64, {'towers/loss1_classifier/kernel', 'towers/loss1_classifier/bias',
                       'towers/loss2_classifier/kernel', 'towers/loss2_classifier/bias',
                       'towers/loss3_classifier/kernel', 'head/bias'}),
])
def test_head_preset_trains_only_each_networks_last_classifier(name, size, trained):
  config = _config(**{'model.name': name, 'model.width': 0.25, 'finetune.preset': 'head'})
  network = models.build(config.model, 5)
  channels = 1 if name == 'lenet' else 3
  abstract = jax.eval_shape(lambda key: network.init(key, (size, size, channels)), jax.random.key(0))
  shapes = {n: tuple(a.shape) for n, a in trees.flatten(abstract).items()}
  assert set(shapes) - finetune_controls.frozen_names(config, shapes) == trained
  finetune_controls.check_against(config, shapes)
  # freeze adds to the preset; freezing the head too leaves nothing to train, which is refused.
  config.finetune.freeze = 'head|fc8|ip2|classifier'
  with pytest.raises(ValueError, match='finetune.preset=.head. with --config.finetune.freeze=.*'
                                       'nothing would train'):
    finetune_controls.check_against(config, shapes)


def test_bad_finetune_fields_are_one_line_errors_naming_the_flag():
  def problems(**fields):
    return [p for p in config_checks.problems(_config(**fields)) if 'finetune' in p]

  assert problems() == []
  assert problems(**{'finetune.freeze': 'conv[1'}) == [
      "--config.finetune.freeze='conv[1': 'conv[1' is not a regular expression "
      '(unterminated character set at position 4)']
  for bad in ('fc8', 'fc8:x', 'fc8:-1', 'fc8:nan', ':2', 'fc8:2,,conv1:0', 'fc[8:2'):
    (line,) = problems(**{'finetune.lr_mult': bad})
    assert line.startswith(f'--config.finetune.lr_mult={bad!r}: ') and '\n' not in line
  (line,) = problems(**{'finetune.preset': 'tail'})
  assert line == "--config.finetune.preset='tail': must be one of head (or '' for none)"
  shapes = {'towers/conv1/kernel': (2, 3, 3, 3, 4), 'head/bias': (5,)}
  with pytest.raises(ValueError, match=r"^--config.finetune.freeze='conv9': matches no parameter of "
                                       r'alexnet; the parameters are head/bias, towers/conv1/kernel$'):
    finetune_controls.check_against(_config(**{'finetune.freeze': 'conv9'}), shapes)
  with pytest.raises(ValueError, match=r"^--config.finetune.lr_mult='conv1:2,fc8:3': 'fc8' matches no"):
    finetune_controls.check_against(_config(**{'finetune.lr_mult': 'conv1:2,fc8:3'}), shapes)


# ---- End to end: the trainer, a frozen layer, an exact resume --------------------------------------


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  synthetic.make_image_folder(str(root), num_classes=3, per_class=8, seed=1)
  return root


def _tiny(folder, **overrides):
  c = tiny_experiment.get_config()
  c.data.source = str(folder)
  return tiny_experiment.override(c, **{'num_epochs': 2, 'lr.policy': 'fixed', **overrides})


def _snapshot_params(workdir, step):
  with checkpoints.Checkpointer(workdir) as ckpt:
    state, _ = ckpt.restore(step)
  return trees.flatten(jax.tree.map(np.asarray, state['params']))


def test_training_with_freeze_resumes_bit_identically_and_the_frozen_layers_never_move(folder, tmp_path):
  config = _tiny(folder, **{'finetune.freeze': '^towers/conv', 'finetune.lr_mult': 'fc8:2'})
  reference = tmp_path / 'uninterrupted'
  assert trainer.train_and_evaluate(config, str(reference))['step'] == 8
  after_one, after_two = _snapshot_params(reference, 4), _snapshot_params(reference, 8)
  for name in after_one:
    moved = not _same_bits(after_one[name], after_two[name])
    assert moved == (not name.startswith('towers/conv')), name
  # Resume from the first snapshot (the second one removed) with the same config: the same end.
  resumed = tmp_path / 'resumed'
  shutil.copytree(reference, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '8'))
  assert trainer.train_and_evaluate(config, str(resumed))['step'] == 8
  for name, value in _snapshot_params(resumed, 8).items():
    assert _same_bits(value, after_two[name]), name
  # A resume with other controls would need another optimizer state: refused, naming the field.
  with pytest.raises(ValueError, match='finetune.freeze'):
    trainer.train_and_evaluate(_tiny(folder, **{'finetune.freeze': 'fc8'}), str(resumed))


def test_head_preset_in_a_run_and_a_pattern_that_matches_nothing_stops_it_early(folder, tmp_path, caplog):
  with pytest.raises(ValueError, match="--config.finetune.freeze='conv9': matches no parameter"):
    trainer.train_and_evaluate(_tiny(folder, **{'finetune.freeze': 'conv9'}), str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad' / 'checkpoints' / '4')
  workdir = tmp_path / 'head'
  with caplog.at_level(logging.INFO):
    trainer.train_and_evaluate(_tiny(folder, **{'finetune.preset': 'head'}), str(workdir))
  assert "fine-tuning controls: preset='head'" in caplog.text
  after_one, after_two = _snapshot_params(workdir, 4), _snapshot_params(workdir, 8)
  moved = {n for n in after_one if not _same_bits(after_one[n], after_two[n])}
  assert moved == {'towers/fc8/kernel', 'head/bias'}
