"""Dashboard jobs: a workdir under the jobs folder, a subprocess of the existing tool, a ``job.json``.

``JobManager`` is what the routes use: it creates jobs, Aborts, Resumes, Deletes and edits them, and lists
every job of the folder -- the queue it builds on (loading, re-attaching, launching) is ``job_queue.py``,
a job's folder and states ``job_records.py``.

Everything else shown is read from the tools' files (``runs.find_runs``, status.json), so deleting the
dashboard leaves ordinary workdirs, and runs made with the command line in the jobs folder are listed
too (as *external* jobs: their id is their path, ``/`` written ``~``). Deleting a model deletes its
classify jobs.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from typing import Any, Callable, Optional

from alexnet_jax.run import listing as listing_lib   # discovery and rows: status files only, no JAX
from alexnet_jax.dashboard import job_queue
from alexnet_jax.dashboard import job_records
from alexnet_jax.dashboard.job_records import DONE, INTERRUPTED, KINDS, QUEUED, RESUMABLE, RUNNING
from alexnet_jax.dashboard.job_records import STOPPED, Job, refused, write_failure
from alexnet_jax.runtime import status as status_lib
from alexnet_jax.runtime import process

ROWS_TTL_S = 2.0                         # the runs listing is reused this long between requests


class JobManager(job_queue.JobQueue):
  """The jobs of one jobs folder: creation, the queue, Abort / Resume / Delete, and the listing (the
  arguments are ``job_queue.JobQueue``'s)."""

  # ---- Creating -----------------------------------------------------------------------------------

  def create(self, kind: str, *, name: str, argv: list[str], form: dict[str, Any], group: str = '',
             notes: str = '', dataset: Optional[str] = None, devices_needed: int = 1,
             job_id: Optional[str] = None, extra: Optional[dict[str, Any]] = None,
             argv_for: Optional[Callable[[str], list[str]]] = None) -> Job:
    """Writes a queued job; ``argv_for(jobdir)`` builds the argv once the folder is known."""
    if kind not in KINDS:
      raise ValueError(kind)
    with self._lock:
      job_id = job_id or job_records.new_job_id()
      while job_id in self.jobs or os.path.exists(os.path.join(self.jobs_dir, job_id)):
        job_id = job_records.new_job_id()
      jobdir = os.path.join(self.jobs_dir, job_id)
      try:
        os.makedirs(jobdir)
        return self._create(kind, job_id, jobdir, name=name, argv=argv, form=form, group=group, notes=notes,
                            dataset=dataset, devices_needed=devices_needed, extra=extra, argv_for=argv_for)
      except OSError as e:
        shutil.rmtree(jobdir, ignore_errors=True)          # nothing half-made stays behind
        raise write_failure(e, self.jobs_dir) from None

  def _create(self, kind: str, job_id: str, jobdir: str, *, name, argv, form, group, notes, dataset,
              devices_needed, extra, argv_for) -> Job:
    """``create`` once the folder exists (under the manager's lock); OSError when a file cannot be written."""
    now = time.time()
    doc = {'version': 1, 'id': job_id, 'kind': kind, 'name': name, 'group': group, 'notes': notes,
           'created': job_records.now_iso(now), 'created_unix': round(now, 3),
           'queued_unix': self._queue_stamp(),
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
        raise refused(f'job {job_id} is {job.state}, not running')
      if job.doc.get('abort_requested') and not force:
        raise refused(f'job {job_id} is already stopping (it is writing its stop snapshot); wait, or use '
                       'Force stop (POST /jobs/<id>/abort?force=1) to kill it now and lose the steps since '
                       'its last snapshot', 409)
      job.doc['abort_requested'] = True
      if force:
        job.doc['force_stopped'] = True
      self._save(job)
      if process.process_alive(job.process_record()) is False:
        self._refresh(job)
        self._save(job)
        return job.state
      try:
        os.killpg(int(job.doc['pid']), signal.SIGKILL if force else signal.SIGTERM)
      except ProcessLookupError:
        pass
      except PermissionError as e:
        raise refused(f'cannot signal process {job.doc["pid"]}: {e}', 403) from None
      self.wake()
      return 'killed' if force else 'aborting'

  def _external_row(self, job_id: str) -> dict[str, Any]:
    for row in self.rows():
      if row['id'] == job_id and row.get('external'):
        return row
    raise refused(f'no job {job_id}', 404)

  def _abort_external(self, job_id: str) -> str:
    row = self._external_row(job_id)
    record = status_lib.read_status(row['status_file']) if row.get('status_file') else None
    if row['status'] != 'running' or process.process_alive(record) is not True:
      raise refused(f'{job_id} is {row["status"]}, not running here')
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
        raise refused(f'{job_id} was started outside the dashboard: resume it with its command '
                       '(shown on its page)')
      self._refresh(job)
      if job.state not in RESUMABLE:
        raise refused(f'job {job_id} is {job.state}; only {", ".join(RESUMABLE)} jobs can be resumed')
      if job.kind == 'dataset' and os.path.isdir(job.tool_dir):
        raise refused(f'job {job_id} already has its dataset; make a new dataset job instead')
      job.doc['abort_requested'] = False
      job.doc['error'] = None
      job.doc['queued_unix'] = self._queue_stamp()
      job.set_state(QUEUED, 'resume')
      try:
        job.save()
      except OSError as e:
        raise write_failure(e, job.dir) from None
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
          raise refused(f'{job_id} was running: it was asked to stop; delete it again once it has',
                         409)
        path = os.path.realpath(row['path'])
        if not path.startswith(self.jobs_dir + os.sep):
          raise refused(f'{job_id} is not inside the jobs folder', 403)
        shutil.rmtree(path, ignore_errors=True)
        self._rows_cache = (0.0, [])
        return 'deleted'
      if job.kind == 'dataset':
        users = self.users_of(job_id)
        if users:
          raise refused(f'dataset {job_id} is used by model job(s) {", ".join(users)}: delete them first',
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

  def update(self, job_id: str, **fields: str) -> Job:
    with self._lock:
      job = self.jobs.get(job_id)
      if job is None:
        self._external_row(job_id)
        raise refused(f'{job_id} was started outside the dashboard: it has no name or notes to edit')
      for key, value in fields.items():
        if value is not None:
          job.doc[key] = value
      try:
        job.save()
      except OSError as e:
        raise write_failure(e, job.dir) from None
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
      out.append({**row, 'id': job_records.external_id(rel), 'kind': kind, 'tool_kind': row['kind'],
                  'name': rel,
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
    # DIGITS' names, but an interrupted job says so on our pages (it can be resumed; DIGITS: Aborted).
    text = 'Interrupted' if state == INTERRUPTED else job_records.DIGITS_STATUS.get(state, state)
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
