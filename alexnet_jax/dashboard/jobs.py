"""Dashboard jobs: a workdir under the jobs folder, a subprocess of the existing tool, a ``job.json``.

A job is a folder ``<jobs_dir>/<id>/`` (ids as DIGITS made them: ``20250101-120000-ab12``) holding

    job.json      owned by the dashboard: kind (dataset | model | classify), name, group, notes, argv, the form it
                  came from, pid + process start time of its runner, state and its history
    output.log    the tool's stdout and stderr (``runner.py``)
    exit.json     how the last attempt ended, written by the runner
    ...           the tool's own files: a model job's folder *is* the train workdir (config.json,
                  status.json, metrics.jsonl, checkpoints/, train.log); a dataset job's prepare writes
                  ``dataset/`` inside it (stats.json, labels.txt, train.txt, mean.png, ...); a classify
                  job (DIGITS' Classify Many) runs ``classify --status_dir`` on a model's snapshot and
                  keeps images.txt, classifications.json/.csv, status.json and the report PNGs

Everything else shown is read from the tools' files (``runs.find_runs``, status.json), so deleting the
dashboard leaves ordinary workdirs, and runs made with the command line in the jobs folder are listed
too (as *external* jobs: their id is their path, ``/`` written ``~``).

States (``job.json`` "state"): ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``stopped`` (Abort),
and ``interrupted`` for a job recorded as running whose runner is gone without an exit record (the
machine rebooted, it was killed). Stopped, interrupted and failed jobs can be resumed: the same argv on
the same workdir, which the trainer continues exactly where its last snapshot left off.

The queue (``JobManager.tick``, once a second in a thread): dataset jobs run two at a time; a model job
waits until its dataset is done and then for the devices -- on a CPU host one training job at a time (one
"cpu" slot), on a host with NVIDIA GPUs as many GPUs as its layout needs (``CUDA_VISIBLE_DEVICES``). A
waiting job says why (*Waiting: devices busy*, *Waiting: dataset not done*). Classify jobs run one at a
time beside the others (inference of a snapshot is light next to training); deleting a model deletes them.

At start-up, a job recorded as running is re-attached when its runner's pid and start time still match,
finished from ``exit.json`` when the runner wrote one, and interrupted otherwise.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

from alexnet_jax.runtime import fileio
from alexnet_jax.run import listing as listing_lib   # discovery and rows: status files only, no JAX
from alexnet_jax.dashboard.workers import runner as runner_lib
from alexnet_jax.runtime import lock as lock_lib
from alexnet_jax.runtime import status as status_lib

_log = logging.getLogger(__name__)

JOB_FILE = 'job.json'
DATASET_DIR = 'dataset'
STATE_DIR = '.dashboard'
KINDS = ('dataset', 'model', 'classify')
MAX_CLASSIFY_JOBS = 1                    # Classify Many jobs at a time (they share the host with training)
QUEUED, RUNNING, DONE, FAILED, STOPPED, INTERRUPTED = (
    'queued', 'running', 'done', 'failed', 'stopped', 'interrupted')
FINAL = (DONE, FAILED, STOPPED, INTERRUPTED)
RESUMABLE = (STOPPED, INTERRUPTED, FAILED)
STOPPED_EXIT_STATUSES = (75, 130)        # train's snapshot-and-stop; Ctrl-C
ROWS_TTL_S = 2.0                         # the runs listing is reused this long between requests


class JobError(ValueError):
  """A request that cannot be done to this job (the message is for the user); ``status`` the HTTP code."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


def _write_failure(e: OSError, folder: str) -> 'JobError':
  """A write that failed as a JobError for the client: 507 naming the folder when the disk (or quota) is
  full, else 500 with the cause; never a bare "internal error"."""
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return JobError(f'no space left on the device of {folder}: free some space there and try again', 507)
  return JobError(f'cannot write in {folder}: {e.strerror or e}', 500)


def _now_iso(unix: Optional[float] = None) -> str:
  return datetime.datetime.fromtimestamp(time.time() if unix is None else unix,
                                         datetime.timezone.utc).isoformat(timespec='seconds')


def new_job_id() -> str:
  return time.strftime('%Y%m%d-%H%M%S') + '-' + secrets.token_hex(2)


def external_id(relpath: str) -> str:
  """The id of a run made outside the dashboard: its path in the jobs folder, ``/`` as ``~``."""
  return relpath.replace(os.sep, '~')


def valid_id(job_id: str) -> bool:
  return (bool(job_id) and len(job_id) <= 300 and not job_id.startswith(('.', '~'))
          and all(c.isalnum() or c in '-_.~=,+' for c in job_id) and '..' not in job_id)


def detect_devices() -> list[str]:
  """NVIDIA GPUs the driver lists (``gpu0``...), else one ``cpu`` slot for the whole host."""
  try:
    gpus = sorted(os.listdir('/proc/driver/nvidia/gpus'))
  except OSError:
    gpus = []
  return [f'gpu{i}' for i in range(len(gpus))] or ['cpu']


class Job:
  """One dashboard job (``job.json``) and what the scheduler knows of it now."""

  def __init__(self, jobdir: str, doc: dict[str, Any]):
    self.dir = jobdir
    self.doc = doc
    self.wait_reason: Optional[str] = None

  @property
  def id(self) -> str:
    return self.doc['id']

  @property
  def kind(self) -> str:
    return self.doc['kind']

  @property
  def state(self) -> str:
    return self.doc.get('state', QUEUED)

  @property
  def tool_dir(self) -> str:
    """Where the tool writes: the dataset folder of a dataset job, the workdir of a model job."""
    return os.path.join(self.dir, DATASET_DIR) if self.kind == 'dataset' else self.dir

  def save(self) -> None:
    fileio.write_json(os.path.join(self.dir, JOB_FILE), self.doc, indent=1)

  def set_state(self, state: str, note: str = '') -> None:
    now = time.time()
    self.doc['state'] = state
    entry = {'state': state, 'time': _now_iso(now), 'unix': round(now, 3)}
    if note:
      entry['note'] = note
    self.doc.setdefault('history', []).append(entry)

  def process_record(self) -> dict[str, Any]:
    return {k: self.doc.get(k) for k in ('pid', 'host', 'boot_id', 'process_start_ticks')}


def read_job(jobdir: str) -> Optional[dict[str, Any]]:
  try:
    with open(os.path.join(jobdir, JOB_FILE), 'rb') as f:
      doc = json.loads(f.read(4 * 2**20).decode('utf-8'))
  except (OSError, ValueError):
    return None
  if not isinstance(doc, dict) or doc.get('kind') not in KINDS or not isinstance(doc.get('argv'), list):
    return None
  doc['id'] = os.path.basename(jobdir)
  return doc


def read_exit(jobdir: str) -> Optional[dict[str, Any]]:
  try:
    with open(os.path.join(jobdir, runner_lib.EXIT_FILE), 'rb') as f:
      record = json.loads(f.read(1 << 20).decode('utf-8'))
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def tail(path: str, max_lines: int = 40, max_bytes: int = 32 * 1024) -> list[str]:
  """The last lines of a text file ([] when missing)."""
  try:
    with open(path, 'rb') as f:
      size = f.seek(0, os.SEEK_END)
      f.seek(max(0, size - max_bytes))
      data = f.read()
  except OSError:
    return []
  lines = data.decode('utf-8', 'replace').splitlines()
  if size > max_bytes:
    lines = lines[1:]
  return lines[-max_lines:]


class JobManager:
  """The jobs of one jobs folder: creation, the queue, Abort / Resume / Delete, and the listing.

  Args:
    jobs_dir: the folder (created if missing).
    python: the interpreter that runs the tools (the dashboard's own).
    max_dataset_jobs: prepares running at once.
    devices: the pool (default ``detect_devices()``); 'cpu' slots are taken whole by a model job.
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
    self.devices = list(devices) if devices else detect_devices()
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
        doc = read_job(jobdir)
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
    record = read_exit(job.dir)
    if record is not None and record.get('runner_pid') == job.doc.get('pid') and (
        record.get('runner_start_ticks') in (None, job.doc.get('process_start_ticks'))
        or job.doc.get('process_start_ticks') is None):
      self._children.pop(job.id, None)
      self._finish(job, record)
      return True
    if child is None and status_lib.process_alive(job.process_record()) is not False:
      return False                                   # re-attached (or another host: cannot tell)
    if child is not None:
      self._children.pop(job.id, None)
      record = read_exit(job.dir)                    # the runner may have written it just now
      if record is not None and record.get('runner_pid') == job.doc.get('pid'):
        self._finish(job, record)
        return True
    job.doc['exit_status'] = None
    if job.doc.get('abort_requested'):     # SIGTERM reached the runner before it could record anything
      job.set_state(STOPPED, 'aborted while starting')
    else:
      job.set_state(INTERRUPTED, 'the process is gone without an exit record')
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
    for line in reversed(tail(os.path.join(job.dir, runner_lib.OUTPUT_LOG), 60)):
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
      child = subprocess.Popen(command, cwd=job.doc.get('cwd') or self.jobs_dir, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError as e:
      job.doc['error'] = f'cannot start: {e}'
      job.set_state(FAILED, job.doc['error'])
      self._save(job)
      return
    self._children[job.id] = child
    job.wait_reason = None
    job.doc.update(pid=child.pid, host=socket.gethostname(), boot_id=status_lib.boot_id(),
                   process_start_ticks=status_lib.process_start_ticks(child.pid), devices=devices,
                   attempt=int(job.doc.get('attempt') or 0) + 1, exit_status=None, error=None,
                   abort_requested=False, started_unix=round(time.time(), 3))
    job.set_state(RUNNING, f'pid {child.pid}' + (f' on {", ".join(devices)}' if devices else ''))
    self._save(job)

  # ---- Creating -----------------------------------------------------------------------------------

  def create(self, kind: str, *, name: str, argv: list[str], form: dict[str, Any], group: str = '',
             notes: str = '', dataset: Optional[str] = None, devices_needed: int = 1,
             job_id: Optional[str] = None, extra: Optional[dict[str, Any]] = None,
             argv_for: Optional[Callable[[str], list[str]]] = None) -> Job:
    """Writes a queued job; ``argv_for(jobdir)`` builds the argv once the folder is known."""
    if kind not in KINDS:
      raise ValueError(kind)
    with self._lock:
      job_id = job_id or new_job_id()
      while job_id in self.jobs or os.path.exists(os.path.join(self.jobs_dir, job_id)):
        job_id = new_job_id()
      jobdir = os.path.join(self.jobs_dir, job_id)
      try:
        os.makedirs(jobdir)
        return self._create(kind, job_id, jobdir, name=name, argv=argv, form=form, group=group, notes=notes,
                            dataset=dataset, devices_needed=devices_needed, extra=extra, argv_for=argv_for)
      except OSError as e:
        shutil.rmtree(jobdir, ignore_errors=True)          # nothing half-made stays behind
        raise _write_failure(e, self.jobs_dir) from None

  def _create(self, kind: str, job_id: str, jobdir: str, *, name, argv, form, group, notes, dataset,
              devices_needed, extra, argv_for) -> Job:
    """``create`` once the folder exists (under the manager's lock); OSError when a file cannot be written."""
    now = time.time()
    doc = {'version': 1, 'id': job_id, 'kind': kind, 'name': name, 'group': group, 'notes': notes,
           'created': _now_iso(now), 'created_unix': round(now, 3), 'queued_unix': self._queue_stamp(),
           'argv': argv_for(jobdir) if argv_for else list(argv), 'cwd': self.jobs_dir,
           'form': form, 'dataset': dataset, 'devices_needed': devices_needed, 'attempt': 0,
           'devices': [], 'history': []}
    doc.update(extra or {})
    job = Job(jobdir, doc)
    job.set_state(QUEUED)
    job.save()
    self.jobs[job_id] = job
    self._rows_cache = (0.0, [])
    self.wake()
    return job

  # ---- Actions ------------------------------------------------------------------------------------

  def get(self, job_id: str) -> Optional[Job]:
    return self.jobs.get(job_id)

  def abort(self, job_id: str, *, force: bool = False) -> str:
    """Stops a job: a queued one at once; a running one by one SIGTERM to its process group (the trainer
    snapshots and exits). A second Abort while it stops is refused (409): a second SIGTERM would make the
    trainer quit without its stop snapshot. ``force`` ("Force stop") kills it at once (SIGKILL), losing
    the steps since its last snapshot. Returns what was done."""
    with self._lock:
      job = self.jobs.get(job_id)
      if job is None:
        return self._abort_external(job_id)
      self._refresh(job)
      if job.state == QUEUED:
        job.doc['abort_requested'] = True
        job.set_state(STOPPED, 'aborted before it started')
        self._save(job)
        self._rows_cache = (0.0, [])
        return 'stopped'
      if job.state != RUNNING:
        raise JobError(f'job {job_id} is {job.state}, not running')
      if job.doc.get('abort_requested') and not force:
        raise JobError(f'job {job_id} is already stopping (it is writing its stop snapshot); wait, or use '
                       'Force stop (POST /jobs/<id>/abort?force=1) to kill it now and lose the steps since '
                       'its last snapshot', 409)
      job.doc['abort_requested'] = True
      if force:
        job.doc['force_stopped'] = True
      self._save(job)
      if status_lib.process_alive(job.process_record()) is False:
        self._refresh(job)
        self._save(job)
        return job.state
      try:
        os.killpg(int(job.doc['pid']), signal.SIGKILL if force else signal.SIGTERM)
      except ProcessLookupError:
        pass
      except PermissionError as e:
        raise JobError(f'cannot signal process {job.doc["pid"]}: {e}', 403) from None
      self.wake()
      return 'killed' if force else 'aborting'

  def _external_row(self, job_id: str) -> dict[str, Any]:
    for row in self.rows():
      if row['id'] == job_id and row.get('external'):
        return row
    raise JobError(f'no job {job_id}', 404)

  def _abort_external(self, job_id: str) -> str:
    row = self._external_row(job_id)
    record = status_lib.read_status(row['status_file']) if row.get('status_file') else None
    if row['status'] != 'running' or status_lib.process_alive(record) is not True:
      raise JobError(f'{job_id} is {row["status"]}, not running here')
    try:
      os.kill(int(record['pid']), signal.SIGTERM)   # its own pid only: its group may be a user's shell
    except ProcessLookupError:
      pass
    self._rows_cache = (0.0, [])
    return 'aborting'

  def resume(self, job_id: str) -> str:
    with self._lock:
      job = self.jobs.get(job_id)
      if job is None:
        self._external_row(job_id)
        raise JobError(f'{job_id} was started outside the dashboard: resume it with its command '
                       '(shown on its page)')
      self._refresh(job)
      if job.state not in RESUMABLE:
        raise JobError(f'job {job_id} is {job.state}; only {", ".join(RESUMABLE)} jobs can be resumed')
      if job.kind == 'dataset' and os.path.isdir(job.tool_dir):
        raise JobError(f'job {job_id} already has its dataset; make a new dataset job instead')
      job.doc['abort_requested'] = False
      job.doc['error'] = None
      job.doc['queued_unix'] = self._queue_stamp()
      job.set_state(QUEUED, 'resume')
      try:
        job.save()
      except OSError as e:
        raise _write_failure(e, job.dir) from None
      self._rows_cache = (0.0, [])
    self.wake()
    return 'queued'

  def users_of(self, dataset_id: str) -> list[str]:
    return sorted(j.id for j in self.jobs.values()
                  if j.kind == 'model' and j.doc.get('dataset') == dataset_id and j.id not in self._pending_delete)

  def classifications_of(self, model_id: str) -> list[Job]:
    """The classify jobs made from model ``model_id``, newest first."""
    with self._lock:
      found = [j for j in self.jobs.values() if j.kind == 'classify' and j.doc.get('model') == model_id]
    return sorted(found, key=lambda j: -(j.doc.get('created_unix') or 0))

  def delete(self, job_id: str) -> str:
    """Deletes a job with its files; a running one is aborted first and removed when it has stopped."""
    with self._lock:
      job = self.jobs.get(job_id)
      if job is None:
        row = self._external_row(job_id)
        if row['status'] == 'running':
          self._abort_external(job_id)
          raise JobError(f'{job_id} was running: it was asked to stop; delete it again once it has',
                         409)
        path = os.path.realpath(row['path'])
        if not path.startswith(self.jobs_dir + os.sep):
          raise JobError(f'{job_id} is not inside the jobs folder', 403)
        shutil.rmtree(path, ignore_errors=True)
        self._rows_cache = (0.0, [])
        return 'deleted'
      if job.kind == 'dataset':
        users = self.users_of(job_id)
        if users:
          raise JobError(f'dataset {job_id} is used by model job(s) {", ".join(users)}: delete them first',
                         409)
      if job.kind == 'model':
        for child in self.classifications_of(job_id):
          self.delete(child.id)
      self._refresh(job)
      if job.state == RUNNING:
        self._pending_delete.add(job_id)
        if not job.doc.get('abort_requested'):     # already stopping: one SIGTERM is enough
          self.abort(job_id)
        return 'deleting'
      self._remove(job)
      return 'deleted'

  def _remove(self, job: Job) -> None:
    self.jobs.pop(job.id, None)
    self._children.pop(job.id, None)
    shutil.rmtree(job.dir, ignore_errors=True)
    self._rows_cache = (0.0, [])

  def update(self, job_id: str, **fields: str) -> Job:
    with self._lock:
      job = self.jobs.get(job_id)
      if job is None:
        self._external_row(job_id)
        raise JobError(f'{job_id} was started outside the dashboard: it has no name or notes to edit')
      for key, value in fields.items():
        if value is not None:
          job.doc[key] = value
      try:
        job.save()
      except OSError as e:
        raise _write_failure(e, job.dir) from None
      self._rows_cache = (0.0, [])
      return job

  # ---- Listing ------------------------------------------------------------------------------------

  def _tool_rows(self) -> list[dict[str, Any]]:
    """``runs.find_runs`` over the jobs folder, reused for ``ROWS_TTL_S``."""
    stamp, rows = self._rows_cache
    if rows and time.monotonic() - stamp < ROWS_TTL_S:
      return rows
    with self._listing_lock:
      stamp, rows = self._rows_cache
      if rows and time.monotonic() - stamp < ROWS_TTL_S:
        return rows
      try:
        rows = listing_lib.find_runs([self.jobs_dir], max_depth=4)
      except FileNotFoundError:
        rows = []
      self._rows_cache = (time.monotonic(), rows)
      return rows

  def rows(self) -> list[dict[str, Any]]:
    """One row per job (dashboard and external), running first, then the newest."""
    tool_rows = self._tool_rows()
    by_path = {}
    for row in tool_rows:
      by_path.setdefault(os.path.realpath(row['path']), row)
    out = []
    claimed = set()
    with self._lock:
      jobs = list(self.jobs.values())
    for job in jobs:
      path = os.path.realpath(job.tool_dir)
      row = by_path.get(path)
      if row is not None:
        claimed.add(path)
      out.append(self.job_row(job, row))
    for path, row in by_path.items():
      if path in claimed or os.path.dirname(path) in {os.path.realpath(j.dir) for j in jobs
                                                        if j.kind == 'dataset'}:
        continue
      rel = os.path.relpath(path, self.jobs_dir)
      if rel.startswith('..') or rel == '.' or row['kind'] == 'classify':
        continue
      kind = 'dataset' if row['kind'] in ('dataset', 'prepare') else 'model'
      out.append({**row, 'id': external_id(rel), 'kind': kind, 'tool_kind': row['kind'], 'name': rel,
                  'external': True, 'state': row['status'], 'status_text': row['status'].capitalize(),
                  'group': '', 'submitted_unix': row.get('updated_unix'), 'jobdir': path})
    order = {RUNNING: 0, QUEUED: 1}
    out.sort(key=lambda r: (order.get(r['state'], 2), -(r.get('submitted_unix') or 0)))
    return out

  def job_row(self, job: Job, row: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A job's row: the tool's view (progress, ETA, best top-1, size) under the job's own state."""
    if row is None:
      row = dict.fromkeys(listing_lib.ROW_KEYS)
    out = dict(row)
    state = job.state
    text = {QUEUED: 'Waiting', RUNNING: 'Running', DONE: 'Done', FAILED: 'Error',
            STOPPED: 'Aborted', INTERRUPTED: 'Interrupted'}.get(state, state)
    if state == QUEUED and job.wait_reason:
      text += f': {job.wait_reason}'
    if state == RUNNING and job.id in self._pending_delete:
      text = 'Deleting'
    if state == RUNNING and job.doc.get('abort_requested'):
      text = 'Aborting'
    out.update(id=job.id, kind=job.kind, tool_kind=row.get('kind'), name=job.doc.get('name') or job.id,
               group=job.doc.get('group') or '', notes=job.doc.get('notes') or '', state=state,
               status_text=text, external=False, submitted_unix=job.doc.get('created_unix'),
               submitted=job.doc.get('created'), dataset=job.doc.get('dataset'),
               devices=job.doc.get('devices') or [], wait_reason=job.wait_reason,
               jobdir=job.dir, error=job.doc.get('error') or row.get('error'))
    if state == DONE:
      out['progress'] = 1.0
    if state != RUNNING:
      out['eta_seconds'] = None
      started, finished = job.doc.get('started_unix'), job.doc.get('finished_unix')
      if out.get('elapsed_seconds') is None and started and finished:
        out['elapsed_seconds'] = round(max(0.0, finished - started), 1)
    elif out.get('elapsed_seconds') is None and job.doc.get('started_unix'):
      out['elapsed_seconds'] = round(time.time() - job.doc['started_unix'], 1)
    return out

  def device_summary(self) -> dict[str, Any]:
    held = self.held_devices()
    return {'devices': [{'name': d, 'job': held.get(d)} for d in self.devices],
            'free': sum(1 for d in self.devices if d not in held), 'total': len(self.devices)}

  def close(self) -> None:
    self.stop()

