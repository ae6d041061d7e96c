"""Profiler traces of chosen training steps: ``StepProfiler`` and the ``profile_steps`` config value.

A trace shows where a step's time goes -- each XLA kernel or thunk on the device, the host's dispatch,
the input pipeline, the gaps between them -- and is viewed in TensorBoard's profile plugin (``tensorboard
--logdir=DIR``, the "Profile" tab; it needs ``tensorboard-plugin-profile``) or in Perfetto
(https://ui.perfetto.dev: open the ``*.trace.json.gz`` file, or ``perfetto_trace.json.gz`` when
``create_perfetto_trace`` is on). ``jax.profiler`` writes one session per trace::

    DIR/plugins/profile/<YYYY_MM_DD_HH_MM_SS>/<host>.xplane.pb   (TensorBoard's input)
                                              <host>.trace.json.gz

Usage, in a training loop whose ``step`` counts the steps already done (the index of the step about to
run, 0-based, which is also ``int(state.step)`` before the update)::

    profiler = profiling.StepProfiler.from_config_value(config.profile_steps, 'WORKDIR/profile')
    with profiler:
      while step < total_steps:
        profiler.step(step)       # before anything else of the step
        ...                       # load the batch, run the step, log, validate, snapshot
        step += 1

``profile_steps='START,STOP'`` traces the steps ``START, START + 1, ..., STOP - 1`` (a half-open range,
as ``range(START, STOP)``); ``''`` traces nothing. Each traced step is wrapped in a
``jax.profiler.StepTraceAnnotation`` from one ``step()`` call to the next, so TensorBoard's overview
page shows the steps with their numbers and everything the loop did in them (data, dispatch, the
device's work, logging). The trace starts at ``step(START)`` and stops at ``step(STOP)`` -- by then the
previous step's work is finished wherever the loop reads its metrics back -- or when the ``with`` block
ends (a run that stops inside the window still writes its trace).

Choose ``START`` past the first steps: step 0 compiles the step function and the first few still warm up
allocators and autotuning. Keep the window short (3-5 steps): a trace of a large network on a GPU takes
a few MiB per step, and writing it pauses the loop for about a second.

Resuming: a run that restarts *inside* the window (first ``step()`` > ``START``) traces nothing and logs
why -- the window's steps before the restart are gone, and the first step of a restarted process
compiles, so a partial window would mostly show compilation. A restart at or before ``START`` traces the
whole window (a restart exactly at ``START`` therefore includes that compilation); a restart past the
window traces nothing. Only one trace runs per process at a time (``jax.profiler``'s rule): if another
one is active, or the profiler cannot start, the window is skipped with a warning and training goes on.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Callable

from absl import logging

CONFIG_FLAG = '--config.profile_steps'


def parse_profile_steps(value: str | None, flag: str = CONFIG_FLAG) -> tuple[int, int] | None:
  """Parses ``'START,STOP'`` into ``(START, STOP)``; ``''`` (or None) means no trace.

  Args:
    value: the config value, e.g. ``'10,13'`` (steps 10, 11 and 12).
    flag: the flag named in the error message.

  Returns:
    ``(start, stop)`` with ``0 <= start < stop``, or None when ``value`` is empty.

  Raises:
    ValueError: naming ``flag`` when the value is not two integers with ``0 <= START < STOP``.
  """
  if value is None or not str(value).strip():
    return None
  text = str(value).strip()
  usage = ("expected 'START,STOP' (the steps START..STOP-1 are traced, e.g. '10,13' traces steps 10, "
           "11 and 12) or '' for no trace")
  parts = [p.strip() for p in text.split(',')]
  if len(parts) != 2:
    raise ValueError(f'{flag}={value!r}: {usage}')
  try:
    start, stop = int(parts[0]), int(parts[1])
  except ValueError:
    raise ValueError(f'{flag}={value!r}: {usage}') from None
  if start < 0 or stop <= start:
    raise ValueError(f'{flag}={value!r}: need 0 <= START < STOP; {usage}')
  return start, stop


def trace_files(directory: str) -> list[str]:
  """The trace files ``jax.profiler`` wrote under ``directory`` (all sessions), sorted."""
  patterns = ('*.xplane.pb', '*.trace.json.gz', 'perfetto_trace.json.gz')
  found = set()
  for pattern in patterns:
    found.update(glob.glob(os.path.join(directory, 'plugins', 'profile', '*', pattern)))
  return sorted(found)


class StepProfiler:
  """Starts a ``jax.profiler`` trace at step ``start_step`` and stops it at ``stop_step`` (module doc).

  Args:
    directory: where the trace goes (``jax.profiler.start_trace``'s ``log_dir``); created when needed.
    start_step: the first traced step.
    stop_step: the first step *not* traced (``stop_step > start_step``).
    enabled: False makes every method a no-op (e.g. processes other than 0 of a multi-host run).
    create_perfetto_trace: also write ``perfetto_trace.json.gz`` for https://ui.perfetto.dev.
    name: the name of each step's ``StepTraceAnnotation``.
    log: where the start, stop and skip messages go.

  Attributes:
    session_dir: the session folder of the trace once written (``DIR/plugins/profile/<time>``), or None.
    skipped: why the window was not traced, or None.
  """

  def __init__(self, directory: str, start_step: int, stop_step: int, *, enabled: bool = True,
               create_perfetto_trace: bool = False, name: str = 'train',
               log: Callable[[str], Any] = logging.info):
    if not 0 <= int(start_step) < int(stop_step):
      raise ValueError(f'StepProfiler: need 0 <= start_step < stop_step, got {start_step}, {stop_step}')
    self.directory = os.fspath(directory)
    self.start_step, self.stop_step = int(start_step), int(stop_step)
    self.enabled = enabled
    self.create_perfetto_trace = create_perfetto_trace
    self.name = name
    self._log = log
    self._first_step: int | None = None
    self._active = False
    self._done = not enabled
    self._annotation = None
    self._before: set[str] = set()
    self.session_dir: str | None = None
    self.skipped: str | None = None

  @classmethod
  def from_config_value(cls, value: str | None, directory: str, **kwargs) -> 'StepProfiler':
    """A profiler for ``profile_steps=value``: a disabled one for ``''`` (``parse_profile_steps``)."""
    steps = parse_profile_steps(value)
    if steps is None:
      return cls(directory, 0, 1, **{**kwargs, 'enabled': False})
    return cls(directory, *steps, **kwargs)

  @property
  def active(self) -> bool:
    """Whether a trace is being recorded now."""
    return self._active

  @property
  def done(self) -> bool:
    """Whether this profiler will trace nothing more (written, skipped or disabled)."""
    return self._done

  def files(self) -> list[str]:
    """The files of this profiler's trace session ([] before it is written)."""
    if not self.session_dir:
      return []
    return sorted(os.path.join(self.session_dir, f) for f in os.listdir(self.session_dir))

  def step(self, step: int) -> None:
    """Call before step ``step`` runs: starts, annotates or stops the trace as the window says."""
    if self._done:
      return
    step = int(step)
    if self._first_step is None:
      self._first_step = step
      if step > self.start_step:
        where = 'inside' if step < self.stop_step else 'past'
        self._skip(f'the run started at step {step}, {where} the window {self.start_step}..'
                   f'{self.stop_step - 1} (a restart inside the window traces nothing: its first '
                   f'step would compile)')
        return
    if self._active:
      self._end_annotation()
      if step >= self.stop_step:
        self.stop()
        return
      self._begin_annotation(step)
    elif self.start_step <= step < self.stop_step:
      self._start(step)
    elif step >= self.stop_step:
      self._skip(f'step {step} jumped past the window {self.start_step}..{self.stop_step - 1}')

  def stop(self) -> None:
    """Stops and writes the trace if one is running (also called by ``close`` and ``__exit__``)."""
    if not self._active:
      return
    import jax  # pylint: disable=g-import-not-at-top
    self._end_annotation()
    self._active = False
    self._done = True
    try:
      jax.profiler.stop_trace()
    except RuntimeError as e:  # pragma: no cover  (someone else stopped it)
      self.skipped = f'stopping the trace failed: {e}'
      logging.warning('profiler: %s', self.skipped)
      return
    new = sorted(set(glob.glob(os.path.join(self.directory, 'plugins', 'profile', '*'))) - self._before)
    self.session_dir = new[-1] if new else None
    self._log(f'profiler: trace of steps {self.start_step}..{self.stop_step - 1} written to '
              f'{self.session_dir or self.directory}')

  close = stop

  def __enter__(self) -> 'StepProfiler':
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  # ---- internals ----

  def _start(self, step: int) -> None:
    import jax  # pylint: disable=g-import-not-at-top
    os.makedirs(self.directory, exist_ok=True)
    self._before = set(glob.glob(os.path.join(self.directory, 'plugins', 'profile', '*')))
    try:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=self.create_perfetto_trace)
    except (RuntimeError, ValueError) as e:  # another trace is active, or no profiler in this jaxlib
      self._skip(f'jax.profiler.start_trace failed: {e}', warn=True)
      return
    self._active = True
    self._log(f'profiler: tracing steps {step}..{self.stop_step - 1} into {self.directory}')
    self._begin_annotation(step)

  def _begin_annotation(self, step: int) -> None:
    import jax  # pylint: disable=g-import-not-at-top
    self._annotation = jax.profiler.StepTraceAnnotation(self.name, step_num=step)
    self._annotation.__enter__()

  def _end_annotation(self) -> None:
    if self._annotation is not None:
      self._annotation.__exit__(None, None, None)
      self._annotation = None

  def _skip(self, reason: str, warn: bool = False) -> None:
    self._done = True
    self.skipped = reason
    if warn:
      logging.warning('profiler: %s; no trace', reason)
    else:
      self._log(f'profiler: no trace: {reason}')
