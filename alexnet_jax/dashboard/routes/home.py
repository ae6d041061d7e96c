"""Home (DIGITS' job tables), its JSON twin, the static files, path completion and the demo folder.

    GET  /                                  Home: datasets and models          /index.json
    GET  /completed_jobs.json               DIGITS' home tables as JSON
    GET  /static/<tag>/<name>, /static/plotly-<version>.min.js
    GET  /paths/complete?path=              folder completion inside the data roots
    POST /demo                              draws the demo image folder
"""

from __future__ import annotations

import importlib.resources
import os

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import security
from alexnet_jax.dashboard import state
from alexnet_jax.dashboard import views
from alexnet_jax.dashboard.deps import Dash

router = APIRouter()


@router.get('/static/plotly-{version}.min.js', include_in_schema=False)
def plotly_js(version: str):
  if version != state.package_version('plotly'):
    raise errors_lib.not_found('no such plotly version')
  path = importlib.resources.files('plotly') / 'package_data' / 'plotly.min.js'
  return FileResponse(str(path), media_type='text/javascript',
                      headers={'Cache-Control': 'public, max-age=31536000, immutable'})


@router.get('/static/{tag}/{name}', include_in_schema=False)
def static(tag: str, name: str, dash: Dash):
  if name not in os.listdir(state.STATIC_DIR):
    raise errors_lib.not_found('no such file')
  kind = 'text/javascript' if name.endswith('.js') else 'text/css' if name.endswith('.css') else None
  cache = 'public, max-age=31536000, immutable' if tag == dash.static_tag else 'no-cache'
  return FileResponse(os.path.join(state.STATIC_DIR, name), media_type=kind, headers={'Cache-Control': cache})


@router.get('/favicon.ico', include_in_schema=False)
def favicon():
  return Response(status_code=204)


@router.get('/', response_class=HTMLResponse, include_in_schema=False)
def home(request: Request, dash: Dash, partial: int = 0):
  index = views.index(dash)
  sparks = {}
  for m in index['models']:
    row_dir = (dash.manager.get(m['id']).dir if dash.manager.get(m['id'])
               else os.path.join(dash.jobs_dir, m['id'].replace('~', os.sep)))
    sparks[m['id']] = views.sparkline(row_dir)
  template = 'home_tables.html' if partial else 'home.html'
  running = any(r['status'] in ('running', 'queued') for r in index['datasets'] + index['models'])
  return dash.render(template, request, index=index, sparks=sparks,
                     page={'live': running, 'devices': index['devices']})


@router.get('/index.json')
def index_json(dash: Dash):
  """DIGITS' ``{datasets: [{id, name, status}, ...], models: [...], version, jobs_dir}`` (digits/views.py
  ``home``) and our fields: ``status`` as DIGITS names it (``Done``), ours under ``state``; DIGITS'
  ``dataset_id`` of each model beside our ``dataset``."""
  index = views.index(dash)
  for item in index['datasets'] + index['models']:
    views.digits_job(item)
  for m in index['models']:
    m['dataset_id'] = m.get('dataset')
  index['version'] = state.package_version('alexnet_jax')
  index['jobs_dir'] = dash.jobs_dir
  return index


@router.get('/completed_jobs.json')
def completed_jobs(dash: Dash):
  """DIGITS' home-table JSON (digits/views.py ``completed_jobs``): ``running`` (queued or running datasets
  and models), the other ``datasets`` and ``models``, ``pretrained_models`` (the Pretrained Models page's) and
  ``model_output_fields``;
  each job ``{id, name, group, status, status_css, submitted, elapsed, progress (percent), type}``, with
  ``dataset_id`` and ``framework`` for a model, ``backend`` for a dataset, and our ``state``."""
  index = views.index(dash)
  out: dict[str, list] = {'running': [], 'datasets': [], 'models': [], 'pretrained_models': [],
                          'model_output_fields': []}
  for kind, items in (('dataset', index['datasets']), ('model', index['models'])):
    for item in items:
      row = views.digits_table_row(item, kind)
      out['running' if item['state'] in ('queued', 'running') else f'{kind}s'].append(row)
  for entry in dash.pretrained.entries():     # DIGITS' PretrainedModelJob rows: imported, so done
    out['pretrained_models'].append({'id': entry['id'], 'name': entry['name'], 'group': '', 'status': 'Done',
                                     'status_css': 'success', 'submitted': entry.get('created_unix'),
                                     'elapsed': 0, 'progress': 100, 'type': 'pretrained model',
                                     'framework': 'jax', 'state': 'done'})
  return out


@router.get('/paths/complete')
def complete(dash: Dash, path: str = ''):
  return {'paths': security.complete(path, dash.roots)}


@router.post('/demo')
def demo(dash: Dash):
  """Draws the demo folder (5 classes of shapes, 3,000 JPEGs, a few seconds) under the state folder."""
  target = os.path.join(dash.demo_dir, 'shapes')
  with dash.demo_lock:
    if not os.path.isdir(target):
      from alexnet_jax.data import demo as demo_data  # pylint: disable=g-import-not-at-top  (numpy + Pillow)
      demo_data.make_demo_folder(target, per_class=200)
  return {'folder': target}
