"""Stopping a run on SIGTERM or SIGINT, at a step that every process of the run agrees on.

A cluster preempts a job by sending SIGTERM to each of its processes, not at the same instant: on a
multi-host run the signals arrive steps apart. If each process acted on its own signal, one would enter
the snapshot (a collective) while another still ran training steps (other collectives), and both would
wait for each other forever. So the local signal only raises a flag; every few steps the processes
exchange their flags (one tiny all-gather), and all of them return the same decision at the same step:

    with StopRequest() as stop:
      while step < total_steps:
        state = train_step(state, next(batches))
        step += 1
        reason = stop.should_stop(step)      # the same on every process, at the same step
        if reason:
          snapshot(step)                     # a collective: every process is here
          break

How often they exchange (``sync_every``): by default the interval adapts so that an exchange happens
about once a second (``sync_seconds``), counted in steps and agreed at each exchange (the smallest
interval any process proposes), so a slow step never delays the stop by many seconds and a fast one does
not pay for an exchange at every step; it is at most 100 steps (``$ALEXNET_STOP_MAX_SYNC_STEPS`` sets
another bound: a test's short run then reaches an exchange before its end). On 2 local CPU processes
(gloo) one exchange costs about 3-5 ms, so once a second is well under 1% of the run; with AlexNet's
2-3 s steps on CPU it means every step.
A single-process run decides at once and never communicates.

Why not ``jax.experimental.multihost_utils.reached_preemption_sync_point``: it works on CPU with the
coordination service, but only for SIGTERM caught by XLA's own C++ handler, which any Python
``signal.signal(SIGTERM, ...)`` replaces; it cannot say which signal came, cannot handle SIGINT, and does
not exist in a single-process run. This module needs none of that.

A second signal to the same process raises ``KeyboardInterrupt`` there: stop now, without a snapshot.
Handlers are installed only from the main thread, and restored on exit -- except after a multi-process
run stopped on a signal: its processes are then finishing the snapshot and exiting, and the preemption
notice of a process that stopped before its own signal came (the same preemption, arriving late) must
not kill it mid-write. So the handlers stay until the process exits: a late first signal is only
logged; a second one still raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import os
import signal as signal_lib
import threading
import time

import numpy as np
from absl import logging

SIGNALS = (signal_lib.SIGTERM, signal_lib.SIGINT)
# The adaptive interval's upper bound, in steps, unless the caller gives one: this environment variable
# when set (a test makes a short multi-process run stop at an exchange before its end), else 100.
MAX_SYNC_ENV = 'ALEXNET_STOP_MAX_SYNC_STEPS'
DEFAULT_MAX_SYNC_EVERY = 100


def max_sync_every_from_env() -> int:
  """``$ALEXNET_STOP_MAX_SYNC_STEPS`` (a positive integer) if set, else ``DEFAULT_MAX_SYNC_EVERY``."""
  value = os.environ.get(MAX_SYNC_ENV, '').strip()
  if not value:
    return DEFAULT_MAX_SYNC_EVERY
  try:
    steps = int(value)
  except ValueError:
    steps = 0
  if steps < 1:
    raise ValueError(f'{MAX_SYNC_ENV}={value!r}: must be a whole number of steps, at least 1')
  return steps


class StopRequest:
  """SIGTERM/SIGINT ask the run to stop; ``should_stop(step)`` says when, the same on every process.

  Attributes:
    signal: name of the first signal this process received (``'SIGTERM'``), or None.
    reason: once ``should_stop`` returned a decision, the signal that caused it (received by this
      process or by another one); None before.
    syncs: how many exchanges between processes took place (0 in a single-process run).
  """

  def __init__(self, *, sync_every: int | None = None, sync_seconds: float = 1.0,
               max_sync_every: int | None = None):
    """Prepares the handlers (installed by ``with``).

    Args:
      sync_every: exchange the flags every this many steps (multi-process runs only). None: adapt the
        interval to the step time, aiming at one exchange every ``sync_seconds``.
      sync_seconds: the adaptive interval's target, in seconds of training between exchanges.
      max_sync_every: upper bound of the adaptive interval, in steps. None: ``max_sync_every_from_env()``.
    """
    if sync_every is not None and sync_every < 1:
      raise ValueError(f'sync_every must be at least 1, not {sync_every}')
    self.signal: str | None = None
    self.reason: str | None = None
    self.syncs = 0
    self._signum = 0
    self._fixed = sync_every
    self._sync_seconds = sync_seconds
    self._max_every = max(1, max_sync_every_from_env() if max_sync_every is None else max_sync_every)
    self._previous = {}
    self._multi: bool | None = None
    self._next_sync: int | None = None
    self._last_sync_step: int | None = None
    self._last_sync_time = time.perf_counter()

  # ---- Signal handling ---------------------------------------------------------------------------

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal_lib.signal(sig, self._handle)
    self._last_sync_time = time.perf_counter()
    return self

  def __exit__(self, *exc) -> None:
    if self.reason is not None and self._multi:
      return  # the other processes' late signals must not kill this one while it exits (above)
    for sig, handler in self._previous.items():
      signal_lib.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signal is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.signal = signal_lib.Signals(signum).name
    self._signum = int(signum)
    if self.reason is not None:
      logging.warning('%s received while stopping (on %s): the run is already saving its snapshot '
                      'and exiting', self.signal, self.reason)
    elif self._is_multiprocess():
      within = (f'{self._fixed} steps' if self._fixed is not None
                else f'about {self._sync_seconds:g} s')
      logging.warning('%s received: all processes stop at the next step they agree on (within %s), '
                      'after a snapshot', self.signal, within)
    else:
      logging.warning('%s received: saving a snapshot after this step, then stopping', self.signal)

  # ---- The decision ------------------------------------------------------------------------------

  def _is_multiprocess(self) -> bool:
    if self._multi is None:
      import jax  # pylint: disable=g-import-not-at-top  (not needed until the first step)
      self._multi = jax.process_count() > 1
    return self._multi

  def should_stop(self, step: int) -> str | None:
    """Whether to snapshot and stop after ``step``: the signal's name (``'SIGTERM'``), else None.

    Call it after every step, with the step just completed, on every process: in a multi-process run
    the calls at exchange steps are collectives. Once it returned a name it keeps returning it.

    Args:
      step: the number of the step just completed (consecutive from one call to the next).

    Returns:
      None to go on; else the name of the signal that asked for the stop, the same on all processes.
    """
    if self.reason is not None:
      return self.reason
    if not self._is_multiprocess():
      self.reason = self.signal
      return self.reason
    if self._next_sync is None:
      self._next_sync = step  # the first call exchanges at once: it starts the clock for the interval
    if step < self._next_sync:
      return None
    self.reason = self._exchange(step)
    return self.reason

  def _proposed_interval(self, step: int) -> int:
    if self._fixed is not None:
      return self._fixed
    now = time.perf_counter()
    if self._last_sync_step is None:  # the first interval includes compilation: measure one step
      return 1
    per_step = (now - self._last_sync_time) / max(1, step - self._last_sync_step)
    return int(min(self._max_every, max(1, self._sync_seconds // max(per_step, 1e-6))))

  def _exchange(self, step: int) -> str | None:
    """All-gathers (signal number, proposed interval) over processes; sets the next exchange step."""
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    local = np.array([self._signum, self._proposed_interval(step)], np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, 2)
    self.syncs += 1
    self._last_sync_step, self._last_sync_time = step, time.perf_counter()
    self._next_sync = step + int(gathered[:, 1].min())
    signum = int(gathered[:, 0].max())
    if not signum:
      return None
    name = signal_lib.Signals(signum).name
    if self.signal is None:
      logging.warning('%s received by another process: stopping after step %d', name, step)
    return name
