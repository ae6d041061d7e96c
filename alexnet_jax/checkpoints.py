"""Snapshots of a run under WORKDIR/checkpoints: train state, data-iterator position, JSON meta.

What it is for: `train.py` saves a snapshot at each snapshot interval, at the end and on SIGTERM, and on
start restores the latest one, so that a run resumes exactly (DESIGN.md, "the workdir means resume").
A step directory holds up to four items:

    checkpoints/<step>/state/   the train-state pytree (orbax StandardSave: arrays, typed PRNG keys, ...)
    checkpoints/<step>/data/    the grain iterator state (grain.checkpoint.CheckpointSave), if given
    checkpoints/<step>/meta/    a JSON dict (plateau controller, epoch, config digest, ...)
    checkpoints/<step>/metrics/ the metrics used to rank snapshots (validation top-1 by default)

Semantics worth knowing (verified on orbax-checkpoint 0.12.8, see tests/test_checkpoints.py):

* **Async and atomic.** `save` returns once the arrays are copied off the devices and the iterator
  state is captured; files are written in the background into `<step>.orbax-checkpoint-tmp/` and
  renamed to `<step>/` when complete. A process killed mid-save leaves only the tmp folder, which
  `all_steps`/`latest_step` never list and `restore` never reads; the next Checkpointer on the
  directory removes it in the background. The caller may donate or delete its arrays once `save`
  returns (tested).
* **Keep N plus the best** (DIGITS keeps every snapshot; we keep `keep` latest plus the best one by
  `best_metric`): an orbax `AnyPreservationPolicy` of `LatestN(keep)` and `BestN(n=1)`. Snapshots
  saved without metrics are never the best and are kept only while among the latest `keep`. The
  metrics are stored with each step, so `best_step()` survives restarts.
* Saving a step that already exists is a no-op returning False (e.g. the final snapshot falls on an
  interval snapshot).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp

try:  # grain is only needed when a data iterator is saved or restored.
  import grain
except ImportError:  # pragma: no cover
  grain = None

_STATE, _META, _DATA = 'state', 'meta', 'data'


class Checkpointer:
  """An orbax CheckpointManager over `WORKDIR/checkpoints` for one run.

  Args:
    workdir: the run's directory; snapshots go to `workdir/checkpoints`.
    keep: how many of the latest snapshots to keep (`config.keep_snapshots`); <= 0 keeps all.
    best_metric: the key in `save(..., metrics=)` that ranks snapshots (validation top-1).
    best_mode: 'max' (accuracy) or 'min' (loss / error).
    async_save: write in a background thread (the default); False for fully synchronous saves.
  """

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, best_metric: str = 'top1',
               best_mode: str = 'max', async_save: bool = True):
    if best_mode not in ('max', 'min'):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = os.path.join(os.path.abspath(os.fspath(workdir)), 'checkpoints')
    self.best_metric = best_metric
    self.best_mode = best_mode
    worst = -math.inf if best_mode == 'max' else math.inf

    def metric(metrics: Mapping[str, Any]) -> float:
      # A snapshot whose metrics lack the key (or hold NaN) ranks last instead of raising.
      value = metrics.get(best_metric) if metrics else None
      try:
        value = float(value)
      except (TypeError, ValueError):
        return worst
      return value if math.isfinite(value) else worst

    pp = ocp.checkpoint_managers
    policy = pp.AnyPreservationPolicy(policies=[
        pp.LatestN(n=keep if keep and keep > 0 else None),
        pp.BestN(get_metric_fn=metric, reverse=(best_mode == 'min'), n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=metric,            # used by best_step(); preservation is the policy above
        best_mode=best_mode,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,  # partial saves of a killed run are removed on start
        create=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  # ---- Queries ------------------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """Finalized snapshots, ascending (partial `*.orbax-checkpoint-tmp*` folders are not listed)."""
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def best_step(self) -> Optional[int]:
    """The kept snapshot with the best `best_metric`; None if no snapshot was saved with metrics."""
    return self._mngr.best_step()

  def metrics(self, step: int) -> Optional[dict[str, Any]]:
    """The metrics saved with `step` (None when it was saved without)."""
    self._check_step(step)
    return self._mngr.metrics(step)

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _check_step(self, step: int) -> None:
    steps = self.all_steps()
    if step not in steps:
      available = ', '.join(map(str, steps)) if steps else 'none'
      raise FileNotFoundError(
          f'no finished checkpoint for step {step} in {self.directory}; available steps: '
          f'{available} (best: {self.best_step()}, latest: {self.latest_step()})')

  # ---- Save / restore -----------------------------------------------------------------------------

  def save(self, step: int, state: Any, data_iterator: Any = None,
           meta: Optional[Mapping[str, Any]] = None,
           metrics: Optional[Mapping[str, Any]] = None) -> bool:
    """Starts saving a snapshot of `state` at `step`; returns False if that step already exists.

    Args:
      step: the training step (number of optimizer updates done).
      state: any pytree of arrays (params, optimizer state, step, typed PRNG keys ...).
      data_iterator: a grain iterator (DatasetIterator / DataLoader iterator); its position is
        captured now, before save returns, so the loop can keep consuming it.
      meta: a JSON-serializable dict restored alongside (plateau state, epoch, config digest ...).
      metrics: numbers used to rank snapshots (must contain `best_metric` to compete for best).
    """
    step = int(step)
    if step in self._mngr.all_steps():
      logging.info('checkpoint for step %d already exists; not saving it again', step)
      return False
    items = {_STATE: ocp.args.StandardSave(state),
             _META: ocp.args.JsonSave(dict(meta or {}))}
    if data_iterator is not None:
      items[_DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = None if metrics is None else {k: _jsonable(v) for k, v in metrics.items()}
    saved = self._mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    return bool(saved)

  def restore(self, step: Optional[int] = None, abstract_state: Any = None,
              data_iterator: Any = None) -> tuple[Any, dict[str, Any]]:
    """Restores a finished snapshot: returns (state, meta) and sets `data_iterator`'s position.

    Args:
      step: the step to restore; None for the latest.
      abstract_state: a pytree of `jax.ShapeDtypeStruct` (with the target shardings, e.g. from
        `jax.eval_shape` + the layout's shardings) giving structure, dtypes and placement; None
        restores the saved structure with the saved shardings.
      data_iterator: a fresh grain iterator of the same pipeline; its state is set in place.
    """
    self.wait()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f'no finished checkpoint in {self.directory}')
    step = int(step)
    self._check_step(step)
    items = {_STATE: ocp.args.StandardRestore(abstract_state)}
    has_meta = os.path.isdir(os.path.join(self._step_dir(step), _META))
    if has_meta:
      items[_META] = ocp.args.JsonRestore()
    if data_iterator is not None:
      if not os.path.isdir(os.path.join(self._step_dir(step), _DATA)):
        raise ValueError(f'checkpoint {step} in {self.directory} was saved without a data '
                         'iterator state; restore it with data_iterator=None')
      items[_DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    meta = dict(restored[_META]) if has_meta and restored[_META] is not None else {}
    return restored[_STATE], meta

  def item_metadata(self, step: int) -> Any:
    """Shapes/dtypes/shardings of the saved state, without reading the arrays."""
    self._check_step(step)
    return self._mngr.item_metadata(step)[_STATE]

  def wait(self) -> None:
    """Blocks until the last async save is on disk (and old snapshots are deleted)."""
    self._mngr.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads."""
    self._mngr.wait_until_finished()
    self._mngr.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _jsonable(v: Any) -> Any:
  """Numbers from numpy/jax as Python floats/ints (orbax writes the metrics as JSON)."""
  if isinstance(v, (bool, int, float, str)) or v is None:
    return v
  if hasattr(v, 'item') and getattr(v, 'size', 2) == 1:
    return v.item()
  if isinstance(v, jax.Array):
    return jax.device_get(v).tolist()
  return v
