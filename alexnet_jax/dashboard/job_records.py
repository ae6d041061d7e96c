"""A dashboard job on disk: its folder, ``job.json``, its exit record, and the states it goes through.

A job is a folder ``<jobs_dir>/<id>/`` (ids as DIGITS made them: ``20250101-120000-ab12``) holding

    job.json      owned by the dashboard: kind (dataset | model | classify), name, group, notes, argv, the form it
                  came from, pid + process start time of its runner, state and its history
    output.log    the tool's stdout and stderr (``workers/runner.py``)
    exit.json     how the last attempt ended, written by the runner
    ...           the tool's own files: a model job's folder *is* the train workdir (config.json,
                  status.json, metrics.jsonl, checkpoints/, train.log); a dataset job's prepare writes
                  ``dataset/`` inside it (stats.json, labels.txt, train.txt, mean.png, ...); a classify
                  job (DIGITS' Classify Many) runs ``classify --status_dir`` on a model's snapshot and
                  keeps images.txt, classifications.json/.csv, status.json and the report PNGs

States (``job.json`` "state"): ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``stopped`` (Abort),
and ``interrupted`` for a job recorded as running whose runner is gone without an exit record (the
machine rebooted, it was killed). Stopped, interrupted and failed jobs can be resumed: the same argv on
the same workdir, which the trainer continues exactly where its last snapshot left off.
"""

from __future__ import annotations

import datetime
import errno
import os
import secrets
import time
from typing import Any, Optional

from alexnet_jax.runtime import fileio
from alexnet_jax.runtime import process
from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard.workers import runner as runner_lib

JOB_FILE = 'job.json'
DATASET_DIR = 'dataset'
STATE_DIR = '.dashboard'
KINDS = ('dataset', 'model', 'classify')
QUEUED, RUNNING, DONE, FAILED, STOPPED, INTERRUPTED = (
    'queued', 'running', 'done', 'failed', 'stopped', 'interrupted')
FINAL = (DONE, FAILED, STOPPED, INTERRUPTED)
RESUMABLE = (STOPPED, INTERRUPTED, FAILED)
STOPPED_EXIT_STATUSES = (process.EXIT_STOPPED, process.EXIT_INTERRUPTED)   # snapshot-and-stop; Ctrl-C
# DIGITS' job status names (digits/status.py ``Status``) for our states: what DIGITS' JSON routes and the
# home tables show. A job that was running when the server went away is Aborted in DIGITS too
# (scheduler.py ``load_past_jobs``); queued is DIGITS' WAIT.
DIGITS_STATUS = {QUEUED: 'Waiting', RUNNING: 'Running', DONE: 'Done', FAILED: 'Error', STOPPED: 'Aborted',
                 INTERRUPTED: 'Aborted'}
RESULT_FILE = 'classifications.json'     # a classify job's result (``classify --output``)
PROBLEMS_FILE = 'list_problems.json'     # ... and the lines of its list that were refused
POSTED_FILE = 'posted_names.json'       # ... and [name as posted, path classified] per kept line


def refused(message: str, status: int = 400) -> errors_lib.DashboardError:
  """What cannot be done to a job, for the client: ``{"errors": {"job": message}}``."""
  return errors_lib.DashboardError({'job': message}, status)


def write_failure(e: OSError, folder: str) -> errors_lib.DashboardError:
  """A write that failed, for the client: 507 naming the folder when the disk (or quota) is full, else
  500 with the cause; never a bare "internal error"."""
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return refused(f'no space left on the device of {folder}: free some space there and try again', 507)
  return refused(f'cannot write in {folder}: {e.strerror or e}', 500)


def now_iso(unix: Optional[float] = None) -> str:
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
    entry = {'state': state, 'time': now_iso(now), 'unix': round(now, 3)}
    if note:
      entry['note'] = note
    self.doc.setdefault('history', []).append(entry)

  def process_record(self) -> dict[str, Any]:
    return {k: self.doc.get(k) for k in ('pid', 'host', 'boot_id', 'process_start_ticks')}


def read_job(jobdir: str) -> Optional[dict[str, Any]]:
  doc = fileio.read_json(os.path.join(jobdir, JOB_FILE), max_bytes=4 * 2**20)
  if not isinstance(doc, dict) or doc.get('kind') not in KINDS or not isinstance(doc.get('argv'), list):
    return None
  doc['id'] = os.path.basename(jobdir)
  return doc


def read_exit(jobdir: str) -> Optional[dict[str, Any]]:
  record = fileio.read_json(os.path.join(jobdir, runner_lib.EXIT_FILE), max_bytes=1 << 20)
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
