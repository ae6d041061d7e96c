"""The dashboard's queue: it loads the jobs, re-attaches the running ones, and launches the queued.

``JobQueue.tick`` runs once a second in a thread: dataset jobs run two at a time; a model job waits until
its dataset is done and then for the devices -- on a CPU host one training job at a time (one "cpu"
slot), on a host with NVIDIA GPUs as many GPUs as its layout needs (``CUDA_VISIBLE_DEVICES``). A waiting
job says why (*Waiting: devices busy*, *Waiting: dataset not done*). Classify jobs run one at a time
beside the others (inference of a snapshot is light next to training). A job runs as
``python -m alexnet_jax.dashboard.workers.runner JOBDIR -- ARGV`` in its own session, so it outlives the
server; the runner records its exit status in the job's folder.

At start-up, a job recorded as running is re-attached when its runner's pid and start time still match,
finished from ``exit.json`` when the runner wrote one, and interrupted otherwise. ``jobs.JobManager``
adds what a user does to jobs (create, Abort, Resume, Delete, edit) and the listing.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

from alexnet_jax.dashboard import job_records
from alexnet_jax.dashboard.job_records import DATASET_DIR, DONE, FAILED, INTERRUPTED, JOB_FILE, QUEUED
from alexnet_jax.dashboard.job_records import RUNNING, STATE_DIR, STOPPED, STOPPED_EXIT_STATUSES, Job
from alexnet_jax.dashboard.workers import runner as runner_lib
from alexnet_jax.runtime import lock as lock_lib
from alexnet_jax.runtime import status as status_lib
from alexnet_jax.runtime import process

_log = logging.getLogger(__name__)

MAX_CLASSIFY_JOBS = 1                    # Classify Many jobs at a time (they share the host with training)


class JobQueue:
  """The queue of one jobs folder (see the module docstring); ``jobs.JobManager`` is the whole manager.

  Args:
    jobs_dir: the folder (created if missing).
    python: the interpreter that runs the tools (the dashboard's own).
    max_dataset_jobs: prepares running at once.
    devices: the pool (default ``job_records.detect_devices()``); 'cpu' slots are taken whole by a model
      job.
    poll_s: the scheduler's period.
    env: extra environment of the tools.
  """

  def __init__(self, jobs_dir: str, *, python: str = sys.executable, max_dataset_jobs: int = 2,
               devices: Optional[list[str]] = None, poll_s: float = 1.0,
               env: Optional[dict[str, str]] = None):
    self.jobs_dir = os.path.realpath(jobs_dir)
    os.makedirs(os.path.join(self.jobs_dir, STATE_DIR), mode=0o700, exist_ok=True)
    os.chmod(os.path.join(self.jobs_dir, STATE_DIR), 0o700)     # the token, uploads: this user's only
    self.python = python
    self.max_dataset_jobs = max_dataset_jobs
    self.devices = list(devices) if devices else job_records.detect_devices()
    self.poll_s = poll_s
    self.env = dict(env or {})
    self.jobs: dict[str, Job] = {}
    self._children: dict[str, subprocess.Popen] = {}
    self._pending_delete: set[str] = set()
    self._lock = threading.RLock()
    self._wake = threading.Event()
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._rows_cache: tuple[float, list[dict]] = (0.0, [])
    self._listing_lock = threading.Lock()
    self.on_change: list[Callable[[], None]] = []
    self._last_queued = 0.0
    self._unsaved: set[str] = set()
    self._dir_lock: Optional[lock_lib.WorkdirLock] = None
    self.load()

  def _queue_stamp(self) -> float:
    """A strictly increasing queue time, so that jobs submitted together start in submission order."""
    self._last_queued = max(time.time(), self._last_queued + 1e-6)
    return round(self._last_queued, 6)

  @property
  def state_dir(self) -> str:
    return os.path.join(self.jobs_dir, STATE_DIR)

  def lock(self, address: str) -> None:
    """Owns the jobs folder (``.dashboard/dashboard.lock``) while serving: a second dashboard on the same
    folder would launch the same queued jobs and then disagree on their states, so it stops at once,
    naming this one (``lock.WorkdirBusyError``: pid, host, and the address it serves)."""
    if self._dir_lock is None:
      self._dir_lock = lock_lib.WorkdirLock(
          self.jobs_dir, what='dashboard', lock_file=os.path.join(self.state_dir, 'dashboard.lock'),
          flag='--jobs_dir', argv=['alexnet_jax.dashboard', 'serving', address]).acquire()

  def unlock(self) -> None:
    if self._dir_lock is not None:
      self._dir_lock.release()
      self._dir_lock = None

  # ---- Loading and re-attaching ------------------------------------------------------------------

  def load(self) -> None:
    """Reads every ``<jobs_dir>/<id>/job.json`` and reconciles running records with their processes."""
    with self._lock:
      try:
        names = sorted(os.listdir(self.jobs_dir))
      except OSError:
        names = []
      for name in names:
        if name.startswith('.') or name in self.jobs:
          continue
        jobdir = os.path.join(self.jobs_dir, name)
        doc = job_records.read_job(jobdir)
        if doc is None:
          continue
        job = Job(jobdir, doc)
        self.jobs[job.id] = job
        if job.state == RUNNING:
          if self._refresh(job):
            self._save(job)
          elif job.state == RUNNING:
            _log.info('re-attached job %s (pid %s)', job.id, job.doc.get('pid'))

  def _refresh(self, job: Job) -> bool:
    """Brings a running job's state up to date; returns whether it changed."""
    if job.state != RUNNING:
      return False
    child = self._children.get(job.id)
    if child is not None and child.poll() is None:
      return False                                   # our child, still running
    record = job_records.read_exit(job.dir)
    if record is not None and record.get('runner_pid') == job.doc.get('pid') and (
        record.get('runner_start_ticks') in (None, job.doc.get('process_start_ticks'))
        or job.doc.get('process_start_ticks') is None):
      self._children.pop(job.id, None)
      self._finish(job, record)
      return True
    if child is None and process.process_alive(job.process_record()) is not False:
      return False                                   # re-attached (or another host: cannot tell)
    if child is not None:
      self._children.pop(job.id, None)
      record = job_records.read_exit(job.dir)        # the runner may have written it just now
      if record is not None and record.get('runner_pid') == job.doc.get('pid'):
        self._finish(job, record)
        return True
    job.doc['exit_status'] = None
    if job.doc.get('abort_requested'):     # SIGTERM reached the runner before it could record anything
      job.set_state(STOPPED, 'aborted while starting')
    else:
      reason = self._error_of(job)      # e.g. a runner that could not start: "No module named ..."
      job.set_state(INTERRUPTED, 'the process is gone without an exit record' + (f': {reason}' if reason else ''))
    self._release(job)
    return True

  def _finish(self, job: Job, record: dict[str, Any]) -> None:
    status, sig = record.get('exit_status'), record.get('signal')
    job.doc['exit_status'] = status
    job.doc['exit_signal'] = sig
    job.doc['finished_unix'] = record.get('finished_unix')
    if status == 0:
      job.set_state(DONE)
    elif job.doc.get('abort_requested') or status in STOPPED_EXIT_STATUSES or sig in (
        signal.SIGTERM, signal.SIGINT):
      job.set_state(STOPPED, 'aborted' if job.doc.get('abort_requested') else f'exit status {status}')
    else:
      job.doc['error'] = self._error_of(job) or (f'killed by signal {sig}' if sig else f'exit status {status}')
      job.set_state(FAILED, job.doc['error'])
    self._release(job)

  def _error_of(self, job: Job) -> Optional[str]:
    """The tool's one-line error: status.json's, else the last 'error:' line of its output."""
    paths = [os.path.join(job.dir, status_lib.STATUS_FILE),
             os.path.join(job.dir, f'.{DATASET_DIR}.status.json')]
    for path in paths:
      record = status_lib.read_status(path)
      if isinstance(record, dict) and record.get('state') == 'failed' and record.get('error'):
        return str(record['error'])
    for line in reversed(job_records.tail(os.path.join(job.dir, runner_lib.OUTPUT_LOG), 60)):
      if 'error' in line.lower():
        return line.strip()[:500]
    return None

  def _save(self, job: Job) -> bool:
    """Writes ``job.json``; when it cannot (a full disk), the job is remembered and written again on each
    tick until it can, so a state change never stays unwritten (``running`` on disk) for good."""
    try:
      job.save()
    except OSError as e:
      if job.id not in self._unsaved:
        _log.error('cannot write %s: %s; will retry', os.path.join(job.dir, JOB_FILE), e.strerror or e)
      self._unsaved.add(job.id)
      return False
    self._unsaved.discard(job.id)
    return True

  def _release(self, job: Job) -> None:
    job.doc['devices'] = []

  # ---- The queue -----------------------------------------------------------------------------------

  def start(self) -> None:
    if self._thread is None:
      self._thread = threading.Thread(target=self._loop, name='dashboard-jobs', daemon=True)
      self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    self._wake.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
      self._thread = None

  def wake(self) -> None:
    self._wake.set()

  def _loop(self) -> None:
    while not self._stop.is_set():
      try:
        self.tick()
      except Exception:  # pylint: disable=broad-except
        _log.exception('dashboard scheduler')
      self._wake.wait(self.poll_s)
      self._wake.clear()

  def held_devices(self) -> dict[str, str]:
    """device -> id of the job holding it."""
    held = {}
    for job in self.jobs.values():
      if job.state == RUNNING:
        for d in job.doc.get('devices') or []:
          held[d] = job.id
    return held

  def _devices_for(self, job: Job, free: list[str]) -> Optional[list[str]]:
    if self.devices == ['cpu'] or all(d.startswith('cpu') for d in self.devices):
      return free[:1] if free else None
    need = max(1, int(job.doc.get('devices_needed') or 1))
    return free[:need] if len(free) >= need else None

  def tick(self) -> None:
    """Reaps finished jobs, deletes those waiting for it, and starts the queued jobs that can start."""
    changed = False
    with self._lock:
      for job_id in list(self._unsaved):             # state changes a full disk kept from being written
        job = self.jobs.get(job_id)
        if job is None:
          self._unsaved.discard(job_id)
        else:
          self._save(job)
      for job in list(self.jobs.values()):
        if self._refresh(job):
          self._save(job)
          changed = True
      for job_id in list(self._pending_delete):
        job = self.jobs.get(job_id)
        if job is None or job.state != RUNNING:
          self._pending_delete.discard(job_id)
          if job is not None:
            self._remove(job)
          changed = True
      queued = sorted((j for j in self.jobs.values() if j.state == QUEUED),
                      key=lambda j: (j.doc.get('queued_unix') or 0, j.id))
      running_datasets = sum(1 for j in self.jobs.values() if j.kind == 'dataset' and j.state == RUNNING)
      running_classify = sum(1 for j in self.jobs.values() if j.kind == 'classify' and j.state == RUNNING)
      held = self.held_devices()
      free = [d for d in self.devices if d not in held]
      for job in queued:
        if job.kind == 'dataset':
          if running_datasets >= self.max_dataset_jobs:
            job.wait_reason = 'other datasets are being built'
            continue
          self._launch(job, [])
          running_datasets += 1
          changed = True
          continue
        if job.kind == 'classify':
          if running_classify >= MAX_CLASSIFY_JOBS:
            job.wait_reason = 'another classification is running'
            continue
          self._launch(job, [])
          running_classify += 1
          changed = True
          continue
        dataset = self.jobs.get(job.doc.get('dataset') or '')
        path = job.doc.get('dataset_path') or ''
        if dataset is not None:
          dataset_state = dataset.state
        elif job.doc.get('dataset_external') and os.path.isfile(os.path.join(path, 'stats.json')):
          dataset_state = DONE                     # prepared with the command line, in the jobs folder
        else:
          job.doc['error'] = f'its dataset {job.doc.get("dataset")} no longer exists'
          job.set_state(FAILED, job.doc['error'])
          self._save(job)
          changed = True
          continue
        if dataset_state != DONE:
          job.wait_reason = ('dataset not done' if dataset_state in (QUEUED, RUNNING)
                             else f'dataset {dataset_state}: resume it first')
          continue
        devices = self._devices_for(job, free)
        if devices is None:
          holders = sorted(set(held.values()))
          job.wait_reason = 'devices busy' + (f' ({", ".join(holders)})' if holders else '')
          continue
        free = [d for d in free if d not in devices]
        for d in devices:
          held[d] = job.id
        self._launch(job, devices)
        changed = True
    if changed:
      self._rows_cache = (0.0, [])
      for callback in self.on_change:
        callback()

  def _launch(self, job: Job, devices: list[str]) -> None:
    try:
      os.unlink(os.path.join(job.dir, runner_lib.EXIT_FILE))
    except FileNotFoundError:
      pass
    env = dict(os.environ)
    env.update(self.env)
    gpus = [d[3:] for d in devices if d.startswith('gpu')]
    if gpus:
      env['CUDA_VISIBLE_DEVICES'] = ','.join(gpus)
    command = [self.python, '-m', 'alexnet_jax.dashboard.workers.runner', job.dir, '--', *job.doc['argv']]
    try:
      # The runner's own stderr goes to the job's log too: a runner that cannot even start (a broken
      # install: "No module named alexnet_jax") leaves its reason where the job page shows it.
      with open(os.path.join(job.dir, runner_lib.OUTPUT_LOG), 'ab') as log:
        child = subprocess.Popen(command, cwd=job.doc.get('cwd') or self.jobs_dir, env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=log, start_new_session=True, close_fds=True)
    except OSError as e:
      job.doc['error'] = f'cannot start: {e}'
      job.set_state(FAILED, job.doc['error'])
      self._save(job)
      return
    self._children[job.id] = child
    job.wait_reason = None
    job.doc.update(pid=child.pid, host=socket.gethostname(), boot_id=process.boot_id(),
                   process_start_ticks=process.process_start_ticks(child.pid), devices=devices,
                   attempt=int(job.doc.get('attempt') or 0) + 1, exit_status=None, error=None,
                   abort_requested=False, started_unix=round(time.time(), 3))
    job.set_state(RUNNING, f'pid {child.pid}' + (f' on {", ".join(devices)}' if devices else ''))
    self._save(job)

  def _remove(self, job: Job) -> None:
    self.jobs.pop(job.id, None)
    self._children.pop(job.id, None)
    shutil.rmtree(job.dir, ignore_errors=True)
    self._rows_cache = (0.0, [])
