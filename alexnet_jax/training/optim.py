"""Solvers and learning-rate policies: DIGITS' "Solver Options" as optax transformations.

What this module is for: `train.py` builds its optimizer from the config with

    schedule = make_lr_schedule(config, steps_per_epoch)    # None for the 'plateau' policy
    tx = make_optimizer(config, schedule)
    plateau = PlateauController.from_config(config)           # only used by 'plateau'

and never recompiles when the learning rate changes: the rate always lives in the optimizer state
(`optax.inject_hyperparams`), either computed there from the update count by `schedule`, or set from the
host by `set_learning_rate` after a validation (the 'plateau' policy).

Where it follows DIGITS / Caffe / the paper, and why:

* **Percent-of-training policies (DIGITS).** DIGITS asks for step sizes and gammas in *percent of
  training*, and converts them to Caffe's iteration units in `digits/model/tasks/caffe_train.py`:
  `max_iter = iters_per_epoch * epochs`, `scale = max_iter / 100`, then
  step: `stepsize = ceil(step% * scale)`; multistep: `stepvalue_i = ceil(v_i * scale)`;
  exp: `gamma = gamma ** (1 / scale)`; inv: `gamma = gamma / scale`; poly: `power` as is;
  sigmoid: `gamma = -gamma / scale`, `stepsize = ceil(step% * scale)`.
  The Caffe formulas (`SGDSolver::GetLearningRate`) are then applied to the iteration `it` (0-based,
  the update about to be made): fixed `base`; step `base * gamma ** floor(it / stepsize)`; multistep
  `base * gamma ** (number of stepvalues <= it)`; exp `base * gamma ** it`; inv
  `base * (1 + gamma * it) ** -power`; poly `base * (1 - it / max_iter) ** power`; sigmoid
  `base / (1 + exp(-gamma * (it - stepsize)))`. The defaults of the per-policy fields are DIGITS' form
  defaults (exp gamma 0.95, inv gamma 0.1 / power 0.5, poly power 3, sigmoid 50% / 0.1, multistep 0.5).
  A "step" here is one *optimizer update*, as Caffe's `iter` (with `iter_size` > 1 one iteration
  consumes several batches): the schedule runs inside `optax.MultiSteps` on the inner update count, so
  with `batch_accumulation = k` pass `steps_per_epoch = batches_per_epoch // k`.
* **plateau (the paper).** "We divided the learning rate by 10 when the validation error rate stopped
  improving with the current learning rate ... reduced three times prior to termination" (Krizhevsky et
  al. 2012, §5). That depends on validation results, so it is a host-side `PlateauController` whose
  JSON-able state goes into the checkpoint's meta.
* **cosine** (not in DIGITS): linear warmup for `lr.warmup_epochs`, then half a cosine to 0. A warmup
  that is not shorter than the run (the demo's 1-epoch warmup with `--config.num_epochs=1`, a quick try)
  is clipped to half the run, so the cosine decay still follows, and the log says so
  (`warmup_updates`); it is not refused.
* **SGD is Caffe's and the paper's SGD, not optax.sgd.** The paper's rule is
  `v <- 0.9 v - 0.0005 eps w - eps g;  w <- w + v`: the learning rate is applied *before* the momentum
  accumulation and the weight decay is an L2 term added to the gradient (coupled). Caffe does the same
  (`history = momentum * history + lr * (grad + wd * w)`). optax.sgd applies the rate *after* the
  momentum trace, which differs whenever the rate changes (each step/plateau drop would instantly rescale
  the whole velocity). Nesterov follows Caffe's `NesterovSolver`, which is the same update as optax's
  `trace(nesterov=True)` on lr-scaled gradients.
* **Other solvers** use optax's transformations with Caffe's hyperparameters: AdaGrad (no momentum,
  accumulator starting at 0, delta 1e-8), RMSprop (`rms_decay` 0.99, delta 1e-8, no momentum), AdaDelta
  (`momentum` is the decay rho, delta 1e-6), Adam (`momentum` is beta1, beta2 0.999, delta 1e-8). Caffe
  regularizes every solver by adding `wd * w` to the gradient, so they all use coupled L2 decay; only
  `adamw` decouples it (Loshchilov & Hutter; scaled by the learning rate as in optax.adamw).
* **decay_biases=False** masks out parameters named `bias`/`scale` and every parameter of rank <= 1, as
  Caffe's `decay_mult: 0` on bias blobs in DIGITS' standard AlexNet. Matching by name matters here:
  a tower-split bias is stored `[2, C]` (DESIGN.md), so a rank test alone would decay it.
* **bias_lr_mult** multiplies the biases' updates, as Caffe's `lr_mult: 2` on every bias blob of DIGITS'
  standard networks (AlexNet, LeNet, GoogLeNet: `param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2
  decay_mult: 0 }`). Caffe scales the local rate (`lr * lr_mult`) before the momentum accumulation; the
  trace is linear and the multiplier constant, so scaling the final update is the same for SGD and is
  Caffe's rule for the adaptive solvers. The biases are the leaves `decay_mask` excludes.
* **Fine-tuning controls** (`finetune_controls.py`): `finetune.lr_mult` multipliers join `bias_lr_mult` in
  `scale_by_lr_mult` (Caffe's per-blob lr_mult, the product for a bias); `finetune.freeze` and the head
  preset put the frozen parameters in an `optax.partition` group of `set_to_zero`, with no solver state.
* **Batch accumulation** uses `optax.MultiSteps` (gradients averaged over `batch_accumulation`
  mini-batches, as Caffe's `iter_size` normalizes by it).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from alexnet_jax.models import trees
from alexnet_jax.training import finetune_controls

Schedule = Callable[[Any], jax.Array]

POLICIES = ('fixed', 'step', 'multistep', 'exp', 'inv', 'poly', 'sigmoid', 'plateau', 'cosine')
OPTIMIZERS = ('sgd', 'nesterov', 'adagrad', 'rmsprop', 'adadelta', 'adam', 'adamw')

# Leaf names that are never decayed when config.decay_biases is False (flax's Dense/Conv/Norm names).
_NO_DECAY_NAMES = ('bias', 'scale')


# ---- Learning-rate policies ------------------------------------------------------------------------


def parse_percents(text: str | Any) -> list[float]:
  """Parses DIGITS' multistep values ('50,75' or a sequence) into a list of floats."""
  if isinstance(text, str):
    items = [t.strip() for t in text.split(',') if t.strip()]
  else:
    items = list(text)
  try:
    return [float(t) for t in items]
  except ValueError as e:
    raise ValueError(f'--config.lr.multistep_percents={text!r}: expected comma-separated numbers, '
                     'e.g. "50,75"') from e


def caffe_solver_params(config: ml_collections.ConfigDict, steps_per_epoch: int) -> dict[str, Any]:
  """DIGITS' conversion of the percent-based policy fields to Caffe's solver fields.

  Mirrors `CaffeTrainTask.save_prototxt_files` in DIGITS: the returned dict has the Caffe names
  (`max_iter`, `stepsize`, `stepvalue`, `gamma`, `power`) in iteration units, so it can be printed
  beside a DIGITS solver.prototxt for comparison.
  """
  policy = config.lr.policy
  if policy not in POLICIES:
    raise ValueError(f'--config.lr.policy={policy!r} is not one of {", ".join(POLICIES)}')
  if steps_per_epoch <= 0:
    raise ValueError(f'steps_per_epoch must be positive, got {steps_per_epoch}')
  max_iter = int(steps_per_epoch * config.num_epochs)
  scale = max_iter / 100.0
  p: dict[str, Any] = {'lr_policy': policy, 'base_lr': float(config.learning_rate),
                       'max_iter': max_iter}
  if policy == 'step':
    if config.lr.step_percent <= 0:
      raise ValueError(f'--config.lr.step_percent={config.lr.step_percent} must be > 0')
    p['stepsize'] = max(1, int(math.ceil(config.lr.step_percent * scale)))
    p['gamma'] = float(config.lr.gamma)
  elif policy == 'multistep':
    percents = parse_percents(config.lr.multistep_percents)
    if any(b <= a for a, b in zip(percents, percents[1:])):
      # Caffe walks the stepvalues in order and stalls on a decreasing one; fail early instead.
      raise ValueError(f'--config.lr.multistep_percents={config.lr.multistep_percents!r} must be '
                       'strictly increasing')
    p['stepvalue'] = [int(math.ceil(v * scale)) for v in percents]
    p['gamma'] = float(config.lr.multistep_gamma)
  elif policy == 'exp':
    p['gamma'] = math.pow(config.lr.exp_gamma, 1.0 / scale)
  elif policy == 'inv':
    p['gamma'] = config.lr.inv_gamma / scale
    p['power'] = float(config.lr.inv_power)
  elif policy == 'poly':
    p['power'] = float(config.lr.poly_power)
  elif policy == 'sigmoid':
    p['gamma'] = -1.0 * config.lr.sigmoid_gamma / scale
    p['stepsize'] = int(math.ceil(config.lr.sigmoid_step_percent * scale))
  return p


def warmup_updates(config: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[int, Optional[str]]:
  """(the cosine policy's warmup in optimizer updates, a note when it had to be clipped, else None).

  `lr.warmup_epochs` must be >= 0 (a negative one is refused, naming the flag). A warmup at least as
  long as the run would leave no decay (and before this, a quick `--config.num_epochs=1` try of the demo
  was refused): it is clipped to half the run's updates, and the note says so for the log.
  """
  total = int(steps_per_epoch * config.num_epochs)
  warmup = int(round(config.lr.warmup_epochs * steps_per_epoch))
  if warmup < 0:
    raise ValueError(f'--config.lr.warmup_epochs={config.lr.warmup_epochs} must be >= 0')
  if warmup < total or warmup == 0:
    return warmup, None
  clipped = total // 2
  return clipped, (f'--config.lr.warmup_epochs={config.lr.warmup_epochs} is not shorter than the run '
                   f'(--config.num_epochs={config.num_epochs}, {total} updates): the warmup is clipped '
                   f'to half the run, {clipped} updates, so the cosine decay follows it')


def make_lr_schedule(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> Optional[Schedule]:
  """Returns `step -> learning rate` for `config.lr.policy`, or None for 'plateau'.

  `step` is the 0-based optimizer update (Caffe's `iter`), a Python int or a traced integer: the
  function is jnp-only so optax evaluates it inside the jitted update. See the module docstring for the
  DIGITS/Caffe semantics. For 'plateau' the rate is not a function of the step: build the optimizer
  with `make_optimizer(config, None)` and drive it with `PlateauController` + `set_learning_rate`.

  Note: the percent policies scale with `num_epochs`; resuming with more epochs (allowed by train.py)
  stretches the remaining schedule, exactly as editing the epochs of a DIGITS job would.
  """
  policy = config.lr.policy
  if policy == 'plateau':
    caffe_solver_params(config, steps_per_epoch)  # validates the fields
    return None
  base = float(config.learning_rate)
  if policy == 'cosine':
    total = int(steps_per_epoch * config.num_epochs)
    warmup, note = warmup_updates(config, steps_per_epoch)
    if note:
      logging.warning('%s', note)

    def cosine(step):
      t = jnp.asarray(step, jnp.float32)
      # Warmup: (t+1)/W, so the first update already moves (t=W-1 reaches the base rate).
      ramp = base * (t + 1.0) / max(warmup, 1)
      progress = jnp.clip((t - warmup) / max(total - warmup, 1), 0.0, 1.0)
      decay = base * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
      return jnp.where(t < warmup, ramp, decay)

    return cosine

  p = caffe_solver_params(config, steps_per_epoch)
  if policy == 'fixed':
    return lambda step: jnp.full((), base, jnp.float32)
  if policy == 'step':
    stepsize, gamma = p['stepsize'], p['gamma']
    return lambda step: base * jnp.power(jnp.float32(gamma), jnp.asarray(step) // stepsize)
  if policy == 'multistep':
    bounds, gamma = jnp.asarray(p['stepvalue'], jnp.int32), p['gamma']

    def multistep(step):
      n = jnp.sum(jnp.asarray(step) >= bounds)  # Caffe's current_step for increasing stepvalues
      return base * jnp.power(jnp.float32(gamma), n)

    return multistep
  if policy == 'exp':
    # base * gamma**it, written as exp(it * log gamma) with log gamma in float64 on the host: raising a
    # float32-rounded gamma to it ~ 1e5 would lose ~1e-3 relative precision.
    log_gamma = math.log(p['gamma'])
    return lambda step: base * jnp.exp(jnp.asarray(step, jnp.float32) * log_gamma)
  if policy == 'inv':
    gamma, power = p['gamma'], p['power']
    return lambda step: base * jnp.power(1.0 + gamma * jnp.asarray(step, jnp.float32), -power)
  if policy == 'poly':
    max_iter, power = max(p['max_iter'], 1), p['power']
    # (max_iter - it) / max_iter rather than 1 - it / max_iter: the subtraction is exact on integers, so
    # float32 keeps full relative precision near the end. Clipped at 0: past max_iter (a resume with
    # fewer epochs) Caffe would raise a negative base to a fractional power.
    return lambda step: base * jnp.power(
        jnp.clip((max_iter - jnp.asarray(step, jnp.float32)) / max_iter, 0.0, 1.0), power)
  if policy == 'sigmoid':
    gamma, stepsize = p['gamma'], p['stepsize']
    return lambda step: base / (1.0 + jnp.exp(-gamma * (jnp.asarray(step, jnp.float32) - stepsize)))
  raise AssertionError(policy)  # caffe_solver_params validated the name


class PlateauController:
  """The paper's "divide the learning rate by 10 when validation error stops improving".

  Call `update(metric)` after each validation; `scale` is the factor that multiplies the base rate
  (`factor ** drops`). After `patience` validations in a row without improvement (by more than
  `min_delta`) the scale is multiplied by `factor` and the count restarts, at most `max_drops` times
  (the paper: 3). The best value is kept across drops. State is a JSON-able dict
  (`state_dict`/`load_state_dict`) saved in the checkpoint's meta so a resumed run drops at the same
  validations as an uninterrupted one.
  """

  def __init__(self, patience: int = 1, max_drops: int = 3, factor: float = 0.1,
               mode: str = 'max', min_delta: float = 0.0):
    if mode not in ('max', 'min'):
      raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if patience < 1:
      raise ValueError(f'--config.lr.plateau_patience={patience} must be >= 1')
    if not 0.0 < factor < 1.0:
      raise ValueError(f'plateau factor (--config.lr.gamma) must be in (0, 1), got {factor}')
    self.patience = int(patience)
    self.max_drops = int(max_drops)
    self.factor = float(factor)
    self.mode = mode
    self.min_delta = float(min_delta)
    self.best: Optional[float] = None
    self.bad_validations = 0
    self.drops = 0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, mode: str = 'max') -> 'PlateauController':
    """From `config.lr.plateau_patience`, `plateau_max_drops` and `gamma` (the drop factor, 0.1).

    `mode='max'` expects validation top-1 accuracy; pass `mode='min'` to feed an error or a loss.
    """
    return cls(patience=config.lr.plateau_patience, max_drops=config.lr.plateau_max_drops,
               factor=config.lr.gamma, mode=mode)

  @property
  def scale(self) -> float:
    return self.factor ** self.drops

  def _improved(self, value: float) -> bool:
    if not math.isfinite(value):
      return False
    if self.best is None:
      return True
    if self.mode == 'max':
      return value > self.best + self.min_delta
    return value < self.best - self.min_delta

  def update(self, value: float) -> bool:
    """Records one validation result; returns True when this call dropped the learning rate."""
    value = float(value)
    if self._improved(value):
      self.best = value
      self.bad_validations = 0
      return False
    self.bad_validations += 1
    if self.bad_validations >= self.patience and self.drops < self.max_drops:
      self.drops += 1
      self.bad_validations = 0
      return True
    return False

  def state_dict(self) -> dict[str, Any]:
    return {'best': self.best, 'bad_validations': self.bad_validations, 'drops': self.drops}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self.best = None if state.get('best') is None else float(state['best'])
    self.bad_validations = int(state.get('bad_validations', 0))
    self.drops = int(state.get('drops', 0))

  def __repr__(self) -> str:
    return (f'PlateauController(scale={self.scale:g}, drops={self.drops}/{self.max_drops}, '
            f'best={self.best}, bad={self.bad_validations}/{self.patience})')


# ---- Optimizers ----------------------------------------------------------------------------------


def _leaf_name(path) -> str:
  if not path:
    return ''
  k = path[-1]
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def decay_mask(params: Any) -> Any:
  """True for the parameters that get weight decay when biases are excluded.

  Excludes leaves named 'bias' or 'scale' (whatever their rank: tower-split biases are `[2, C]`) and
  any leaf of rank <= 1.
  """
  def keep(path, leaf):
    return not (_leaf_name(path) in _NO_DECAY_NAMES or jnp.ndim(leaf) <= 1)

  return jax.tree_util.tree_map_with_path(keep, params)


def scale_by_lr_mult(bias_mult: float = 1.0,
                     rules: Sequence[tuple[Any, float]] = ()) -> optax.GradientTransformation:
  """Caffe's per-blob lr_mult: multiplies each update by its parameter's multiplier.

  The multiplier of a parameter is that of the first of `rules` (`finetune_controls.parse_lr_mult`:
  (pattern, mult) pairs searched in the '/'-joined name) it matches, 1 when none does, times `bias_mult`
  for the biases (the leaves `decay_mask` excludes). A parameter whose multiplier is 1 is left as is.
  """
  def update_fn(updates, state, params=None):
    del params
    weights = trees.flatten(decay_mask(updates))

    def scale(name, u):
      mult = finetune_controls.multiplier(rules, name) * (1.0 if weights[name] else bias_mult)
      return u if mult == 1.0 else u * mult

    return trees.unflatten({n: scale(n, u) for n, u in trees.flatten(updates).items()}), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(config: ml_collections.ConfigDict,
                   lr_schedule: Optional[Schedule | float] = None) -> optax.GradientTransformation:
  """Builds `config.optimizer` with an injected learning rate.

  Args:
    config: uses `optimizer`, `momentum`, `rms_decay`, `weight_decay`, `decay_biases`,
      `bias_lr_mult`, `batch_accumulation` and `learning_rate` (when `lr_schedule` is None).
    lr_schedule: `step -> lr` from `make_lr_schedule` (evaluated on the optimizer's own update count,
      inside jit), a float, or None for `config.learning_rate` as a host-settable value (the 'plateau'
      policy; change it with `set_learning_rate`).

  Returns:
    A GradientTransformation whose state holds `hyperparams['learning_rate']`
    (see `get_learning_rate`); wrapped in optax.MultiSteps when `config.batch_accumulation > 1`.
  """
  name = config.optimizer
  if name not in OPTIMIZERS:
    raise ValueError(f'--config.optimizer={name!r} is not one of {", ".join(OPTIMIZERS)}')
  wd = float(config.weight_decay)
  if wd < 0:
    raise ValueError(f'--config.weight_decay={wd} must be >= 0')
  mask = None if config.decay_biases else decay_mask
  momentum = float(config.momentum)

  def l2():
    # Caffe-style coupled L2: grad += wd * w, before the solver's own scaling.
    return [optax.add_decayed_weights(wd, mask=mask)] if wd > 0 else []

  def factory(learning_rate):
    lr = optax.scale_by_learning_rate(learning_rate)
    if name in ('sgd', 'nesterov'):
      # lr before the momentum trace: the paper's and Caffe's velocity (see module docstring).
      parts = l2() + [lr]
      if momentum:
        parts.append(optax.trace(decay=momentum, nesterov=(name == 'nesterov')))
      return optax.chain(*parts)
    if name == 'adagrad':
      return optax.chain(*l2(), optax.scale_by_rss(initial_accumulator_value=0.0, eps=1e-8), lr)
    if name == 'rmsprop':
      return optax.chain(*l2(), optax.scale_by_rms(decay=float(config.rms_decay), eps=1e-8), lr)
    if name == 'adadelta':
      return optax.chain(*l2(), optax.scale_by_adadelta(rho=momentum, eps=1e-6), lr)
    if name == 'adam':
      return optax.chain(*l2(), optax.scale_by_adam(b1=momentum, b2=0.999, eps=1e-8), lr)
    # adamw: decoupled decay, multiplied by the learning rate as in optax.adamw / PyTorch.
    decoupled = [optax.add_decayed_weights(wd, mask=mask)] if wd > 0 else []
    return optax.chain(optax.scale_by_adam(b1=momentum, b2=0.999, eps=1e-8), *decoupled, lr)

  bias_mult = float(config.get('bias_lr_mult', 1.0))
  if not bias_mult > 0:
    raise ValueError(f'--config.bias_lr_mult={bias_mult} must be > 0')
  learning_rate = float(config.learning_rate) if lr_schedule is None else lr_schedule
  tx = optax.inject_hyperparams(factory)(learning_rate=learning_rate)
  if finetune_controls.frozen_by(config):
    # The frozen group's updates are zeros and the solver keeps no state (momentum, decay) for it.
    tx = optax.partition({finetune_controls.TRAINED: tx, finetune_controls.FROZEN: optax.set_to_zero()},
                         lambda params: finetune_controls.labels(config, params))
  rules = finetune_controls.parse_lr_mult(finetune_controls.field(config, 'lr_mult'))
  if bias_mult != 1.0 or rules:
    tx = optax.chain(tx, scale_by_lr_mult(bias_mult, rules))
  k = int(config.batch_accumulation)
  if k < 1:
    raise ValueError(f'--config.batch_accumulation={k} must be >= 1')
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
  return tx


def _map_inject_state(state: Any, fn: Callable[[Any], Any]) -> tuple[Any, int]:
  """Applies fn to every InjectStatefulHyperparamsState inside an optax state; returns (new, count)."""
  if isinstance(state, optax.InjectStatefulHyperparamsState):
    return fn(state), 1
  if isinstance(state, dict):  # optax.partition's inner states, by label
    found = 0
    items = {}
    for key, s in state.items():
      items[key], n = _map_inject_state(s, fn)
      found += n
    return items, found
  if isinstance(state, (tuple, list)):
    found = 0
    items = []
    for s in state:
      new, n = _map_inject_state(s, fn)
      items.append(new)
      found += n
    if hasattr(state, '_fields'):  # NamedTuple states (MultiStepsState, ...)
      return type(state)(*items), found
    return type(state)(items), found
  return state, 0


def get_learning_rate(opt_state: Any) -> jax.Array:
  """The learning rate of the last update (or the initial one), from an injected optimizer state."""
  found = []
  _map_inject_state(opt_state, lambda s: found.append(s.hyperparams['learning_rate']) or s)
  if not found:
    raise ValueError('optimizer state has no injected learning rate; build it with make_optimizer')
  return found[0]


def set_learning_rate(opt_state: Any, lr: float | jax.Array) -> Any:
  """Returns `opt_state` with the injected learning rate replaced (same dtype and sharding).

  Only meaningful for an optimizer built with a constant rate (`make_optimizer(config, None)`): with a
  schedule, optax recomputes the rate from the update count at every update. Keeping the dtype and
  sharding of the old value keeps the jitted step's cache key, so nothing recompiles.
  """
  def replace(s):
    old = s.hyperparams['learning_rate']
    new = jnp.asarray(lr, dtype=old.dtype)
    if (isinstance(old, jax.Array) and not isinstance(old, jax.core.Tracer)
        and old.committed):
      # Placed like the old value; an uncommitted old value (tx.init outside jit) stays uncommitted,
      # since committedness is part of jit's cache key too.
      new = jax.device_put(new, old.sharding)
    return s._replace(hyperparams={**s.hyperparams, 'learning_rate': new})

  new_state, found = _map_inject_state(opt_state, replace)
  if not found:
    raise ValueError('optimizer state has no injected learning rate; build it with make_optimizer')
  return new_state


def build_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> optax.GradientTransformation:
  """The run's optimizer with its learning-rate schedule (updates per epoch: batches / accumulation)."""
  updates_per_epoch = max(1, steps_per_epoch // config.batch_accumulation)
  return make_optimizer(config, make_lr_schedule(config, updates_per_epoch))
