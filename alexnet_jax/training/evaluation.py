"""Evaluation of a run: loss, top-1, top-5, per-class accuracy and the confusion matrix of one split.

The library behind ``python -m alexnet_jax.evaluate`` (``evaluate.py``) and the trainer's validation.
The images go through ``data.preprocess_for_eval`` -- the function classification uses too -- so
evaluate and classify agree on every image. (With ``config.data.augment_on='device'`` its second half,
the crops and the mean, runs in the eval step instead: the same float32 arithmetic, the same numbers.)
With ``ten_crop`` each image is scored as the paper's section 4.1 does: the softmax averaged over the
four corner and the centre crops and their mirrors.

A checkpoint restores into any layout (its arrays are ``[tower, ...]`` whatever wrote them), so a run
trained with the towers on two devices evaluates on one, and the reverse; only the parameters are read,
read-only (``run/workdir.py``), so evaluating a live run does not disturb it.

The batches are placed on the devices ahead of the eval step (``data.DevicePrefetch``) and a batch's
logits are read back once ``config.data.device_prefetch`` later batches are dispatched, so the device
does not wait for the host's scoring.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from alexnet_jax import data, metrics, models
from alexnet_jax.run import plots
from alexnet_jax.runtime import fileio
from alexnet_jax.data import device_augment
from alexnet_jax.parallel import layouts, step as step_lib
from alexnet_jax.runtime.progress import Progress
from alexnet_jax.run import workdir as workdir_lib


def evaluate_split(eval_step, params, dataset, data_config, split: str, *, batch_size: int,
                   mesh, layout: layouts.Layout, ten_crop: bool = False,
                   show_progress: bool = True) -> dict[str, Any]:
  """Runs ``eval_step`` over every example of ``split`` once; returns ``metrics.summarize_eval``'s dict.

  ``batch_size`` is the global batch; each process feeds its own rows of every batch.
  """
  iterator = data.eval_iterator(dataset, data_config, split, global_batch_size=batch_size,
                                ten_crop=ten_crop, shard_index=jax.process_index(),
                                shard_count=jax.process_count())
  acc = metrics.EvalAccumulator(dataset.num_classes, dataset.classes)
  num_batches = -(-len(dataset.split(split)) // batch_size)
  failed = 0
  lag = device_prefetch(data_config)
  pending = collections.deque()   # (logits on the device, this process's host fields), oldest first

  def score_oldest() -> None:
    nonlocal failed
    logits, host = pending.popleft()
    labels = gather_to_host(host['label'])
    mask = gather_to_host(host['mask'])
    failed += int(gather_to_host(host['replaced']).sum())
    acc.update_from_logits(gather_to_host(logits), labels, mask)
    bar.update(1)

  # The batches are placed on the devices ahead (data.DevicePrefetch), and a batch's logits are read
  # back only once `lag` later batches are dispatched, so the device never waits for the host's
  # scoring; with data.device_prefetch=0, each batch is read, run and scored in turn, as before.
  with Progress(num_batches, f'eval {split}', unit='batch', tty=None if show_progress else False,
                log_every_secs=30.0 if show_progress else None) as bar, \
      data.DevicePrefetch(iter(iterator), batch_placer(layout.batch_sharding(mesh), ('image',)),
                          size=lag) as batches:
    for device_batch, host in batches:
      logits = eval_step(params, device_batch['image'], ten_crop=ten_crop)
      if lag and logits.is_fully_addressable:
        logits.copy_to_host_async()   # starts the copy; read when scored
      pending.append((logits, host))
      while len(pending) > lag:
        score_oldest()
    while pending:
      score_oldest()
  summary = acc.summary()
  summary['failed_to_decode'] = failed
  summary['split'] = split
  summary['ten_crop'] = bool(ten_crop)
  return summary


def device_prefetch(data_config) -> int:
  """``config.data.device_prefetch`` (2 for a run's config.json written before the field existed)."""
  value = getattr(data_config, 'device_prefetch', None)
  return 2 if value is None else int(value)


def batch_placer(sharding, fields: tuple[str, ...]):
  """``place(batch) -> (device_batch, host_batch)`` for ``data.DevicePrefetch``: the ``fields`` of a
  batch of this process's rows become global arrays with ``sharding`` (each process contributes its own
  share, ``jax.make_array_from_process_local_data``); the other fields stay on the host."""

  def place(batch):
    device = {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in fields
              if k in batch}
    return device, {k: v for k, v in batch.items() if k not in device}

  return place


def gather_to_host(x: jax.Array | np.ndarray) -> np.ndarray:
  """One numpy array on every process: a global array whole, or a batch's per-process rows (a host array)
  concatenated in process order (the layout of the global batch)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def write_eval(workdir: str, split: str, step: int, summary: dict[str, Any]) -> str:
  """Writes ``eval/<split>-<step>.json`` and its confusion-matrix PNG atomically; returns the JSON path."""
  directory = os.path.join(workdir, 'eval')
  os.makedirs(directory, exist_ok=True)
  stem = os.path.join(directory, f'{split}-{step}')
  fileio.write_json(stem + '.json', {'step': step, **summary}, indent=1)
  plots.plot_confusion_matrix(np.asarray(summary['confusion']), summary['class_names'],
                              stem + '-confusion.png')
  return stem + '.json'


def run_evaluation(workdir: str, *, split: str = 'val', step: str = 'latest', ten_crop: bool = False,
                   layout_name: str | None = None, config: ml_collections.ConfigDict | None = None
                   ) -> tuple[str, dict[str, Any]]:
  """Evaluates a checkpoint of the run in ``workdir``; returns (json path, summary).

  ``config`` is the run's ``config.json`` when the caller has read it already (the command does, to
  choose the devices before JAX starts); by default it is read here.
  """
  if config is None:
    config = workdir_lib.read_config(workdir)
  dataset = workdir_lib.load_run_dataset(config, workdir)
  if not dataset.has_split(split):
    raise ValueError(f'--split={split}: the dataset of {workdir} has no {split!r} split '
                     f'(it has {sorted(dataset.splits)})')
  network = models.build(config.model, dataset.num_classes)
  layout = layouts.resolve(layout_name or config.layout, network, batch_size=config.batch_size,
                           mesh_data=-1 if layout_name else config.mesh.data,
                           mesh_model=-1 if layout_name else config.mesh.model)
  mesh = layout.make_mesh()
  params, number, _ = workdir_lib.restore_params(workdir, config, step, network, layout, mesh)
  eval_step = step_lib.make_eval_step(network, layout, mesh,
                                      crops=device_augment.EvalCrops.from_contract(dataset.contract))
  summary = evaluate_split(eval_step, params, dataset, config.data, split,
                           batch_size=config.batch_size, mesh=mesh, layout=layout,
                           ten_crop=ten_crop)
  path = write_eval(workdir, split, number, summary) if jax.process_index() == 0 else ''
  return path, summary
