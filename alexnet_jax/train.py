"""Training and evaluation of one experiment: ``train_and_evaluate(config, workdir)``.

    python -m alexnet_jax.train --config=experiments/demo.py --workdir=runs/demo [--config.FIELD=VALUE]

Running the same command again on the same workdir **resumes**: parameters, optimizer state, step, the
data iterator's position, the learning-rate controller and the metrics log all continue exactly where the
last snapshot left them, so an interrupted run ends bit-identical to an uninterrupted one (on CPU). A
resume whose config differs in a field that changes the results stops with a message naming the fields
(more epochs is allowed).

The sections below follow big_vision's trainer: set-up (workdir, data, network, mesh), the update step
(``parallel/step.py``: pure, jitted once, state donated, dropout from ``fold_in(rng, step)``), the
checkpoint restore, and the loop, where one ``Cadence`` decides when to log, validate and snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from alexnet_jax import checkpoints, cli, data, demo_data, fileio, metrics_writer, models, optim, plots
from alexnet_jax import evaluate as evaluate_lib
from alexnet_jax.parallel import layouts, step as step_lib
from alexnet_jax.progress import Progress

CONFIG_FILE = 'config.json'
SYNTHETIC_SOURCE = 'synthetic'

# Fields that may differ when a run resumes: they change neither the numbers nor the order of batches.
RESUMABLE_CHANGES = ('num_epochs', 'log_every_steps', 'keep_snapshots', 'snapshot_interval',
                     'data.num_threads', 'data.worker_count', 'data.prefetch')


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite: the run stops at once, keeping its last good snapshot."""


# ---- Set-up -----------------------------------------------------------------------------------------

def devices_needed(config: ml_collections.ConfigDict) -> int:
  """Devices the layout's mesh needs, for forcing CPU host devices when no accelerator is present."""
  towers = 1 if config.model.name == 'alexnet_owt' else 2
  data_axis = max(config.mesh.data, 2) if config.mesh.data != -1 else 2
  return {'single': 1, 'model': towers, 'data': data_axis,
          'hybrid': data_axis * towers}.get(config.layout, 1)


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def check_resume_compatible(saved: dict, current: dict) -> None:
  """Raises ValueError naming every field that differs and would change the results."""
  old, new = _flatten(saved), _flatten(current)
  changed = sorted(k for k in set(old) | set(new)
                   if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
  if new.get('num_epochs', 0) < old.get('num_epochs', 0):
    changed.append('num_epochs')
  if changed:
    detail = ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in changed)
    raise ValueError(
        f'the workdir holds a run with a different config ({detail}). Resuming would not reproduce '
        f'it: use the same values (only {", ".join(RESUMABLE_CHANGES)} may change, num_epochs only '
        f'upwards) or a new --workdir')


def write_config(config: ml_collections.ConfigDict, workdir: str, *, resuming: bool) -> None:
  """Checks the config against the run's (when resuming) and writes ``config.json`` atomically."""
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  if resuming and os.path.exists(path):
    with open(path) as f:
      check_resume_compatible(json.load(f), current)
  if jax.process_index() == 0:
    fileio.write_json(path, current, indent=2, sort_keys=True)


def data_config_for(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """``config.data`` with ``'synthetic'`` resolved to the demo folder inside the workdir."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  if data_config.source == SYNTHETIC_SOURCE:
    root = os.path.join(workdir, 'synthetic')
    if jax.process_index() == 0:
      demo_data.make_demo_folder(root, seed=config.seed)
    _sync('demo data')
    data_config.source = root
  elif not data_config.source:
    raise ValueError('--config.data.source is empty: give a folder of class subfolders, a DIGITS '
                     'list file, tfds:NAME[:split], a prepared dataset, or "synthetic"')
  return data_config


def load_run_dataset(config: ml_collections.ConfigDict, workdir: str):
  """The run's dataset (splits and mean are cached in the workdir, so a resume recomputes nothing)."""
  return data.load_dataset(data_config_for(config, workdir), seed=config.seed, metadata_dir=workdir)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def restore_params(ckpt: checkpoints.Checkpointer, step: int, network, layout, mesh, config):
  """The parameters of snapshot ``step``, each array restored straight into ``layout``'s sharding."""
  tx = build_optimizer(config, steps_per_epoch=1)
  crop, channels = config.data.crop_size, config.data.channels
  abstract = step_lib.abstract_train_state(network, layout, mesh, tx,
                                           image_shape=(crop, crop, channels))
  state, _ = ckpt.restore(step, abstract)
  return state.params


def build_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  updates_per_epoch = max(1, steps_per_epoch // config.batch_accumulation)
  return optim.make_optimizer(config, optim.make_lr_schedule(config, updates_per_epoch))


# ---- When to log, validate and snapshot ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cadence:
  """The one place that decides what happens after a step (intervals in epochs; the last step counts)."""
  steps_per_epoch: int
  total_steps: int
  log_every: int
  val_every: int
  snapshot_every: int

  @classmethod
  def from_config(cls, config, steps_per_epoch: int) -> 'Cadence':
    def in_steps(epochs: float) -> int:
      return max(1, int(round(epochs * steps_per_epoch)))
    return cls(steps_per_epoch, steps_per_epoch * config.num_epochs, max(1, config.log_every_steps),
               in_steps(config.val_interval), in_steps(config.snapshot_interval))

  def _due(self, step: int, every: int) -> bool:
    return step % every == 0 or step == self.total_steps

  def log(self, step: int) -> bool:
    return self._due(step, self.log_every) or self.validate(step)

  def validate(self, step: int) -> bool:
    return self._due(step, self.val_every)

  def snapshot(self, step: int) -> bool:
    return self._due(step, self.snapshot_every)

  def epoch(self, step: int) -> float:
    return step / self.steps_per_epoch


class TrainWindow:
  """Sums of the train metrics since the last log line; saved in snapshots so a resumed run logs the
  same means as an uninterrupted one."""

  def __init__(self, state: dict | None = None):
    state = state or {}
    self.sums = {k: float(v) for k, v in state.get('sums', {}).items()}
    self.count = int(state.get('count', 0))
    self.replaced = int(state.get('replaced', 0))
    self.started = time.monotonic()
    self.timed_steps = 0

  def add(self, values: dict[str, float], replaced: int) -> None:
    for k, v in values.items():  # loss, top1, top5, grad_norm (and aux heads' top-k)
      self.sums[k] = self.sums.get(k, 0.0) + v
    self.count += 1
    self.timed_steps += 1
    self.replaced += replaced

  def means(self) -> dict[str, float]:
    return {k: v / max(self.count, 1) for k, v in self.sums.items()}

  def images_per_sec(self, batch_size: int) -> float:
    return self.timed_steps * batch_size / max(time.monotonic() - self.started, 1e-9)

  def state_dict(self) -> dict:
    return {'sums': dict(self.sums), 'count': self.count, 'replaced': self.replaced}


class StopRequest:
  """SIGTERM/SIGINT set a flag; the loop snapshots and exits after the current step."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name
    logging.warning('%s received: saving a snapshot after this step, then stopping', self.signal)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# ---- The run ------------------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the experiment ``config`` in ``workdir``; returns the last metrics.

  Returns a dict with ``'step'``, ``'train'`` (the last logged train record), ``'val'`` (the last
  validation summary, if any), ``'test'`` (the test split's summary, if it has one) and ``'stopped'``
  (None, or why the run stopped early).
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_snapshots, best_metric='top1')
  try:
    return _train(config, workdir, ckpt, is_main)
  finally:
    ckpt.close()


def _train(config, workdir, ckpt, is_main):
  resuming = ckpt.latest_step() is not None
  write_config(config, workdir, resuming=resuming)

  # Data, network, layout: every flag is checked here, before anything compiles.
  data_config = data_config_for(config, workdir)
  dataset = data.load_dataset(data_config, seed=config.seed, metadata_dir=workdir)
  if is_main:
    dataset.save_metadata(workdir)
  _sync('metadata written')
  network = models.build(config.model, dataset.num_classes)
  layout = layouts.resolve(config.layout, network, mesh_data=config.mesh.data,
                           mesh_model=config.mesh.model, batch_size=config.batch_size)
  mesh = layout.make_mesh()
  steps_per_epoch = data.steps_per_epoch(dataset, config.batch_size)
  if config.batch_accumulation > steps_per_epoch:
    raise ValueError(f'--config.batch_accumulation={config.batch_accumulation} exceeds the '
                     f'{steps_per_epoch} batches of an epoch')
  cadence = Cadence.from_config(config, steps_per_epoch)
  tx = build_optimizer(config, steps_per_epoch)
  image_shape = (config.data.crop_size, config.data.crop_size, config.data.channels)
  logging.info('dataset: %r', dataset)
  logging.info('network %s: %s classes; layout %s on mesh data=%d x model=%d; %d steps/epoch',
               network.name, dataset.num_classes, layout.name, layout.data, layout.model,
               steps_per_epoch)

  train_iter = data.train_iterator(dataset, data_config, global_batch_size=config.batch_size,
                                   seed=config.seed, num_epochs=config.num_epochs,
                                   shard_index=jax.process_index(),
                                   shard_count=jax.process_count())
  plateau = (optim.PlateauController.from_config(config) if config.lr.policy == 'plateau'
             else None)

  # Restore or initialize.
  meta: dict[str, Any] = {}
  if resuming:
    abstract = step_lib.abstract_train_state(network, layout, mesh, tx, image_shape=image_shape)
    state, meta = ckpt.restore(None, abstract, data_iterator=train_iter)
    logging.info('resumed from snapshot %d in %s', int(state.step), ckpt.directory)
  else:
    state = step_lib.create_train_state(network, layout, mesh, tx, seed=config.seed,
                                        image_shape=image_shape)
    if config.get('init_from'):
      from alexnet_jax import finetune  # pylint: disable=g-import-not-at-top
      state = state.replace(params=finetune.initialize_from(
          config.init_from, network, layout, mesh, state.params))
  if plateau is not None and 'plateau' in meta:
    plateau.load_state_dict(meta['plateau'])
  step = int(state.step)
  writer = metrics_writer.MetricsWriter(workdir, enabled=is_main)
  writer.truncate_after(step)
  window = TrainWindow(meta.get('window'))
  best_top1 = meta.get('best_top1')
  stale_validations = int(meta.get('stale_validations', 0))
  last_val = meta.get('last_val')
  last_train = None
  stopped = None

  train_step = step_lib.make_train_step(network, layout, mesh, tx)
  eval_step = step_lib.make_eval_step(network, layout, mesh)
  sharding = layout.batch_sharding(mesh)

  def snapshot(at_step: int) -> None:
    info = {'window': window.state_dict(), 'best_top1': best_top1,
            'stale_validations': stale_validations, 'last_val': last_val,
            'epoch': cadence.epoch(at_step)}
    if plateau is not None:
      info['plateau'] = plateau.state_dict()
    top1 = None if last_val is None else last_val.get('top1')
    ckpt.save(at_step, state, data_iterator=train_iter, meta=info,
              metrics=None if top1 is None else {'top1': top1})

  # One progress line per run: the other processes keep quiet.
  quiet = {'log_every_secs': 30.0} if is_main else {'tty': False, 'log_every_secs': None}
  with StopRequest() as stop, Progress(cadence.total_steps, 'train', initial=step, **quiet) as bar:
    say = bar.write if is_main else (lambda message: None)
    while step < cadence.total_steps:
      batch = next(train_iter)
      replaced = int(np.sum(batch['replaced']))
      device_batch = {'image': jax.make_array_from_process_local_data(sharding, batch['image']),
                      'label': jax.make_array_from_process_local_data(sharding, batch['label'])}
      state, step_metrics = train_step(state, device_batch)
      step += 1
      values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      if not math.isfinite(values['loss']):
        raise NonFiniteLossError(
            f'the loss became {values["loss"]} at step {step} (epoch {cadence.epoch(step):.2f}); '
            f'the last good snapshot is step {ckpt.latest_step()}. Lower the learning rate '
            f'(--config.learning_rate={config.learning_rate / 10:g}) or check the data.')
      window.add(values, replaced)
      epoch = cadence.epoch(step)

      if cadence.log(step):
        lr = float(jax.device_get(optim.get_learning_rate(state.opt_state)))
        last_train = writer.write('train', step, epoch, **window.means(), lr=lr,
                                  images_per_sec=window.images_per_sec(config.batch_size),
                                  replaced=window.replaced)
        window = TrainWindow()
      bar.update(1, epoch=f'{epoch:.2f}', loss=f'{values["loss"]:.4f}',
                 top1=f'{values["top1"]:.3f}')

      if cadence.validate(step) and dataset.has_split('val'):
        summary = evaluate_lib.evaluate_split(
            eval_step, state.params, dataset, data_config, 'val', batch_size=config.batch_size,
            mesh=mesh, layout=layout, ten_crop=config.data.ten_crop_eval, show_progress=False)
        last_val = {k: summary[k] for k in ('loss', 'top1', 'top5')}
        writer.write('val', step, epoch, **last_val)
        say(f'epoch {epoch:.2f} step {step}: val loss {last_val["loss"]:.4f} '
                  f'top-1 {100 * last_val["top1"]:.2f}% top-5 {100 * last_val["top5"]:.2f}%')
        if is_main:
          plots.plot_curves(metrics_writer.read_metrics(workdir),
                            os.path.join(workdir, 'plots', 'curves.png'),
                            title=f'{network.name} / {layout.name}')
        if best_top1 is None or last_val['top1'] > best_top1:
          best_top1, stale_validations = last_val['top1'], 0
        else:
          stale_validations += 1
        if plateau is not None and plateau.update(last_val['top1']):
          new_lr = config.learning_rate * plateau.scale
          state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, new_lr))
          say(f'validation top-1 stopped improving: learning rate now {new_lr:g}')
        if 0 < config.early_stopping_patience <= stale_validations:
          stopped = (f'early stopping: no validation improvement in {stale_validations} '
                     f'validations')

      if cadence.snapshot(step) or stopped or stop.signal:
        snapshot(step)
      if stop.signal and step < cadence.total_steps:
        stopped = f'{stop.signal} at step {step}; run the same command to resume'
      if stopped:
        say(stopped)
        break

  results = {'step': step, 'train': last_train, 'val': last_val, 'stopped': stopped}
  if step == cadence.total_steps and dataset.has_split('test'):
    summary = evaluate_lib.evaluate_split(
        eval_step, state.params, dataset, data_config, 'test', batch_size=config.batch_size,
        mesh=mesh, layout=layout, ten_crop=config.data.ten_crop_eval)
    if is_main:
      evaluate_lib.write_eval(workdir, 'test', step, summary)
    writer.write('test', step, cadence.epoch(step),
                 **{k: summary[k] for k in ('loss', 'top1', 'top5')})
    results['test'] = summary
  writer.close()
  return results


# ---- Command line -------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def main(argv):
  del argv
  from alexnet_jax import distributed
  config = FLAGS.config
  distributed.initialize(devices_needed(config), distributed.DistributedOptions.from_env(
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id, devices_per_process=FLAGS.devices_per_process))
  results = train_and_evaluate(config, FLAGS.workdir)
  val = results.get('val') or {}
  line = f'done at step {results["step"]}'
  if val:
    line += f': val top-1 {100 * val["top1"]:.2f}%, top-5 {100 * val["top5"]:.2f}%'
  if results.get('stopped'):
    line += f' ({results["stopped"]})'
  if jax.process_index() == 0:
    print(line)


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'Experiment file (experiments/*.py).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run directory: config, checkpoints, metrics, plots. '
                      'Running again on the same workdir resumes.')
  # Multi-host (see alexnet_jax/distributed.py); unset means: from the environment, else one process.
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (jax.distributed).')
  flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
  flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes-1.')
  flags.DEFINE_integer('devices_per_process', None, 'CPU host devices to force in each process.')
  flags.mark_flags_as_required(['config', 'workdir'])


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
