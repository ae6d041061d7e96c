"""Snapshots of a run under WORKDIR/checkpoints: train state, data-iterator position, JSON meta.

What it is for: the trainer (`training/trainer.py`) saves a snapshot at each snapshot interval, at the end and on SIGTERM, and on
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
* **Readers open read-only** (``read_only=True``: evaluate, classify, export, fine-tuning, the
  dashboard). A read-write manager removes the temporary folders of unfinished saves when it opens, so
  a reader opened while the trainer is saving would destroy that snapshot; a read-only one never
  writes or deletes anything.
* **Parameters without the solver.** ``restore_params`` reads only the ``params`` subtree of the state
  item (orbax partial restore), so a reader needs neither the optimizer nor its settings.
* **Damaged snapshots are skipped, not fatal.** ``restore_latest`` and ``restore_params(None, ...)``
  try the snapshots newest first and skip one that does not restore (a missing or truncated array
  file, an emptied metadata file), saying which step and why; an explicitly requested step that is
  damaged is an error naming the snapshots that do restore.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Optional

import logging as std_logging

from absl import logging
import orbax.checkpoint as ocp

from alexnet_jax.runtime import fileio

try:  # grain is only needed when a data iterator is saved or restored.
  import grain
except ImportError:  # pragma: no cover
  grain = None

_STATE, _META, _DATA = 'state', 'meta', 'data'


class DamagedCheckpointError(ValueError):
  """A snapshot that exists on disk but cannot be restored (missing, truncated or corrupt files)."""


class SnapshotWriteError(OSError):
  """A snapshot could not be written (the files of the complete ones are untouched)."""


# What a failed background write says, in tensorstore's or the OS's words -> ours.
_WRITE_CAUSES = (('No space left on device', 'no space left on device'),
                 ('Disk quota exceeded', 'disk quota exceeded'),
                 ('Read-only file system', 'read-only file system'),
                 ('Permission denied', 'permission denied'))


class _OrbaxNotices(std_logging.Filter):
  """Drops orbax's warnings about a manager opened read-only (which is what readers want) and its
  error line about an unreadable metadata file (we skip that snapshot and say so, in words)."""
  NOTICES = ('read_only=True', 'directory is read only', 'Failed to json parse Metadata file')

  def filter(self, record: std_logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(notice in message for notice in self.NOTICES)


std_logging.getLogger('absl').addFilter(_OrbaxNotices())


def _reason(error: BaseException) -> str:
  """The first line of an exception, for a one-line 'skipped because' message.

  orbax wraps the tensorstore error that names the array and the file ("OUT_OF_RANGE: Error reading
  \"params.towers.fc6.kernel/0.0\" ...") in a generic "Encountered error while reading array index";
  the innermost cause is the informative one.
  """
  while (error.__cause__ or error.__context__) is not None and 'Encountered error' in str(error):
    error = error.__cause__ or error.__context__
  text = str(error).strip().splitlines()
  first = text[0] if text else ''
  first = first.split(' See full TensorStore details')[0]   # the rest is a page of JSON
  if len(first) > 200:
    first = first[:200] + '...'
  return f'{type(error).__name__}: {first}'.rstrip(': ')


def finished_steps(workdir: str | os.PathLike) -> list[int]:
  """The finished snapshots of ``workdir`` (ascending), read without opening a manager for writing."""
  if not os.path.isdir(os.path.join(os.fspath(workdir), 'checkpoints')):
    return []
  with Checkpointer(workdir, read_only=True) as ckpt:
    return ckpt.all_steps()


class Checkpointer:
  """An orbax CheckpointManager over `WORKDIR/checkpoints` for one run.

  Args:
    workdir: the run's directory; snapshots go to `workdir/checkpoints`.
    keep: how many of the latest snapshots to keep (`config.keep_snapshots`); <= 0 keeps all.
    best_metric: the key in `save(..., metrics=)` that ranks snapshots (validation top-1).
    best_mode: 'max' (accuracy) or 'min' (loss / error).
    async_save: write in a background thread (the default); False for fully synchronous saves.
    read_only: a reader's view: never writes, never removes unfinished saves of a live run.
  """

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, best_metric: str = 'top1',
               best_mode: str = 'max', async_save: bool = True, read_only: bool = False):
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

    self.read_only = read_only
    self._saving: Optional[int] = None   # the step of the last save started
    if read_only:
      options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, cleanup_tmp_directories=False, best_fn=metric,
          best_mode=best_mode, enable_async_checkpointing=False)
      self._mngr = ocp.CheckpointManager(self.directory, options=options)
      return
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
    if self.read_only:
      raise ValueError(f'{self.directory} was opened read-only; only the trainer saves snapshots')
    step = int(step)
    if step in self._mngr.all_steps():
      logging.info('checkpoint for step %d already exists; not saving it again', step)
      return False
    items = {_STATE: ocp.args.StandardSave(state),
             _META: ocp.args.JsonSave(dict(meta or {}))}
    if data_iterator is not None:
      items[_DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = None if metrics is None else fileio.plain(metrics, finite=False)   # orbax writes them as JSON
    try:   # orbax first waits for the previous save: its failure surfaces here
      saved = self._mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(e) from e
    self._saving = step
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
    if self.read_only and data_iterator is not None:
      raise ValueError('a read-only Checkpointer restores no data iterator (only the trainer does)')
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

  def restore_latest(self, abstract_state: Any = None, data_iterator: Any = None
                     ) -> tuple[Any, dict[str, Any], list[str]]:
    """``restore`` of the newest snapshot that restores; returns (state, meta, skipped).

    ``skipped`` says, one line each, which newer snapshots were damaged and why (also logged).
    Raises ``DamagedCheckpointError`` when no snapshot restores, FileNotFoundError when there is none.
    """
    step, (state, meta), skipped = self._newest_that_restores(
        lambda step: self.restore(step, abstract_state, data_iterator=data_iterator),
        hint='. When every snapshot fails alike, the run was probably written by another number of '
             'processes: resume it with the command that started it (the "command" of its status.json)')
    self._set_aside(s for s in self.all_steps() if s > step)
    return state, meta, skipped

  def _newest_that_restores(self, restore_one: Callable[[int], Any], hint: str = ''
                            ) -> tuple[int, Any, list[str]]:
    """(step, ``restore_one(step)``, skipped) for the newest snapshot that restores, newest first.

    A snapshot that raises is skipped, saying which and why (logged, and one line each in
    ``skipped``); none restoring is a ``DamagedCheckpointError`` listing them all (and ``hint``).
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f'no finished checkpoint in {self.directory}')
    skipped = []
    for step in reversed(steps):
      try:
        return step, restore_one(step), skipped
      except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
      except Exception as e:  # pylint: disable=broad-except  # any damage: try the next older one
        skipped.append(f'snapshot {step} does not restore ({_reason(e)})')
        logging.warning('%s: skipping snapshot %d, which does not restore: %s', self.directory,
                        step, _reason(e))
    raise DamagedCheckpointError(f'no snapshot in {self.directory} restores: ' + '; '.join(skipped)
                                 + hint)

  def _set_aside(self, damaged) -> None:
    """Renames damaged snapshots to ``<step>.damaged`` (kept for inspection, never listed again), so
    that the resumed run saves those steps anew instead of skipping them as existing."""
    moved = []
    for step in damaged:
      source = self._step_dir(step)
      target, n = source + '.damaged', 1
      while os.path.exists(target):
        target, n = f'{source}.damaged-{n}', n + 1
      os.rename(source, target)
      moved.append(os.path.basename(target))
    if moved:
      logging.warning('%s: set the damaged snapshot(s) aside as %s', self.directory, ', '.join(moved))
      self._mngr.reload()

  def restore_params(self, step: Optional[int], abstract_params: Any) -> tuple[Any, int]:
    """The ``params`` subtree of snapshot ``step`` (None: the newest that restores); (params, step).

    Only the parameters are read (orbax partial restore), into ``abstract_params``' shardings, so
    restoring needs no optimizer. A damaged explicit ``step`` raises ``DamagedCheckpointError`` naming
    the snapshots that restore.
    """
    self.wait()
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f'no finished checkpoint in {self.directory}')
    if step is not None:
      self._check_step(int(step))
      try:
        return self._restore_params(int(step), abstract_params), int(step)
      except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
      except Exception as e:  # pylint: disable=broad-except
        intact = [s for s in steps if s != int(step) and self._restores(s, abstract_params)]
        raise DamagedCheckpointError(
            f'snapshot {step} in {self.directory} is damaged and does not restore ({_reason(e)}); '
            f'snapshots that restore: {", ".join(map(str, intact)) or "none"}') from None
    step, params, _ = self._newest_that_restores(
        lambda step: self._restore_params(step, abstract_params))
    return params, step

  def _restore_params(self, step: int, abstract_params: Any) -> Any:
    item = {'params': abstract_params}
    args = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(item))
    return self._mngr.restore(step, args=ocp.args.Composite(**{_STATE: args}))[_STATE]['params']

  def _restores(self, step: int, abstract_params: Any) -> bool:
    try:
      self._restore_params(step, abstract_params)
      return True
    except Exception:  # pylint: disable=broad-except
      return False

  def item_metadata(self, step: int) -> Any:
    """Shapes/dtypes/shardings of the saved state, without reading the arrays."""
    self._check_step(step)
    return self._mngr.item_metadata(step)[_STATE]

  def wait(self) -> None:
    """Blocks until the last async save is on disk (and old snapshots are deleted).

    Raises ``SnapshotWriteError`` when the background save failed (a full disk, say).
    """
    if self.read_only:
      return
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # orbax re-raises its thread's error
      raise self._write_error(e) from e

  def close(self) -> None:
    """Waits for pending saves (and the start-up clean-up of unfinished ones) and releases the
    manager's threads, so no background work outlives the process's exit."""
    try:
      self.wait()
    finally:
      try:
        self._mngr.close()
      except Exception:  # pylint: disable=broad-except  # the save's error is the one to report
        logging.warning('%s: closing the checkpoint manager after a failed save', self.directory)

  def _write_error(self, error: BaseException) -> 'SnapshotWriteError':
    if isinstance(error, SnapshotWriteError):
      return error
    text = str(error)
    cause = next((words for marker, words in _WRITE_CAUSES if marker in text), None)
    step = self._saving
    kept = [s for s in self.finished_on_disk() if s != step]
    return SnapshotWriteError(
        f'cannot write snapshot {step} in {self.directory}: {cause or _reason(error)}. The complete '
        f'snapshots are kept ({", ".join(map(str, kept)) or "none yet"}); fix that and run the same '
        f'command to resume')

  def finished_on_disk(self) -> list[int]:
    """The snapshots whose folders are complete on disk now (a save in flight is not among them)."""
    return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit()) if os.path.isdir(
        self.directory) else []

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
