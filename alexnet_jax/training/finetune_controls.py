"""Fine-tuning controls: which parameters stay fixed and how fast each of the others learns.

    python -m alexnet_jax.train ... --config.init_from=runs/imagenet:best \
        --config.finetune.freeze='conv[1-5]' --config.finetune.lr_mult='fc8:10,fc[67]:2'
    python -m alexnet_jax.train ... --config.finetune.preset=head     # only the classifier learns

What this module is for: it turns the three ``config.finetune`` fields into, for every parameter, "frozen"
or a learning-rate multiplier, and checks them; ``optim.make_optimizer`` builds the optimizer from that
(``optax.partition`` with ``optax.set_to_zero`` for the frozen group, the multipliers beside
``bias_lr_mult``). Parameters are named by their '/'-joined path, as in a bundle's ``params.npz``
(``towers/conv1/kernel``, ``towers/fc8/kernel``, ``head/bias``; ``models/trees.py``), and a pattern is a
Python regular expression *searched* in that name (``conv1`` matches ``towers/conv1/kernel`` and
``towers/conv1/bias``; anchor it with ``^...$`` to match a whole name).

* ``freeze=REGEX``: the matching parameters get no update at all -- no gradient step, no weight decay, no
  momentum (the optimizer keeps no state for them) -- so they end a run bit-identical to how it started.
* ``lr_mult=REGEX:MULT,REGEX:MULT``: DIGITS users fine-tuned by editing Caffe's per-layer ``lr_mult``
  (``param { lr_mult: 10 }`` on a new fc8, 0 on the layers to keep); each parameter takes the multiplier
  of the first pattern it matches (1 when none does). Caffe multiplies the local rate, ``lr * lr_mult``,
  before the momentum accumulation; as for ``bias_lr_mult`` (``optim.py``) the trace is linear and the
  multiplier constant, so scaling the final update is the same thing, through learning-rate drops too. A
  bias's multiplier is ``MULT * bias_lr_mult``, as Caffe's blob multipliers are written per blob. A pattern
  cannot contain ``,``; MULT is a number >= 0 (0: the parameter does not move, but unlike ``freeze`` its
  momentum is still kept, as in Caffe).
* ``preset=head``: freeze everything except the network's last classifier -- ``fc8`` (alexnet,
  alexnet_owt), ``ip2`` (lenet), GoogLeNet's three classifiers (``loss1/2/3_classifier``) -- and the head
  bias; for a custom network, the layers whose parameters have the class count as their last axis (the
  layers ``finetune.py`` re-initializes for a new class count). ``freeze`` adds to what it freezes.

``problems(config)`` checks the fields' syntax (``config_checks.validate`` reports them with the rest);
``check_against(config, shapes)`` checks them against the network's parameters (a pattern that matches
nothing, everything frozen) before anything compiles. A resumed run rebuilds the same optimizer, so its
state has the same structure and the run continues bit-identically; ``workdir.py`` refuses a resume whose
finetune fields differ.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

import jax

from alexnet_jax.models import trees
from alexnet_jax.training import finetune

PRESETS = ('head',)
# The last classifier of each registry network, as parameter-path prefixes (models/alexnet.py,
# alexnet_owt.py, lenet.py, googlenet.py); 'head' is the class bias every TowerNetwork adds.
HEAD_LAYERS = {
    'alexnet': ('towers/fc8', 'head'),
    'alexnet_owt': ('towers/fc8', 'head'),
    'lenet': ('towers/ip2', 'head'),
    'googlenet': ('towers/loss1_classifier', 'towers/loss2_classifier', 'towers/loss3_classifier', 'head'),
}
FROZEN, TRAINED = 'frozen', 'trained'


def field(config: Any, name: str) -> Any:
  """``config.finetune.<name>``, '' when the config has no such field (an older experiment)."""
  section = config.get('finetune') if hasattr(config, 'get') else None
  return '' if section is None else section.get(name, '')


def _compile(pattern: str, flag: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f'{flag}: {pattern!r} is not a regular expression ({e})') from None


def parse_freeze(text: str) -> Optional[re.Pattern]:
  """``config.finetune.freeze`` as a compiled pattern, None when empty."""
  flag = f'--config.finetune.freeze={text!r}'
  if not isinstance(text, str):
    raise ValueError(f'{flag}: must be a regular expression (a string)')
  return _compile(text, flag) if text else None


def parse_lr_mult(text: str) -> list[tuple[re.Pattern, float]]:
  """``'fc8:10,conv.*:0.1'`` -> [(pattern, 10.0), (pattern, 0.1)], in order (the first match wins)."""
  flag = f'--config.finetune.lr_mult={text!r}'
  if not isinstance(text, str):
    raise ValueError(f'{flag}: must be REGEX:MULT,REGEX:MULT (a string)')
  rules = []
  for item in (t.strip() for t in text.split(',')):
    if not item:
      if text.strip():
        raise ValueError(f'{flag}: an empty entry; the form is REGEX:MULT,REGEX:MULT, e.g. fc8:10,conv1:0')
      continue
    pattern, sep, mult = item.rpartition(':')
    if not sep or not pattern:
      raise ValueError(f'{flag}: {item!r} is not REGEX:MULT, e.g. --config.finetune.lr_mult=fc8:10')
    try:
      value = float(mult)
    except ValueError:
      value = math.nan
    if not (math.isfinite(value) and value >= 0):
      raise ValueError(f'{flag}: {mult!r} in {item!r} is not a multiplier (a finite number >= 0)')
    rules.append((_compile(pattern, flag), value))
  return rules


def parse_preset(text: str) -> str:
  if text not in ('', *PRESETS):
    raise ValueError(f'--config.finetune.preset={text!r}: must be one of {" | ".join(PRESETS)} '
                     "(or '' for none)")
  return text


def problems(config: Any) -> list[str]:
  """One line per malformed finetune field (the syntax only; ``check_against`` needs the network)."""
  found = []
  for parse, name in ((parse_freeze, 'freeze'), (parse_lr_mult, 'lr_mult'), (parse_preset, 'preset')):
    try:
      parse(field(config, name))
    except ValueError as e:
      found.append(str(e))
  return found


def frozen_by(config: Any) -> bool:
  """True when ``config`` freezes something (``freeze`` or ``preset``): the optimizer is partitioned."""
  return bool(field(config, 'freeze') or field(config, 'preset'))


def _head_names(model_name: str, shapes: Mapping[str, tuple]) -> set[str]:
  """The parameters of the network's last classifier(s) and its head bias."""
  prefixes = HEAD_LAYERS.get(model_name)
  if prefixes is None:   # a custom network: the layers whose last axis is the class count
    layers = finetune.classifier_layers(shapes, shapes['head/bias'][-1])
    return {name for name in shapes if name.rsplit('/', 1)[0] in layers}
  return {name for name in shapes if any(name.startswith(p + '/') for p in prefixes)}


def frozen_names(config: Any, shapes: Mapping[str, tuple]) -> set[str]:
  """The parameters (of ``shapes``: '/'-joined name -> shape) that ``config`` keeps fixed."""
  frozen = set()
  if parse_preset(field(config, 'preset')) == 'head':
    frozen = set(shapes) - _head_names(config.model.name, shapes)
  pattern = parse_freeze(field(config, 'freeze'))
  if pattern is not None:
    frozen |= {name for name in shapes if pattern.search(name)}
  return frozen


def multiplier(rules: list[tuple[re.Pattern, float]], name: str) -> float:
  """The lr_mult of parameter ``name``: that of the first rule whose pattern it matches, else 1."""
  for pattern, value in rules:
    if pattern.search(name):
      return value
  return 1.0


def labels(config: Any, params: Any) -> Any:
  """A tree like ``params`` with ``'frozen'`` or ``'trained'`` at each leaf (``optax.partition``'s)."""
  flat = trees.flatten(params)
  frozen = frozen_names(config, {name: tuple(leaf.shape) for name, leaf in flat.items()})
  return trees.unflatten({name: FROZEN if name in frozen else TRAINED for name in flat})


def check_against(config: Any, shapes: Mapping[str, tuple]) -> None:
  """Refuses finetune fields that do not fit the network's parameters (``shapes``: name -> shape).

  Raises:
    ValueError: a freeze or lr_mult pattern that matches no parameter, or a setting that freezes every
      parameter; the message names the flag and lists the parameter names.
  """
  names = sorted(shapes)
  listing = 'the parameters are ' + ', '.join(names[:40]) + (' ...' if len(names) > 40 else '')
  freeze = field(config, 'freeze')
  pattern = parse_freeze(freeze)
  if pattern is not None and not any(pattern.search(n) for n in names):
    raise ValueError(f'--config.finetune.freeze={freeze!r}: matches no parameter of '
                     f'{config.model.name}; {listing}')
  text = field(config, 'lr_mult')
  for rule, _ in parse_lr_mult(text):
    if not any(rule.search(n) for n in names):
      raise ValueError(f'--config.finetune.lr_mult={text!r}: {rule.pattern!r} matches no parameter of '
                       f'{config.model.name}; {listing}')
  if set(names) <= frozen_names(config, shapes):
    flags = ' with '.join(f'--config.finetune.{n}={field(config, n)!r}' for n in ('preset', 'freeze')
                          if field(config, n))
    raise ValueError(f'{flags}: freezes every parameter of {config.model.name}, so nothing would train')


def check_network(config: Any, network: Any, image_shape: tuple[int, int, int]) -> None:
  """``check_against`` on ``network``'s parameter shapes at ``image_shape`` (``jax.eval_shape``: nothing
  compiles, nothing is allocated); nothing to do when no finetune field is set."""
  if not any(field(config, n) for n in ('freeze', 'lr_mult', 'preset')):
    return
  abstract = jax.eval_shape(lambda key: network.init(key, image_shape), jax.random.key(0))
  check_against(config, {name: tuple(leaf.shape) for name, leaf in trees.flatten(abstract).items()})


def describe(config: Any) -> str:
  """The controls for a log line or a page: 'freeze='conv' lr_mult='fc8:10'', or 'none'."""
  parts = [f'{n}={field(config, n)!r}' for n in ('preset', 'freeze', 'lr_mult') if field(config, n)]
  return ' '.join(parts) if parts else 'none'
