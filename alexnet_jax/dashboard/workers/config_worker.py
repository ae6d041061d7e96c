r"""The dashboard's JAX-side helper: a separate process that answers what only the library can tell.

    python -m alexnet_jax.dashboard.workers.config_worker   # JSON requests on stdin, one JSON answer per line on stdout

The web process never imports JAX (it must start in under 2 s and stay small), yet the New Model form
needs the library's own answers: which settings ``config_checks.problems`` refuses, whether the network
fits the crop size (``check_network``), how many devices the layout needs (``parallel.layouts``), and the
learning-rate curve of a policy (``optim.make_lr_schedule``). Nothing is copied: this process imports
those modules once and answers every request from them; ``config_client.ConfigClient`` (web side) starts it in the
background at start-up and talks to it over a pipe. Requests:

    {"op": "tables"}
        -> {"layouts": [{"name", "moves", "needs_towers", "devices": {network: n | null}}],
            "networks": [{"name", "towers"}], "optimizers": [...], "lr_policies": [...],
            "mean_modes": [...], "resize_modes": [...], "experiments": [{"name", "path", "doc"}]}
    {"op": "check", "experiment": "digits_exercise", "overrides": ["--config.batch_size=8", ...],
     "num_classes": 3}
        -> {"problems": ["--config.batch_size=0: must be ...", ...], "devices_needed": 2}
    {"op": "lr_curve", "experiment": ..., "overrides": [...], "steps_per_epoch": 12}
        -> {"epochs": [...], "lr": [...]} (or {"problems": [...]})

The overrides are parsed exactly as the train command parses them (``ml_collections.config_flags`` on a
fresh ``FlagValues``), so the check sees the very config the job will run.
"""

from __future__ import annotations

import os
import sys

from alexnet_jax.dashboard.workers import config_client
from alexnet_jax.dashboard.workers.worker_process import one_line, serve


def _config(experiment: str, overrides: list[str]):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  for o in overrides:
    if not o.startswith('--config.'):
      raise ValueError(f'{o}: only --config.FIELD=VALUE overrides are accepted')
  argv = ['worker', f'--config={config_client.experiment_path(experiment)}', *overrides]
  fv = flags.FlagValues()
  # sys_argv: config_flags registers the --config.X override flags from the argv it is given here.
  config_flags.DEFINE_config_file('config', None, 'experiment', flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def tables() -> dict:
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  from alexnet_jax.training import optim
  from alexnet_jax.data import resize, transforms  # pylint: disable=g-import-not-at-top
  from alexnet_jax.parallel import layouts  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from alexnet_jax import configs  # pylint: disable=g-import-not-at-top
  networks = []
  for name in models.REGISTRY:
    model_config = configs.default_config().model
    model_config.name = name
    try:
      towers = models.build(model_config, 2).num_towers
    except Exception:  # pylint: disable=broad-except
      towers = None
    networks.append({'name': name, 'towers': towers})
  rows = []
  for name, rule in layouts.RULES.items():
    devices = {}
    for n in networks:
      try:
        devices[n['name']] = layouts.devices_needed(name, n['towers'] or 1)
      except Exception:  # pylint: disable=broad-except
        devices[n['name']] = None
    rows.append({'name': name, 'moves': rule.moves, 'needs_towers': rule.needs_towers,
                 'compiler_partitioned': rule.compiler_partitioned, 'devices': devices})
  del ml_collections
  return {'layouts': rows, 'networks': networks, 'optimizers': list(optim.OPTIMIZERS),
          'lr_policies': list(optim.POLICIES), 'mean_modes': list(transforms.MEAN_MODES),
          'resize_modes': list(resize.RESIZE_MODES), 'experiments': config_client.list_experiments()}


def check(experiment: str, overrides: list[str], num_classes: int = 2) -> dict:
  from alexnet_jax.training import config_checks  # pylint: disable=g-import-not-at-top
  from alexnet_jax.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  try:
    config = _config(experiment, overrides)
  except Exception as e:  # pylint: disable=broad-except
    return {'problems': [one_line(e)], 'devices_needed': None}
  problems = config_checks.problems(config)
  devices = None
  if not problems:
    try:
      config_checks.check_network(config, max(2, int(num_classes)))
      # The fine-tuning controls against the network's parameters, as the trainer checks them at start
      # (a freeze pattern that matches nothing, everything frozen) -- so New Model says so at once.
      from alexnet_jax import models  # pylint: disable=g-import-not-at-top
      from alexnet_jax.training import finetune_controls  # pylint: disable=g-import-not-at-top
      finetune_controls.check_network(config, models.build(config.model, max(2, int(num_classes))),
                                      workdir_lib.image_shape_of(config))
    except Exception as e:  # pylint: disable=broad-except
      problems.append(one_line(e))
  try:
    devices = workdir_lib.devices_needed(config)
  except Exception as e:  # pylint: disable=broad-except
    if not problems:
      problems.append(one_line(e))
  return {'problems': problems, 'devices_needed': devices}


def lr_curve(experiment: str, overrides: list[str], steps_per_epoch: int = 100, points: int = 200) -> dict:
  from alexnet_jax.training import optim  # pylint: disable=g-import-not-at-top
  try:
    config = _config(experiment, overrides)
    steps_per_epoch = max(1, int(steps_per_epoch))
    schedule = optim.make_lr_schedule(config, steps_per_epoch)
  except Exception as e:  # pylint: disable=broad-except
    return {'problems': [one_line(e)]}
  total = max(1, int(round(steps_per_epoch * float(config.num_epochs))))
  steps = sorted({int(round(i * (total - 1) / max(1, points - 1))) for i in range(points)})
  if schedule is None:      # plateau: a function of the validation curve, not of the step
    return {'epochs': [s / steps_per_epoch for s in steps], 'lr': [float(config.learning_rate)] * len(steps),
            'note': 'plateau: divided by gamma when validation stops improving; drawn flat'}
  return {'epochs': [s / steps_per_epoch for s in steps], 'lr': [float(schedule(s)) for s in steps]}


def answer(request: dict) -> dict:
  op = request.get('op')
  if op == 'tables':
    return tables()
  if op == 'check':
    return check(request['experiment'], list(request.get('overrides') or []),
                 int(request.get('num_classes') or 2))
  if op == 'lr_curve':
    return lr_curve(request['experiment'], list(request.get('overrides') or []),
                    int(request.get('steps_per_epoch') or 100))
  if op == 'ping':
    return {'pong': True}
  return {'error': f'unknown op {op!r}'}


def main() -> int:
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')   # descriptions only: never take an accelerator

  def ready() -> dict:
    import jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    return {}

  return serve(answer, ready)


if __name__ == '__main__':
  sys.exit(main())
