"""The dashboard's part 2: a trained model's snapshots, Classify One/Many, visualizations and download.

DIGITS' model page, after training: pick a snapshot ("Epoch #30", with its validation top-1; the best
by default) and a layout, test one image (a server path or an upload: top-k with confidences, the image
as the network sees it, and on request every layer's weights and activations), test a list (a job with
a progress bar: top-5 per image, accuracy, per-class accuracy and the confusion matrix, top N images per
category, CSV/JSON), download the snapshot as a bundle, and see what each layout moves between devices.

Routes (the JSON twins keep DIGITS' field names, so its REST clients keep working):

    GET  /models/<id>/snapshots.json                  the finished snapshots, epoch, val top-1, best
    POST /models/images/classification/classify_one.json
         job_id, image_file (upload) | image_path, snapshot_epoch | step, show_visualizations,
         layout, top_k          -> {"predictions": [[label, percent], ...], "visualizations": [...], ...}
    POST /models/images/classification/classify_many.json
         job_id, image_list (upload) | image_list_path | dataset_list (val|test|train), image_folder,
         num_test_images, snapshot_epoch | step, layout, top_k, top_n, async
         -> DIGITS' {"classifications": {path: [[label, percent], ...], ...}} once the job is done, with
            its "job_id", "url", "accuracy" beside; async=1 answers at once with {"job_id", "url", ...}
    GET  /jobs/<id>.json                              any job's status; a classify job's result too
    GET  /classifications/<id>                        the Classify Many page
    GET  /models/<id>/download.<tar.gz|zip>?epoch=N   the snapshot as a bundle (cached)
    GET  /models/<id>/census.json                     the layouts' communication census (202 while computing)

Nothing here imports JAX: the inference runs in the predictor's worker processes (``predictor.py``),
Classify Many in a job (``python -m alexnet_jax.classify --status_dir``). Every path a request names --
an image, a list, a list's entries -- must resolve inside the allowed roots (``security.confine``); an
upload is kept under ``<jobs_dir>/.dashboard/uploads`` by its content hash.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import sys
import threading
import time
import uuid
from typing import Any, Optional

import anyio
import fastapi
from fastapi import Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from alexnet_jax.data import lists as image_lists
from alexnet_jax.runtime import confinement, fileio
from alexnet_jax.dashboard import jobs as jobs_lib
from alexnet_jax.dashboard.workers import inference_client as predictor_lib
from alexnet_jax.dashboard.workers import runner as runner_lib
from alexnet_jax.dashboard import security
from alexnet_jax.run import listing as listing_lib
from alexnet_jax.runtime import status as status_lib

MAX_IMAGE_BYTES = 20 * 2**20      # one uploaded image
MAX_TOP_K = 100
MAX_TOP_N = 100
LAYOUT_CHOICES = ('single', 'model', 'data', 'hybrid')
ARCHIVE_FORMATS = ('tar.gz', 'zip')
# Image work a GET can ask for (thumbnails, the resize example, gallery images): at most this many at a
# time, each decoding at most MAX_DECODE_PIXELS, so a burst of requests (a hostile page's <img> tags) stays
# within a few hundred MB instead of growing the server by GBs (issue 24).
IMAGE_WORK = threading.BoundedSemaphore(2)
MAX_DECODE_PIXELS = 4096 * 4096
BUNDLES_KEPT = 2                  # download bundles kept in the cache (the newest)
DATASET_LISTS = ('val', 'test', 'train')
VIS_KEEP = 40                     # visualization folders kept (oldest removed)
RESULT_FILE = 'classifications.json'
CSV_FILE = 'classifications.csv'
LIST_FILE = 'images.txt'
PROBLEMS_FILE = 'list_problems.json'
SYNC_POLL_S = 0.2                 # how often a waiting classify_many.json looks at its job
_NAME_RE = re.compile(r'^[A-Za-z0-9_.-]+$')


class FormError(ValueError):
  """A request field that cannot be used: ``field`` and the message for the form (HTTP 400)."""

  def __init__(self, field: str, message: str, status: int = 400):
    super().__init__(message)
    self.field, self.status = field, status


def _errors(field: str, message: str, status: int = 400) -> JSONResponse:
  return security.PrintableJSONResponse({'errors': {field: message}}, status_code=status)


# ---- Snapshots ----------------------------------------------------------------------------------------

# What a run must have written before its network can be built from it (bundle.read_model_files);
# config.json first.
RUN_MODEL_FILES = ('config.json', 'labels.txt', 'mean.npy', 'preprocess.json')


def snapshot_table(workdir: str) -> dict[str, Any]:
  """The finished snapshots of a run: ``[{step, epoch, val_top1}]`` oldest first, and the best one.

  Finished = a plain ``checkpoints/<step>`` folder (orbax's temporary folders and the trainer's
  ``<step>.damaged`` have other names). The epoch and validation top-1 come from metrics.jsonl's
  validation records of that step; the best is the highest validation top-1, else the latest.
  """
  try:
    steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  except OSError:
    steps = []
  val, epochs = {}, {}
  for r in listing_lib.read_metrics_tail(os.path.join(workdir, 'metrics.jsonl'), 8 * 2**20):
    if not isinstance(r, dict) or not isinstance(r.get('step'), int):
      continue
    if isinstance(r.get('epoch'), (int, float)):
      epochs[r['step']] = float(r['epoch'])
    if r.get('split') == 'val' and isinstance(r.get('top1'), (int, float)):
      val[r['step']] = float(r['top1'])
  per_step = None
  if epochs:
    last = max(epochs)
    per_step = epochs[last] / last if last else None
  rows = []
  for s in steps:
    epoch = epochs.get(s, None if per_step is None else s * per_step)
    rows.append({'step': s, 'epoch': None if epoch is None else round(epoch, 4), 'val_top1': val.get(s)})
  best = None
  scored = [r for r in rows if r['val_top1'] is not None]
  if scored:
    best = max(scored, key=lambda r: (r['val_top1'], r['step']))['step']
  elif rows:
    best = rows[-1]['step']
  return {'snapshots': rows, 'best': best, 'latest': rows[-1]['step'] if rows else None}


def choose_step(table: dict[str, Any], *, epoch: str = '', step: str = '') -> int:
  """The step a request means: ``step`` (a number, best, latest), else ``snapshot_epoch``; default best."""
  rows = table['snapshots']
  if not rows:
    raise FormError('snapshot_epoch', 'this model has no finished snapshot yet')
  steps = [r['step'] for r in rows]
  text = (step or '').strip().lower()
  if text in ('', 'best') and not (epoch or '').strip():
    return table['best']
  if text == 'latest':
    return table['latest']
  if text:
    if not text.isdigit() or int(text) not in steps:
      raise FormError('step', f'step {step!r} is not a finished snapshot; choose one of {steps}')
    return int(text)
  try:
    wanted = float(epoch)
  except ValueError:
    raise FormError('snapshot_epoch', f'snapshot_epoch={epoch!r} is not a number') from None
  for r in rows:
    if r['epoch'] is not None and math.isclose(r['epoch'], wanted, rel_tol=0, abs_tol=1e-3):
      return r['step']
  epochs = [r['epoch'] for r in rows if r['epoch'] is not None]
  raise FormError('snapshot_epoch', f'no snapshot at epoch {epoch}; the snapshots are at epochs {epochs}')


# ---- Request fields -----------------------------------------------------------------------------------

def _int_field(fields: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
  text = (fields.get(name) or '').strip()
  if not text:
    return default
  try:
    value = int(text)
  except ValueError:
    raise FormError(name, f'{name}={text!r} is not a whole number') from None
  if not lo <= value <= hi:
    raise FormError(name, f'{name}={value} must be between {lo} and {hi}')
  return value


def _bool_field(fields: dict[str, str], name: str) -> bool:
  return (fields.get(name) or '').strip().lower() in ('1', 'true', 'on', 'yes')


def _layout_field(fields: dict[str, str]) -> str:
  layout = (fields.get('layout') or 'single').strip()
  if layout not in LAYOUT_CHOICES:
    raise FormError('layout', f'layout={layout!r}: choose one of {", ".join(LAYOUT_CHOICES)}')
  return layout


def save_upload(state_dir: str, data: bytes, filename_hint: str = '') -> str:
  """Keeps an uploaded file under ``uploads/`` (0700; the file 0600) for one request: a fresh name per
  upload, removed by the caller when the request is done (``classify_one``), so uploads never pile up."""
  folder = private_dir(os.path.join(state_dir, 'uploads'))
  ext = os.path.splitext(filename_hint)[1].lower()
  ext = ext if _NAME_RE.match(ext.lstrip('.') or 'x') and len(ext) <= 6 else ''
  path = os.path.join(folder, uuid.uuid4().hex[:24] + ext)
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(fd, 'wb') as f:
    f.write(data)
  return path


def private_dir(path: str) -> str:
  """``path`` made (if missing) and kept 0700: what the dashboard keeps under ``.dashboard`` -- uploads,
  visualizations, bundles -- is for the user who runs it, not for every local user."""
  os.makedirs(path, mode=0o700, exist_ok=True)
  os.chmod(path, 0o700)
  return path


def prune_bundles(cache_dir: str, keep: str, *, limit: int = BUNDLES_KEPT) -> None:
  """Keeps the ``limit`` newest bundles of ``cache_dir`` (``keep``, the one being answered, always): a
  bundle is ~240 MB at full size, and every epoch of every model could be asked for."""
  try:
    names = [n for n in os.listdir(cache_dir) if n.endswith(tuple('.' + f for f in ARCHIVE_FORMATS))]
  except OSError:
    return
  paths = sorted((os.path.join(cache_dir, n) for n in names), key=_mtime, reverse=True)
  for path in [p for p in paths if p != keep][max(0, limit - 1):]:
    for victim in (path, path + '.info.json'):
      try:
        os.unlink(victim)
      except OSError:
        pass


def remove_bundles(cache_dir: str, job_id: str) -> None:
  """Deletes the bundles made from job ``job_id`` (named ``<job id>-step<N>-...``): Delete takes them too."""
  try:
    names = os.listdir(cache_dir)
  except OSError:
    return
  for name in names:
    if name.startswith(job_id + '-step'):
      try:
        os.unlink(os.path.join(cache_dir, name))
      except OSError:
        pass


def _mtime(path: str) -> float:
  try:
    return os.path.getmtime(path)
  except OSError:
    return 0.0


def _layout_words(message: str) -> str:
  """The library's layout refusal (``--config.layout=model puts one tower per device ...``) in the form's
  words: the Layout field and its choices, not the trainer's flags."""
  message = re.sub(r',? or --config\.model\.name=\S+ for the two-tower network', '', message)
  message = re.sub(r'--config\.layout=(\w+)', r'layout "\1"', message)
  return re.sub(r'--config\.([\w.]+)=', r'\1 = ', message)


def _safe_join(folder: str, relative: str) -> Optional[str]:
  """``folder/relative`` if it stays inside ``folder`` (no ``..``, no links out); else None."""
  path = os.path.realpath(os.path.join(folder, relative))
  base = os.path.realpath(folder)
  return path if path.startswith(base + os.sep) and os.path.isfile(path) else None


# ---- The routes ---------------------------------------------------------------------------------------

class InferencePages:
  """State of the part-2 routes: the predictor, visualization folders, census computations."""

  def __init__(self, dash):
    self.dash = dash
    self.predictor = predictor_lib.Predictor(dash.state_dir)
    self.vis_root = private_dir(os.path.join(dash.state_dir, 'visualizations'))
    private_dir(self.predictor.cache_dir)
    self._census: dict[str, dict[str, Any]] = {}
    self._census_lock = threading.Lock()

  # -- Helpers ----------------------------------------------------------------------------------------

  def model(self, job_id: str) -> tuple[dict[str, Any], str]:
    """(the model job's row, its workdir); 404 when it is not a model."""
    row = self.dash.row(job_id)
    if row['kind'] != 'model':
      raise fastapi.HTTPException(404, f'{job_id} is not a model job')
    return row, row.get('jobdir') or row['path']

  def classes(self, workdir: str) -> list[str]:
    try:
      with open(os.path.join(workdir, 'labels.txt'), encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip()]
    except OSError:
      raise FormError('job_id', 'this model has no labels.txt yet (it has not started training)') from None

  def new_vis_dir(self) -> str:
    names = sorted(os.listdir(self.vis_root), key=lambda n: os.path.getmtime(os.path.join(self.vis_root, n)))
    for name in names[:max(0, len(names) - VIS_KEEP + 1)]:
      shutil.rmtree(os.path.join(self.vis_root, name), ignore_errors=True)
    return os.path.join(self.vis_root, uuid.uuid4().hex[:16])

  def vis_url(self, path: str) -> Optional[str]:
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(self.vis_root))
    return None if rel.startswith('..') else '/inference/files/' + rel.replace(os.sep, '/')

  # -- Classify One -------------------------------------------------------------------------------------

  def classify_one(self, fields: dict[str, str], uploads: dict[str, bytes],
                   filenames: dict[str, str]) -> dict[str, Any]:
    row, workdir = self.model(fields.get('job_id', ''))
    step = choose_step(snapshot_table(workdir), epoch=fields.get('snapshot_epoch', ''),
                       step=fields.get('step', ''))
    top_k = _int_field(fields, 'top_k', 5, 1, MAX_TOP_K)
    layout = _layout_field(fields)
    if 'image_file' in uploads:
      data = uploads['image_file']
      if len(data) > MAX_IMAGE_BYTES:
        raise FormError('image_file', f'the image is larger than {MAX_IMAGE_BYTES // 2**20} MiB', 413)
      image = save_upload(self.dash.state_dir, data, filenames.get('image_file', ''))
      shown = filenames.get('image_file') or 'upload'
    elif (fields.get('image_path') or '').strip():
      try:
        image = str(security.confine(fields['image_path'], self.dash.roots, want='file'))
      except security.PathError as e:
        raise FormError('image_path', str(e)) from None
      shown = fields['image_path'].strip()
    else:
      raise FormError('image_file', 'give an image: upload one (image_file) or name a file (image_path)')
    out_dir = self.new_vis_dir()
    vis_dir = os.path.join(out_dir, 'layers') if _bool_field(fields, 'show_visualizations') else None
    try:
      answer = self.predictor.classify_one(workdir, image, step=step, layout=layout, top_k=top_k,
                                           out_dir=out_dir, visualize_dir=vis_dir)
    except predictor_lib.PredictorError as e:
      # An upload is kept under a made-up name: name the file the user sent instead.
      message = str(e).replace(image, shown)
      if '--config.layout=' in message:          # the snapshot cannot run in the chosen layout
        raise FormError('layout', _layout_words(message), 400) from None
      raise FormError('image_file' if 'image_file' in uploads else 'image_path',
                      message, 400 if e.user_error else 503) from None
    finally:
      if 'image_file' in uploads:                  # used for this request only (answered or refused)
        try:
          os.unlink(image)
        except OSError:
          pass
    answer = dict(answer)
    classes = self.classes(workdir)
    probabilities = answer.get('probabilities') or []
    if len(probabilities) == len(classes):
      answer['probabilities_by_label'] = dict(zip(classes, probabilities))
    answer['image'] = shown
    answer['job_id'] = row['id']
    if answer.get('input_png'):
      answer['input_url'] = self.vis_url(answer['input_png'])
    vis = answer.get('visualizations')
    if isinstance(vis, dict) and vis_dir:
      answer['visualizations'] = _vis_entries(vis, vis_dir, self.vis_url)
    return answer

  # -- Classify Many ------------------------------------------------------------------------------------

  def list_source(self, fields: dict[str, str], uploads: dict[str, bytes], workdir: str,
                  job_id: str) -> tuple[list[str], str, str]:
    """(the list's lines, the base folder of its relative paths, a name for the job)."""
    folder_text = (fields.get('image_folder') or '').strip()
    base = None
    if folder_text:
      try:
        base = str(security.confine(folder_text, self.dash.roots, want='dir'))
      except security.PathError as e:
        raise FormError('image_folder', str(e)) from None
    if 'image_list' in uploads:
      lines = uploads['image_list'].decode('utf-8', errors='surrogateescape').splitlines()
      # An uploaded list has no folder of its own: relative paths need image_folder (else the first root).
      return lines, base or str(self.dash.roots[0]), 'uploaded list'
    if (fields.get('image_list_path') or '').strip():
      try:
        path = str(security.confine(fields['image_list_path'], self.dash.roots, want='file'))
      except security.PathError as e:
        raise FormError('image_list_path', str(e)) from None
      return image_lists.read_lines(path), base or os.path.dirname(path), os.path.basename(path)
    split = (fields.get('dataset_list') or '').strip()
    if split:
      if split not in DATASET_LISTS:
        raise FormError('dataset_list', f'dataset_list={split!r}: choose one of {", ".join(DATASET_LISTS)}')
      job = self.dash.manager.get(job_id)
      dataset = self.dash.dataset_info(job.doc['dataset']) if job is not None and job.doc.get('dataset') else None
      if dataset is None:
        raise FormError('dataset_list', 'this model has no dataset job whose lists could be used')
      path = os.path.join(dataset['output'], f'{split}.txt')
      if not os.path.isfile(path) or not os.path.getsize(path):
        raise FormError('dataset_list', f'the dataset {dataset["name"]} has no {split} images')
      return image_lists.read_lines(path), base or os.path.dirname(path), f'{dataset["name"]} {split}.txt'
    raise FormError('image_list', 'give a list: upload one (image_list), name a file (image_list_path) or '
                    'pick the dataset\'s (dataset_list=val|test)')

  def classify_many(self, fields: dict[str, str], uploads: dict[str, bytes]) -> jobs_lib.Job:
    model_id = fields.get('job_id', '')
    row, workdir = self.model(model_id)
    table = snapshot_table(workdir)
    step = choose_step(table, epoch=fields.get('snapshot_epoch', ''), step=fields.get('step', ''))
    layout = _layout_field(fields)
    top_k = _int_field(fields, 'top_k', 5, 1, MAX_TOP_K)
    top_n = _int_field(fields, 'top_n', 9, 0, MAX_TOP_N)
    limit = _int_field(fields, 'num_test_images', 0, 0, 10**7)
    classes = self.classes(workdir)
    lines, base, list_name = self.list_source(fields, uploads, workdir, model_id)
    entries, problems = image_lists.parse_lines(lines, num_classes=len(classes), base=base, limit=limit)
    kept, bad = [], {p.line: p.reason for p in problems}
    for e in entries:
      if not security.inside(e.path, self.dash.roots):
        bad[e.line] = f'{confinement.printable(e.path)}: {confinement.OUTSIDE}'     # one message: no oracle
      else:
        kept.append(e)
    if not kept:
      first = sorted(bad.items())[:3]
      raise FormError('image_list', 'the list names no usable image' + (
          ': ' + '; '.join(f'line {n}: {r}' for n, r in first) if first else ''))
    problem_rows = [{'line': n, 'text': lines[n - 1].strip()[:300], 'reason': r} for n, r in sorted(bad.items())]

    def argv_for(jobdir: str) -> list[str]:
      # Same numbering as the user's list: a refused line becomes a comment, so classify's "line" of an
      # entry is the line the user wrote; only the kept entries remain (absolute, already confined).
      out = []
      good = {e.line: e for e in kept}
      for n in range(1, max(good) + 1):
        e = good.get(n)
        out.append(f'{e.path} {e.label}' if e is not None and e.label is not None else
                   e.path if e is not None else f'# line {n}' + (': refused' if n in bad else ''))
      fileio.write_bytes(os.path.join(jobdir, LIST_FILE), ('\n'.join(out) + '\n').encode('utf-8',
                                                                                          'surrogateescape'))
      fileio.write_json(os.path.join(jobdir, PROBLEMS_FILE), problem_rows, indent=1)
      return [sys.executable, '-m', 'alexnet_jax.classify', f'--workdir={workdir}', f'--step={step}',
              f'--layout={layout}', f'--top_k={top_k}', f'--top_n_per_category={top_n}',
              f'--image_list={os.path.join(jobdir, LIST_FILE)}', '--format=json',
              f'--output={os.path.join(jobdir, RESULT_FILE)}', f'--csv={os.path.join(jobdir, CSV_FILE)}',
              f'--report_dir={jobdir}', f'--status_dir={jobdir}', self.dash.confine_flag()]

    epoch = next((r['epoch'] for r in table['snapshots'] if r['step'] == step), None)
    name = f'{row["name"]} · {list_name}'
    return self.dash.manager.create(
        'classify', name=name, argv=[], argv_for=argv_for,
        form={k: v for k, v in fields.items() if k != 'image_list'},
        extra={'model': row['id'], 'model_workdir': workdir, 'step': step, 'epoch': epoch, 'layout': layout,
               'images': len(kept), 'problems': len(problem_rows), 'list_name': list_name})

  def classify_job(self, job_id: str) -> jobs_lib.Job:
    job = self.dash.manager.get(job_id)
    if job is None or job.kind != 'classify':
      raise fastapi.HTTPException(404, f'no classify job {job_id}')
    return job

  def classify_view(self, job: jobs_lib.Job, *, with_result: bool = True) -> dict[str, Any]:
    """A classify job's state and progress and, once written, its result."""
    status = status_lib.read_status(os.path.join(job.dir, status_lib.STATUS_FILE))
    status = status if isinstance(status, dict) else {}
    row = self.dash.manager.job_row(job)
    view = {'job_id': job.id, 'kind': 'classify', 'name': job.doc.get('name'), 'status': job.state,
            'status_text': row['status_text'], 'model': job.doc.get('model'), 'step': job.doc.get('step'),
            'epoch': job.doc.get('epoch'), 'layout': job.doc.get('layout'), 'images': job.doc.get('images'),
            'done': status.get('done'), 'total': status.get('total') or job.doc.get('images'),
            'progress': 1.0 if job.state == 'done' else status.get('progress'),
            'eta_seconds': status.get('eta_seconds') if job.state == 'running' else None,
            'images_per_sec': status.get('images_per_sec'), 'phase': status.get('phase'),
            'error': job.doc.get('error'), 'elapsed_seconds': row.get('elapsed_seconds'),
            'history': job.doc.get('history') or []}
    problems = fileio.read_json(os.path.join(job.dir, PROBLEMS_FILE))
    view['list_problems'] = problems if isinstance(problems, list) else []
    if job.state in ('failed', 'interrupted'):
      view['log_tail'] = jobs_lib.tail(os.path.join(job.dir, runner_lib.OUTPUT_LOG), 20)
    if with_result:
      doc = fileio.read_json(os.path.join(job.dir, RESULT_FILE), 64 * 2**20)
      if isinstance(doc, dict):
        view['classifications'] = {path: [[label, round(100.0 * p, 4)] for label, p in ranked]
                                   for path, ranked in (doc.get('predictions') or {}).items()}
        view['errors'] = doc.get('errors') or []
        view['accuracy'] = doc.get('accuracy')
        view['top_n_per_category'] = doc.get('top_n_per_category')
        view['classes'] = self.classes_or_empty(job.doc.get('model_workdir') or '')
        view['files'] = {n: f'/classifications/{job.id}/files/{n}' for n in sorted(os.listdir(job.dir))
                         if n.endswith(('.json', '.csv', '.png', '.txt')) and n != jobs_lib.JOB_FILE}
    return view

  async def classify_many_answer(self, request: Request, job_id: str, started: dict[str, Any]):
    """DIGITS' answer to ``classify_many.json``: waits for the job, then
    ``{"classifications": {path: [[label, percent], ...], ...}}`` (the job's fields beside it). A client
    that hangs up leaves the job running; a failed job answers 500 with ``errors`` and the job's id."""
    while True:
      job = self.dash.manager.get(job_id)
      if job is None:
        return _errors('classify', f'the job {job_id} was deleted before it finished', 500)
      if job.state not in ('queued', 'running'):
        break
      if await request.is_disconnected():
        return started
      await anyio.sleep(SYNC_POLL_S)
    view = await _in_thread(self.classify_view, job)
    if job.state != 'done' or 'classifications' not in view:
      reason = view.get('error') or f'the job is {job.state}; its page has the log'
      return JSONResponse({'errors': {'classify': reason}, **started, 'status': job.state}, status_code=500)
    return {'classifications': view['classifications'], **started, 'status': job.state,
            'accuracy': view.get('accuracy'), 'image_errors': view.get('errors') or []}

  def classes_or_empty(self, workdir: str) -> list[str]:
    try:
      return self.classes(workdir)
    except FormError:
      return []

  # -- Download and census -------------------------------------------------------------------------------

  def download(self, job_id: str, fmt: str, epoch: str, step: str, *, info: bool = False):
    """The bundle of a snapshot (exported once, then cached); ``info``: its name and size as JSON."""
    row, workdir = self.model(job_id)
    if fmt not in ARCHIVE_FORMATS:
      raise fastapi.HTTPException(404, f'download.{fmt}: choose .tar.gz or .zip')
    table = snapshot_table(workdir)
    chosen = choose_step(table, epoch=epoch, step=step)
    try:
      answer = self.predictor.export(workdir, step=chosen, format=fmt)
    except predictor_lib.PredictorError as e:
      raise FormError('download', str(e), 400 if e.user_error else 503) from None
    prune_bundles(os.path.dirname(answer['path']), answer['path'])
    epoch_of = next((r['epoch'] for r in table['snapshots'] if r['step'] == chosen), None)
    label = f'epoch{epoch_of:g}' if epoch_of is not None else f'step{chosen}'
    safe = re.sub(r'[^A-Za-z0-9_.-]+', '_', row['name']).strip('_') or row['id']
    filename = f'{safe}-{label}.{fmt}'
    if info:
      return {'filename': filename, 'size': answer.get('size') or os.path.getsize(answer['path']),
              'step': chosen, 'epoch': epoch_of, 'cached': answer.get('cached')}
    return FileResponse(answer['path'], filename=filename,
                        media_type='application/gzip' if fmt == 'tar.gz' else 'application/zip')

  def census(self, job_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 200 with the census, 202 while a worker computes it, 500 if it failed."""
    row, workdir = self.model(job_id)
    # The trainer writes config.json first and the rest (labels.txt, mean.npy, preprocess.json, each
    # atomically) only once its dataset is loaded -- seconds later on a busy host: until then the run's
    # network is not known yet, which is a wait, not a failed census. (A run that stopped without them
    # goes on to the worker, whose error names the missing file.)
    present = [os.path.isfile(os.path.join(workdir, name)) for name in RUN_MODEL_FILES]
    if not present[0] or (row.get('state') in ('queued', 'running') and not all(present)):
      return 202, {'state': 'waiting', 'reason': 'the run has not started yet'}
    key = os.path.realpath(workdir)
    with self._census_lock:
      entry = self._census.get(key)
      if entry is None or entry.get('state') == 'failed' and time.time() - entry['time'] > 30:
        entry = {'state': 'computing', 'time': time.time()}
        self._census[key] = entry
        threading.Thread(target=self._compute_census, args=(key, workdir), daemon=True,
                         name='dashboard-census').start()
    if entry['state'] == 'done':
      return 200, entry['result']
    if entry['state'] == 'failed':
      return 500, {'errors': {'census': entry['error']}}
    return 202, {'state': 'computing', 'since_seconds': round(time.time() - entry['time'], 1)}

  def _compute_census(self, key: str, workdir: str) -> None:
    try:
      result = self.predictor.census(workdir=workdir)
      update = {'state': 'done', 'result': result}
    except predictor_lib.PredictorError as e:
      update = {'state': 'failed', 'error': str(e)}
    with self._census_lock:
      self._census[key] = {**self._census.get(key, {}), **update, 'time': time.time()}

  # -- Routes -------------------------------------------------------------------------------------------

  def add_routes(self, app: fastapi.FastAPI, read_form) -> None:
    dash = self

    @app.get('/models/{job_id}/snapshots.json')
    def snapshots_json(job_id: str):
      _, workdir = dash.model(job_id)
      return snapshot_table(workdir)

    @app.post('/models/images/classification/classify_one.json')
    async def classify_one(request: Request):
      fields, uploads, names = await read_form(request)
      try:
        return await _in_thread(dash.classify_one, fields, uploads, names)
      except FormError as e:
        return _errors(e.field, str(e), e.status)

    @app.post('/models/images/classification/classify_many.json')
    async def classify_many(request: Request):
      fields, uploads, _ = await read_form(request)
      try:
        job = await _in_thread(dash.classify_many, fields, uploads)
      except FormError as e:
        return _errors(e.field, str(e), e.status)
      started = {'job_id': job.id, 'url': f'/classifications/{job.id}', 'images': job.doc.get('images'),
                 'list_problems': job.doc.get('problems')}
      if _bool_field(fields, 'async'):
        return started
      return await dash.classify_many_answer(request, job.id, started)

    @app.get('/jobs/{job_id}.json')
    def job_json(job_id: str):
      job = dash.dash.manager.get(job_id)
      if job is not None and job.kind == 'classify':
        return dash.classify_view(job)
      row = dash.dash.row(job_id)
      return {k: row.get(k) for k in ('id', 'name', 'kind', 'state', 'status_text', 'progress',
                                      'eta_seconds', 'elapsed_seconds', 'best_val_top1', 'error')}

    @app.get('/classifications/{job_id}', response_class=HTMLResponse, include_in_schema=False)
    def classify_page(request: Request, job_id: str):
      job = dash.classify_job(job_id)
      view = dash.classify_view(job, with_result=False)
      return dash.dash.render('classifications.html', request, job=view, page=view)

    @app.get('/classifications/{job_id}/files/{name}', include_in_schema=False)
    def classify_file(job_id: str, name: str):
      job = dash.classify_job(job_id)
      path = _safe_join(job.dir, name) if _NAME_RE.match(name) and name != jobs_lib.JOB_FILE else None
      if path is None:
        raise fastapi.HTTPException(404, f'{job_id} has no file {name}')
      media = {'.png': 'image/png', '.json': 'application/json', '.csv': 'text/csv; charset=utf-8',
               '.txt': 'text/plain; charset=utf-8'}.get(os.path.splitext(name)[1], 'application/octet-stream')
      return FileResponse(path, media_type=media, filename=name if name.endswith('.csv') else None)

    @app.get('/classifications/{job_id}/thumb/{line}.png', include_in_schema=False)
    def classify_thumb(job_id: str, line: int, size: int = 96):
      job = dash.classify_job(job_id)
      path = _list_entry_path(os.path.join(job.dir, LIST_FILE), line)
      if path is None or not security.inside(path, dash.dash.roots):
        raise fastapi.HTTPException(404, f'line {line} of the list names no image')
      return Response(_thumbnail(path, max(16, min(int(size), 256))), media_type='image/png',
                      headers={'Cache-Control': 'max-age=3600'})

    @app.get('/inference/files/{folder}/{name:path}', include_in_schema=False)
    def vis_file(folder: str, name: str):
      path = _safe_join(os.path.join(dash.vis_root, folder), name) if _NAME_RE.match(folder) else None
      if path is None or not path.endswith(('.png', '.json')):
        raise fastapi.HTTPException(404, 'no such visualization')
      return FileResponse(path, media_type='image/png' if path.endswith('.png') else 'application/json')

    @app.get('/models/{job_id}/download.{fmt}')
    def download(job_id: str, fmt: str, epoch: str = '', step: str = '', info: int = 0):
      try:
        return dash.download(job_id, fmt, epoch, step, info=bool(info))
      except FormError as e:
        return _errors(e.field, str(e), e.status)

    @app.get('/models/{job_id}/census.json')
    def census(job_id: str):
      status, body = dash.census(job_id)
      return JSONResponse(body, status_code=status)


# ---- Small helpers ------------------------------------------------------------------------------------

async def _in_thread(fn, *args):
  return await anyio.to_thread.run_sync(lambda: fn(*args))


def _list_entry_path(list_path: str, line: int) -> Optional[str]:
  """The image path on line ``line`` of a classify job's own (already confined) list."""
  try:
    lines = image_lists.read_lines(list_path)
  except FileNotFoundError:
    return None
  entries, _ = image_lists.parse_lines(lines[:max(0, line)], num_classes=10**9, base='/')
  return entries[-1].path if entries and entries[-1].line == line else None


def open_bounded(path: str, size: tuple[int, int]):
  """A Pillow image of ``path`` reduced while decoding towards ``size`` (JPEG draft), refused (ValueError)
  when it would still decode more than ``MAX_DECODE_PIXELS``; nothing is decoded before that check."""
  import PIL.Image  # pylint: disable=g-import-not-at-top  (as app.py: the web process starts without it)
  im = PIL.Image.open(path)
  try:
    im.draft('RGB', size)
    if im.width * im.height > MAX_DECODE_PIXELS:
      raise ValueError(f'{im.width}x{im.height} is too large to show (at most {MAX_DECODE_PIXELS} pixels)')
  except BaseException:
    im.close()
    raise
  return im


def _thumbnail(path: str, size: int) -> bytes:
  import PIL.Image  # pylint: disable=g-import-not-at-top  (as app.py: the web process starts without it)
  try:
    with IMAGE_WORK, open_bounded(path, (size, size)) as im:
      im = im.convert('RGB')
      im.thumbnail((size, size))
      out = io.BytesIO()
      im.save(out, format='PNG')
      return out.getvalue()
  except (OSError, ValueError, PIL.Image.DecompressionBombError):
    raise fastapi.HTTPException(404, f'{confinement.printable(path)} cannot be shown as a thumbnail') from None


def _vis_entries(stats: dict[str, Any], out_dir: str, url_of) -> dict[str, Any]:
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
