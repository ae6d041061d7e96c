"""The web side of ``inference_worker.py``: Classify One, Download Model and the census, without JAX here.

    predictor = Predictor(state_dir)      # <jobs_dir>/.dashboard
    predictor.start()                     # both workers start in the background
    predictor.classify_one(workdir, '/data/cat.jpg', step='best', layout='model', top_k=5,
                           out_dir=folder)          # -> {"predictions": [["cat", 91.51], ...], ...}
    predictor.export(workdir, step=12, format='zip')  # -> {"path", "size", "info", "cached", ...}
    predictor.census(workdir=workdir)                 # -> {"layouts": [...], "cached", ...}
    predictor.import_pretrained(upload, bundle_dir)   # -> {"ok", "info", "manifest_files", ...}
    predictor.export_onnx(workdir, step=12)           # -> {"path", "size", "summary", "cached"}

Two worker processes, two **lanes**, so that a long request never holds up a quick one: *interactive*
(``classify_one``) keeps the recently used models loaded and uses the accelerator if
there is one (without grabbing its memory up front: a training job may hold it); *background*
(``export``, ``census``) runs on CPU host devices only. Each lane answers one request at a time, in
order; a request waits at most its timeout for its turn and as long again for its answer. A worker
that died or overran is killed and started again at the next request (``worker_process``).

Every method returns the worker's answer as a dict, or raises ``PredictorError``: ``user_error`` True
when the request was at fault (an image that is not one, a missing step: show the message with a 400),
False when the worker failed or timed out (a 503). Exports and census reports are cached as files in
``<state_dir>/inference/`` (snapshots never change once finished). Importing this module imports no
JAX; it is safe to call from any thread.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence

from alexnet_jax.dashboard.workers import worker_process

WORKER_MODULE = 'alexnet_jax.dashboard.workers.inference_worker'
INTERACTIVE, BACKGROUND = 'interactive', 'background'
LANES = (INTERACTIVE, BACKGROUND)
CACHE_DIR = 'inference'


class PredictorError(worker_process.WorkerError):
  """Inference could not answer; the message is for the page.

  Attributes:
    user_error: True when the request was at fault (a bad image or step), False when the worker was.
  """

  def __init__(self, message: str, *, user_error: bool = False):
    super().__init__(message)
    self.user_error = user_error


def _lane_env(lane: str) -> dict[str, str]:
  if lane == BACKGROUND:   # the census compiles on forced CPU host devices; exports are host work
    return {'JAX_PLATFORMS': 'cpu'}
  # On a GPU, allocate as needed instead of 75% of the memory at start: a training job may share it.
  return {} if 'XLA_PYTHON_CLIENT_PREALLOCATE' in os.environ else {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'}


class Predictor:
  """The two inference workers of one dashboard (see the module docstring).

  Args:
    state_dir: the dashboard's own folder; the workers' logs (``inference-<lane>.log``) and the
      ``inference/`` cache go there.
    python: the interpreter of the workers.
    timeout_s: the interactive lane's wait (a first Classify One restores and compiles).
    background_timeout_s: the background lane's (a census compiles every layout's train step).
    cache_size: models the interactive worker keeps loaded.
  """

  def __init__(self, state_dir: str, *, python: str = sys.executable, timeout_s: float = 180.0,
               background_timeout_s: float = 1800.0, cache_size: int = 3):
    self.state_dir = os.path.abspath(state_dir)
    self.cache_dir = os.path.join(self.state_dir, CACHE_DIR)
    timeouts = {INTERACTIVE: timeout_s, BACKGROUND: background_timeout_s}
    sizes = {INTERACTIVE: cache_size, BACKGROUND: 1}
    self._lanes = {lane: worker_process.WorkerProcess(
        WORKER_MODULE, python=python, timeout_s=timeouts[lane], env=_lane_env(lane),
        log_path=os.path.join(self.state_dir, f'inference-{lane}.log'),
        args=(f'--cache_size={sizes[lane]}',), error=PredictorError) for lane in LANES}

  # -- Processes -----------------------------------------------------------------------------------

  def start(self) -> None:
    """Starts both workers in the background (returns at once)."""
    for worker in self._lanes.values():
      worker.start()

  def close(self) -> None:
    for worker in self._lanes.values():
      worker.close()

  def pid(self, lane: str = INTERACTIVE) -> Optional[int]:
    """The pid of a lane's worker, None when it is not running."""
    return self._lanes[lane].pid

  def _ask(self, lane: str, request: dict, timeout: Optional[float] = None) -> dict:
    reply = self._lanes[lane].ask(request, timeout)
    if 'error' in reply:
      raise PredictorError(str(reply['error']), user_error=bool(reply.get('user_error')))
    return reply

  # -- Requests ------------------------------------------------------------------------------------

  def ping(self, lane: str = INTERACTIVE, timeout: Optional[float] = None) -> dict:
    """``{"pong": true, "models": [[workdir, step, layout], ...]}`` (starting the worker if needed)."""
    return self._ask(lane, {'op': 'ping'}, timeout)

  def classify_one(self, workdir: str, image_path: str, *, step: str | int = 'best',
                   layout: str = 'single', top_k: int = 5, out_dir: Optional[str] = None,
                   visualize_dir: Optional[str] = None, timeout: Optional[float] = None) -> dict:
    """One image through snapshot ``step`` of the run in ``workdir``, on ``layout``.

    Returns ``{"predictions": [[label, percent (2 decimals)], ...] highest first, "probabilities":
    [p per class, 0..1], "labels", "step", "epoch", "layout", "ten_crop", "input_png": the centre crop
    as the network sees it (``out_dir/input.png``, else ``<visualize_dir>-input.png``, else None),
    "cached": bool, "timings": {"load_s", "classify_s", "total_s"}}``, plus ``"visualizations"`` (the
    stats of ``visualization.visualize`` with its ``files``, relative to ``visualize_dir``, and
    ``folder``) when ``visualize_dir`` is given.
    """
    request = {'op': 'classify_one', 'workdir': workdir, 'image_path': image_path, 'step': step,
               'layout': layout, 'top_k': top_k, 'out_dir': out_dir, 'visualize_dir': visualize_dir}
    return self._ask(INTERACTIVE, request, timeout)

  def export(self, workdir: str, *, step: str | int = 'best',
             format: str = 'tar.gz',  # pylint: disable=redefined-builtin  # the route's word
             timeout: Optional[float] = None) -> dict:
    """The snapshot as a bundle (``exporting.export_model``), made once and kept in the cache.

    Returns ``{"path", "size" (bytes), "info" (the bundle's info.json), "step", "format", "cached",
    "seconds"}``.
    """
    request = {'op': 'export', 'workdir': workdir, 'step': step, 'format': format,
               'cache_dir': self.cache_dir}
    return self._ask(BACKGROUND, request, timeout)

  def import_pretrained(self, source: str, output: str, *, fmt: str = 'auto', labels: Optional[str] = None,
                        prototxt: Optional[str] = None, mean: Optional[str] = None,
                        timeout: Optional[float] = None) -> dict:
    """An uploaded model file (a bundle archive, torchvision weights, a caffemodel with its side files, a
    DIGITS archive) imported or unpacked into the bundle folder ``output`` and verified
    (``pretrained_ops.import_pretrained``). Returns ``{"ok", "info", "manifest_files", "bytes",
    "mean_per_channel"}``."""
    request = {'op': 'import_pretrained', 'source': source, 'output': output, 'format': fmt,
               'labels': labels, 'prototxt': prototxt, 'mean': mean}
    return self._ask(BACKGROUND, request, timeout)

  def verify_bundle(self, path: str, *, timeout: Optional[float] = None) -> dict:
    """A bundle folder checked again: its manifest's sha256 sums, its parameters against its network."""
    return self._ask(BACKGROUND, {'op': 'verify_bundle', 'path': path}, timeout)

  def export_onnx(self, source: str, *, step: str | int = 'latest', triton: bool = False,
                  timeout: Optional[float] = None) -> dict:
    """A run's snapshot or a bundle as ``.onnx`` (or, with ``triton``, a Triton model repository as a
    .zip), made once and kept in the cache. Returns ``{"path", "size", "summary", "cached"}``."""
    request = {'op': 'export_onnx', 'source': source, 'step': step, 'triton': triton,
               'cache_dir': self.cache_dir}
    return self._ask(BACKGROUND, request, timeout)

  def census(self, *, workdir: Optional[str] = None, network: Optional[dict[str, Any]] = None,
             layouts: Optional[Sequence[str]] = None, timeout: Optional[float] = None) -> dict:
    """What each layout communicates for the run's network (or ``network``: ``{"model": {...},
    "num_classes", "crop_size", "channels"}``, and optionally ``"input_size": [W, H]`` for a rectangular
    input, DIGITS' crop "none"), computed once per network shape.

    Returns ``{"network", "batch", "devices", "towers", "cached", "seconds", "layouts": [{"name",
    "available", "moves", "reason" (when not available) | "mesh", "devices", "param_count",
    "param_bytes_per_device", "activation_bytes_per_image", "bytes_per_step_per_device",
    "total_bytes_per_step_per_device", "rows": [{"pass", "layer", "op", "axis", "count",
    "bytes_per_step", "bytes_per_image", "shapes"}]}]}``.
    """
    request = {'op': 'census', 'workdir': workdir, 'network': network, 'cache_dir': self.cache_dir,
               'layouts': list(layouts) if layouts else None}
    return self._ask(BACKGROUND, request, timeout)
