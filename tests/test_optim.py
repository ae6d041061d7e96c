"""Learning-rate policies vs DIGITS' conversion + Caffe's formulas; plateau, decay masks, no retrace."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import configs
from alexnet_jax.training import optim


def _config(**lr_fields):
  c = configs.default_config()
  for k, v in lr_fields.items():
    if k in ('num_epochs', 'learning_rate', 'optimizer', 'weight_decay', 'momentum',
             'decay_biases', 'batch_accumulation', 'bias_lr_mult'):
      setattr(c, k, v)
    else:
      setattr(c.lr, k, v)
  return c


def _caffe_reference(c, updates_per_epoch, it):
  """DIGITS caffe_train.py's percent conversion, then Caffe's SGDSolver::GetLearningRate, in float64."""
  base = c.learning_rate
  max_iter = updates_per_epoch * c.num_epochs
  scale = float(max_iter) / 100.0
  pol = c.lr.policy
  if pol == 'fixed':
    return base
  if pol == 'step':
    stepsize = int(math.ceil(float(c.lr.step_percent) * scale))
    return base * c.lr.gamma ** (it // stepsize)
  if pol == 'multistep':
    stepvalues = [int(math.ceil(float(v) * scale)) for v in c.lr.multistep_percents.split(',')]
    current = 0
    for _ in range(len(stepvalues)):  # Caffe increments current_step as iter passes each stepvalue
      if current < len(stepvalues) and it >= stepvalues[current]:
        current += 1
    return base * c.lr.multistep_gamma ** current
  if pol == 'exp':
    return base * math.pow(math.pow(c.lr.exp_gamma, 1.0 / scale), it)
  if pol == 'inv':
    return base * math.pow(1.0 + c.lr.inv_gamma / scale * it, -c.lr.inv_power)
  if pol == 'poly':
    return base * math.pow(1.0 - float(it) / max_iter, c.lr.poly_power)
  if pol == 'sigmoid':
    gamma = -1.0 * c.lr.sigmoid_gamma / scale
    stepsize = int(math.ceil(float(c.lr.sigmoid_step_percent) * scale))
    return base * (1.0 / (1.0 + math.exp(-gamma * (it - stepsize))))
  raise ValueError(pol)


# 7 updates/epoch x 30 epochs: max_iter 210, scale 2.1, so the ceil() of the conversion matters
# (step 33% -> stepsize ceil(69.3) = 70, not 69).
UPE, EPOCHS = 7, 30
STEPS = [0, 1, 2, 68, 69, 70, 71, 104, 105, 106, 139, 140, 158, 159, 180, 209]


@pytest.mark.parametrize('policy,fields', [
    ('fixed', {}),
    ('step', {}),
    ('step', {'step_percent': 10.0, 'gamma': 0.5}),
    ('multistep', {}),
    ('multistep', {'multistep_percents': '50,85', 'multistep_gamma': 0.5}),
    ('exp', {}),
    ('exp', {'exp_gamma': 0.9}),
    ('inv', {}),
    ('inv', {'inv_gamma': 1.0, 'inv_power': 2.0}),
    ('poly', {}),
    ('poly', {'poly_power': 1.0}),
    ('sigmoid', {}),
    ('sigmoid', {'sigmoid_step_percent': 30.0, 'sigmoid_gamma': 0.5}),
])
def test_policy_matches_digits_and_caffe(policy, fields):
  c = _config(policy=policy, num_epochs=EPOCHS, learning_rate=0.01, **fields)
  schedule = optim.make_lr_schedule(c, UPE)
  got = np.array([float(schedule(s)) for s in STEPS])
  want = np.array([_caffe_reference(c, UPE, s) for s in STEPS])
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)
  # Also traced (as optax evaluates it inside the jitted update).
  traced = jax.jit(jax.vmap(schedule))(jnp.asarray(STEPS, jnp.int32))
  np.testing.assert_allclose(np.asarray(traced), want, rtol=2e-6, atol=0)


def test_caffe_solver_params_digits_conversion():
  c = _config(policy='step', num_epochs=3)
  p = optim.caffe_solver_params(c, 100)
  assert p['max_iter'] == 300 and p['stepsize'] == 99 and p['gamma'] == pytest.approx(0.1)
  c = _config(policy='multistep', num_epochs=EPOCHS, multistep_percents='50,75')
  assert optim.caffe_solver_params(c, UPE)['stepvalue'] == [105, 158]  # ceil(105.0), ceil(157.5)
  c = _config(policy='sigmoid', num_epochs=EPOCHS)
  p = optim.caffe_solver_params(c, UPE)
  assert p['stepsize'] == 105 and p['gamma'] == pytest.approx(-0.1 / 2.1)
  c = _config(policy='exp', num_epochs=EPOCHS)
  assert optim.caffe_solver_params(c, UPE)['gamma'] == pytest.approx(0.95 ** (1 / 2.1))
  # exp in DIGITS units: after 100% of training the rate is base * exp_gamma ** 100.
  assert float(optim.make_lr_schedule(c, UPE)(210)) == pytest.approx(0.01 * 0.95 ** 100, rel=1e-5)


def test_cosine_with_warmup():
  c = _config(policy='cosine', num_epochs=10, learning_rate=0.1, warmup_epochs=2.0)
  s = optim.make_lr_schedule(c, 10)  # 100 updates, 20 of warmup
  assert float(s(0)) == pytest.approx(0.1 / 20)
  assert float(s(9)) == pytest.approx(0.1 * 10 / 20)
  assert float(s(19)) == pytest.approx(0.1)
  assert float(s(20)) == pytest.approx(0.1)
  assert float(s(60)) == pytest.approx(0.05, rel=1e-5)  # half way through the cosine
  assert float(s(100)) == pytest.approx(0.0, abs=1e-9)
  c.lr.warmup_epochs = 0.0
  assert float(optim.make_lr_schedule(c, 10)(0)) == pytest.approx(0.1)


def test_a_warmup_not_shorter_than_the_run_is_clipped_and_said(caplog):
  # The demo's 1-epoch warmup with --config.num_epochs=1 (a quick try): clipped to half the run.
  c = _config(policy='cosine', num_epochs=1, learning_rate=0.1, warmup_epochs=1.0)
  updates, note = optim.warmup_updates(c, 10)
  assert updates == 5
  assert '--config.lr.warmup_epochs=1.0' in note and 'clipped to half the run, 5 updates' in note
  with caplog.at_level('WARNING'):
    s = optim.make_lr_schedule(c, 10)
  assert 'clipped to half the run' in caplog.text
  assert float(s(0)) == pytest.approx(0.1 / 5)
  assert float(s(4)) == pytest.approx(0.1)          # the ramp ends at the base rate ...
  assert 0 < float(s(7)) < 0.1                      # ... and the cosine decay follows
  assert float(s(10)) == pytest.approx(0.0, abs=1e-9)
  c.lr.warmup_epochs = 0.5                          # shorter than the run: kept, no note
  assert optim.warmup_updates(c, 10) == (5, None)
  c.lr.warmup_epochs = -1.0
  with pytest.raises(ValueError, match='--config.lr.warmup_epochs=-1.0'):
    optim.make_lr_schedule(c, 10)


def test_bad_fields_name_the_flag():
  with pytest.raises(ValueError, match='config.lr.policy'):
    optim.make_lr_schedule(_config(policy='linear'), 10)
  with pytest.raises(ValueError, match='multistep_percents'):
    optim.make_lr_schedule(_config(policy='multistep', multistep_percents='75,50'), 10)
  with pytest.raises(ValueError, match='config.optimizer'):
    optim.make_optimizer(_config(optimizer='lbfgs'), None)
  assert optim.make_lr_schedule(_config(policy='plateau'), 10) is None


def test_plateau_controller_divides_by_ten_at_most_max_drops():
  p = optim.PlateauController(patience=2, max_drops=2, factor=0.1)
  drops = [p.update(v) for v in [0.5, 0.6, 0.6, 0.55, 0.7, 0.69, 0.68, 0.68, 0.7, 0.9, 0.1, 0.1]]
  #                               best  best  bad1  bad2* best  bad1  bad2* bad1  bad2(max reached)
  assert drops == [False, False, False, True, False, False, True, False, False, False, False, False]
  assert p.drops == 2 and p.scale == pytest.approx(0.01) and p.best == 0.9
  # JSON round trip restores the exact behaviour.
  q = optim.PlateauController(patience=2, max_drops=3)
  p2 = optim.PlateauController(patience=2, max_drops=3)
  for v in [0.5, 0.4]:
    q.update(v)
  p2.load_state_dict(json.loads(json.dumps(q.state_dict())))
  assert q.update(0.3) is True and p2.update(0.3) is True
  assert p2.state_dict() == q.state_dict()
  # A NaN validation never counts as an improvement; mode='min' for errors.
  m = optim.PlateauController(patience=1, mode='min')
  assert [m.update(v) for v in [0.5, float('nan'), 0.4, 0.45]] == [False, True, False, True]
  c = _config(policy='plateau', plateau_patience=3, plateau_max_drops=3, gamma=0.1)
  fc = optim.PlateauController.from_config(c)
  assert (fc.patience, fc.max_drops, fc.factor, fc.scale) == (3, 3, 0.1, 1.0)


def _params():
  return {'conv1': {'kernel': jnp.ones((2, 3, 3, 3, 4)), 'bias': jnp.ones((2, 4))},
          'fc8': {'kernel': jnp.ones((8, 10))},
          'head': {'bias': jnp.ones((10,))}}


def test_decay_mask_excludes_tower_biases_and_rank_one():
  mask = optim.decay_mask(_params())
  assert mask == {'conv1': {'kernel': True, 'bias': False}, 'fc8': {'kernel': True},
                  'head': {'bias': False}}


@pytest.mark.parametrize('decay_biases', [True, False])
def test_weight_decay_is_caffe_l2_with_bias_mask(decay_biases):
  c = _config(optimizer='sgd', momentum=0.0, weight_decay=0.5, learning_rate=0.1,
              decay_biases=decay_biases)
  tx = optim.make_optimizer(c, None)
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # zero gradient: the update is exactly -lr * wd * w where decayed, 0 elsewhere.
  assert np.allclose(updates['conv1']['kernel'], -0.05)
  assert np.allclose(updates['fc8']['kernel'], -0.05)
  want_bias = -0.05 if decay_biases else 0.0
  assert np.allclose(updates['conv1']['bias'], want_bias)
  assert np.allclose(updates['head']['bias'], want_bias)


def test_adamw_decay_is_decoupled_adam_decay_is_coupled():
  params = {'w': jnp.full((3, 3), 2.0)}
  zeros = {'w': jnp.zeros((3, 3))}
  c = _config(optimizer='adamw', weight_decay=0.01, learning_rate=0.1)
  tx = optim.make_optimizer(c, None)
  u, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(u['w'], -0.1 * 0.01 * 2.0, rtol=1e-6)  # -lr * wd * w, not normalized
  c.optimizer = 'adam'
  tx = optim.make_optimizer(c, None)
  u, _ = tx.update(zeros, tx.init(params), params)
  # coupled: the L2 gradient 0.02 goes through Adam's normalization, so the first step is ~ -lr.
  np.testing.assert_allclose(u['w'], -0.1, rtol=1e-4)


def test_sgd_is_the_papers_rule_lr_inside_momentum():
  """v <- 0.9 v - wd*eps*w - eps*g ; w <- w + v, with eps changed between steps (a plateau drop)."""
  c = _config(optimizer='sgd', momentum=0.9, weight_decay=5e-4, learning_rate=0.01)
  tx = optim.make_optimizer(c, None)
  w = jnp.array([1.0, -2.0, 3.0])
  params, state = {'w': w}, tx.init({'w': w})
  v, w_ref = np.zeros(3), np.array(w, np.float64)
  for step, eps in enumerate([0.01, 0.01, 0.001, 0.001]):
    state = optim.set_learning_rate(state, eps)
    g = np.array([0.3, -0.1, 0.2]) * (step + 1)
    v = 0.9 * v - 5e-4 * eps * w_ref - eps * g
    w_ref = w_ref + v
    updates, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params['w'], w_ref, rtol=1e-6)


def test_bias_lr_mult_is_caffes_lr_mult_on_biases_through_momentum_and_a_drop():
  """Caffe: history = m * history + lr * lr_mult * (g + wd * decay_mult * w), per blob. With
  bias_lr_mult=2 and decay_biases=False (DIGITS' prototxts) the tower-split [2, C] bias and the head's
  bias follow that rule with lr_mult 2, decay 0; the kernels keep lr_mult 1 and their decay."""
  c = _config(optimizer='sgd', momentum=0.9, weight_decay=5e-4, learning_rate=0.01,
              decay_biases=False, bias_lr_mult=2.0)
  tx = optim.make_optimizer(c, None)
  params = _params()
  state = tx.init(params)
  ref = jax.tree.map(lambda p: np.array(p, np.float64), params)
  hist = jax.tree.map(np.zeros_like, ref)
  mult = {'conv1': {'kernel': 1.0, 'bias': 2.0}, 'fc8': {'kernel': 1.0}, 'head': {'bias': 2.0}}
  decay = {'conv1': {'kernel': 5e-4, 'bias': 0.0}, 'fc8': {'kernel': 5e-4}, 'head': {'bias': 0.0}}
  for step, eps in enumerate([0.01, 0.01, 0.001]):
    state = optim.set_learning_rate(state, eps)
    grads = jax.tree.map(lambda p: np.full(p.shape, 0.1 * (step + 1), np.float32), params)
    hist = jax.tree.map(lambda h, g, w, m, d: 0.9 * h + eps * m * (g + d * w), hist, grads, ref, mult, decay)
    ref = jax.tree.map(lambda w, h: w - h, ref, hist)
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, params)
    params = optax.apply_updates(params, updates)
  jax.tree.map(lambda p, r: np.testing.assert_allclose(p, r, rtol=1e-5), params, ref)
  assert float(optim.get_learning_rate(state)) == pytest.approx(0.001)


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_every_solver_descends(name):
  c = _config(optimizer=name, learning_rate=1.0 if name == 'adadelta' else 0.05, weight_decay=0.0)
  tx = optim.make_optimizer(c, None)
  loss = lambda p: jnp.sum((p['w'] - 3.0) ** 2)
  params = {'w': jnp.zeros(4)}
  state = tx.init(params)
  first = float(loss(params))
  for _ in range(10):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < first


def test_schedule_runs_inside_optimizer_on_update_count():
  c = _config(policy='step', num_epochs=10, step_percent=10.0, learning_rate=0.1)  # drop every 2 updates
  schedule = optim.make_lr_schedule(c, 2)
  tx = optim.make_optimizer(c, schedule)
  params = {'w': jnp.zeros(2)}
  state = tx.init(params)
  for n in range(5):
    _, state = tx.update({'w': jnp.ones(2)}, state, params)
    assert float(optim.get_learning_rate(state)) == pytest.approx(float(schedule(n)))
  assert float(optim.get_learning_rate(state)) == pytest.approx(0.1 * 0.1 ** 2)


def test_batch_accumulation_multisteps_and_lr_helpers():
  c = _config(optimizer='sgd', momentum=0.0, weight_decay=0.0, learning_rate=1.0,
              batch_accumulation=2)
  tx = optim.make_optimizer(c, None)
  params = {'w': jnp.zeros(2)}
  state = tx.init(params)
  assert isinstance(state, optax.MultiStepsState)
  u, state = tx.update({'w': jnp.array([1.0, 1.0])}, state, params)
  assert np.allclose(u['w'], 0.0)  # accumulating
  state = optim.set_learning_rate(state, 0.5)
  u, state = tx.update({'w': jnp.array([3.0, 3.0])}, state, params)
  np.testing.assert_allclose(u['w'], -0.5 * 2.0)  # mean of the 2 gradients, times the new rate
  assert float(optim.get_learning_rate(state)) == 0.5


def test_changing_lr_does_not_retrace_jitted_update():
  c = _config(optimizer='nesterov', learning_rate=0.1)
  tx = optim.make_optimizer(c, None)
  params = {'w': jnp.ones(3)}
  traces = []

  @jax.jit
  def step(params, state, g):
    traces.append(1)  # runs only while tracing
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  g = {'w': jnp.ones(3)}
  p1, state = step(params, state, g)
  for lr in (0.01, 0.001, 0.5):
    state = optim.set_learning_rate(state, lr)
    _, s2 = step(params, state, g)
    assert float(optim.get_learning_rate(s2)) == pytest.approx(lr)
  assert len(traces) == 1
  assert step._cache_size() == 1
