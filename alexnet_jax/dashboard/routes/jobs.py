"""What every job offers: Abort, Resume, edit, Delete, Clone, its files and its state as JSON.

    POST /jobs/<id>/abort, /jobs/<id>/resume        Abort (snapshot + stop; ?force=1 kills), Resume
    PUT  /jobs/<id>, DELETE /jobs/<id>              name, notes and group (or DIGITS' job_name, job_notes);
                                                    delete with its files (also DELETE /models/<id>, /datasets/<id>)
    GET  /jobs/<id>.json                            any job's state; a classify job's result too
    GET  /jobs/<id>/status  (and /datasets/, /models/) DIGITS' {status, name, type, error}
    GET  /clone/<id>                                the New Model/Dataset form filled from a job
    GET  /files/<id>/<name>                         a job's files, by whitelisted name
"""

from __future__ import annotations

import os
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import files
from alexnet_jax.dashboard import forms
from alexnet_jax.dashboard import views
from alexnet_jax.dashboard.deps import Dash, Form, JobRow

router = APIRouter()
CONTENT_TYPES = {'.txt': 'text/plain; charset=utf-8', '.log': 'text/plain; charset=utf-8',
                 '.json': 'application/json', '.jsonl': 'text/plain; charset=utf-8', '.png': 'image/png'}
DIGITS_EDIT_FIELDS = {'job_name': 'name', 'job_notes': 'notes'}    # digits/views.py edit_job's fields
JOB_JSON_KEYS = ('id', 'name', 'kind', 'state', 'status_text', 'progress', 'eta_seconds', 'elapsed_seconds',
                 'best_val_top1', 'error')


@router.get('/clone/{job_id}', include_in_schema=False)
def clone(job_id: str, row: JobRow):
  where = ('/datasets/images/classification/new' if row['kind'] == 'dataset'
           else '/models/images/classification/new')
  return RedirectResponse(f'{where}?clone={quote(job_id)}', status_code=303)


@router.post('/jobs/{job_id}/abort')
def abort(job_id: str, dash: Dash, row: JobRow, force: int = 0):  # pylint: disable=unused-argument
  return {'id': job_id, 'result': dash.manager.abort(job_id, force=bool(force))}


@router.post('/jobs/{job_id}/resume')
def resume(job_id: str, dash: Dash, row: JobRow):  # pylint: disable=unused-argument
  return {'id': job_id, 'result': dash.manager.resume(job_id)}


@router.put('/jobs/{job_id}')
def edit(job_id: str, dash: Dash, row: JobRow, form: Form):  # pylint: disable=unused-argument
  fields = {DIGITS_EDIT_FIELDS.get(k, k): v for k, v in form.fields.items()}
  unknown = sorted(set(fields) - {'name', 'notes', 'group'})
  if unknown:
    raise errors_lib.DashboardError({k: 'only name, notes and group can be edited' for k in unknown})
  errors = {k: f'longer than {forms.MAX_TEXT} characters'
            for k, v in fields.items() if len(v) > forms.MAX_TEXT}
  if 'name' in fields and not fields['name'].strip():
    errors['name'] = 'required'
  if errors:
    raise errors_lib.DashboardError(errors)
  job = dash.manager.update(job_id, **{k: v.strip() for k, v in fields.items()})
  return {'id': job_id, 'name': job.doc.get('name'), 'notes': job.doc.get('notes'),
          'group': job.doc.get('group')}


@router.delete('/jobs/{job_id}')
@router.delete('/models/{job_id}')          # DIGITS' routes for the same (digits/views.py delete_job)
@router.delete('/datasets/{job_id}')
def delete(job_id: str, dash: Dash, row: JobRow):  # pylint: disable=unused-argument
  result = dash.manager.delete(job_id)
  files.remove_bundles(dash.inference.predictor.cache_dir, job_id)   # its download cache too
  return {'id': job_id, 'result': result}


@router.get('/files/{job_id}/{name}', include_in_schema=False)
def job_file(job_id: str, name: str, dash: Dash):
  found = dash.job_files(job_id)
  if name not in found:
    raise errors_lib.not_found(f'{job_id} has no file {name}')
  media = CONTENT_TYPES.get(os.path.splitext(name)[1], 'application/octet-stream')
  return FileResponse(found[name], media_type=media, headers={'Cache-Control': 'no-cache'})


@router.get('/jobs/{job_id}/status')
@router.get('/datasets/{job_id}/status')
@router.get('/models/{job_id}/status')
def job_status(job_id: str, dash: Dash):
  """DIGITS' ``{status, name, type, error}`` (digits/views.py ``job_status``), with DIGITS' status names
  and, like DIGITS, ``{"error": "Job not found."}`` for a job that does not exist."""
  try:
    row = dash.row(job_id)
  except errors_lib.DashboardError:
    return {'error': 'Job not found.'}
  return {'status': views.digits_status(row['state']), 'name': row['name'], 'state': row['state'],
          'type': views.JOB_TYPES.get(row['kind'], row['kind']), 'error': row.get('error')}


@router.get('/jobs/{job_id}.json')
def job_json(job_id: str, dash: Dash):
  job = dash.manager.get(job_id)
  if job is not None and job.kind == 'classify':
    return views.classify_view(dash, job)
  row = dash.row(job_id)
  return {k: row.get(k) for k in JOB_JSON_KEYS}
