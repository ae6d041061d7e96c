"""What the pages and their JSON twins show, built apart from the routes that answer them.

Each view is a plain dict (``plain``: finite floats, paths as text), read from the files the tools write
(status.json, metrics.jsonl, stats.json, checkpoints/) under the job's own state (``state.Dashboard.row``):
the home index, a dataset's and a model's page (with DIGITS' extra JSON fields), a classify job's, the
gallery's page of a split, the visualizations of Classify One. Also the small formatting helpers the
templates call (``fmt_time``, ``fmt_pct``).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import time
from typing import Any, Optional

import markupsafe

from alexnet_jax.runtime import confinement
from alexnet_jax.runtime import fileio
from alexnet_jax.runtime import status as status_lib
from alexnet_jax.runtime import process
from alexnet_jax.run import listing as listing_lib   # discovery and rows: status files only, no JAX
from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import gpu_usage
from alexnet_jax.dashboard import job_records
from alexnet_jax.dashboard import pretrained_store
from alexnet_jax.dashboard import snapshots
from alexnet_jax.dashboard.workers import runner as runner_lib
from alexnet_jax.data import lists as image_lists

PAGE_SIZES = (10, 25, 50, 100)
SPLITS = ('train', 'val', 'test')


# ---- Formatting helpers for the templates ------------------------------------------------------------

def fmt_time(unix: Optional[float]) -> str:
  if not unix:
    return '-'
  return datetime.datetime.fromtimestamp(unix).strftime('%Y-%m-%d %H:%M:%S')


def fmt_pct(value: Optional[float], digits: int = 1) -> str:
  return '-' if value is None else f'{100 * value:.{digits}f}%'


def printable_value(value: Any) -> Any:
  """Jinja's finalize: a string with undecodable path bytes is shown escaped (the page stays UTF-8)."""
  return confinement.printable(value) if isinstance(value, str) and not isinstance(value, markupsafe.Markup) \
      else value


# ---- Jobs, datasets, models ----------------------------------------------------------------------

def form_fields(doc: dict[str, Any]) -> list[list[str]]:
  """A model job's New Model form, ``[[field, value], ...]`` as submitted (as parsed, for jobs made
  before the submitted fields were kept), for the model page's "Form values"."""
  fields = doc.get('form_fields')
  if not isinstance(fields, dict):
    fields = {k: v for k, v in (doc.get('form') or {}).items() if v is not None}
  return [[str(k), v if isinstance(v, str) else json.dumps(v)] for k, v in sorted(fields.items())]


def digits_epochs(rows: list[dict[str, Any]]) -> list[Any]:
  """The snapshots' epochs as DIGITS lists them: a whole epoch as an int (14, shown "Epoch #14"), a
  fractional one as a float; a snapshot whose epoch is unknown is left out."""
  out = []
  for r in rows:
    epoch = r.get('epoch')
    if isinstance(epoch, (int, float)):
      out.append(int(epoch) if float(epoch).is_integer() else epoch)
  return out


def snapshot_options(table: dict[str, Any]) -> list[dict[str, Any]]:
  """The model page's "Select model" list, newest first, as DIGITS labels it (``Epoch #14``; a snapshot
  whose epoch is unknown by its step), with its validation top-1 and the best one marked. The page draws
  it from this list when it loads and again from the live stream as snapshots appear."""
  best = table.get('best')
  out = []
  for s in reversed(table.get('snapshots') or []):
    epoch = s.get('epoch')
    text = f'Epoch #{round(epoch, 2):g}' if epoch is not None else f'Step {s["step"]}'
    if s.get('val_top1') is not None:
      text += f' · val top-1 {fmt_pct(s["val_top1"], 2)}'
    if s['step'] == best:
      text += ' (best)'
    out.append({'step': s['step'], 'epoch': epoch, 'text': text, 'best': s['step'] == best})
  return out


def job_fields(job_id: str, row: dict[str, Any]) -> dict[str, Any]:
  """What every job page shows of a job's row (name, state, progress, times)."""
  return {
      'id': job_id, 'name': row['name'], 'group': row.get('group') or '', 'notes': row.get('notes') or '',
      'status': row['state'], 'status_text': row['status_text'], 'external': bool(row.get('external')),
      'progress': row.get('progress'), 'eta_seconds': row.get('eta_seconds'),
      'elapsed_seconds': row.get('elapsed_seconds'), 'submitted': row.get('submitted'),
  }


def hardware(pid: Optional[int], cache: dict) -> dict[str, Any]:
  """Process CPU % (since the previous look) and resident memory of a job's tool process."""
  if not isinstance(pid, int) or pid <= 0:
    return {}
  ticks = process.cpu_ticks(pid)
  if ticks is None:
    return {}
  try:
    rss = 0
    with open(f'/proc/{pid}/status', encoding='ascii', errors='replace') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          rss = int(line.split()[1]) * 1024
          break
  except (OSError, ValueError, IndexError):
    return {}
  now = time.monotonic()
  hz = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100
  previous = cache.get(pid)
  cache[pid] = (now, ticks)
  cpu = None
  if previous is not None and now > previous[0]:
    cpu = 100.0 * (ticks - previous[1]) / hz / (now - previous[0])
  if len(cache) > 256:
    cache.clear()
  return {'pid': pid, 'cpu_percent': None if cpu is None else round(cpu, 1), 'rss_bytes': rss,
          'devices': 'per-device memory: reported by the trainer only where jax exposes it (not on CPU)'}


def index(dash) -> dict[str, Any]:
  rows = dash.manager.rows()
  datasets, models = [], []
  for r in rows:
    item = {k: r.get(k) for k in ('id', 'name', 'group', 'state', 'status_text', 'progress', 'eta_seconds',
                                  'elapsed_seconds', 'submitted', 'size_bytes', 'external', 'error')}
    item['status'] = r['state']
    item['submitted_unix'] = r.get('submitted_unix')
    if r['kind'] == 'classify':     # shown on its model's page
      continue
    if r['kind'] == 'dataset':
      datasets.append(item)
    else:
      item.update(best_val_top1=r.get('best_val_top1'), best_epoch=r.get('best_epoch'),
                  train_loss=r.get('train_loss'), dataset=r.get('dataset'), epoch=r.get('epoch'),
                  devices=r.get('devices') or [])
      models.append(item)
  pretrained = [pretrained_store.public(e) for e in dash.pretrained.entries()]   # Pretrained Models
  return fileio.plain({'datasets': datasets, 'models': models, 'pretrained': pretrained,
                       'devices': dash.manager.device_summary()})


def dataset_view(dash, job_id: str, row: dict[str, Any]) -> dict[str, Any]:
  """The dataset page and its JSON twin: the prepare's progress, its classes, counts and files."""
  job = dash.manager.get(job_id)
  tool = row['path'] if row.get('external') else os.path.join(row['jobdir'], job_records.DATASET_DIR)
  stats = fileio.read_json(os.path.join(tool, 'stats.json'))
  live = status_lib.read_status(os.path.join(os.path.dirname(tool), f'.{os.path.basename(tool)}.status.json'))
  if live is None:
    live = status_lib.read_status(os.path.join(tool, 'status.json'))
  live = live if isinstance(live, dict) else {}
  form = (job.doc.get('form') if job else None) or {}
  counts = (stats or {}).get('counts') or {}
  view = {
      **job_fields(job_id, row),
      'phase': live.get('phase'), 'done': live.get('done'), 'total': live.get('total'),
      'split': live.get('split'), 'images_per_sec': live.get('images_per_sec'),
      'source': (stats or {}).get('source') or live.get('source') or form.get('folder_train'),
      'image_size': (stats or {}).get('image_size') or [form.get('resize_width'), form.get('resize_height')],
      'channels': (stats or {}).get('channels') or form.get('resize_channels'),
      'resize_mode': (stats or {}).get('resize_mode') or form.get('resize_mode'),
      'encoding': (stats or {}).get('encoding') or form.get('encoding'),
      'classes': (stats or {}).get('classes') or [], 'counts': counts,
      'split_sizes': {s: sum(c.values()) for s, c in counts.items()},
      'skipped': len((stats or {}).get('skipped') or []),
      'dropped_classes': (stats or {}).get('dropped_classes') or [],
      'size_bytes': row.get('size_bytes'), 'history': (job.doc.get('history') if job else []) or [],
      'error': row.get('error'), 'files': sorted(dash.job_files(job_id)),
      'used_by': dash.manager.users_of(job_id) if job else [],
      'log_tail': job_records.tail(os.path.join(row['jobdir'], runner_lib.OUTPUT_LOG), 30)
      if row['state'] in ('failed', 'interrupted') and not row.get('external') else [],
      'command': process.command_string(job.doc['argv']) if job else row.get('command'),
      'wait_reason': row.get('wait_reason'),
  }
  return fileio.plain(view)


def model_view(dash, job_id: str, row: dict[str, Any]) -> dict[str, Any]:
  """The model page and its JSON twin: the run's status, snapshots, metrics, hardware and form."""
  workdir = row.get('jobdir') or row['path']
  job = dash.manager.get(job_id)
  status = status_lib.read_status(workdir)
  status = status if isinstance(status, dict) else {}
  config = fileio.read_json(os.path.join(workdir, 'config.json'))
  table = snapshots.snapshot_table(workdir)
  metrics = listing_lib.read_metrics_tail(os.path.join(workdir, 'metrics.jsonl'), 16 * 1024)
  latest = {}
  for record in metrics:
    if isinstance(record, dict) and record.get('split'):
      latest[record['split']] = record
  log_name = 'train.log' if os.path.isfile(os.path.join(workdir, 'train.log')) else runner_lib.OUTPUT_LOG
  hw = hardware(status.get('pid'), dash.hw_cache) if row['state'] == 'running' else {}
  # DIGITS' GPU Usage panel while the job runs (NVML when installed; [] on a CPU host or without it).
  gpus = gpu_usage.read(gpu_usage.job_gpu_indices(row.get('devices') or [])) if row['state'] == 'running' else []
  dataset = None
  if job is not None and job.doc.get('dataset'):
    dataset = dash.dataset_info(job.doc['dataset'])
  view = {
      **job_fields(job_id, row),
      'step': status.get('step'), 'total_steps': status.get('total_steps'), 'epoch': status.get('epoch'),
      'num_epochs': (config or {}).get('num_epochs') if isinstance(config, dict) else None,
      'images_per_sec': status.get('images_per_sec'), 'best_val_top1': status.get('best_val_top1'),
      'best_epoch': status.get('best_epoch'), 'best_step': status.get('best_step'),
      'snapshots': table['snapshots'], 'snapshot_table': table, 'latest_metrics': latest,
      'snapshot_options': snapshot_options(table),
      'dataset': dataset, 'config': config if isinstance(config, dict) else None,
      'history': (job.doc.get('history') if job else []) or [],
      'error': row.get('error'), 'log_name': log_name,
      'log_tail': job_records.tail(os.path.join(workdir, log_name), 30)
      if row['state'] in ('failed', 'interrupted') else [],
      'files': sorted(dash.job_files(job_id)), 'hardware': hw, 'gpus': gpus,
      'command': process.command_string(job.doc['argv']) if job else row.get('command'),
      'devices': row.get('devices') or [], 'size_bytes': row.get('size_bytes'),
      'wait_reason': row.get('wait_reason'),
      'classifications': classification_rows(dash, job_id),
      'form_fields': form_fields(job.doc) if job is not None else [],
  }
  c = config if isinstance(config, dict) else {}
  model, lr = c.get('model') or {}, c.get('lr') or {}
  if isinstance(model, dict) and model.get('name'):
    view['network_text'] = f'{model["name"]} x{model.get("width", 1)} · layout {c.get("layout", "?")}'
  if c.get('optimizer'):
    view['solver_text'] = (f'{c["optimizer"]} · lr {c.get("learning_rate")} ({lr.get("policy", "?")}) · '
                           f'batch {c.get("batch_size")} · {c.get("num_epochs")} epochs')
  tune = c.get('finetune') if isinstance(c.get('finetune'), dict) else {}
  controls = [f'{k} {tune[k]}' for k in ('preset', 'freeze', 'lr_mult') if tune.get(k)]
  if controls:   # training/finetune_controls.py
    view['finetune_text'] = ' · '.join(controls)
  if c.get('init_from'):   # what it started from: a pretrained model, a previous model, or a path
    form = (job.doc.get('form') if job is not None else None) or {}
    view['init_from'] = {'path': c['init_from'], 'pretrained': form.get('pretrained_networks'),
                         'previous': form.get('previous_networks')}
  return fileio.plain(view)


def classification_rows(dash, model_id: str) -> list[dict[str, Any]]:
  """The model's Classify Many jobs for its page: id, name, state and top-1 once known."""
  rows = []
  for job in dash.manager.classifications_of(model_id):
    status = status_lib.read_status(os.path.join(job.dir, status_lib.STATUS_FILE))
    row = dash.manager.job_row(job)
    rows.append({'id': job.id, 'name': job.doc.get('name'), 'state': job.state,
                 'status_text': row['status_text'],
                 'top1': status.get('top1') if isinstance(status, dict) else None})
  return rows


@functools.lru_cache(maxsize=4096)
def _sparkline_cached(path: str, inode: int, size: int) -> str:  # pylint: disable=unused-argument
  losses = [r['loss'] for r in listing_lib.read_metrics_tail(path, 24 * 1024)
            if r.get('split') == 'train' and isinstance(r.get('loss'), (int, float))
            and math.isfinite(r['loss'])][-60:]
  if len(losses) < 2:
    return ''
  lo, hi = min(losses), max(losses)
  span = (hi - lo) or 1.0
  n = len(losses) - 1
  return ' '.join(f'{100 * i / n:.1f},{18 - 16 * (v - lo) / span:.1f}' for i, v in enumerate(losses))

def sparkline(workdir: str) -> str:
  path = os.path.join(workdir, 'metrics.jsonl')
  try:
    st = os.stat(path)
  except OSError:
    return ''
  return _sparkline_cached(path, st.st_ino, st.st_size)


def list_lines(path: str) -> list[tuple[int, str, int]]:
  """(record index, source path, label) of a prepared split's list (records are in list order), read by
  ``data.lists``, the one list parser; a line it refuses is left out (prepare never writes one)."""
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      found, _ = image_lists.parse_lines(f, num_classes=None, base='', labelled=True)
  except OSError:
    return []
  return [(i, e.name, e.label) for i, e in enumerate(found)]


# ---- Classify Many and Classify One --------------------------------------------------------------

def classify_view(dash, job: job_records.Job, *, with_result: bool = True) -> dict[str, Any]:
  """A classify job's state and progress and, once written, its result."""
  status = status_lib.read_status(os.path.join(job.dir, status_lib.STATUS_FILE))
  status = status if isinstance(status, dict) else {}
  row = dash.manager.job_row(job)
  view = {'job_id': job.id, 'kind': 'classify', 'name': job.doc.get('name'), 'status': job.state,
          'status_text': row['status_text'], 'model': job.doc.get('model'), 'step': job.doc.get('step'),
          'model_url': job.doc.get('model_url'),
          'epoch': job.doc.get('epoch'), 'layout': job.doc.get('layout'), 'images': job.doc.get('images'),
          'done': status.get('done'), 'total': status.get('total') or job.doc.get('images'),
          'progress': 1.0 if job.state == 'done' else status.get('progress'),
          'eta_seconds': status.get('eta_seconds') if job.state == 'running' else None,
          'images_per_sec': status.get('images_per_sec'), 'phase': status.get('phase'),
          'error': job.doc.get('error'), 'elapsed_seconds': row.get('elapsed_seconds'),
          'history': job.doc.get('history') or []}
  problems = fileio.read_json(os.path.join(job.dir, job_records.PROBLEMS_FILE))
  view['list_problems'] = problems if isinstance(problems, list) else []
  if job.state in ('failed', 'interrupted'):
    view['log_tail'] = job_records.tail(os.path.join(job.dir, runner_lib.OUTPUT_LOG), 20)
  if with_result:
    doc = fileio.read_json(os.path.join(job.dir, job_records.RESULT_FILE), 64 * 2**20)
    if isinstance(doc, dict):
      view['classifications'] = {path: [[label, round(100.0 * p, 4)] for label, p in ranked]
                                 for path, ranked in (doc.get('predictions') or {}).items()}
      view['errors'] = doc.get('errors') or []
      view['accuracy'] = doc.get('accuracy')
      view['top_n_per_category'] = doc.get('top_n_per_category')
      view['classes'] = _classes_or_empty(job.doc.get('model_workdir') or '')
      view['files'] = {n: f'/classifications/{job.id}/files/{n}' for n in sorted(os.listdir(job.dir))
                       if n.endswith(('.json', '.csv', '.png', '.txt'))
                       and n not in (job_records.JOB_FILE, job_records.POSTED_FILE)}
  return view


def _classes_or_empty(workdir: str) -> list[str]:
  try:
    return snapshots.classes(workdir)
  except errors_lib.DashboardError:
    return []


def vis_entries(stats: dict[str, Any], out_dir: str, url_of) -> dict[str, Any]:
  """``visualization.visualize``'s stats as the page draws them: conv1's filters (the towers side by
  side, the paper's Figure 3) and, per layer, its statistics with the URLs of its pictures."""
  urls = {}
  for name in stats.get('files') or []:
    url = url_of(os.path.join(out_dir, name))
    if url:
      urls[name] = url
  layers = []
  for layer, entry in (stats.get('layers') or {}).items():
    if not isinstance(entry, dict):
      continue
    act = entry.get('activations') or {}
    layers.append({
        'name': layer, 'kernel_shape': entry.get('kernel_shape') or entry.get('bias_shape'),
        'parameters': entry.get('parameters'), 'weights': entry.get('weights') or entry.get('bias'),
        'activations': {k: act.get(k) for k in ('mean', 'std', 'fraction_positive', 'shape_per_tower')}
        if act else None,
        'weights_histogram': urls.get(f'histograms/weights_{layer}.png'),
        'activations_grid': urls.get(f'activations/{layer}.png'),
        'activations_histogram': urls.get(f'histograms/activations_{layer}.png')})
  return {'conv1_filters': urls.get('conv1_filters.png'), 'input': urls.get('input.png'),
          'top5': urls.get('top5.png'), 'stats': urls.get('stats.json'), 'layers': layers,
          'model': stats.get('model'), 'conv1_color': stats.get('conv1_color')}


# ---- DIGITS' JSON fields beside ours -------------------------------------------------------------------

JOB_TYPES = {'dataset': 'Image Classification Dataset', 'model': 'Image Classification Model'}


def digits_status(state: Optional[str]) -> str:
  """DIGITS' name of a state (``Done``, ``Running``...); ``?`` as DIGITS names one it does not know."""
  return job_records.DIGITS_STATUS.get(state or '', '?')


def digits_job(item: dict[str, Any]) -> dict[str, Any]:
  """A job's JSON with DIGITS' status string under ``status`` and ours (lowercase) under ``state``."""
  state = item.get('state') or item.get('status')
  item['state'] = state
  item['status'] = digits_status(state)
  return item


def digits_table_row(item: dict[str, Any], kind: str) -> dict[str, Any]:
  """One job of DIGITS' ``completed_jobs.json`` (digits/views.py ``json_dict``) from an index row."""
  css = {'Done': 'success', 'Running': 'info', 'Error': 'danger'}     # digits/status.py; else 'warning'
  status = digits_status(item['state'])
  progress = item.get('progress')
  row = {'id': item['id'], 'name': item['name'], 'group': item.get('group') or '', 'status': status,
         'status_css': css.get(status, 'warning'), 'submitted': item.get('submitted_unix'),
         'elapsed': item.get('elapsed_seconds') or 0,
         'progress': int(round(100 * progress)) if isinstance(progress, (int, float)) else 0,
         'type': kind, 'state': item['state']}
  if kind == 'model':
    row.update(dataset_id=item.get('dataset'), framework='jax')
  else:
    row['backend'] = 'files'
  return row


def digits_dataset(view: dict[str, Any], directory: Optional[str] = None) -> dict[str, Any]:
  """A dataset's view with DIGITS' verbose ``json_dict(True)`` (digits/dataset/images/classification/job.py):
  ``status`` as DIGITS names it (ours under ``state``), ``directory``, ``ParseFolderTasks`` and
  ``CreateDbTasks`` (counts per split, and per split database its entries and image shape)."""
  sizes = view.get('split_sizes') or {}
  width, height = (list(view.get('image_size') or []) + [None, None])[:2]
  digits_job(view)
  view['directory'] = directory
  view['ParseFolderTasks'] = [{'name': 'Parse Folder', 'label_count': len(view.get('classes') or []),
                               **{f'{s}_count': sizes.get(s, 0) for s in ('train', 'val', 'test')}}]
  view['CreateDbTasks'] = [{'name': f'Create DB ({s})', 'entries': n, 'image_width': width,
                            'image_height': height, 'image_channels': view.get('channels'),
                            'backend': 'files', 'encoding': view.get('encoding'), 'compression': 'none'}
                           for s, n in sizes.items() if n]
  return view


def _image_dimensions(view: dict[str, Any]) -> Optional[list[Any]]:
  """DIGITS' ``image dimensions``, the dataset's [height, width, channels] (``get_feature_dims``)."""
  dataset = view.get('dataset') or {}
  size, channels = dataset.get('image_size'), dataset.get('channels')
  if not size:
    data = (view.get('config') or {}).get('data') or {}
    size, channels = data.get('image_size'), data.get('channels')
  if isinstance(size, (int, float)):
    size = [size, size]
  if not isinstance(size, list) or len(size) != 2:
    return None
  return [size[1], size[0], channels]


def digits_model(dash, job_id: str, view: dict[str, Any]) -> dict[str, Any]:
  """A model's view with DIGITS' verbose ``json_dict(True)`` (digits/model/job.py, model/images/job.py and
  the train task's ``get_task_stats``): ``id, name, status`` (ours under ``state``), ``directory``,
  ``dataset_id``, ``snapshots: [epoch, ...]`` (the richer rows move to ``snapshot_details``), ``job id``,
  ``creation time``, ``username``, ``framework``, ``image dimensions`` [H, W, C], ``image resize mode``,
  ``labels file``, ``mean file``, ``model file``, ``snapshot file`` and ``digits version``. That is the
  shape of DIGITS' non-Caffe (Torch, TensorFlow) jobs: the Caffe-only keys (``deploy file``, ``solver
  file``, ``train_val file``, ``caffe flavor``, ``caffe version``) are left out, as DIGITS leaves them out
  there, since no Caffe file exists. The file names are relative to ``directory``; ``model file`` is
  ``config.json`` (the network and solver), ``framework`` is ``jax`` and ``digits version`` is ours."""
  view['snapshot_details'] = view['snapshots']
  view['snapshots'] = view['snapshots_epochs'] = digits_epochs(view['snapshots'])
  job = dash.manager.get(job_id)
  view['dataset_id'] = job.doc.get('dataset') if job is not None else None
  view['directory'] = job.dir if job is not None else dash.row(job_id).get('path')
  digits_job(view)
  created = job.doc.get('created_unix') if job is not None else None
  latest = (view.get('snapshot_table') or {}).get('latest')
  def present(name: str) -> Optional[str]:
    return name if view['directory'] and os.path.isfile(os.path.join(view['directory'], name)) else None

  view.update({
      'job id': job_id,
      'creation time': str(datetime.datetime.fromtimestamp(created)) if created else None,
      'username': None, 'framework': 'jax',
      'image dimensions': _image_dimensions(view),
      'image resize mode': (view.get('dataset') or {}).get('resize_mode'),
      'labels file': present('labels.txt'), 'mean file': present('mean.npy'),
      'model file': present('config.json'),
      'snapshot file': f'checkpoints/{latest}' if latest is not None else 'no snapshots',
      'digits version': dash.version})
  return view
