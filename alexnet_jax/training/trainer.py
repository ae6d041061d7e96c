"""Training and evaluation of one experiment: ``train_and_evaluate(config, workdir)``.

Running it again on the same workdir **resumes**: parameters, optimizer state, step, the data iterator's
position, the learning-rate controller and the metrics log all continue exactly where the last snapshot
left them, so an interrupted run ends bit-identical to an uninterrupted one (on CPU). A resume whose
config differs in a field that changes the results stops with a message naming the fields (more epochs
is allowed). ``python -m alexnet_jax.train`` (``train.py``) is the command around it.

The sections below follow big_vision's trainer: checks and set-up (every flag, the dataset, the network's
shapes and the layout are checked before anything compiles), the update step (``parallel/step.py``: pure,
jitted once, state donated, dropout from ``fold_in(rng, step)``), the restore (the newest snapshot that
restores), and the loop, where one ``Cadence`` decides when to log, validate and snapshot. The workdir
keeps a live ``status.json`` and ``train.log``, and one trainer at a time holds it (``runtime/lock.py``).

The loop keeps the device busy (issue 23): the next batches are read and placed on the devices in a
background thread (``data.DevicePrefetch``, ``config.data.device_prefetch`` of them), and the host reads
the steps' metrics only where it needs them -- log lines, validation, snapshots, the end -- all at once,
so it dispatches step N+1 while step N runs. ``device_prefetch=0`` is the loop of before (each batch read
when needed, every step's metrics read at once), kept to measure the difference
(``benchmarks/train_loop.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from alexnet_jax import data, models
from alexnet_jax.run import plots
from alexnet_jax.runtime import distributed
from alexnet_jax.training import config_checks, evaluation, finetune, finetune_controls, optim, profiling
from alexnet_jax.training.cadence import Cadence, TrainWindow
from alexnet_jax.data import device_augment
from alexnet_jax.parallel import layouts, step as step_lib
from alexnet_jax.runtime.progress import Progress
from alexnet_jax.run import checkpoints, metrics_writer
from alexnet_jax.runtime import lock, logs, process, status as status_lib, stopping
from alexnet_jax.run import workdir as workdir_lib


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite: the run stops at once, keeping its last good snapshot."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the experiment ``config`` in ``workdir``; returns the last metrics.

  Returns a dict with ``'step'``, ``'train'`` (the last logged train record), ``'val'`` (the last
  validation summary, if any), ``'test'`` (the test split's summary, if it has one) and ``'stopped'``
  (None, or why the run stopped early; ``'stopped_by_signal'`` says whether a signal stopped it).
  """
  config_checks.validate(config)   # every numeric field and choice, before anything else happens
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  # One writer per workdir: process 0 holds the lock (the others write nothing of their own).
  with lock.WorkdirLock(workdir, what='train') if is_main else contextlib.nullcontext():
    # A refused resume (another config, an unreadable config.json) leaves the run's status alone.
    resuming = bool(checkpoints.finished_steps(workdir))
    workdir_lib.write_config(config, workdir, resuming=resuming)
    with _log_file(workdir, enabled=is_main), \
        status_lib.StatusWriter(workdir, 'train', argv=distributed.relaunch_argv(),
                                enabled=is_main) as status:
      status.start(num_epochs=config.num_epochs)
      results = _train(config, workdir, status, is_main)
      if results.get('stopped_by_signal'):
        status.finish('stopped', message=results['stopped'],
                      exit_status=process.EXIT_STOPPED)
      else:
        status.finish('done', message=results.get('stopped'))
      return results


@contextlib.contextmanager
def _log_file(workdir: str, *, enabled: bool):
  """The run's own log lines also go to ``WORKDIR/train.log`` (DIGITS' raw log) while it runs."""
  handle = logs.attach_log_file(workdir) if enabled else None
  try:
    yield
  finally:
    logs.detach_log_file(handle)


def _train(config, workdir, status, is_main):
  # ---- Checks and set-up: nothing compiles, no snapshot is opened for writing ---------------------
  data_config = workdir_lib.data_config_for(config, workdir)
  dataset = data.load_dataset(data_config, seed=config.seed, metadata_dir=workdir)
  if is_main:
    dataset.save_metadata(workdir)
  workdir_lib.sync('metadata written')
  image_shape = workdir_lib.image_shape_of(config)
  config_checks.check_network(config, dataset.num_classes)
  network = models.build(config.model, dataset.num_classes)
  finetune_controls.check_network(config, network, image_shape)
  layout = layouts.resolve(config.layout, network, mesh_data=config.mesh.data,
                           mesh_model=config.mesh.model, batch_size=config.batch_size)
  mesh = layout.make_mesh()
  steps_per_epoch = data.steps_per_epoch(dataset, config.batch_size)
  if config.batch_accumulation > steps_per_epoch:
    raise ValueError(f'--config.batch_accumulation={config.batch_accumulation} exceeds the '
                     f'{steps_per_epoch} batches of an epoch')
  cadence = Cadence.from_config(config, steps_per_epoch)
  profiler = profiling.StepProfiler.from_config_value(
      config.get('profile_steps', ''), os.path.join(workdir, 'profile'), enabled=is_main)
  tx = optim.build_optimizer(config, steps_per_epoch)
  logging.info('dataset: %r', dataset)
  wrapping = data.wrap_note(dataset, config.batch_size)
  if wrapping:
    logging.warning('%s', wrapping)
  logging.info('network %s: %s classes; layout %s on mesh data=%d x model=%d; %d steps/epoch',
               network.name, dataset.num_classes, layout.name, layout.data, layout.model,
               steps_per_epoch)
  logging.info('fine-tuning controls: %s', finetune_controls.describe(config))
  train_iter = data.train_iterator(dataset, data_config, global_batch_size=config.batch_size,
                                   seed=config.seed, num_epochs=config.num_epochs,
                                   shard_index=jax.process_index(),
                                   shard_count=jax.process_count())
  with checkpoints.Checkpointer(workdir, keep=config.keep_snapshots, best_metric='top1') as ckpt:
    return _loop(config, workdir, status, is_main, ckpt, dataset, data_config, network, layout, mesh,
                 cadence, tx, train_iter, image_shape, profiler)


def _loop(config, workdir, status, is_main, ckpt, dataset, data_config, network, layout, mesh,
          cadence, tx, train_iter, image_shape, profiler):
  # ---- Restore (the newest snapshot that restores) or initialize ----------------------------------
  plateau = (optim.PlateauController.from_config(config) if config.lr.policy == 'plateau'
             else None)
  meta: dict[str, Any] = {}
  # The batches are read and placed on the devices ahead of the steps (data.DevicePrefetch); its state,
  # saved in every snapshot, is that of the batches the steps consumed, so a resume reads the rest.
  sharding = layout.batch_sharding(mesh)
  prefetch = evaluation.device_prefetch(config.data)
  batches = data.DevicePrefetch(train_iter, evaluation.batch_placer(sharding, step_lib.BATCH_FIELDS),
                                size=prefetch)
  if ckpt.all_steps():
    abstract = step_lib.abstract_train_state(network, layout, mesh, tx, image_shape=image_shape)
    state, meta, skipped = ckpt.restore_latest(abstract, data_iterator=batches)
    logging.info('resumed from snapshot %d in %s%s', int(state.step), ckpt.directory,
                 f' (skipped: {"; ".join(skipped)})' if skipped else '')
  else:
    state = step_lib.create_train_state(network, layout, mesh, tx, seed=config.seed,
                                        image_shape=image_shape)
    if config.get('init_from'):
      state = state.replace(params=finetune.initialize_from(
          config.init_from, network, layout, mesh, state.params))
  if plateau is not None and 'plateau' in meta:
    plateau.load_state_dict(meta['plateau'])
  step = int(state.step)
  writer = metrics_writer.MetricsWriter(workdir, enabled=is_main)
  writer.truncate_after(step)
  window = TrainWindow(meta.get('window'))
  best = {'top1': meta.get('best_top1'), 'step': meta.get('best_step')}
  stale_validations = int(meta.get('stale_validations', 0))
  last_val = meta.get('last_val')
  last_train = None
  stopped, by_signal = None, False

  # With augment_on='device' the batches are stored uint8 images: the steps crop, mirror, light and
  # subtract the mean on the device (data/device_augment.py); float32 batches pass through unchanged.
  train_step = step_lib.make_train_step(
      network, layout, mesh, tx,
      augment=device_augment.TrainAugment.from_dataset(dataset, data_config, seed=config.seed))
  eval_step = step_lib.make_eval_step(network, layout, mesh,
                                      crops=device_augment.EvalCrops.from_contract(dataset.contract))

  def snapshot(at_step: int) -> None:
    info = {'window': window.state_dict(), 'best_top1': best['top1'], 'best_step': best['step'],
            'stale_validations': stale_validations, 'last_val': last_val,
            'epoch': cadence.epoch(at_step)}
    if plateau is not None:
      info['plateau'] = plateau.state_dict()
    top1 = None if last_val is None else last_val.get('top1')
    ckpt.save(at_step, state, data_iterator=batches, meta=info,
              metrics=None if top1 is None else {'top1': top1})
    # Finished snapshots only: this one is written in the background and listed from the next.
    status.update(force=True, snapshots=ckpt.finished_on_disk(), saving=at_step)

  def report(force: bool = False) -> None:
    elapsed, done = time.monotonic() - started, step - first_step
    rate = done / elapsed if done and elapsed > 0 else None
    status.update(force=force, step=step, total_steps=cadence.total_steps,
                  epoch=cadence.epoch(step), progress=step / max(cadence.total_steps, 1),
                  images_per_sec=None if rate is None else rate * config.batch_size,
                  eta_seconds=None if rate is None else (cadence.total_steps - step) / rate,
                  train=last_train and {k: last_train.get(k) for k in ('loss', 'top1', 'lr')},
                  val=last_val, best_val_top1=best['top1'], best_step=best['step'],
                  best_epoch=None if best['step'] is None else cadence.epoch(best['step']))

  # ---- Metrics: read at log points, not every step ------------------------------------------------
  # A step's metrics stay on the device until a log line, a validation, a snapshot or the end needs
  # them; then the steps since the last read come back in one transfer, so the host dispatches step
  # N+1 while step N runs. The finite-loss check stays exact: the steps are checked in order, and the
  # first bad one is named (no snapshot is written before its steps are checked, so the last snapshot
  # is a good one). With data.device_prefetch=0, every step is read at once, as before.
  pending: list[tuple[int, Any, int]] = []   # (step, metrics on the device, replaced examples)

  def read_metrics(with_lr: bool = False) -> tuple[dict[str, float] | None, float | None]:
    """Fetches the pending steps' metrics (and the learning rate); adds them to the window in step
    order; returns the last step's values and the learning rate."""
    if not pending and not with_lr:
      return None, None
    lr_array = optim.get_learning_rate(state.opt_state) if with_lr else None
    fetched, lr = jax.device_get(([m for _, m, _ in pending], lr_array))
    done = list(pending)
    pending.clear()
    values = None
    for (at, _, replaced), step_values in zip(done, fetched):
      values = {k: float(v) for k, v in step_values.items()}
      if not math.isfinite(values['loss']):
        raise NonFiniteLossError(
            f'the loss became {values["loss"]} at step {at} (epoch {cadence.epoch(at):.2f}); '
            f'the last good snapshot is step {ckpt.latest_step()}. Lower the learning rate '
            f'(--config.learning_rate={config.learning_rate / 10:g}) or check the data.')
      window.add(values, replaced)
    return values, None if lr is None else float(lr)

  started, first_step = time.monotonic(), step
  report(force=True)
  # One progress line per run: the other processes keep quiet.
  quiet = {'log_every_secs': 30.0} if is_main else {'tty': False, 'log_every_secs': None}
  with stopping.StopRequest() as stop, profiler, batches, \
      Progress(cadence.total_steps, 'train', initial=step, **quiet) as bar:
    say = bar.write if is_main else (lambda message: None)
    while step < cadence.total_steps:
      profiler.step(step)
      device_batch, host_batch = next(batches)
      state, step_metrics = train_step(state, device_batch)
      step += 1
      pending.append((step, step_metrics, int(np.sum(host_batch['replaced']))))
      epoch = cadence.epoch(step)
      shown = {}
      if cadence.log(step) or prefetch == 0:
        values, lr = read_metrics(with_lr=cadence.log(step))
        shown = {'loss': f'{values["loss"]:.4f}', 'top1': f'{values["top1"]:.3f}'}
      if cadence.log(step):
        last_train = writer.write('train', step, epoch, **window.means(), lr=lr,
                                  images_per_sec=window.images_per_sec(config.batch_size),
                                  replaced=window.replaced)
        window = TrainWindow()
      bar.update(1, epoch=f'{epoch:.2f}', **shown)

      if cadence.validate(step) and dataset.has_split('val'):
        summary = evaluation.evaluate_split(
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
        if best['top1'] is None or last_val['top1'] > best['top1']:
          best, stale_validations = {'top1': last_val['top1'], 'step': step}, 0
        else:
          stale_validations += 1
        if plateau is not None and plateau.update(last_val['top1']):
          new_lr = config.learning_rate * plateau.scale
          state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, new_lr))
          say(f'validation top-1 stopped improving: learning rate now {new_lr:g}')
        if 0 < config.early_stopping_patience <= stale_validations:
          stopped = (f'early stopping: no validation improvement in {stale_validations} '
                     f'validations')
        report(force=True)
      else:
        report()

      # Every process reaches the same decision at the same step (runtime/stopping.py), so the
      # snapshot below -- a collective -- is entered by all of them together.
      signalled = stop.should_stop(step)
      if cadence.snapshot(step) or stopped or signalled:
        read_metrics()   # the window saved with the snapshot, and its steps' losses checked
        snapshot(step)
      if signalled and step < cadence.total_steps:
        stopped = f'{signalled} at step {step}; run the same command to resume'
        by_signal = True
      if stopped:
        say(stopped)
        break

  results = {'step': step, 'train': last_train, 'val': last_val, 'stopped': stopped,
             'stopped_by_signal': by_signal}
  if step == cadence.total_steps and dataset.has_split('test'):
    summary = evaluation.evaluate_split(
        eval_step, state.params, dataset, data_config, 'test', batch_size=config.batch_size,
        mesh=mesh, layout=layout, ten_crop=config.data.ten_crop_eval)
    if is_main:
      evaluation.write_eval(workdir, 'test', step, summary)
    writer.write('test', step, cadence.epoch(step),
                 **{k: summary[k] for k in ('loss', 'top1', 'top5')})
    results['test'] = summary
  writer.close()
  ckpt.wait()
  status.update(snapshots=ckpt.finished_on_disk(), saving=None)
  report(force=True)
  return results
