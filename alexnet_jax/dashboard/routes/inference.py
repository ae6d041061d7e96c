"""A trained model's routes (the JSON twins keep DIGITS' field names, so its REST clients keep working).

    GET  /models/<id>/snapshots.json                  the finished snapshots, epoch, val top-1, best
    POST /models/images/classification/classify_one.json
         job_id (or pretrained_id: a pretrained model, routes/pretrained.py), image_file (upload) |
         image_path, snapshot_epoch | step, show_visualizations,
         layout, top_k          -> {"predictions": [[label, percent], ...], "visualizations": [...], ...}
    POST /models/images/classification/classify_many.json
         job_id, image_list (upload) | image_list_path | dataset_list (val|test|train), image_folder,
         num_test_images, snapshot_epoch | step, layout, top_k, top_n, async
         -> DIGITS' {"classifications": {path: [[label, percent], ...], ...}} once the job is done, with
            its "job_id", "url", "accuracy" beside; async=1 answers at once with {"job_id", "url", ...}
    GET  /classifications/<id>                        the Classify Many page
    GET  /classifications/<id>/files/<name>, /classifications/<id>/thumb/<line>.png
    GET  /inference/files/<folder>/<name>             Classify One's visualizations
    GET  /models/<id>/download.<tar.gz|zip>?epoch=N   the snapshot as a bundle (cached)
    GET  /models/<id>/download.<onnx|triton.zip>       ... as ONNX, or a Triton model repository (cached)
    GET  /models/<id>/census.json                     the layouts' communication census (202 while computing)

What they do is ``trained_model.TrainedModels``' (``dash.inference``); the inference itself runs in the
inference worker, never in the web process.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import files
from alexnet_jax.dashboard import images
from alexnet_jax.dashboard import job_records
from alexnet_jax.dashboard import security
from alexnet_jax.dashboard import snapshots
from alexnet_jax.dashboard import trained_model
from alexnet_jax.dashboard import views
from alexnet_jax.dashboard.deps import ClassifyJob, Dash, Form, ModelRow

router = APIRouter()
CLASSIFY_TYPES = {'.png': 'image/png', '.json': 'application/json', '.csv': 'text/csv; charset=utf-8',
                  '.txt': 'text/plain; charset=utf-8'}


@router.get('/models/{job_id}/snapshots.json')
def snapshots_json(row: ModelRow):
  return snapshots.snapshot_table(row.get('jobdir') or row['path'])


@router.post('/models/images/classification/classify_one.json')
async def classify_one(dash: Dash, form: Form):
  return await trained_model.in_thread(dash.inference.classify_one, form.fields, form.uploads,
                                       form.filenames)


@router.post('/models/images/classification/classify_many.json')
async def classify_many(request: Request, dash: Dash, form: Form):
  job = await trained_model.in_thread(dash.inference.classify_many, form.fields, form.uploads)
  started = {'job_id': job.id, 'url': f'/classifications/{job.id}', 'images': job.doc.get('images'),
             'list_problems': job.doc.get('problems')}
  if trained_model.bool_field(form.fields, 'async'):
    return started
  return await dash.inference.classify_many_answer(request, job.id, started)


@router.get('/classifications/{job_id}', response_class=HTMLResponse, include_in_schema=False)
def classify_page(request: Request, dash: Dash, job: ClassifyJob):
  view = views.classify_view(dash, job, with_result=False)
  return dash.render('classifications.html', request, job=view, page=view)


@router.get('/classifications/{job_id}/files/{name}', include_in_schema=False)
def classify_file(job_id: str, name: str, job: ClassifyJob):
  allowed = files.NAME_RE.match(name) and name != job_records.JOB_FILE
  path = files.safe_join(job.dir, name) if allowed else None
  if path is None:
    raise errors_lib.not_found(f'{job_id} has no file {name}')
  media = CLASSIFY_TYPES.get(os.path.splitext(name)[1], 'application/octet-stream')
  return FileResponse(path, media_type=media, filename=name if name.endswith('.csv') else None)


@router.get('/classifications/{job_id}/thumb/{line}.png', include_in_schema=False)
def classify_thumb(line: int, dash: Dash, job: ClassifyJob, size: int = 96):
  path = trained_model.list_entry_path(os.path.join(job.dir, trained_model.LIST_FILE), line)
  if path is None or not security.inside(path, dash.roots):
    raise errors_lib.not_found(f'line {line} of the list names no image')
  return Response(images.thumbnail(path, max(16, min(int(size), 256))), media_type='image/png',
                  headers={'Cache-Control': 'max-age=3600'})


@router.get('/inference/files/{folder}/{name:path}', include_in_schema=False)
def vis_file(folder: str, name: str, dash: Dash):
  path = files.safe_join(os.path.join(dash.inference.vis_root, folder), name) if files.NAME_RE.match(
      folder) else None
  if path is None or not path.endswith(('.png', '.json')):
    raise errors_lib.not_found('no such visualization')
  return FileResponse(path, media_type='image/png' if path.endswith('.png') else 'application/json')


@router.get('/models/{job_id}/download.{fmt}')
def download(job_id: str, fmt: str, dash: Dash, epoch: str = '', step: str = '', info: int = 0):
  return dash.inference.download(dash.inference.source({'job_id': job_id}), fmt, epoch, step, info=bool(info))


@router.get('/models/{job_id}/census.json')
def census(job_id: str, dash: Dash):
  status, body = dash.inference.census(job_id)
  return security.PrintableJSONResponse(body, status_code=status)
