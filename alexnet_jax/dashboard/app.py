"""The dashboard's web application: ``create_app(Settings(...))`` returns the FastAPI app of one jobs folder.

``__main__.py`` serves it with uvicorn. The app is assembled here and nothing else is: its lifespan
(the job queue and the helper processes start only while it is served), the exception handlers that
answer every refusal with ``errors.response``'s envelope, one router per area (``routes/``: home,
datasets, models, jobs, inference -- every page with its JSON twin, DIGITS' names where DIGITS had the
route), and the request guard outermost (``guard.py``). What the routes share is ``state.Dashboard``,
reached through ``deps``; pages and JSON are built by ``views``.

Errors are ``{"errors": {field: message}}`` with status 400 (403 for a refused origin or token, 404
for an unknown job); nothing ever shows a traceback. The web process never imports JAX: what needs the
library runs in a helper process (``workers/``: the clients are imported here, the workers never) or in
the job's own process.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import fastapi
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard import guard
from alexnet_jax.dashboard import security
from alexnet_jax.dashboard import state
from alexnet_jax.dashboard import pretrained_store
from alexnet_jax.dashboard.routes import datasets, home, inference, jobs, models, pretrained

_log = logging.getLogger(__name__)


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
  max_model_bytes: int = pretrained_store.MAX_WEIGHTS_BYTES + 3 * pretrained_store.MAX_SIDE_BYTES
  models_dir: Optional[str] = None           # --models_dir: a read-only store of bundles
  max_dataset_jobs: int = 2
  devices: Optional[list[str]] = None
  start_worker: bool = True
  start_scheduler: bool = True
  poll_s: float = 1.0


def create_app(settings: Settings) -> fastapi.FastAPI:
  """The FastAPI app of one dashboard (its jobs start only while it is served: ``lifespan``)."""
  dash = state.Dashboard(settings)

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

  def answer(request: Request, status: int, errors: dict[str, str]):
    if status == 404 and set(errors) == {'request'} and 'text/html' in request.headers.get('accept', ''):
      return dash.render_error(request, errors['request'], 404)     # a browser asked for a page
    return errors_lib.response(status, errors)

  @app.exception_handler(errors_lib.DashboardError)
  async def _refused(request: Request, exc: errors_lib.DashboardError):
    return answer(request, exc.status_code, exc.errors)

  @app.exception_handler(RequestValidationError)
  async def _validation(request: Request, exc: RequestValidationError):  # pylint: disable=unused-argument
    errors = {}
    for e in exc.errors():
      loc = [str(p) for p in e.get('loc', ()) if p not in ('query', 'path', 'body')]
      errors['.'.join(loc) or 'request'] = e.get('msg', 'invalid')
    return errors_lib.response(400, errors)

  @app.exception_handler(StarletteHTTPException)
  async def _http(request: Request, exc: StarletteHTTPException):
    return answer(request, exc.status_code, {'request': str(exc.detail)})

  @app.exception_handler(Exception)
  async def _crash(request: Request, exc: Exception):  # pylint: disable=unused-argument
    _log.exception('dashboard request %s %s', request.method, request.url.path)
    return errors_lib.response(500, {'server': "internal error; the details are in the dashboard's own log"})

  for area in (home, datasets, models, jobs, inference, pretrained):
    app.include_router(area.router)
  app.add_middleware(guard.Guard, token=dash.token, hosts=dash.hosts, require_token=dash.require_token,
                     max_body=settings.max_body_bytes,
                     large_bodies={pretrained.UPLOAD_PATH: settings.max_model_bytes})   # model files
  return app
