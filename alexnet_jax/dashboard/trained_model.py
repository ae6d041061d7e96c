"""DIGITS' model page after training: Classify One / Many, the snapshot's download and the census.

Pick a snapshot ("Epoch #30", with its validation top-1; the best by default) and a layout, test one image
(a server path or an upload: top-k with confidences, the image as the network sees it, and on request
every layer's weights and activations), test a list (a job with a progress bar: top-5 per image,
accuracy, per-class accuracy and the confusion matrix, top N images per category, CSV/JSON), download the
snapshot as a bundle (or as ONNX, or an ONNX model in a Triton repository layout), and see what each layout
moves between devices. A pretrained model (``pretrained_store``) is served by the same code: a request
names it by ``pretrained_id`` instead of ``job_id`` (``source``), and it holds one step. The routes are
``routes/inference.py``; the JSON they answer keeps DIGITS' field names, so its REST clients keep working.

Nothing here imports JAX: the inference runs in the inference worker (``workers/inference_client.py``),
Classify Many in a job (``python -m alexnet_jax.classify --status_dir``). Every path a request names --
an image, a list, a list's entries -- must resolve inside the allowed roots (``security.confine``); an
upload is kept under ``<jobs_dir>/.dashboard/uploads`` for its request only (``files.save_upload``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
import uuid
from typing import Any, Optional

import anyio
from fastapi import Request
from fastapi.responses import FileResponse

from alexnet_jax.data import lists as image_lists
from alexnet_jax.runtime import confinement, fileio
from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import files
from alexnet_jax.dashboard import job_records
from alexnet_jax.dashboard import security
from alexnet_jax.dashboard import snapshots
from alexnet_jax.dashboard import views
from alexnet_jax.dashboard.errors import refused
from alexnet_jax.dashboard.workers import inference_client as predictor_lib

MAX_IMAGE_BYTES = 20 * 2**20      # one uploaded image
MAX_TOP_K = 100
MAX_TOP_N = 100
LAYOUT_CHOICES = ('single', 'model', 'data', 'hybrid')
DATASET_LISTS = ('val', 'test', 'train')
VIS_KEEP = 40                     # visualization folders kept (oldest removed)
CSV_FILE = 'classifications.csv'
LIST_FILE = 'images.txt'
ONNX_FORMATS = ('onnx', 'triton.zip')   # Download's ONNX choices (the worker runs exporting.export_onnx)
SYNC_POLL_S = 0.2                 # how often a waiting classify_many.json looks at its job


# ---- Request fields -----------------------------------------------------------------------------------

def _int_field(fields: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
  text = (fields.get(name) or '').strip()
  if not text:
    return default
  try:
    value = int(text)
  except ValueError:
    raise refused(name, f'{name}={text!r} is not a whole number') from None
  if not lo <= value <= hi:
    raise refused(name, f'{name}={value} must be between {lo} and {hi}')
  return value


def bool_field(fields: dict[str, str], name: str) -> bool:
  return (fields.get(name) or '').strip().lower() in ('1', 'true', 'on', 'yes')


def _layout_field(fields: dict[str, str]) -> str:
  layout = (fields.get('layout') or 'single').strip()
  if layout not in LAYOUT_CHOICES:
    raise refused('layout', f'layout={layout!r}: choose one of {", ".join(LAYOUT_CHOICES)}')
  return layout


def _layout_words(message: str) -> str:
  """The library's layout refusal (``--config.layout=model puts one tower per device ...``) in the form's
  words: the Layout field and its choices, not the trainer's flags."""
  message = re.sub(r',? or --config\.model\.name=\S+ for the two-tower network', '', message)
  message = re.sub(r'--config\.layout=(\w+)', r'layout "\1"', message)
  return re.sub(r'--config\.([\w.]+)=', r'\1 = ', message)


def list_entry_path(list_path: str, line: int) -> Optional[str]:
  """The image path on line ``line`` of a classify job's own (already confined) list."""
  try:
    lines = image_lists.read_lines(list_path)
  except FileNotFoundError:
    return None
  entries, _ = image_lists.parse_lines(lines[:max(0, line)], num_classes=10**9, base='/')
  return entries[-1].path if entries and entries[-1].line == line else None


def posted_keys(jobdir: str, classifications: dict[str, Any]) -> dict[str, Any]:
  """A classify job's answer keyed as DIGITS keys it: by each list line's path as posted (two lines naming
  one file both present; a repeated line once), from ``job_records.POSTED_FILE``; as classified when the
  job has no such file."""
  posted = fileio.read_json(os.path.join(jobdir, job_records.POSTED_FILE), 64 * 2**20)
  if not isinstance(posted, list):
    return classifications
  return {name: classifications[path] for name, path in posted if path in classifications}


async def in_thread(fn, *args):
  return await anyio.to_thread.run_sync(lambda: fn(*args))


# ---- The trained models' requests -------------------------------------------------------------------

class TrainedModels:
  """State of the trained-model routes: the predictor, visualization folders, census computations."""

  def __init__(self, dash):
    self.dash = dash
    self.predictor = predictor_lib.Predictor(dash.state_dir)
    self.vis_root = files.private_dir(os.path.join(dash.state_dir, 'visualizations'))
    files.private_dir(self.predictor.cache_dir)
    self._census: dict[str, dict[str, Any]] = {}
    self._census_lock = threading.Lock()

  # -- Helpers ----------------------------------------------------------------------------------------

  def model(self, job_id: str) -> tuple[dict[str, Any], str]:
    """(the model job's row, its workdir); 404 when it is not a model."""
    row = self.dash.row_of_kind(job_id, 'model')
    return row, row.get('jobdir') or row['path']

  def source(self, fields: dict[str, str]) -> dict[str, Any]:
    """What a request classifies or downloads: a model job's run (``job_id``, DIGITS' field) or a
    pretrained model's bundle (``pretrained_id``, ``pretrained_store``); 404 for neither.
    ``{"kind": "model" | "pretrained", "id", "name", "path" (the workdir or bundle folder), "url"}``."""
    pretrained_id = (fields.get('pretrained_id') or '').strip()
    if pretrained_id:
      entry = self.dash.pretrained.get(pretrained_id)
      return {'kind': 'pretrained', 'id': entry['id'], 'name': entry['name'], 'path': entry['bundle'],
              'url': f'/pretrained/{entry["id"]}'}
    row, workdir = self.model(fields.get('job_id', ''))
    return {'kind': 'model', 'id': row['id'], 'name': row['name'], 'path': workdir,
            'url': f'/models/{row["id"]}'}

  @staticmethod
  def snapshot_of(source: dict[str, Any], fields: dict[str, str]) -> tuple[dict[str, Any], Any]:
    """(the run's snapshot table, the step a request chose); a bundle holds one step ('latest')."""
    if source['kind'] == 'pretrained':
      return {'snapshots': [], 'best': None, 'latest': None}, 'latest'
    table = snapshots.snapshot_table(source['path'])
    return table, snapshots.choose_step(table, epoch=fields.get('snapshot_epoch', ''),
                                        step=fields.get('step', ''))

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
    source = self.source(fields)
    workdir = source['path']
    _, step = self.snapshot_of(source, fields)
    top_k = _int_field(fields, 'top_k', 5, 1, MAX_TOP_K)
    layout = _layout_field(fields)
    if 'image_file' in uploads:
      data = uploads['image_file']
      if len(data) > MAX_IMAGE_BYTES:
        raise refused('image_file', f'the image is larger than {MAX_IMAGE_BYTES // 2**20} MiB', 413)
      image = files.save_upload(self.dash.state_dir, data, filenames.get('image_file', ''))
      shown = filenames.get('image_file') or 'upload'
    elif (fields.get('image_path') or '').strip():
      try:
        image = str(security.confine(fields['image_path'], self.dash.roots, want='file'))
      except security.PathError as e:
        raise refused('image_path', str(e)) from None
      shown = fields['image_path'].strip()
    else:
      raise refused('image_file', 'give an image: upload one (image_file) or name a file (image_path)')
    out_dir = self.new_vis_dir()
    vis_dir = os.path.join(out_dir, 'layers') if bool_field(fields, 'show_visualizations') else None
    try:
      answer = self.predictor.classify_one(workdir, image, step=step, layout=layout, top_k=top_k,
                                           out_dir=out_dir, visualize_dir=vis_dir)
    except predictor_lib.PredictorError as e:
      # An upload is kept under a made-up name: name the file the user sent instead.
      message = str(e).replace(image, shown)
      if '--config.layout=' in message:          # the snapshot cannot run in the chosen layout
        raise refused('layout', _layout_words(message), 400) from None
      raise refused('image_file' if 'image_file' in uploads else 'image_path',
                      message, 400 if e.user_error else 503) from None
    finally:
      if 'image_file' in uploads:                  # used for this request only (answered or refused)
        try:
          os.unlink(image)
        except OSError:
          pass
    answer = dict(answer)
    classes = snapshots.classes(workdir)
    probabilities = answer.get('probabilities') or []
    if len(probabilities) == len(classes):
      answer['probabilities_by_label'] = dict(zip(classes, probabilities))
    answer['image'] = shown
    answer['job_id' if source['kind'] == 'model' else 'pretrained_id'] = source['id']
    if answer.get('input_png'):
      answer['input_url'] = self.vis_url(answer['input_png'])
    vis = answer.get('visualizations')
    if isinstance(vis, dict) and vis_dir:
      answer['visualizations'] = views.vis_entries(vis, vis_dir, self.vis_url)
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
        raise refused('image_folder', str(e)) from None
    if 'image_list' in uploads:
      lines = image_lists.split_lines(uploads['image_list'].decode('utf-8', errors='surrogateescape'))
      # An uploaded list has no folder of its own: relative paths need image_folder (else the first root).
      return lines, base or str(self.dash.roots[0]), 'uploaded list'
    if (fields.get('image_list_path') or '').strip():
      try:
        path = str(security.confine(fields['image_list_path'], self.dash.roots, want='file'))
      except security.PathError as e:
        raise refused('image_list_path', str(e)) from None
      return image_lists.read_lines(path), base or os.path.dirname(path), os.path.basename(path)
    split = (fields.get('dataset_list') or '').strip()
    if split:
      if split not in DATASET_LISTS:
        raise refused('dataset_list', f'dataset_list={split!r}: choose one of {", ".join(DATASET_LISTS)}')
      job = self.dash.manager.get(job_id)
      dataset = self.dash.dataset_info(job.doc['dataset']) if job is not None and job.doc.get('dataset') else None
      if dataset is None:
        raise refused('dataset_list', 'this model has no dataset job whose lists could be used')
      path = os.path.join(dataset['output'], f'{split}.txt')
      if not os.path.isfile(path) or not os.path.getsize(path):
        raise refused('dataset_list', f'the dataset {dataset["name"]} has no {split} images')
      return image_lists.read_lines(path), base or os.path.dirname(path), f'{dataset["name"]} {split}.txt'
    raise refused('image_list', 'give a list: upload one (image_list), name a file (image_list_path) or '
                    'pick the dataset\'s (dataset_list=val|test)')

  def classify_many(self, fields: dict[str, str], uploads: dict[str, bytes]) -> job_records.Job:
    source = self.source(fields)
    model_id, workdir = source['id'], source['path']
    table, step = self.snapshot_of(source, fields)
    layout = _layout_field(fields)
    top_k = _int_field(fields, 'top_k', 5, 1, MAX_TOP_K)
    top_n = _int_field(fields, 'top_n', 9, 0, MAX_TOP_N)
    limit = _int_field(fields, 'num_test_images', 0, 0, 10**7)
    classes = snapshots.classes(workdir)
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
      raise refused('image_list', 'the list names no usable image' + (
          ': ' + '; '.join(f'line {n}: {r}' for n, r in first) if first else ''))
    problem_rows = [{'line': n, 'text': lines[n - 1].strip()[:300], 'reason': r} for n, r in sorted(bad.items())]
    # DIGITS keys its answer by each line's path as posted, joined to image_folder as posted when relative
    # (classify_many's read_image_list), not by the file it resolved to.
    folder = (fields.get('image_folder') or '').strip()
    posted = [[os.path.join(folder, e.name) if folder and not os.path.isabs(e.name) else e.name, e.path]
              for e in kept]

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
      fileio.write_json(os.path.join(jobdir, job_records.PROBLEMS_FILE), problem_rows, indent=1)
      fileio.write_json(os.path.join(jobdir, job_records.POSTED_FILE), posted)
      model_flags = ([f'--workdir={workdir}', f'--step={step}'] if source['kind'] == 'model' else
                     [f'--bundle={workdir}'])
      return [sys.executable, '-m', 'alexnet_jax.classify', *model_flags,
              f'--layout={layout}', f'--top_k={top_k}', f'--top_n_per_category={top_n}',
              f'--image_list={os.path.join(jobdir, LIST_FILE)}', '--format=json',
              f'--output={os.path.join(jobdir, job_records.RESULT_FILE)}', f'--csv={os.path.join(jobdir, CSV_FILE)}',
              f'--report_dir={jobdir}', f'--status_dir={jobdir}', self.dash.confine_flag()]

    epoch = next((r['epoch'] for r in table['snapshots'] if r['step'] == step), None)
    name = f'{source["name"]} · {list_name}'
    return self.dash.manager.create(
        'classify', name=name, argv=[], argv_for=argv_for,
        form={k: v for k, v in fields.items() if k != 'image_list'},
        extra={'model': model_id, 'model_kind': source['kind'], 'model_url': source['url'],
               'model_workdir': workdir, 'step': step, 'epoch': epoch, 'layout': layout,
               'images': len(kept), 'problems': len(problem_rows), 'list_name': list_name})

  def classify_job(self, job_id: str) -> job_records.Job:
    job = self.dash.manager.get(job_id)
    if job is None or job.kind != 'classify':
      raise errors_lib.not_found(f'no classify job {job_id}')
    return job


  async def classify_many_answer(self, request: Request, job_id: str, started: dict[str, Any]):
    """DIGITS' answer to ``classify_many.json``: waits for the job, then
    ``{"classifications": {path: [[label, percent], ...], ...}}`` (the job's fields beside it). A client
    that hangs up leaves the job running; a failed job answers 500 with ``errors`` and the job's id."""
    while True:
      job = self.dash.manager.get(job_id)
      if job is None:
        raise refused('classify', f'the job {job_id} was deleted before it finished', 500)
      if job.state not in ('queued', 'running'):
        break
      if await request.is_disconnected():
        return started
      await anyio.sleep(SYNC_POLL_S)
    view = await in_thread(views.classify_view, self.dash, job)
    if job.state != 'done' or 'classifications' not in view:
      reason = view.get('error') or f'the job is {job.state}; its page has the log'
      return errors_lib.response(500, {'classify': reason}, **started, status=job.state)
    return {'classifications': posted_keys(job.dir, view['classifications']), **started, 'status': job.state,
            'accuracy': view.get('accuracy'), 'image_errors': view.get('errors') or []}


  # -- Download and census -------------------------------------------------------------------------------

  def download(self, source: dict[str, Any], fmt: str, epoch: str, step: str, *, info: bool = False):
    """A run's snapshot as a bundle (exported once, then cached), or a run's snapshot or a pretrained
    model as ONNX (``onnx``) or a Triton model repository (``triton.zip``), made in the worker (the web
    process imports neither JAX nor onnx); ``info``: its name and size as JSON."""
    formats = files.ARCHIVE_FORMATS + ONNX_FORMATS if source['kind'] == 'model' else ONNX_FORMATS
    if fmt not in formats:
      raise errors_lib.not_found(f'download.{fmt}: choose one of {", ".join("." + f for f in formats)}')
    table, chosen = self.snapshot_of(source, {'snapshot_epoch': epoch, 'step': step})
    try:
      if fmt in ONNX_FORMATS:
        answer = self.predictor.export_onnx(source['path'], step=chosen, triton=fmt == 'triton.zip')
      else:
        answer = self.predictor.export(source['path'], step=chosen, format=fmt)
    except predictor_lib.PredictorError as e:
      raise refused('download', str(e), 400 if e.user_error else 503) from None
    files.prune_bundles(os.path.dirname(answer['path']), answer['path'])
    epoch_of = next((r['epoch'] for r in table['snapshots'] if r['step'] == chosen), None)
    label = (f'epoch{epoch_of:g}' if epoch_of is not None else f'step{chosen}') if source['kind'] == 'model' \
        else 'pretrained'
    safe = re.sub(r'[^A-Za-z0-9_.-]+', '_', source['name']).strip('_') or source['id']
    filename = f'{safe}-{label}.{fmt}'
    if info:
      return {'filename': filename, 'size': answer.get('size') or os.path.getsize(answer['path']),
              'step': answer.get('step', chosen), 'epoch': epoch_of, 'cached': answer.get('cached'),
              'format': fmt}
    media = {'tar.gz': 'application/gzip', 'onnx': 'application/octet-stream'}.get(fmt, 'application/zip')
    return FileResponse(answer['path'], filename=filename, media_type=media)

  def census(self, job_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 200 with the census, 202 while a worker computes it; 500 if it failed."""
    row, workdir = self.model(job_id)
    # The trainer writes config.json first and the rest (labels.txt, mean.npy, preprocess.json, each
    # atomically) only once its dataset is loaded -- seconds later on a busy host: until then the run's
    # network is not known yet, which is a wait, not a failed census. (A run that stopped without them
    # goes on to the worker, whose error names the missing file.)
    present = [os.path.isfile(os.path.join(workdir, name)) for name in snapshots.RUN_MODEL_FILES]
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
      raise errors_lib.DashboardError({'census': entry['error']}, 500)
    return 202, {'state': 'computing', 'since_seconds': round(time.time() - entry['time'], 1)}

  def _compute_census(self, key: str, workdir: str) -> None:
    try:
      result = self.predictor.census(workdir=workdir)
      update = {'state': 'done', 'result': result}
    except predictor_lib.PredictorError as e:
      update = {'state': 'failed', 'error': str(e)}
    with self._census_lock:
      self._census[key] = {**self._census.get(key, {}), **update, 'time': time.time()}
