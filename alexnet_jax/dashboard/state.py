"""What the dashboard's routes share: one ``Dashboard`` per app, reached through ``deps.Dash``.

It holds the settings as resolved at start (jobs folder, data roots, the token, the Host names), the job
manager, the two helper-process clients (``workers/config_client.py``; the inference one in
``trained_model.TrainedModels``), the templates, and the look-ups every area needs: a job id to its row
(``row``: the run's files under the job's own state; external runs too), a dataset's facts for a model,
a job's whitelisted files. The views built from them are ``views.py``'s; the routes are ``routes/``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import threading
from typing import Any, Optional

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from alexnet_jax.runtime import fileio
from alexnet_jax.run import listing as listing_lib   # discovery and rows: status files only, no JAX
from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import images
from alexnet_jax.dashboard import job_records
from alexnet_jax.dashboard import pretrained_store
from alexnet_jax.dashboard import jobs as jobs_lib
from alexnet_jax.dashboard import security
from alexnet_jax.dashboard import trained_model
from alexnet_jax.dashboard import views
from alexnet_jax.dashboard.workers import config_client

HERE = os.path.dirname(os.path.abspath(__file__))
STATIC_DIR = os.path.join(HERE, 'static')
TEMPLATE_DIR = os.path.join(HERE, 'templates')
DEMO_DIR = 'demo_images'          # under <jobs_dir>/.dashboard/
DATASET_FILES = ('train.txt', 'val.txt', 'test.txt', 'labels.txt', 'stats.json', 'mean.png', 'histogram.png')
JOB_FILES = ('output.log', 'job.json', 'exit.json')
MODEL_FILES = ('config.json', 'metrics.jsonl', 'train.log', 'status.json', 'labels.txt', 'preprocess.json')


def package_version(name: str) -> str:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return '0'


class Dashboard:
  """What the routes share: settings, the job manager, the workers' clients, the templates.

  Args:
    settings: ``app.Settings``.
  """

  def __init__(self, settings):
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
                                  trim_blocks=True, lstrip_blocks=True, finalize=views.printable_value)
    self.env.globals.update(fmt_time=views.fmt_time, fmt_pct=views.fmt_pct,
                            fmt_seconds=listing_lib.format_seconds, fmt_size=listing_lib.format_size,
                            static=self.static_url, plotly_url=self.plotly_url)
    self.version = package_version('alexnet_jax')
    self.static_tag = self._static_hash()
    self.hw_cache: dict = {}
    self.demo_lock = threading.Lock()
    self.records = images.RecordImages()
    self.inference = trained_model.TrainedModels(self)
    self.pretrained = pretrained_store.Store(self.state_dir, settings.models_dir)

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
    return f'/static/{self.static_tag}/{name}'

  def plotly_url(self) -> str:
    return f'/static/plotly-{package_version("plotly")}.min.js'

  # -- Rendering ------------------------------------------------------------------------------------

  def render(self, template: str, request: Request, **context) -> HTMLResponse:
    context.setdefault('page', {})
    context['page'] = fileio.plain(context['page'])
    html = self.env.get_template(template).render(
        request=request, token=self.page_token(request), jobs_dir=self.jobs_dir, version=self.version,
        devices=self.manager.device_summary(), **context)
    return HTMLResponse(html, headers={'Cache-Control': 'no-store'})

  def render_error(self, request: Request, message: str, status: int) -> HTMLResponse:
    """The error page (a browser that asked for a page of an unknown job)."""
    return HTMLResponse(self.env.get_template('error.html').render(
        message=message, token=self.page_token(request), static=self.static_url, version=self.version,
        devices=self.manager.device_summary(), page={}), status_code=status)

  # -- Jobs -----------------------------------------------------------------------------------------

  def row(self, job_id: str) -> dict[str, Any]:
    """A job's row (``jobs.JobManager.job_row``: the tool's files under the job's state), a dashboard
    job's or an external run's; 404 when there is none."""
    if not job_records.valid_id(job_id):
      raise errors_lib.not_found(f'no job {job_id}')
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
    raise errors_lib.not_found(f'no job {job_id}')

  def row_of_kind(self, job_id: str, kind: str) -> dict[str, Any]:
    """``row``, and 404 unless the job is a ``kind`` job (the one kind check: ``deps.ModelRow``, ...)."""
    row = self.row(job_id)
    if row['kind'] != kind:
      raise errors_lib.not_found(f'{job_id} is not a {kind} job')
    return row

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
    if job is None and job_records.valid_id(job_id) and '..' not in job_id:
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
      tool = row['path'] if row.get('external') else os.path.join(jobdir, job_records.DATASET_DIR)
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
