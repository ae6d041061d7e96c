"""The dashboard's web application: DIGITS' pages and REST routes on top of the jobs folder.

``create_app(Settings(...))`` returns a FastAPI app; ``__main__.py`` serves it with uvicorn. Routes
(every page has a JSON twin, with DIGITS' names where DIGITS had the route):

    GET  /                                          Home: datasets and models          /index.json
    GET  /datasets/images/classification/new        New Dataset form
    POST /datasets/images/classification.json       create a dataset job (DIGITS' form fields)
    GET  /datasets/<id>                             Dataset job page                   /datasets/<id>.json
    GET  /datasets/<id>/explore                     Explore: paged gallery by class
    GET  /datasets/<id>/images/<split>/<n>.png      one stored (resized) image
    GET  /datasets/resize_example.png               the four resize modes on a sample image
    GET  /models/images/classification/new          New Model form (?clone=<id>, ?dataset=<id>)
    POST /models/images/classification.json         create a model job, or one per sweep point
    GET  /models/<id>                               Model job page                     /models/<id>.json
                                                    (DIGITS' snapshots: [epoch, ...]; GPU Usage while it runs)
    GET  /models/<id>/stream                        live curves: server-sent events
    GET  /models/lr_curve.json                      Visualize LR
    GET  /compare?ids=a,b                           several models' curves on one chart
    GET  /clone/<id>                                the New Model/Dataset form filled from a job
    POST /jobs/<id>/abort, /jobs/<id>/resume        Abort (snapshot + stop), Resume (same argv)
    PUT  /jobs/<id>, DELETE /jobs/<id>              name and notes; delete with its files
    GET  /files/<id>/<name>                         a job's files, by whitelisted name
    GET  /paths/complete?path=                      folder completion inside the data roots
    POST /demo                                      draws the demo image folder
    GET  /openapi.json

Errors are ``{"errors": {field: message}}`` with status 400 (403 for a refused origin or token, 404
for an unknown job); nothing ever shows a traceback. The web process never imports JAX: what needs the
library runs in the worker process (``checker.py``) or in the job's own process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import hashlib
import importlib.metadata
import io
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote, urlencode

import fastapi
import jinja2
import markupsafe
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from alexnet_jax.runtime import confinement
from alexnet_jax.runtime import fileio
from alexnet_jax.run import listing as listing_lib   # discovery and rows: status files only, no JAX
from alexnet_jax.dashboard import forms
from alexnet_jax.dashboard import gpu_usage
from alexnet_jax.dashboard import inference_pages
from alexnet_jax.dashboard import jobs as jobs_lib
from alexnet_jax.dashboard import security
from alexnet_jax.dashboard import stream as stream_lib
from alexnet_jax.runtime import status as status_lib
from alexnet_jax.dashboard.workers import config_client
from alexnet_jax.dashboard.workers import runner as runner_lib

_log = logging.getLogger(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))
STATIC_DIR = os.path.join(HERE, 'static')
TEMPLATE_DIR = os.path.join(HERE, 'templates')
DEMO_DIR = 'demo_images'          # under <jobs_dir>/.dashboard/
PAGE_SIZES = (10, 25, 50, 100)
SPLITS = ('train', 'val', 'test')
DATASET_FILES = ('train.txt', 'val.txt', 'test.txt', 'labels.txt', 'stats.json', 'mean.png', 'histogram.png')
JOB_FILES = ('output.log', 'job.json', 'exit.json')
MODEL_FILES = ('config.json', 'metrics.jsonl', 'train.log', 'status.json', 'labels.txt', 'preprocess.json')
CONTENT_TYPES = {'.txt': 'text/plain; charset=utf-8', '.log': 'text/plain; charset=utf-8',
                 '.json': 'application/json', '.jsonl': 'text/plain; charset=utf-8', '.png': 'image/png'}
STREAM_POLL_S = 0.5               # a live stream's stat() period while its job runs
STREAM_IDLE_POLL_S = 2.0          # ... and once it has ended (a Resume may follow)
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@dataclasses.dataclass
class Settings:
  """How one dashboard runs (``__main__.py`` fills it from the command line)."""
  jobs_dir: str
  data_roots: list[str] = dataclasses.field(default_factory=list)
  host: str = '127.0.0.1'
  port: int = 5000
  require_token: Optional[bool] = None     # default: on unless bound to loopback
  allowed_hosts: list[str] = dataclasses.field(default_factory=list)
  max_body_bytes: int = 80 * 2**20
  max_dataset_jobs: int = 2
  devices: Optional[list[str]] = None
  start_worker: bool = True
  start_scheduler: bool = True
  poll_s: float = 1.0


def _error(status: int, errors: dict[str, str]) -> JSONResponse:
  return security.PrintableJSONResponse({'errors': errors}, status_code=status)


# ---- Request guard (hosts, origins, token, body size) ---------------------------------------------

class _TooLarge(StarletteHTTPException):
  """A body past the cap, found while reading it (no Content-Length): answered 413 by the handler."""

  def __init__(self, limit: int):
    super().__init__(413, f'larger than {limit // 2**20} MiB' if limit >= 2**20 else f'larger than {limit} bytes')


class Guard:
  """Pure ASGI middleware: Host allowlist, token and same-origin checks, body cap, security headers."""

  def __init__(self, app, *, token: str, hosts: frozenset[str], require_token: bool, max_body: int):
    self.app = app
    self.token = token
    self.hosts = hosts
    self.require_token = require_token
    self.max_body = max_body

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    headers = Headers(scope=scope)
    host = headers.get('host', '')
    if security.split_host(host) not in self.hosts:
      return await _error(400, {'host': 'this server does not answer to that Host'})(scope, receive, send)
    method = scope['method']
    given = security.bearer(headers.get('authorization')) or headers.get(security.TOKEN_HEADER)
    header_ok = security.same_token(given, self.token)
    cookie_ok = security.same_token(_cookie(headers.get('cookie', ''), security.COOKIE), self.token)
    if method not in security.SAFE_METHODS:
      if not security.origin_ok(headers.get('origin'), host) or not security.fetch_site_ok(
          headers.get('sec-fetch-site')):
        return await _error(403, {'origin': 'cross-site request refused'})(scope, receive, send)
      if not header_ok:
        return await _error(403, {'token': 'missing or wrong token: send "Authorization: Bearer <token>" '
                                           '(the token is in <jobs_dir>/.dashboard/token)'})(
                                               scope, receive, send)
      length = headers.get('content-length')
      if length is not None and (not length.isdigit() or int(length) > self.max_body):
        return await _error(413, {'request': f'larger than {self.max_body // 2**20} MiB'})(
            scope, receive, send)
    elif not security.cross_site_read_ok(headers.get('sec-fetch-site'), headers.get('sec-fetch-mode'),
                                         scope.get('path') or ''):
      return await _error(403, {'origin': 'cross-site request refused: open the dashboard itself'})(
          scope, receive, send)
    elif not cookie_ok and 'token=' in scope.get('query_string', b'').decode('latin-1'):
      # The URL printed at start (``/?token=...``) is exchanged for an HttpOnly cookie, on any bind: that
      # cookie is what proves a browser has the token, and only then do pages carry it (``render``).
      query = scope.get('query_string', b'').decode('latin-1')
      offered = dict(p.split('=', 1) for p in query.split('&') if '=' in p).get('token')
      if security.same_token(offered, self.token):
        response = RedirectResponse(scope.get('path') or '/', status_code=303)
        response.set_cookie(security.COOKIE, self.token, httponly=True, samesite='strict',
                            secure=scope.get('scheme') == 'https', path='/')
        return await response(scope, receive, send)
      return await _error(401, {'token': 'wrong token in the URL: open the URL the server printed at start'})(
          scope, receive, send)
    elif self.require_token and not (header_ok or cookie_ok):
      return await _error(401, {'token': 'open the URL the server printed at start (it carries the '
                                         'token), or send "Authorization: Bearer <token>"'})(
                                             scope, receive, send)

    scope.setdefault('state', {})['token_proven'] = header_ok or cookie_ok   # read by Dashboard.render
    seen = 0

    async def limited_receive():
      nonlocal seen
      message = await receive()
      if message.get('type') == 'http.request':
        seen += len(message.get('body', b''))
        if seen > self.max_body:
          raise _TooLarge(self.max_body)
      return message

    started = False

    async def send_with_headers(message):
      nonlocal started
      if message['type'] == 'http.response.start':
        started = True
        extra = [(b'x-content-type-options', b'nosniff'), (b'x-frame-options', b'DENY'),
                 (b'referrer-policy', b'no-referrer'), (b'content-security-policy', CSP.encode()),
                 (b'cross-origin-resource-policy', b'same-origin')]
        message = dict(message)
        message['headers'] = list(message.get('headers', [])) + extra
      await send(message)

    try:
      await self.app(scope, limited_receive, send_with_headers)
    except _TooLarge as e:
      if not started:
        await _error(413, {'request': str(e.detail)})(scope, receive, send)


def _cookie(header: str, name: str) -> Optional[str]:
  for part in header.split(';'):
    k, _, v = part.strip().partition('=')
    if k == name:
      return v
  return None


# ---- Formatting helpers for the templates ------------------------------------------------------------

def fmt_time(unix: Optional[float]) -> str:
  if not unix:
    return '-'
  return datetime.datetime.fromtimestamp(unix).strftime('%Y-%m-%d %H:%M:%S')


def fmt_pct(value: Optional[float], digits: int = 1) -> str:
  return '-' if value is None else f'{100 * value:.{digits}f}%'


def _printable_value(value: Any) -> Any:
  """Jinja's finalize: a string with undecodable path bytes is shown escaped (the page stays UTF-8)."""
  return confinement.printable(value) if isinstance(value, str) and not isinstance(value, markupsafe.Markup) \
      else value


def _plain(value: Any) -> Any:
  """Values as plain JSON for the browser (NaN/inf -> None, paths -> str)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, Path):
    return str(value)
  return value



def _form_fields(doc: dict[str, Any]) -> list[list[str]]:
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


def _job_fields(job_id: str, row: dict[str, Any]) -> dict[str, Any]:
  """What every job page shows of a job's row (name, state, progress, times)."""
  return {
      'id': job_id, 'name': row['name'], 'group': row.get('group') or '', 'notes': row.get('notes') or '',
      'status': row['state'], 'status_text': row['status_text'], 'external': bool(row.get('external')),
      'progress': row.get('progress'), 'eta_seconds': row.get('eta_seconds'),
      'elapsed_seconds': row.get('elapsed_seconds'), 'submitted': row.get('submitted'),
  }

def _hardware(pid: Optional[int], cache: dict) -> dict[str, Any]:
  """Process CPU % (since the previous look) and resident memory of a job's tool process."""
  if not isinstance(pid, int) or pid <= 0:
    return {}
  try:
    with open(f'/proc/{pid}/stat', 'rb') as f:
      fields = f.read().decode('ascii', 'replace')
    fields = fields[fields.rfind(')') + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
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


# ---- The application -------------------------------------------------------------------------------

class Dashboard:
  """What the routes share: settings, the job manager, the worker, the templates."""

  def __init__(self, settings: Settings):
    self.settings = settings
    self.jobs_dir = os.path.abspath(settings.jobs_dir)
    os.makedirs(self.jobs_dir, exist_ok=True)
    self.manager = jobs_lib.JobManager(self.jobs_dir, max_dataset_jobs=settings.max_dataset_jobs,
                                       devices=settings.devices, poll_s=settings.poll_s)
    self.state_dir = self.manager.state_dir
    demo = os.path.join(self.state_dir, DEMO_DIR)
    os.makedirs(demo, exist_ok=True)
    self.demo_dir = demo
    roots = list(settings.data_roots) or [os.getcwd()]
    self.roots = security.resolve_roots(roots + [demo])
    self.token = security.load_or_create_token(self.state_dir)
    loopback = security.is_loopback(settings.host)
    self.require_token = (not loopback) if settings.require_token is None else settings.require_token
    self.hosts = security.allowed_hosts(settings.host, settings.allowed_hosts)
    self.checker = config_client.ConfigClient(self.state_dir)
    self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                                  trim_blocks=True, lstrip_blocks=True, finalize=_printable_value)
    self.env.globals.update(fmt_time=fmt_time, fmt_pct=fmt_pct, fmt_seconds=listing_lib.format_seconds,
                            fmt_size=listing_lib.format_size, static=self.static_url,
                            plotly_url=self.plotly_url)
    self.version = _package_version('alexnet_jax')
    self._static_tag = self._static_hash()
    self._hw_cache: dict = {}
    self._demo_lock = threading.Lock()
    self._readers: dict[str, Any] = {}
    self._readers_lock = threading.Lock()
    self.inference = inference_pages.InferencePages(self)

  def page_token(self, request: Request) -> str:
    """The token for a page's scripts -- only when the request proved it has it (the cookie set from the
    URL printed at start, or the header): a page open to every local user must not hand it out."""
    return self.token if request.scope.get('state', {}).get('token_proven') else ''

  def confine_flag(self) -> str:
    """``--confine_to`` for the jobs this server starts: the tools check every image again themselves."""
    return '--confine_to=' + ','.join(str(r) for r in self.roots)

  # -- Static files ---------------------------------------------------------------------------------

  def _static_hash(self) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(STATIC_DIR)):
      with open(os.path.join(STATIC_DIR, name), 'rb') as f:
        h.update(name.encode() + f.read())
    return h.hexdigest()[:10]

  def static_url(self, name: str) -> str:
    return f'/static/{self._static_tag}/{name}'

  def plotly_url(self) -> str:
    return f'/static/plotly-{_package_version("plotly")}.min.js'

  # -- Rendering ------------------------------------------------------------------------------------

  def render(self, template: str, request: Request, **context) -> HTMLResponse:
    context.setdefault('page', {})
    context['page'] = _plain(context['page'])
    html = self.env.get_template(template).render(
        request=request, token=self.page_token(request), jobs_dir=self.jobs_dir, version=self.version,
        devices=self.manager.device_summary(), **context)
    return HTMLResponse(html, headers={'Cache-Control': 'no-store'})

  # -- Jobs and their views -----------------------------------------------------------------------

  def row(self, job_id: str) -> dict[str, Any]:
    if not jobs_lib.valid_id(job_id):
      raise fastapi.HTTPException(404, f'no job {job_id}')
    job = self.manager.get(job_id)
    if job is not None:
      tool = listing_lib.find_runs([job.tool_dir], max_depth=0) if (
          os.path.isdir(job.tool_dir) or os.path.exists(os.path.join(job.dir, '.dataset.status.json'))
      ) else []
      row = next((r for r in tool if os.path.realpath(r['path']) == os.path.realpath(job.tool_dir)), None)
      if row is None and tool and job.kind == 'model':
        row = tool[0]
      return self.manager.job_row(job, row)
    for row in self.manager.rows():
      if row['id'] == job_id:
        return row
    raise fastapi.HTTPException(404, f'no job {job_id}')

  def dataset_info(self, job_id: str) -> Optional[dict[str, Any]]:
    """What a model needs of a dataset: state, size, channels, mode, output folder, classes."""
    job = self.manager.get(job_id)
    if job is not None and job.kind == 'dataset':
      stats = fileio.read_json(os.path.join(job.tool_dir, 'stats.json')) or {}
      form = job.doc.get('form') or {}
      size = stats.get('image_size') or [form.get('resize_width'), form.get('resize_height')]
      return {'id': job.id, 'name': job.doc.get('name'), 'state': job.state,
              'image_size': size if isinstance(size, list) else [size, size],
              'channels': stats.get('channels') or form.get('resize_channels'),
              'resize_mode': stats.get('resize_mode') or form.get('resize_mode'),
              'encoding': stats.get('encoding') or form.get('encoding'),
              'output': job.tool_dir, 'num_classes': len(stats.get('classes') or []) or None,
              'counts': {s: sum(c.values()) for s, c in (stats.get('counts') or {}).items()},
              'external': False, 'created': job.doc.get('created')}
    if job is None and jobs_lib.valid_id(job_id) and '..' not in job_id:
      path = os.path.join(self.jobs_dir, job_id.replace('~', os.sep))
      stats = fileio.read_json(os.path.join(path, 'stats.json'))
      if isinstance(stats, dict) and os.path.isfile(os.path.join(path, 'labels.txt')):
        size = stats.get('image_size')
        return {'id': job_id, 'name': job_id.replace('~', '/'), 'state': 'done',
                'image_size': size if isinstance(size, list) else [size, size],
                'channels': stats.get('channels'), 'resize_mode': stats.get('resize_mode'),
                'encoding': stats.get('encoding'), 'output': path,
                'num_classes': len(stats.get('classes') or []) or None,
                'counts': {s: sum(c.values()) for s, c in (stats.get('counts') or {}).items()},
                'external': True}
    return None

  def datasets_for_form(self) -> dict[str, dict[str, Any]]:
    out = {}
    for row in self.manager.rows():
      if row['kind'] == 'dataset':
        info = self.dataset_info(row['id'])
        if info is not None:
          out[row['id']] = info
    return out

  def previous_models(self) -> dict[str, str]:
    return {j.id: j.dir for j in self.manager.jobs.values()
            if j.kind == 'model' and os.path.isdir(os.path.join(j.dir, 'checkpoints'))}

  def job_files(self, job_id: str) -> dict[str, str]:
    """Whitelisted file name -> path of a job's files that exist."""
    row = self.row(job_id)
    jobdir = row.get('jobdir') or row['path']
    out = {}
    if row['kind'] == 'dataset':
      tool = row['path'] if row.get('external') else os.path.join(jobdir, jobs_lib.DATASET_DIR)
      for name in DATASET_FILES:
        out[name] = os.path.join(tool, name)
    else:
      for name in MODEL_FILES:
        out[name] = os.path.join(jobdir, name)
      out['curves.png'] = os.path.join(jobdir, 'plots', 'curves.png')
    if not row.get('external'):
      for name in JOB_FILES:
        out[name] = os.path.join(jobdir, name)
    return {k: v for k, v in out.items() if os.path.isfile(v)}

  def model_view(self, job_id: str) -> dict[str, Any]:
    row = self.row(job_id)
    if row['kind'] != 'model':
      raise fastapi.HTTPException(404, f'{job_id} is not a model job')
    workdir = row.get('jobdir') or row['path']
    job = self.manager.get(job_id)
    status = status_lib.read_status(workdir)
    status = status if isinstance(status, dict) else {}
    config = fileio.read_json(os.path.join(workdir, 'config.json'))
    snapshots = inference_pages.snapshot_table(workdir)
    metrics = listing_lib.read_metrics_tail(os.path.join(workdir, 'metrics.jsonl'), 16 * 1024)
    latest = {}
    for record in metrics:
      if isinstance(record, dict) and record.get('split'):
        latest[record['split']] = record
    log_name = 'train.log' if os.path.isfile(os.path.join(workdir, 'train.log')) else runner_lib.OUTPUT_LOG
    hardware = _hardware(status.get('pid'), self._hw_cache) if row['state'] == 'running' else {}
    # DIGITS' GPU Usage panel while the job runs (NVML when installed; [] on a CPU host or without it).
    gpus = gpu_usage.read(gpu_usage.job_gpu_indices(row.get('devices') or [])) if row['state'] == 'running' else []
    dataset = None
    if job is not None and job.doc.get('dataset'):
      dataset = self.dataset_info(job.doc['dataset'])
    view = {
        **_job_fields(job_id, row),
        'step': status.get('step'), 'total_steps': status.get('total_steps'), 'epoch': status.get('epoch'),
        'num_epochs': (config or {}).get('num_epochs') if isinstance(config, dict) else None,
        'images_per_sec': status.get('images_per_sec'), 'best_val_top1': status.get('best_val_top1'),
        'best_epoch': status.get('best_epoch'), 'best_step': status.get('best_step'),
        'snapshots': snapshots['snapshots'], 'snapshot_table': snapshots, 'latest_metrics': latest,
        'dataset': dataset, 'config': config if isinstance(config, dict) else None,
        'history': (job.doc.get('history') if job else []) or [],
        'error': row.get('error'), 'log_name': log_name,
        'log_tail': jobs_lib.tail(os.path.join(workdir, log_name), 30)
        if row['state'] in ('failed', 'interrupted') else [],
        'files': sorted(self.job_files(job_id)), 'hardware': hardware, 'gpus': gpus,
        'command': status_lib.command_string(job.doc['argv']) if job else row.get('command'),
        'devices': row.get('devices') or [], 'size_bytes': row.get('size_bytes'),
        'wait_reason': row.get('wait_reason'),
        'classifications': self.classification_rows(job_id),
        'form_fields': _form_fields(job.doc) if job is not None else [],
    }
    c = config if isinstance(config, dict) else {}
    model, lr = c.get('model') or {}, c.get('lr') or {}
    if isinstance(model, dict) and model.get('name'):
      view['network_text'] = f'{model["name"]} x{model.get("width", 1)} · layout {c.get("layout", "?")}'
    if c.get('optimizer'):
      view['solver_text'] = (f'{c["optimizer"]} · lr {c.get("learning_rate")} ({lr.get("policy", "?")}) · '
                             f'batch {c.get("batch_size")} · {c.get("num_epochs")} epochs')
    return _plain(view)

  def classification_rows(self, model_id: str) -> list[dict[str, Any]]:
    """The model's Classify Many jobs for its page: id, name, state and top-1 once known."""
    rows = []
    for job in self.manager.classifications_of(model_id):
      status = status_lib.read_status(os.path.join(job.dir, status_lib.STATUS_FILE))
      row = self.manager.job_row(job)
      rows.append({'id': job.id, 'name': job.doc.get('name'), 'state': job.state,
                   'status_text': row['status_text'],
                   'top1': status.get('top1') if isinstance(status, dict) else None})
    return rows

  def dataset_view(self, job_id: str) -> dict[str, Any]:
    row = self.row(job_id)
    if row['kind'] != 'dataset':
      raise fastapi.HTTPException(404, f'{job_id} is not a dataset job')
    job = self.manager.get(job_id)
    tool = row['path'] if row.get('external') else os.path.join(row['jobdir'], jobs_lib.DATASET_DIR)
    stats = fileio.read_json(os.path.join(tool, 'stats.json'))
    live = status_lib.read_status(os.path.join(os.path.dirname(tool), f'.{os.path.basename(tool)}.status.json'))
    if live is None:
      live = status_lib.read_status(os.path.join(tool, 'status.json'))
    live = live if isinstance(live, dict) else {}
    form = (job.doc.get('form') if job else None) or {}
    counts = (stats or {}).get('counts') or {}
    view = {
        **_job_fields(job_id, row),
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
        'error': row.get('error'), 'files': sorted(self.job_files(job_id)),
        'used_by': self.manager.users_of(job_id) if job else [],
        'log_tail': jobs_lib.tail(os.path.join(row['jobdir'], runner_lib.OUTPUT_LOG), 30)
        if row['state'] in ('failed', 'interrupted') and not row.get('external') else [],
        'command': status_lib.command_string(job.doc['argv']) if job else row.get('command'),
        'wait_reason': row.get('wait_reason'),
    }
    return _plain(view)

  def index(self) -> dict[str, Any]:
    rows = self.manager.rows()
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
    return _plain({'datasets': datasets, 'models': models, 'devices': self.manager.device_summary()})

  # -- Sparklines ---------------------------------------------------------------------------------------

  @functools.lru_cache(maxsize=4096)
  def _sparkline_cached(self, path: str, inode: int, size: int) -> str:  # pylint: disable=unused-argument
    losses = [r['loss'] for r in listing_lib.read_metrics_tail(path, 24 * 1024)
              if r.get('split') == 'train' and isinstance(r.get('loss'), (int, float))
              and math.isfinite(r['loss'])][-60:]
    if len(losses) < 2:
      return ''
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0
    n = len(losses) - 1
    return ' '.join(f'{100 * i / n:.1f},{18 - 16 * (v - lo) / span:.1f}' for i, v in enumerate(losses))

  def sparkline(self, workdir: str) -> str:
    path = os.path.join(workdir, 'metrics.jsonl')
    try:
      st = os.stat(path)
    except OSError:
      return ''
    return self._sparkline_cached(path, st.st_ino, st.st_size)

  # -- Gallery images ---------------------------------------------------------------------------------

  def record_png(self, path: str, index: int) -> bytes:
    """One stored image of a prepared split, as PNG (records are read without grain, so without JAX)."""
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    from alexnet_jax.data import records  # pylint: disable=g-import-not-at-top  (numpy + Pillow only)
    import PIL.Image  # pylint: disable=g-import-not-at-top
    with self._readers_lock:
      reader = self._readers.get(path)
      if reader is None:
        if len(self._readers) > 16:
          self._readers.clear()
        reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
        self._readers[path] = reader
      if not 0 <= index < reader.num_records():
        raise IndexError(index)
      blob = reader.read([index])[0]
    with inference_pages.IMAGE_WORK:
      image = records.decode_record(blob).image
      pil = PIL.Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
      buf = io.BytesIO()
      pil.save(buf, format='PNG', compress_level=1)
      return buf.getvalue()


def _package_version(name: str) -> str:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return '0'


def _list_lines(path: str) -> list[tuple[int, str, int]]:
  """(record index, source path, label) of a prepared split's list (records are in list order)."""
  out = []
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      for i, line in enumerate(f):
        line = line.rstrip('\n')
        image, _, label = line.rpartition(' ')
        try:
          out.append((i, image, int(label)))
        except ValueError:
          continue
  except OSError:
    pass
  return out


def _resize_example(width: int, height: int, channels: int, sample: Optional[str]) -> bytes:
  """The four resize modes drawn side by side on a sample image (the form's "See example")."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import PIL.Image  # pylint: disable=g-import-not-at-top
  import PIL.ImageDraw  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import resize  # pylint: disable=g-import-not-at-top  (numpy + Pillow only)
  image = None
  if sample:
    try:
      with inference_pages.open_bounded(sample, (512, 512)) as opened:
        image = opened.convert('RGB')
      image.thumbnail((512, 512))
    except Exception:  # pylint: disable=broad-except
      image = None
  if image is None:            # a wide picture, so the modes differ: sky, ground, sun, a tree
    image = PIL.Image.new('RGB', (240, 150), (120, 170, 230))
    d = PIL.ImageDraw.Draw(image)
    d.rectangle([0, 105, 240, 150], fill=(80, 150, 70))
    d.ellipse([20, 15, 70, 65], fill=(250, 210, 60))
    d.rectangle([170, 60, 182, 110], fill=(110, 70, 40))
    d.ellipse([145, 20, 207, 80], fill=(40, 120, 50))
    d.rectangle([0, 0, 239, 149], outline=(200, 30, 30), width=3)
  scale = min(1.0, 150.0 / max(width, height))
  tile_w, tile_h = max(1, round(width * scale)), max(1, round(height * scale))
  modes = ('squash', 'crop', 'fill', 'half_crop')
  src_w = round(image.width * tile_h / image.height)
  src = image.resize((max(1, src_w), tile_h))
  pad, label_h = 10, 18
  canvas = PIL.Image.new('RGB', (src.width + len(modes) * (tile_w + pad) + 2 * pad, tile_h + label_h + 2 * pad),
                         (255, 255, 255))
  d = PIL.ImageDraw.Draw(canvas)
  canvas.paste(src, (pad, pad + label_h))
  d.text((pad, pad), f'original {image.width}x{image.height}', fill=(0, 0, 0))
  x = src.width + 2 * pad
  for mode in modes:
    # Drawn at the size it is shown: the modes depend on the aspect ratio only, and a 4096x4096 example
    # computed at full size cost ~200 MB a request (issue 24).
    out = resize.resize_image(image, tile_h, tile_w, channels, mode, rng=np.random.default_rng(0))
    tile = PIL.Image.fromarray(out[:, :, 0] if out.ndim == 3 and out.shape[2] == 1 else out).convert('RGB')
    canvas.paste(tile, (x, pad + label_h))
    d.text((x, pad), mode, fill=(0, 0, 0))
    x += tile_w + pad
  buf = io.BytesIO()
  canvas.save(buf, format='PNG')
  return buf.getvalue()


def _first_image(folder: str, roots) -> Optional[str]:
  try:
    for cls in sorted(os.scandir(folder), key=lambda e: e.name):
      if cls.is_dir() and not cls.name.startswith('.'):
        for f in sorted(os.scandir(cls.path), key=lambda e: e.name):
          if f.is_file() and f.name.lower().endswith(forms.IMAGE_EXTENSIONS) and security.inside(f.path, roots):
            return f.path
  except OSError:
    return None
  return None


async def _read_form(request: Request) -> tuple[dict[str, str], dict[str, bytes], dict[str, str]]:
  """The fields, uploaded files and their file names of a multipart or url-encoded body, within the caps."""
  content_type = request.headers.get('content-type', '')
  if content_type.startswith('application/json'):
    body = await request.body()
    try:
      data = json.loads(body or b'{}')
    except ValueError:
      raise fastapi.HTTPException(400, 'the body is not JSON') from None
    if not isinstance(data, dict):
      raise fastapi.HTTPException(400, 'the body must be a JSON object')
    return {str(k): (v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else
                     ('true' if v is True else 'false' if v is False else str(v)))
            for k, v in data.items()}, {}, {}
  form = await request.form(max_files=8, max_fields=400, max_part_size=forms.MAX_UPLOAD_BYTES)
  fields, uploads, names = {}, {}, {}
  for key, value in form.multi_items():
    if isinstance(value, UploadFile):
      data = await value.read(forms.MAX_UPLOAD_BYTES + 1)
      if data:
        uploads[key] = data
        names[key] = os.path.basename(value.filename or '')
    else:
      fields[key] = value
  return fields, uploads, names


def create_app(settings: Settings) -> fastapi.FastAPI:
  """The FastAPI app of one dashboard (its jobs start only while it is served: ``lifespan``)."""
  dash = Dashboard(settings)

  async def lifespan(app):  # pylint: disable=unused-argument
    if settings.start_scheduler:
      dash.manager.lock(f'http://{settings.host}:{settings.port}/')   # a second dashboard stops here
      dash.manager.start()
    if settings.start_worker:
      dash.checker.start()
      dash.inference.predictor.start()
    yield
    dash.manager.stop()
    dash.manager.unlock()
    dash.checker.close()
    dash.inference.predictor.close()

  app = fastapi.FastAPI(title='alexnet_jax dashboard', version=dash.version, docs_url=None,
                        redoc_url=None, lifespan=lifespan, default_response_class=security.PrintableJSONResponse)
  app.state.dash = dash

  # -- Errors: always {"errors": {...}}, never a traceback ----------------------------------------

  @app.exception_handler(RequestValidationError)
  async def _validation(request: Request, exc: RequestValidationError):  # pylint: disable=unused-argument
    errors = {}
    for e in exc.errors():
      loc = [str(p) for p in e.get('loc', ()) if p not in ('query', 'path', 'body')]
      errors['.'.join(loc) or 'request'] = e.get('msg', 'invalid')
    return _error(400, errors)

  @app.exception_handler(StarletteHTTPException)
  async def _http(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 404 and 'text/html' in request.headers.get('accept', ''):
      return HTMLResponse(dash.env.get_template('error.html').render(
          message=str(exc.detail), token=dash.page_token(request), static=dash.static_url, version=dash.version,
          devices=dash.manager.device_summary(), page={}), status_code=404)
    return _error(exc.status_code, {'request': str(exc.detail)})

  @app.exception_handler(jobs_lib.JobError)
  async def _job_error(request: Request, exc: jobs_lib.JobError):  # pylint: disable=unused-argument
    return _error(exc.status, {'job': str(exc)})

  @app.exception_handler(Exception)
  async def _crash(request: Request, exc: Exception):  # pylint: disable=unused-argument
    _log.exception('dashboard request %s %s', request.method, request.url.path)
    return _error(500, {'server': 'internal error; the details are in the dashboard\'s own log'})

  # -- Static --------------------------------------------------------------------------------------

  @app.get('/static/plotly-{version}.min.js', include_in_schema=False)
  def plotly_js(version: str):
    if version != _package_version('plotly'):
      raise fastapi.HTTPException(404, 'no such plotly version')
    import importlib.resources  # pylint: disable=g-import-not-at-top
    path = importlib.resources.files('plotly') / 'package_data' / 'plotly.min.js'
    return FileResponse(str(path), media_type='text/javascript',
                        headers={'Cache-Control': 'public, max-age=31536000, immutable'})

  @app.get('/static/{tag}/{name}', include_in_schema=False)
  def static(tag: str, name: str):  # pylint: disable=unused-argument
    if name not in os.listdir(STATIC_DIR):
      raise fastapi.HTTPException(404, 'no such file')
    kind = 'text/javascript' if name.endswith('.js') else 'text/css' if name.endswith('.css') else None
    cache = 'public, max-age=31536000, immutable' if tag == dash._static_tag else 'no-cache'  # pylint: disable=protected-access
    return FileResponse(os.path.join(STATIC_DIR, name), media_type=kind, headers={'Cache-Control': cache})

  @app.get('/favicon.ico', include_in_schema=False)
  def favicon():
    return Response(status_code=204)

  # -- Home ----------------------------------------------------------------------------------------

  @app.get('/', response_class=HTMLResponse, include_in_schema=False)
  def home(request: Request, partial: int = 0):
    index = dash.index()
    sparks = {}
    for m in index['models']:
      row_dir = (dash.manager.get(m['id']).dir if dash.manager.get(m['id'])
                 else os.path.join(dash.jobs_dir, m['id'].replace('~', os.sep)))
      sparks[m['id']] = dash.sparkline(row_dir)
    template = 'home_tables.html' if partial else 'home.html'
    running = any(r['status'] in ('running', 'queued') for r in index['datasets'] + index['models'])
    return dash.render(template, request, index=index, sparks=sparks,
                       page={'live': running, 'devices': index['devices']})

  @app.get('/index.json')
  def index_json():
    """DIGITS' ``{datasets: [{id, name, status}, ...], models: [...]}`` (digits/views.py) and our fields;
    DIGITS' ``dataset_id`` of each model and the ``version`` are added beside ours."""
    index = dash.index()
    for m in index['models']:
      m['dataset_id'] = m.get('dataset')
    index['version'] = _package_version('alexnet_jax')
    return index

  # -- New Dataset -----------------------------------------------------------------------------------

  @app.get('/datasets/images/classification/new', response_class=HTMLResponse, include_in_schema=False)
  def new_dataset(request: Request, clone: str = ''):
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

  @app.post('/datasets/images/classification.json', status_code=200)
  async def create_dataset(request: Request):
    fields, uploads, _ = await _read_form(request)
    try:
      parsed = await asyncio.to_thread(forms.parse_dataset_form, fields, dash.roots, uploads=uploads)
    except forms.FormErrors as e:
      return _error(400, e.errors)
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
      return forms.prepare_argv(opts, os.path.join(jobdir, jobs_lib.DATASET_DIR)) + [dash.confine_flag()]

    job = dash.manager.create('dataset', name=parsed['name'], group=parsed['group'], notes=parsed['notes'],
                              argv=[], argv_for=argv_for, form=parsed['form'])
    return {'id': job.id, 'name': job.doc['name'], 'status': job.state, 'url': f'/datasets/{job.id}'}

  @app.get('/datasets/resize_example.png', include_in_schema=False)
  def resize_example(width: int = 256, height: int = 256, channels: int = 3, folder: str = ''):
    if not (1 <= width <= forms.MAX_SIZE and 1 <= height <= forms.MAX_SIZE) or channels not in (1, 3):
      return _error(400, {'resize_width': 'width and height 1..4096, channels 1 or 3'})
    sample = None
    if folder:
      try:
        sample = _first_image(str(security.confine(folder, dash.roots, want='dir')), dash.roots)
      except security.PathError:
        sample = None
    with inference_pages.IMAGE_WORK:
      data = _resize_example(width, height, channels, sample)
    return Response(data, media_type='image/png', headers={'Cache-Control': 'no-store'})

  @app.get('/paths/complete')
  def complete(path: str = ''):
    return {'paths': security.complete(path, dash.roots)}

  @app.post('/demo')
  def demo():
    """Draws the demo folder (5 classes of shapes, 3,000 JPEGs, a few seconds) under the state folder."""
    target = os.path.join(dash.demo_dir, 'shapes')
    with dash._demo_lock:  # pylint: disable=protected-access
      if not os.path.isdir(target):
        from alexnet_jax.data import demo as demo_data  # pylint: disable=g-import-not-at-top  (numpy + Pillow)
        demo_data.make_demo_folder(target, per_class=200)
    return {'folder': target}

  # -- Dataset pages -----------------------------------------------------------------------------------

  @app.get('/datasets/{job_id}.json')
  def dataset_json(job_id: str):
    """Our dataset view, plus DIGITS' verbose ``ParseFolderTasks`` and ``CreateDbTasks`` (digits/dataset/
    job.py ``json_dict(True)``: counts per split, and per split database its entries and image shape)."""
    view = dash.dataset_view(job_id)
    sizes = view.get('split_sizes') or {}
    width, height = (list(view.get('image_size') or []) + [None, None])[:2]
    view['ParseFolderTasks'] = [{'name': 'Parse Folder', 'label_count': len(view.get('classes') or []),
                                 **{f'{s}_count': sizes.get(s, 0) for s in ('train', 'val', 'test')}}]
    view['CreateDbTasks'] = [{'name': f'Create DB ({s})', 'entries': n, 'image_width': width,
                              'image_height': height, 'image_channels': view.get('channels'),
                              'backend': 'files', 'encoding': view.get('encoding'), 'compression': 'none'}
                             for s, n in sizes.items() if n]
    return view

  @app.get('/datasets/{job_id}', response_class=HTMLResponse, include_in_schema=False)
  def dataset_page(request: Request, job_id: str):
    view = dash.dataset_view(job_id)
    return dash.render('dataset.html', request, job=view, page=view)

  @app.get('/datasets/{job_id}/explore', response_class=HTMLResponse, include_in_schema=False)
  def explore(request: Request, job_id: str, split: str = 'train', label: int = -1, page: int = 1,
              size: int = 25):
    view = dash.dataset_view(job_id)
    if split not in SPLITS:
      split = 'train'
    size = size if size in PAGE_SIZES else 25
    files = dash.job_files(job_id)
    entries = _list_lines(files[f'{split}.txt']) if f'{split}.txt' in files else []
    if label >= 0:
      entries = [e for e in entries if e[2] == label]
    pages = max(1, math.ceil(len(entries) / size))
    page = min(max(1, page), pages)
    shown = entries[(page - 1) * size: page * size]
    classes = view['classes']
    items = [{'index': i, 'label': lab, 'class': classes[lab] if 0 <= lab < len(classes) else str(lab),
              'path': os.path.basename(p)} for i, p, lab in shown]
    splits = [s for s in SPLITS if f'{s}.txt' in files]

    def link(**kw):
      q = {'split': split, 'label': label, 'page': page, 'size': size}
      q.update(kw)
      return f'/datasets/{quote(job_id)}/explore?{urlencode(q)}'

    return dash.render('explore.html', request, job=view, items=items, split=split, label=label,
                       page_no=page, pages=pages, size=size, total=len(entries), splits=splits,
                       sizes=PAGE_SIZES, link=link, page={'id': job_id})

  @app.get('/datasets/{job_id}/images/{split}/{index}.png', include_in_schema=False)
  def dataset_image(job_id: str, split: str, index: int):
    if split not in SPLITS or index < 0:
      raise fastapi.HTTPException(404, 'no such image')
    row = dash.row(job_id)
    if row['kind'] != 'dataset':
      raise fastapi.HTTPException(404, 'not a dataset')
    tool = row['path'] if row.get('external') else os.path.join(row['jobdir'], jobs_lib.DATASET_DIR)
    path = os.path.join(tool, f'{split}.array_record')
    if not os.path.isfile(path):
      raise fastapi.HTTPException(404, 'no such split')
    try:
      data = dash.record_png(path, index)
    except IndexError:
      raise fastapi.HTTPException(404, 'no such image') from None
    return Response(data, media_type='image/png', headers={'Cache-Control': 'private, max-age=3600'})

  # -- New Model ---------------------------------------------------------------------------------------

  @app.get('/models/images/classification/new', response_class=HTMLResponse, include_in_schema=False)
  def new_model(request: Request, clone: str = '', dataset: str = ''):
    values: dict[str, Any] = {}
    if clone:
      job = dash.manager.get(clone)
      if job is not None and job.kind == 'model':
        values = dict(job.doc.get('form') or {})
        values['model_name'] = f'{values.get("model_name", "")} (clone)'
    if dataset:
      values['dataset'] = dataset
    tables = dash.checker.tables(wait_s=20)
    datasets = dash.datasets_for_form()
    experiments = [e['name'] for e in config_client.list_experiments()]
    return dash.render('new_model.html', request, values=values, datasets=datasets, tables=tables,
                       experiments=experiments, previous=sorted(dash.previous_models()),
                       page={'datasets': datasets, 'tables': tables, 'values': values})

  @app.post('/models/images/classification.json')
  async def create_model(request: Request):
    fields, _, _ = await _read_form(request)
    experiments = {e['name']: e['path'] for e in config_client.list_experiments()}
    datasets = await asyncio.to_thread(dash.datasets_for_form)
    try:
      parsed = forms.parse_model_form(fields, datasets=datasets, previous=dash.previous_models(),
                                      experiments=list(experiments))
    except forms.FormErrors as e:
      return _error(400, e.errors)
    devices_needed = []
    for overrides in parsed['points']:
      try:
        answer = await asyncio.to_thread(dash.checker.check, parsed['experiment'], overrides,
                                         parsed['num_classes'])
      except config_client.WorkerError as e:
        return _error(503, {'config': f'settings could not be checked: {e}; try again'})
      if answer.get('problems'):
        return _error(400, forms.map_problems(answer['problems']))
      devices_needed.append(answer.get('devices_needed') or 1)
    dataset = datasets[parsed['dataset']]
    created = []
    for overrides, label, need in zip(parsed['points'], parsed['labels'], devices_needed):
      name = f'{parsed["name"]} [{label}]' if label else parsed['name']
      form = dict(parsed['form'])
      if label:
        form['sweep_point'] = label
      job = dash.manager.create(
          'model', name=name, group=parsed['group'], notes=parsed['notes'], dataset=parsed['dataset'],
          devices_needed=need, argv=[], form=form,
          extra={'dataset_external': dataset.get('external', False), 'dataset_path': dataset['output'],
                 'form_fields': dict(fields)},   # exactly as submitted, for the model page
          argv_for=lambda jobdir, o=overrides: forms.train_argv(experiments[parsed['experiment']], jobdir, o))
      created.append({'id': job.id, 'name': name, 'status': job.state, 'url': f'/models/{job.id}'})
    return created[0] if len(created) == 1 else created

  @app.get('/models/lr_curve.json')
  def lr_curve(request: Request):
    fields = dict(request.query_params)
    fields.setdefault('model_name', 'lr')
    experiments = {e['name']: e['path'] for e in config_client.list_experiments()}
    datasets = dash.datasets_for_form()
    steps_per_epoch = 100
    try:
      parsed = forms.parse_model_form(fields, datasets=datasets, previous={}, experiments=list(experiments))
    except forms.FormErrors as e:
      return _error(400, e.errors)
    dataset = datasets.get(parsed['dataset']) or {}
    train = (dataset.get('counts') or {}).get('train')
    batch = int(parsed['points'][0][-2].split('=')[1])
    if train:
      steps_per_epoch = max(1, train // batch)
    try:
      answer = dash.checker.lr_curve(parsed['experiment'], parsed['points'][0], steps_per_epoch)
    except config_client.WorkerError as e:
      return _error(503, {'config': str(e)})
    if answer.get('problems'):
      return _error(400, forms.map_problems(answer['problems']))
    return answer

  # -- Model pages ---------------------------------------------------------------------------------------

  @app.get('/models/{job_id}.json')
  def model_json(job_id: str):
    """DIGITS' ``{id, name, status, dataset_id, directory, snapshots: [epoch, ...]}`` (digits/model/job.py
    ``json_dict``), so a script can post ``snapshots[-1]`` as ``snapshot_epoch``; every other key is ours.
    The richer rows ({step, epoch, val_top1}) are under ``snapshot_details``."""
    view = dash.model_view(job_id)
    view['snapshot_details'] = view['snapshots']
    view['snapshots'] = view['snapshots_epochs'] = digits_epochs(view['snapshots'])
    job = dash.manager.get(job_id)
    view['dataset_id'] = job.doc.get('dataset') if job is not None else None
    view['directory'] = job.dir if job is not None else dash.row(job_id).get('path')
    return view

  @app.get('/models/{job_id}', response_class=HTMLResponse, include_in_schema=False)
  def model_page(request: Request, job_id: str):
    view = dash.model_view(job_id)
    return dash.render('model.html', request, job=view, page=view)

  @app.get('/models/{job_id}/stream', response_class=EventSourceResponse)
  async def model_stream(request: Request, job_id: str):
    """Live curves: ``metrics`` events carry the records appended to metrics.jsonl (id = last step),
    ``reset`` says the file was rewritten (a resume), ``status`` the job's state and progress."""
    row = dash.row(job_id)
    if row['kind'] != 'model':
      raise fastapi.HTTPException(404, 'not a model job')
    workdir = row.get('jobdir') or row['path']
    tail = stream_lib.MetricsTail(os.path.join(workdir, 'metrics.jsonl'))
    status_path = os.path.join(workdir, status_lib.STATUS_FILE)
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
      try:
        mtime = os.stat(status_path).st_mtime_ns
      except OSError:
        mtime = None
      job = dash.manager.get(job_id)
      state = job.state if job is not None else row['state']
      key = (mtime, state, job.wait_reason if job else None,
             job.doc.get('abort_requested') if job else None)
      if key != last_status:
        last_status = key
        view = await asyncio.to_thread(dash.model_view, job_id)
        yield ServerSentEvent(event='status', data=dict({k: view[k] for k in (
            'status', 'status_text', 'progress', 'eta_seconds', 'elapsed_seconds', 'step', 'total_steps',
            'epoch', 'images_per_sec', 'best_val_top1', 'best_epoch', 'snapshots', 'error', 'hardware',
            'gpus', 'log_tail', 'history')}, devices=dash.manager.device_summary()))
      last_state = state
      await asyncio.sleep(STREAM_POLL_S if last_state in ('running', 'queued') else STREAM_IDLE_POLL_S)

  @app.get('/compare', response_class=HTMLResponse, include_in_schema=False)
  def compare(request: Request, ids: str = ''):
    chosen = [i for i in ids.split(',') if i][:20]
    series = []
    for job_id in chosen:
      try:
        row = dash.row(job_id)
      except fastapi.HTTPException:
        continue
      if row['kind'] != 'model':
        continue
      workdir = row.get('jobdir') or row['path']
      records = listing_lib.read_metrics_tail(os.path.join(workdir, 'metrics.jsonl'), 4 * 2**20)
      series.append({'id': job_id, 'name': row['name'], 'records': _plain(records)})
    models = [r for r in dash.manager.rows() if r['kind'] == 'model']
    return dash.render('compare.html', request, series=series, models=models, chosen=chosen,
                       page={'series': series})

  @app.get('/clone/{job_id}', include_in_schema=False)
  def clone(job_id: str):
    row = dash.row(job_id)
    where = ('/datasets/images/classification/new' if row['kind'] == 'dataset'
             else '/models/images/classification/new')
    return RedirectResponse(f'{where}?clone={quote(job_id)}', status_code=303)

  # -- Job actions ------------------------------------------------------------------------------------

  @app.post('/jobs/{job_id}/abort')
  def abort(job_id: str, force: int = 0):
    dash.row(job_id)
    return {'id': job_id, 'result': dash.manager.abort(job_id, force=bool(force))}

  @app.post('/jobs/{job_id}/resume')
  def resume(job_id: str):
    dash.row(job_id)
    return {'id': job_id, 'result': dash.manager.resume(job_id)}

  @app.put('/jobs/{job_id}')
  async def edit(request: Request, job_id: str):
    dash.row(job_id)
    fields, _, _ = await _read_form(request)
    unknown = sorted(set(fields) - {'name', 'notes', 'group'})
    if unknown:
      return _error(400, {k: 'only name, notes and group can be edited' for k in unknown})
    errors = {k: f'longer than {forms.MAX_TEXT} characters' for k, v in fields.items() if len(v) > forms.MAX_TEXT}
    if 'name' in fields and not fields['name'].strip():
      errors['name'] = 'required'
    if errors:
      return _error(400, errors)
    job = dash.manager.update(job_id, **{k: v.strip() for k, v in fields.items()})
    return {'id': job_id, 'name': job.doc.get('name'), 'notes': job.doc.get('notes'),
            'group': job.doc.get('group')}

  @app.delete('/jobs/{job_id}')
  def delete(job_id: str):
    dash.row(job_id)
    result = dash.manager.delete(job_id)
    inference_pages.remove_bundles(dash.inference.predictor.cache_dir, job_id)   # its download cache too
    return {'id': job_id, 'result': result}

  @app.get('/files/{job_id}/{name}', include_in_schema=False)
  def job_file(job_id: str, name: str):
    files = dash.job_files(job_id)
    if name not in files:
      raise fastapi.HTTPException(404, f'{job_id} has no file {name}')
    media = CONTENT_TYPES.get(os.path.splitext(name)[1], 'application/octet-stream')
    return FileResponse(files[name], media_type=media, headers={'Cache-Control': 'no-cache'})

  dash.inference.add_routes(app, _read_form)
  app.add_middleware(Guard, token=dash.token, hosts=dash.hosts, require_token=dash.require_token,
                     max_body=settings.max_body_bytes)
  return app
