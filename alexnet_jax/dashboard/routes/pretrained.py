"""The Pretrained Models routes (DIGITS had no such page; its users asked for one: issue 22).

    GET    /pretrained                               the page: every pretrained model, and Upload
    GET    /pretrained.json                          {"pretrained": [{id, name, kind, summary, ...}]}
    POST   /pretrained.json                          upload (``pretrained_import``) -> the new model
    GET    /pretrained/<id>                          a pretrained model's page        /pretrained/<id>.json
    POST   /pretrained/<id>/verify.json              its sha256 sums and shapes checked again (worker)
    POST   /pretrained/<id>/classify_one.json        Classify One / Many straight from it: the model
    POST   /pretrained/<id>/classify_many.json       page's routes with ``pretrained_id`` (any other field
                                                     as there; they also take ``pretrained_id`` directly)
    GET    /pretrained/<id>/download.<onnx|triton.zip>   as ONNX / a Triton model repository
    DELETE /pretrained/<id>                          an uploaded one (a --models_dir store is read-only)

A pretrained model is a bundle: ``pretrained_store`` lists them (JSON files only), the inference worker
imports, verifies, classifies and exports them; nothing here imports JAX.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import pretrained_import
from alexnet_jax.dashboard import pretrained_store
from alexnet_jax.dashboard import trained_model
from alexnet_jax.dashboard import views
from alexnet_jax.dashboard.deps import Dash, Form
from alexnet_jax.dashboard.routes import inference as inference_routes
from alexnet_jax.dashboard.workers import inference_client as predictor_lib

router = APIRouter()
UPLOAD_PATH = '/pretrained.json'     # app.py gives it its own body cap (model files are large)


def view(dash, entry: dict) -> dict:
  """A pretrained model's page and JSON: the summary (network, contract), its Classify Many jobs."""
  out = pretrained_store.public(entry)
  out['classifications'] = views.classification_rows(dash, entry['id'])
  return out


@router.get('/pretrained.json')
def pretrained_json(dash: Dash):
  return {'pretrained': [pretrained_store.public(e) for e in dash.pretrained.entries()],
          'models_dir': dash.pretrained.models_dir}


@router.post(UPLOAD_PATH)
async def upload(request: Request, dash: Dash):
  received = await pretrained_import.receive(request, dash.pretrained, dash.roots)
  entry = await trained_model.in_thread(pretrained_import.add, dash, received)
  return pretrained_store.public(entry)


@router.get('/pretrained', response_class=HTMLResponse, include_in_schema=False)
def pretrained_page(request: Request, dash: Dash):
  entries = [pretrained_store.public(e) for e in dash.pretrained.entries()]
  return dash.render('pretrained.html', request, entries=entries, models_dir=dash.pretrained.models_dir,
                     formats=pretrained_store.FORMATS, page={'entries': entries})


@router.get('/pretrained/{pretrained_id}.json')
def one_json(pretrained_id: str, dash: Dash):
  return view(dash, dash.pretrained.get(pretrained_id))


@router.get('/pretrained/{pretrained_id}', response_class=HTMLResponse, include_in_schema=False)
def one_page(request: Request, pretrained_id: str, dash: Dash):
  job = view(dash, dash.pretrained.get(pretrained_id))
  job.update(pretrained=True, snapshot_table={'snapshots': [], 'best': None}, dataset=None)
  return dash.render('pretrained_model.html', request, job=job, page=job)


@router.post('/pretrained/{pretrained_id}/verify.json')
async def verify(pretrained_id: str, dash: Dash):
  entry = dash.pretrained.get(pretrained_id)
  try:
    result = await trained_model.in_thread(dash.inference.predictor.verify_bundle, entry['bundle'])
  except predictor_lib.PredictorError as e:
    if not e.user_error:
      raise errors_lib.refused('verify', str(e), 503) from None
    result = {'ok': False, 'error': str(e)}
  verified = dash.pretrained.save_verified(entry, result)
  if not verified['ok']:
    raise errors_lib.DashboardError({'verify': verified['error']}, 400)
  return verified


@router.post('/pretrained/{pretrained_id}/classify_one.json')
async def classify_one(pretrained_id: str, dash: Dash, form: Form):
  form.fields['pretrained_id'] = pretrained_id
  return await inference_routes.classify_one(dash, form)


@router.post('/pretrained/{pretrained_id}/classify_many.json')
async def classify_many(request: Request, pretrained_id: str, dash: Dash, form: Form):
  form.fields['pretrained_id'] = pretrained_id
  return await inference_routes.classify_many(request, dash, form)


@router.get('/pretrained/{pretrained_id}/download.{fmt}')
def download(pretrained_id: str, fmt: str, dash: Dash, info: int = 0):
  return dash.inference.download(dash.inference.source({'pretrained_id': pretrained_id}), fmt, '', '',
                                 info=bool(info))


@router.delete('/pretrained/{pretrained_id}')
def delete(pretrained_id: str, dash: Dash):
  entry = dash.pretrained.get(pretrained_id)
  if entry['read_only']:
    raise errors_lib.refused('pretrained', f'{entry["name"]} is in the --models_dir store, which the '
                             'dashboard only reads; remove the folder there', 409)
  dash.pretrained.discard(pretrained_id)
  return {'deleted': pretrained_id}
