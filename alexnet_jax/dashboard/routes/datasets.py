"""DIGITS' dataset routes: New Dataset, a dataset job's page and JSON, Explore, its images.

    GET  /datasets/images/classification/new        New Dataset form (?clone=<id>)
    POST /datasets/images/classification.json       create a dataset job (DIGITS' form fields)
    GET  /datasets/resize_example.png               the four resize modes on a sample image
    GET  /datasets/<id>                             Dataset job page                   /datasets/<id>.json
    GET  /datasets/<id>/explore                     Explore: paged gallery by class
    GET  /datasets/<id>/images/<split>/<n>.png      one stored (resized) image
"""

from __future__ import annotations

import asyncio
import math
import os
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import forms
from alexnet_jax.dashboard import images
from alexnet_jax.dashboard import job_records
from alexnet_jax.dashboard import security
from alexnet_jax.dashboard import views
from alexnet_jax.dashboard.deps import Dash, DatasetRow, Form

router = APIRouter()


@router.get('/datasets/images/classification/new', response_class=HTMLResponse, include_in_schema=False)
def new_dataset(request: Request, dash: Dash, clone: str = ''):
  values = {}
  if clone:
    job = dash.manager.get(clone)
    if job is not None and job.kind == 'dataset':
      values = dict(job.doc.get('form') or {})
      values['dataset_name'] = f'{values.get("dataset_name", "")} (clone)'
  demo_ready = os.path.isdir(os.path.join(dash.demo_dir, 'shapes'))
  return dash.render('new_dataset.html', request, values=values, roots=[str(r) for r in dash.roots],
                     demo=os.path.join(dash.demo_dir, 'shapes'), demo_ready=demo_ready,
                     page={'roots': [str(r) for r in dash.roots],
                           'demo': os.path.join(dash.demo_dir, 'shapes'), 'values': values})


@router.post('/datasets/images/classification.json', status_code=200)
async def create_dataset(dash: Dash, form: Form):
  parsed = await asyncio.to_thread(forms.parse_dataset_form, form.fields, dash.roots, uploads=form.uploads)
  options = dict(parsed['options'])
  lists = options.pop('lists', None)
  labels = options.pop('labels', None)

  def argv_for(jobdir: str) -> list[str]:
    opts = dict(options)
    if lists is not None:            # text files: local ones as they are, uploads saved in the job
      saved = {}
      for split, (how, what) in lists.items():
        if how == 'upload':
          path = os.path.join(jobdir, f'{split}_list.txt')
          with open(path, 'wb') as f:
            f.write(parsed['uploads'][what])
          saved[split] = path
        else:
          saved[split] = str(what)
      how, what = labels
      if how == 'upload':
        opts['labels_file'] = os.path.join(jobdir, 'labels_upload.txt')
        with open(opts['labels_file'], 'wb') as f:
          f.write(parsed['uploads'][what])
      else:
        opts['labels_file'] = str(what)
      opts['source'] = saved['train']
      if 'val' in saved:
        opts['val_source'] = saved['val']
      if 'test' in saved:
        opts['test_source'] = saved['test']
    return forms.prepare_argv(opts, os.path.join(jobdir, job_records.DATASET_DIR)) + [dash.confine_flag()]

  job = dash.manager.create('dataset', name=parsed['name'], group=parsed['group'], notes=parsed['notes'],
                            argv=[], argv_for=argv_for, form=parsed['form'])
  return views.digits_job({'id': job.id, 'name': job.doc['name'], 'state': job.state,   # DIGITS' json_dict()
                           'url': f'/datasets/{job.id}'})


@router.get('/datasets/resize_example.png', include_in_schema=False)
def resize_example(dash: Dash, width: int = 256, height: int = 256, channels: int = 3, folder: str = ''):
  if not (1 <= width <= forms.MAX_SIZE and 1 <= height <= forms.MAX_SIZE) or channels not in (1, 3):
    raise errors_lib.refused('resize_width', 'width and height 1..4096, channels 1 or 3')
  sample = None
  if folder:
    try:
      sample = images.first_image(str(security.confine(folder, dash.roots, want='dir')), dash.roots)
    except security.PathError:
      sample = None
  with images.IMAGE_WORK:
    data = images.resize_example(width, height, channels, sample)
  return Response(data, media_type='image/png', headers={'Cache-Control': 'no-store'})


@router.get('/datasets/{job_id}.json')
def dataset_json(job_id: str, dash: Dash, row: DatasetRow):
  """Our dataset view, plus DIGITS' verbose ``json_dict(True)`` (``views.digits_dataset``)."""
  return views.digits_dataset(views.dataset_view(dash, job_id, row), row.get('jobdir') or row.get('path'))


@router.get('/datasets/{job_id}', response_class=HTMLResponse, include_in_schema=False)
def dataset_page(request: Request, job_id: str, dash: Dash, row: DatasetRow):
  view = views.dataset_view(dash, job_id, row)
  return dash.render('dataset.html', request, job=view, page=view)


@router.get('/datasets/{job_id}/explore', response_class=HTMLResponse, include_in_schema=False)
def explore(request: Request, job_id: str, dash: Dash, row: DatasetRow, split: str = 'train',
            label: int = -1, page: int = 1, size: int = 25):
  view = views.dataset_view(dash, job_id, row)
  if split not in views.SPLITS:
    split = 'train'
  size = size if size in views.PAGE_SIZES else 25
  files = dash.job_files(job_id)
  entries = views.list_lines(files[f'{split}.txt']) if f'{split}.txt' in files else []
  if label >= 0:
    entries = [e for e in entries if e[2] == label]
  pages = max(1, math.ceil(len(entries) / size))
  page = min(max(1, page), pages)
  shown = entries[(page - 1) * size: page * size]
  classes = view['classes']
  items = [{'index': i, 'label': lab, 'class': classes[lab] if 0 <= lab < len(classes) else str(lab),
            'path': os.path.basename(p)} for i, p, lab in shown]
  splits = [s for s in views.SPLITS if f'{s}.txt' in files]

  def link(**kw):
    q = {'split': split, 'label': label, 'page': page, 'size': size}
    q.update(kw)
    return f'/datasets/{quote(job_id)}/explore?{urlencode(q)}'

  return dash.render('explore.html', request, job=view, items=items, split=split, label=label,
                     page_no=page, pages=pages, size=size, total=len(entries), splits=splits,
                     sizes=views.PAGE_SIZES, link=link, page={'id': job_id})


@router.get('/datasets/{job_id}/images/{split}/{index}.png', include_in_schema=False)
def dataset_image(split: str, index: int, dash: Dash, row: DatasetRow):
  if split not in views.SPLITS or index < 0:
    raise errors_lib.not_found('no such image')
  tool = row['path'] if row.get('external') else os.path.join(row['jobdir'], job_records.DATASET_DIR)
  path = os.path.join(tool, f'{split}.array_record')
  if not os.path.isfile(path):
    raise errors_lib.not_found('no such split')
  try:
    data = dash.records.png(path, index)
  except IndexError:
    raise errors_lib.not_found('no such image') from None
  return Response(data, media_type='image/png', headers={'Cache-Control': 'private, max-age=3600'})
