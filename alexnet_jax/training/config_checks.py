"""Checks of an experiment's config that run before anything compiles: bad values stop the run at once.

Two checks, both raising ``ValueError`` with messages that name the flag as the user types it
(``--config.batch_size=0: must be an integer >= 1, e.g. --config.batch_size=128``), so the command
line tools print them as one ``error:`` line each (``cli.py``):

* ``validate(config)``: every field of ``configs.default_config()`` that has a range or a set of
  choices, and the relations between fields (``crop_size`` within ``image_size``, ``val_percent + test_percent
  < 100``, ...). All the problems are reported together, one per line. It reads nothing from disk and
  builds nothing; fields the config lacks (an older experiment) are skipped, extra fields are fine.
* ``check_network(config, num_classes)``: builds ``config.model`` and computes every parameter's shape
  with ``jax.eval_shape`` (no compile, no arrays) at the configured crop size. A network that would get
  an empty layer (AlexNet on 40x40 crops: fc6 has 0 inputs) is refused with the smallest crop size that
  works, instead of training an epoch and failing at the first snapshot.

``train.py`` calls both before it opens the checkpointer, so a bad value leaves no workdir behind.
The choice sets come from the modules that dispatch on them (``optim.POLICIES``,
``layouts.LAYOUT_NAMES``, ``resize.RESIZE_MODES``, ...); where a module has no such constant the set is
defined here, with a comment naming the module whose code it mirrors.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from alexnet_jax import configs, models
from alexnet_jax.training import finetune_controls, optim, profiling
from alexnet_jax.data import dataset as dataset_lib
from alexnet_jax.data import pipeline as pipeline_lib
from alexnet_jax.data import resize as resize_lib
from alexnet_jax.data import sizes as sizes_lib
from alexnet_jax.data import transforms as transforms_lib
from alexnet_jax.models.alexnet import BIAS_VALUES, WEIGHT_INITS
from alexnet_jax.models import custom as custom_lib
from alexnet_jax.models.towers import TowerModule, TowerNetwork
from alexnet_jax.parallel import layouts

# Sets that their modules test inline, without a constant to import:
LRN_CONVENTIONS = ('paper', 'caffe', 'caffe_across', 'none')   # models/layers.py: local_response_norm(convention=)
BIAS_INITS = tuple(sorted(BIAS_VALUES))         # models/alexnet.py: bias_initializer
CHANNELS = (1, 3)                              # data/dataset.py: _check_config

_MISSING = object()


# ---- validate(config) ---------------------------------------------------------------------------------


def _show(value: Any) -> str:
  """A value as it would follow ``--config.x=`` (strings quoted, so that '' and ' ' are visible)."""
  return repr(value) if isinstance(value, str) else str(value)


def _lookup(config: Any, path: str) -> Any:
  node = config
  for part in path.split('.'):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return _MISSING
  return node


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _interval(lo: Optional[float], hi: Optional[float], lo_open: bool, hi_open: bool) -> str:
  if hi is None:
    return f'{">" if lo_open else ">="} {lo:g}'
  if lo is None:
    return f'{"<" if hi_open else "<="} {hi:g}'
  return f'in {"(" if lo_open else "["}{lo:g}, {hi:g}{")" if hi_open else "]"}'


class _Checker:
  """Collects one line per problem; the rules below read like the config's own comments."""

  def __init__(self, config: Any):
    self.config = config
    self.defaults = configs.default_config()
    self.problems: list[str] = []

  def get(self, path: str) -> Any:
    return _lookup(self.config, path)

  def add(self, path: str, value: Any, text: str) -> None:
    self.problems.append(f'--config.{path}={_show(value)}: {text}')

  def _example(self, path: str, ok: Callable[[Any], bool]) -> str:
    default = _lookup(self.defaults, path)
    if default is _MISSING or not ok(default):
      return ''
    return f', e.g. --config.{path}={default} (the default)'

  def integer(self, path: str, lo: Optional[int] = None, hi: Optional[int] = None,
              note: str = '', allow: Sequence[int] = ()) -> Any:
    """An int (not a bool) in [lo, hi], or one of ``allow``; returns the value when it is valid."""
    value = self.get(path)
    if value is _MISSING:
      return _MISSING

    def ok(v):
      return _is_int(v) and (v in allow or ((lo is None or v >= lo) and (hi is None or v <= hi)))

    if ok(value):
      return value
    if lo is None and hi is None:
      wanted = 'an integer'
    else:
      wanted = f'an integer {_interval(lo, hi, False, False)}'
    if allow:
      wanted += ' or ' + ' or '.join(str(a) for a in allow)
    got = '' if _is_int(value) else f' (got {type(value).__name__})'
    self.add(path, value, f'must be {wanted}{got}{note}{self._example(path, ok)}')
    return _MISSING

  def number(self, path: str, lo: Optional[float] = None, hi: Optional[float] = None, *,
             lo_open: bool = False, hi_open: bool = False, note: str = '') -> Any:
    """A finite int or float in the interval; returns it as a float when it is valid."""
    value = self.get(path)
    if value is _MISSING:
      return _MISSING

    def ok(v):
      if not _is_number(v) or not math.isfinite(v):
        return False
      above = lo is None or (v > lo if lo_open else v >= lo)
      below = hi is None or (v < hi if hi_open else v <= hi)
      return above and below

    if ok(value):
      return float(value)
    wanted = 'a finite number' + ('' if lo is None and hi is None
                                  else ' ' + _interval(lo, hi, lo_open, hi_open))
    got = '' if _is_number(value) else f' (got {type(value).__name__})'
    self.add(path, value, f'must be {wanted}{got}{note}{self._example(path, ok)}')
    return _MISSING

  def boolean(self, path: str) -> None:
    value = self.get(path)
    if value is not _MISSING and not isinstance(value, bool):
      self.add(path, value, f'must be True or False (got {type(value).__name__})')

  def string(self, path: str) -> Any:
    value = self.get(path)
    if value is _MISSING:
      return _MISSING
    if not isinstance(value, str):
      self.add(path, value, f'must be a string (got {type(value).__name__})')
      return _MISSING
    return value

  def choice(self, path: str, choices: Iterable[Any], note: str = '') -> Any:
    value = self.get(path)
    if value is _MISSING:
      return _MISSING
    choices = tuple(choices)
    if (isinstance(value, str) or _is_int(value)) and value in choices:
      return value
    self.add(path, value, f'must be one of {" | ".join(str(c) for c in choices)}{note}')
    return _MISSING


def _image_size(c: _Checker) -> Any:
  """``data.image_size`` as (width, height), or ``_MISSING`` after reporting what is wrong with it."""
  value = c.get('data.image_size')
  if value is _MISSING:
    return _MISSING
  try:
    return sizes_lib.parse_image_size(value)
  except ValueError:
    c.add('data.image_size', value, "must be WIDTH,HEIGHT with positive whole numbers (DIGITS' W x H "
                                    'order, e.g. --config.data.image_size=300,200), or one number for a '
                                    'square, e.g. --config.data.image_size=256')
    return _MISSING


def problems(config: ml_collections.ConfigDict | Any) -> list[str]:
  """Every problem ``validate`` would report, one line each (empty when the config is fine)."""
  c = _Checker(config)
  c.integer('seed')
  c.string('init_from')
  c.problems += finetune_controls.problems(config)

  # Devices.
  c.choice('layout', layouts.LAYOUT_NAMES)
  for axis in ('data', 'model'):
    c.integer(f'mesh.{axis}', lo=1, allow=(-1,), note=' (-1: derived from the layout and devices)')

  # Model.
  name = c.string('model.name')
  if name is not _MISSING and name not in models.REGISTRY and not custom_lib.is_custom_name(name):
    c.add('model.name', name, f'must be one of {" | ".join(sorted(models.REGISTRY))}, or a Flax '
                              'module named package.module:ClassName')
  c.number('model.width', 0, lo_open=True, note=' (the channel multiplier; 1.0 is the paper)')
  c.number('model.dropout', 0, 1, hi_open=True, note=' (the fraction of units dropped)')
  c.choice('model.lrn', LRN_CONVENTIONS)
  c.choice('model.bias_init', BIAS_INITS)
  c.choice('model.weight_init', sorted(WEIGHT_INITS))
  c.choice('model.dtype', sorted(models.DTYPES))

  # Data.
  for field in ('source', 'image_root', 'val_source', 'test_source', 'labels_file', 'tfds_data_dir'):
    c.string(f'data.{field}')
  val = c.number('data.val_percent', 0, 100)
  test = c.number('data.test_percent', 0, 100)
  if val is not _MISSING and test is not _MISSING:
    # A separate validation/test source replaces the percentage (data/dataset.py).
    val_used = 0.0 if c.get('data.val_source') else val
    test_used = 0.0 if c.get('data.test_source') else test
    if val_used + test_used >= 100:
      c.problems.append(
          f'--config.data.val_percent={val:g} + --config.data.test_percent={test:g} = '
          f'{val_used + test_used:g}: leaves no images for training; they must add up to less '
          'than 100')
  # 0 and 1 both mean "no minimum" (an empty class is always dropped: data/splits.py).
  low = c.integer('data.min_per_class', lo=0)
  high = c.integer('data.max_per_class', lo=0, note=' (0: no limit)')
  if low is not _MISSING and high is not _MISSING and 0 < high < low:
    c.add('data.min_per_class', low, f'is more than --config.data.max_per_class={high}, so every '
                                     'class would be dropped; lower min_per_class or raise '
                                     'max_per_class')
  size = _image_size(c)
  crop = c.integer('data.crop_size', lo=0, note=' (0: none, the whole resized image is the input)')
  if size is not _MISSING and crop is not _MISSING and crop > min(size):
    w, h = size
    c.add('data.crop_size', crop, f'must be 0 (none) or <= {min(size)}, the shorter side of '
                                  f'--config.data.image_size={w},{h} (a square crop is cut from the '
                                  'resized W x H image); lower crop_size or raise image_size')
  c.choice('data.resize_mode', resize_lib.RESIZE_MODES)
  c.choice('data.channels', CHANNELS, note=' (1: grayscale, 3: color)')
  c.choice('data.mean', transforms_lib.MEAN_MODES)
  c.choice('data.pca_eigen', dataset_lib.PCA_EIGEN)
  c.choice('data.augment_on', pipeline_lib.AUGMENT_ON)
  for field in ('random_crop', 'flip', 'pca_lighting', 'ten_crop_eval', 'draft'):
    c.boolean(f'data.{field}')
  c.number('data.pca_std', 0, note=' (the std of the PCA lighting alphas; 0 turns it off)')
  c.integer('data.num_threads', lo=1)
  c.integer('data.worker_count', lo=0, note=' (0: threads only)')
  c.integer('data.prefetch', lo=1)
  c.integer('data.device_prefetch', lo=0, note=' (0: no prefetch, metrics read every step)')
  c.integer('data.mean_max_images', lo=0, note=' (0: all training images)')

  # Solver.
  epochs = c.integer('num_epochs', lo=1)
  c.integer('batch_size', lo=1)
  c.integer('batch_accumulation', lo=1, note=' (mini-batches per update; 1: none)')
  c.choice('optimizer', optim.OPTIMIZERS)
  c.number('momentum', 0, 1, hi_open=True)
  c.number('rms_decay', 0, 1, hi_open=True)
  c.number('weight_decay', 0)
  c.boolean('decay_biases')
  c.number('bias_lr_mult', 0, lo_open=True)
  c.number('learning_rate', 0, lo_open=True)
  policy = c.choice('lr.policy', optim.POLICIES)
  if policy == 'plateau':   # the factor of each drop (optim.PlateauController)
    c.number('lr.gamma', 0, 1, lo_open=True, hi_open=True, note=' for --config.lr.policy=plateau')
  else:
    c.number('lr.gamma', 0, lo_open=True)
  c.number('lr.step_percent', 0, 100, lo_open=True, note=' (percent of training between drops)')
  percents_text = c.get('lr.multistep_percents')
  if percents_text is not _MISSING:
    try:
      percents = optim.parse_percents(percents_text)
    except (ValueError, TypeError):
      c.add('lr.multistep_percents', percents_text,
            'must be comma-separated numbers, e.g. --config.lr.multistep_percents=50,75')
    else:
      if (not percents or not all(math.isfinite(p) and 0 < p < 100 for p in percents)
          or any(b <= a for a, b in zip(percents, percents[1:]))):
        c.add('lr.multistep_percents', percents_text,
              'must be strictly increasing percentages of training, each in (0, 100), e.g. '
              '--config.lr.multistep_percents=50,75')
  c.number('lr.multistep_gamma', 0, lo_open=True)
  c.number('lr.exp_gamma', 0, lo_open=True)
  c.number('lr.inv_gamma', 0)
  c.number('lr.inv_power', 0)
  c.number('lr.poly_power', 0)
  c.number('lr.sigmoid_step_percent', 0, 100)
  sigmoid_gamma = c.number('lr.sigmoid_gamma')
  if sigmoid_gamma == 0:
    c.add('lr.sigmoid_gamma', sigmoid_gamma, 'must not be 0 (the rate would stay at half the base '
                                             'rate); > 0 decays, < 0 ramps up')
  # A cosine warmup not shorter than the run is clipped (optim.warmup_updates, said in the log), not
  # refused: `--config.num_epochs=1` on the demo is a quick try.
  c.number('lr.warmup_epochs', 0)
  c.integer('lr.plateau_patience', lo=1, note=' (validations without improvement)')
  c.integer('lr.plateau_max_drops', lo=0)

  # Side jobs.
  c.number('val_interval', 0, lo_open=True, note=' (epochs)')
  c.number('snapshot_interval', 0, lo_open=True, note=' (epochs)')
  c.integer('keep_snapshots', note=' (<= 0 keeps every snapshot)')   # checkpoints.Checkpointer
  c.integer('early_stopping_patience', lo=0, note=' (0 disables early stopping)')
  c.integer('log_every_steps', lo=1)
  try:
    profiling.parse_profile_steps(c.get('profile_steps') if c.get('profile_steps') is not _MISSING
                                  else '')
  except ValueError as e:
    c.problems.append(str(e))
  return c.problems


def validate(config: ml_collections.ConfigDict | Any) -> None:
  """Checks every field with a range or a set of choices; call it before anything compiles.

  Args:
    config: an experiment config (``configs.default_config()`` plus changes); fields it lacks are
      skipped, fields ``default_config`` lacks are ignored.

  Raises:
    ValueError: one line per problem, each naming the flag, the bad value and what would do, e.g.
      ``--config.learning_rate=-1.0: must be a finite number > 0, e.g. --config.learning_rate=0.01``.
  """
  found = problems(config)
  if len(found) == 1:
    raise ValueError(found[0])
  if found:
    raise ValueError(f'{len(found)} config values are invalid:\n' + '\n'.join(found))


# ---- check_network(config, num_classes) ---------------------------------------------------------------

# Inputs larger than this are not tried when looking for the smallest crop size that works.
MAX_SEARCH_SIZE = 4096
# (network name, width, channels) -> (the size the search started from, the smallest working size
# from there on, or None for none up to MAX_SEARCH_SIZE).
_MINIMUM_CACHE: dict[tuple[str, float, int], tuple[int, Optional[int]]] = {}


def _empty(shape: Any) -> bool:
  return shape is not None and any(int(d) <= 0 for d in shape)


def _dims(shape: Sequence[int]) -> str:
  return 'x'.join(str(max(int(d), 0)) for d in shape)


def _describe(layer: str, shape: Sequence[int], output: bool) -> str:
  """'fc6 would have 0 inputs', 'conv2 would output 0x0 maps', ..."""
  if len(shape) == 4:
    return f'{layer} would {"output" if output else "see"} {_dims(shape[1:3])} maps'
  if len(shape) == 2 and not output:
    return f'{layer} would have {max(int(shape[1]), 0)} inputs'
  return f'{layer} would {"output" if output else "get"} an array of shape {_dims(shape)}'


def _shape_problem(network: TowerNetwork, size: int, channels: int) -> tuple[Optional[str], Any]:
  """(what goes wrong at ``size`` x ``size`` x ``channels`` inputs, or None; the exception, if any).

  One tower's parameters and output are computed by ``jax.eval_shape`` (as ``TowerNetwork.init`` does,
  with shapes only); every layer call is recorded on the way, so that the first empty input or output
  names the layer that would break.
  """
  calls: list[list[Any]] = []   # [layer, input shape, output shape]

  def record(next_fun, args, kwargs, context):
    if context.method_name != '__call__' or isinstance(context.module, TowerModule):
      return next_fun(*args, **kwargs)
    module = context.module
    path = getattr(module, 'path', None) or (module.name or type(module).__name__,)
    entry = ['/'.join(str(p) for p in path), getattr(args[0], 'shape', None) if args else None, None]
    calls.append(entry)
    out = next_fun(*args, **kwargs)
    entry[2] = getattr(out, 'shape', None)
    return out

  def init(key, x):
    return network.tower.init_with_output(key, x, method='trace_all_stages')

  key = jax.eval_shape(lambda: jax.random.key(0))
  height, width = sizes_lib.crop_hw(size)
  x = jax.ShapeDtypeStruct((1, height, width, channels), jnp.float32)
  error = None
  output = variables = None
  try:
    with nn.intercept_methods(record):
      output, variables = jax.eval_shape(init, key, x)
  except Exception as e:  # pylint: disable=broad-except  # a shape error, or the init's division by 0
    error = e
  for layer, shape_in, shape_out in calls:
    if _empty(shape_in):
      return _describe(layer, shape_in, output=False), error
    if _empty(shape_out):
      return _describe(layer, shape_out, output=True), error
  if error is not None:
    where = f'{calls[-1][0]} fails' if calls else 'the network fails'
    first_line = (str(error).splitlines() or [''])[0]
    return f'{where}: {type(error).__name__}: {first_line}', error
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    if _empty(leaf.shape):
      name = '/'.join(str(getattr(k, 'key', k)) for k in path[1:])
      return f'{name} would have shape {_dims(leaf.shape)}', None
  if _empty(output.shape):
    return f'the output would have shape {_dims(output.shape)}', None
  return None, None


def _works(network: TowerNetwork, size, channels: int) -> bool:
  return _shape_problem(network, size, channels)[0] is None


def minimum_crop_size(model_config: ml_collections.ConfigDict, channels: int, num_classes: int,
                      start: int = 1) -> Optional[int]:
  """The smallest crop size >= ``start`` at which ``model_config``'s network has no empty layer.

  Found with ``jax.eval_shape`` only: sizes ``start, start+1, start+2, start+4, ...`` until one works,
  then a bisection between the last that failed and the first that worked, so the answer works and
  the size below it fails. That it is the smallest assumes that a size that works keeps working when
  the input grows, as it does for stacks of convolutions and pools (about 13 eval_shapes for AlexNet
  from 1). Cached per (network name, width, channels). None when nothing up to ``MAX_SEARCH_SIZE``
  works.
  """
  key = (str(model_config.name), float(model_config.width), int(channels))
  if key in _MINIMUM_CACHE:
    searched_from, found = _MINIMUM_CACHE[key]
    if searched_from <= start and (found is None or found >= start):
      return found
  network = models.build(model_config, num_classes)
  failed, step = start - 1, 1
  while True:
    size = min(start - 1 + step, MAX_SEARCH_SIZE)
    if _works(network, size, channels):
      break
    failed = size
    if size >= MAX_SEARCH_SIZE:
      _MINIMUM_CACHE[key] = (start, None)
      return None
    step *= 2
  works = size
  while works - failed > 1:
    middle = (failed + works) // 2
    if _works(network, middle, channels):
      works = middle
    else:
      failed = middle
  _MINIMUM_CACHE[key] = (start, works)
  return works


def check_network(config: ml_collections.ConfigDict, num_classes: int) -> None:
  """Refuses a network that cannot run on the configured inputs, before anything compiles.

  The input is the ``crop_size`` x ``crop_size`` crop, or with ``crop_size`` 0 (DIGITS' "none") the whole
  ``image_size`` W x H image. Builds ``models.build(config.model, num_classes)`` and computes one tower's
  parameter and output shapes with ``jax.eval_shape`` at that height x width x ``channels`` (no compile, no
  device arrays; 0.03-0.1 s for the full-size AlexNet on a CPU). The verdict does not depend on
  ``num_classes`` for the standard networks.

  Raises:
    ValueError: a layer would be empty (or the network fails on inputs of that size); the message
      names ``--config.data.crop_size`` and the smallest size that works, e.g.
      ``--config.data.crop_size=32: alexnet needs inputs of at least 36x36 (fc6 would have 0
      inputs); use --config.data.crop_size>=36``. Errors that do not depend on the input size (an
      unknown network, a custom module that fails at every size) propagate as they are.
  """
  crop, channels = int(config.data.crop_size), int(config.data.channels)
  network = models.build(config.model, num_classes)
  flag = f'--config.data.crop_size={crop}'
  if crop < 0:
    raise ValueError(f'{flag}: must be 0 (none: the whole resized image) or an integer >= 1')
  try:
    width, height = sizes_lib.parse_image_size(config.data.get('image_size', 256))
  except ValueError as e:
    raise ValueError(f'--config.data.image_size={config.data.get("image_size")!r}: {e}') from None
  hw = sizes_lib.input_hw(width, height, crop)
  if crop == sizes_lib.NO_CROP:
    flag = (f'--config.data.image_size={width},{height} with --config.data.crop_size=0 (none: the whole '
            'image is the input)')
  problem, error = _shape_problem(network, hw, channels)
  if problem is None:
    return
  minimum = minimum_crop_size(config.model, channels, num_classes, start=min(hw) + 1)
  if minimum is None:
    if error is not None:
      raise error
    raise ValueError(f'{flag}: {network.name} does not work on any input size up to '
                     f'{MAX_SEARCH_SIZE}x{MAX_SEARCH_SIZE} ({problem})')
  if crop == sizes_lib.NO_CROP:
    fix = f'use --config.data.image_size with both sides >= {minimum}'
  else:
    fix = f'use --config.data.crop_size>={minimum}'
    if min(width, height) < minimum:
      fix += (f' and --config.data.image_size with both sides >= {minimum} (crops are cut from the '
              f'{width}x{height} resized images)')
  raise ValueError(f'{flag}: {network.name} needs inputs of at least {minimum}x{minimum} '
                   f'({problem}); {fix}')
