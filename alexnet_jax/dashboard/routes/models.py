"""DIGITS' model routes: New Model, a model job's page, JSON and live curves, Visualize LR, Compare.

    GET  /models/images/classification/new          New Model form (?clone=<id>, ?dataset=<id>)
    POST /models/images/classification.json         create a model job, or one per sweep point
                                                     ({id, name, status, ...}; a sweep: {jobs: [...]})
    GET  /models/lr_curve.json                       Visualize LR
    GET  /models/<id>                                Model job page                     /models/<id>.json
                                                     (DIGITS' snapshots: [epoch, ...]; GPU Usage)
    GET  /models/<id>/stream                         live curves: server-sent events
    GET  /compare?ids=a,b                            several models' curves on one chart

The settings a form asks for are checked by the library itself, in the config worker
(``workers/config_client.py``): a 503 when it cannot answer, the field it names when it refuses.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from alexnet_jax.run import listing as listing_lib   # discovery and rows: status files only, no JAX
from alexnet_jax.runtime import status as status_lib
from alexnet_jax.runtime import fileio
from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import model_form
from alexnet_jax.dashboard import stream as stream_lib
from alexnet_jax.dashboard import views
from alexnet_jax.dashboard.deps import Dash, Form, ModelRow
from alexnet_jax.dashboard.workers import config_client

router = APIRouter()
STREAM_POLL_S = 0.5               # a live stream's stat() period while its job runs
STREAM_IDLE_POLL_S = 2.0          # ... and once it has ended (a Resume may follow)
STATUS_KEYS = ('status', 'status_text', 'progress', 'eta_seconds', 'elapsed_seconds', 'step', 'total_steps',
               'epoch', 'images_per_sec', 'best_val_top1', 'best_epoch', 'snapshots', 'error', 'hardware',
               'gpus', 'log_tail', 'history', 'snapshot_options')


@router.get('/models/images/classification/new', response_class=HTMLResponse, include_in_schema=False)
def new_model(request: Request, dash: Dash, clone: str = '', dataset: str = '', pretrained: str = ''):
  values: dict[str, Any] = {}
  if clone:
    job = dash.manager.get(clone)
    if job is not None and job.kind == 'model':
      values = dict(job.doc.get('form') or {})
      values['model_name'] = f'{values.get("model_name", "")} (clone)'
  if dataset:
    values['dataset'] = dataset
  if pretrained:     # "Fine-tune" on a pretrained model's page
    values.update(method='pretrained', pretrained_networks=pretrained)
  tables = dash.checker.tables(wait_s=20)
  datasets = dash.datasets_for_form()
  experiments = [e['name'] for e in config_client.list_experiments()]
  choices = {k: {f: v[f] for f in ('name', 'network', 'width', 'crop_size', 'channels', 'num_classes')}
             for k, v in dash.pretrained.for_form().items()}
  return dash.render('new_model.html', request, values=values, datasets=datasets, tables=tables,
                     experiments=experiments, previous=sorted(dash.previous_models()), pretrained=choices,
                     page={'datasets': datasets, 'tables': tables, 'values': values, 'pretrained': choices})


@router.post('/models/images/classification.json')
async def create_model(dash: Dash, form: Form):
  fields = form.fields
  experiments = {e['name']: e['path'] for e in config_client.list_experiments()}
  datasets = await asyncio.to_thread(dash.datasets_for_form)
  parsed = model_form.parse_model_form(fields, datasets=datasets, previous=dash.previous_models(),
                                       experiments=list(experiments), pretrained=dash.pretrained.for_form())
  devices_needed = []
  for overrides in parsed['points']:
    try:
      answer = await asyncio.to_thread(dash.checker.check, parsed['experiment'], overrides,
                                       parsed['num_classes'])
    except config_client.WorkerError as e:
      raise errors_lib.refused('config', f'settings could not be checked: {e}; try again', 503) from None
    if answer.get('problems'):
      raise errors_lib.DashboardError(model_form.map_problems(answer['problems'], parsed['form']['method']))
    devices_needed.append(answer.get('devices_needed') or 1)
  dataset = datasets[parsed['dataset']]
  created = []
  for overrides, label, need in zip(parsed['points'], parsed['labels'], devices_needed):
    name = f'{parsed["name"]} [{label}]' if label else parsed['name']
    job_form = dict(parsed['form'])
    if label:
      job_form['sweep_point'] = label
    job = dash.manager.create(
        'model', name=name, group=parsed['group'], notes=parsed['notes'], dataset=parsed['dataset'],
        devices_needed=need, argv=[], form=job_form,
        extra={'dataset_external': dataset.get('external', False), 'dataset_path': dataset['output'],
               'form_fields': dict(fields)},   # exactly as submitted, for the model page
        argv_for=lambda jobdir, o=overrides: model_form.train_argv(experiments[parsed['experiment']],
                                                                   jobdir, o))
    created.append(job.id)
  # DIGITS answers with the new job's json_dict() (its status, "job id", "creation time", "snapshot file":
  # "no snapshots", ...): the model JSON of each, with its page's url; a sweep's under "jobs".
  answers = [dict(await asyncio.to_thread(_model_json, dash, job_id), url=f'/models/{job_id}')
             for job_id in created]
  return answers[0] if len(answers) == 1 else {'jobs': answers}


@router.get('/models/lr_curve.json')
def lr_curve(request: Request, dash: Dash):
  fields = dict(request.query_params)
  fields.setdefault('model_name', 'lr')
  experiments = {e['name']: e['path'] for e in config_client.list_experiments()}
  datasets = dash.datasets_for_form()
  steps_per_epoch = 100
  parsed = model_form.parse_model_form(fields, datasets=datasets, previous={}, experiments=list(experiments),
                                       pretrained=dash.pretrained.for_form())
  dataset = datasets.get(parsed['dataset']) or {}
  train = (dataset.get('counts') or {}).get('train')
  batch = int(parsed['points'][0][-2].split('=')[1])
  if train:
    steps_per_epoch = max(1, train // batch)
  try:
    answer = dash.checker.lr_curve(parsed['experiment'], parsed['points'][0], steps_per_epoch)
  except config_client.WorkerError as e:
    raise errors_lib.refused('config', str(e), 503) from None
  if answer.get('problems'):
    raise errors_lib.DashboardError(model_form.map_problems(answer['problems']))
  return answer


@router.get('/models/{job_id}.json')
def model_json(job_id: str, dash: Dash, row: ModelRow):
  """DIGITS' ``{id, name, status, dataset_id, directory, snapshots: [epoch, ...], ...}`` (digits/model/
  job.py ``json_dict``; ``views.digits_model``), so a script can post ``snapshots[-1]`` as
  ``snapshot_epoch``. The richer rows ({step, epoch, val_top1}) are under ``snapshot_details``."""
  return views.digits_model(dash, job_id, views.model_view(dash, job_id, row))


def _model_json(dash, job_id: str) -> dict[str, Any]:
  return views.digits_model(dash, job_id, views.model_view(dash, job_id, dash.row_of_kind(job_id, 'model')))


@router.get('/models/{job_id}', response_class=HTMLResponse, include_in_schema=False)
def model_page(request: Request, job_id: str, dash: Dash, row: ModelRow):
  view = views.model_view(dash, job_id, row)
  return dash.render('model.html', request, job=view, page=view)


def _mtime(path: str) -> Any:
  try:
    return os.stat(path).st_mtime_ns
  except OSError:
    return None


@router.get('/models/{job_id}/stream', response_class=EventSourceResponse)
async def model_stream(request: Request, job_id: str, dash: Dash, row: ModelRow):
  """Live curves: ``metrics`` events carry the records appended to metrics.jsonl (id = last step),
  ``reset`` says the file was rewritten (a resume), ``status`` the job's state and progress, and its
  snapshots (``snapshot_options``, the "Select model" list) whenever status.json or checkpoints/ change."""
  workdir = row.get('jobdir') or row['path']
  tail = stream_lib.MetricsTail(os.path.join(workdir, 'metrics.jsonl'))
  status_path = os.path.join(workdir, status_lib.STATUS_FILE)
  checkpoints = os.path.join(workdir, 'checkpoints')
  last_status: Any = None
  last_state = None
  while True:
    if await request.is_disconnected():
      return
    reset, records = await asyncio.to_thread(tail.poll)
    if reset:
      yield ServerSentEvent(event='reset', data={})
    if records:
      yield ServerSentEvent(event='metrics', data=records, id=str(records[-1].get('step', '')))
    mtime = _mtime(status_path)
    job = dash.manager.get(job_id)
    state = job.state if job is not None else row['state']
    # A snapshot that appears (renamed into checkpoints/) changes the folder's mtime: a new status event
    # brings the page's "Select model" list up to date even when status.json did not change with it.
    key = (mtime, _mtime(checkpoints), state, job.wait_reason if job else None,
           job.doc.get('abort_requested') if job else None)
    if key != last_status:
      last_status = key
      fresh = await asyncio.to_thread(dash.row_of_kind, job_id, 'model')
      view = await asyncio.to_thread(views.model_view, dash, job_id, fresh)
      yield ServerSentEvent(event='status', data=dict({k: view[k] for k in STATUS_KEYS},
                                                      devices=dash.manager.device_summary()))
    last_state = state
    await asyncio.sleep(STREAM_POLL_S if last_state in ('running', 'queued') else STREAM_IDLE_POLL_S)


@router.get('/compare', response_class=HTMLResponse, include_in_schema=False)
def compare(request: Request, dash: Dash, ids: str = ''):
  chosen = [i for i in ids.split(',') if i][:20]
  series = []
  for job_id in chosen:
    try:
      row = dash.row_of_kind(job_id, 'model')
    except errors_lib.DashboardError:
      continue
    workdir = row.get('jobdir') or row['path']
    records = listing_lib.read_metrics_tail(os.path.join(workdir, 'metrics.jsonl'), 4 * 2**20)
    series.append({'id': job_id, 'name': row['name'], 'records': fileio.plain(records)})
  models = [r for r in dash.manager.rows() if r['kind'] == 'model']
  return dash.render('compare.html', request, series=series, models=models, chosen=chosen,
                     page={'series': series})
