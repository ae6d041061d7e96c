"""The web side of ``config_worker.py``: one long-lived helper process that answers the library's questions.

``ConfigClient.start()`` launches ``python -m alexnet_jax.dashboard.workers.config_worker`` in the background
(it imports JAX, ~3 s on 2 cores, while the web server is already answering), and asks it for the tables once
(layouts with the devices each needs, networks, solvers, LR policies, mean and resize modes, the
installed experiments). The tables are also kept in ``<jobs_dir>/.dashboard/tables.json``, so the next
start shows the New Model page at once, before its worker is ready. ``check`` and ``lr_curve`` send one
request each; they are serialized (one worker, one pipe) and time out rather than hang a request.
A worker that died is started again at the next request (``worker_process.WorkerProcess``, shared
with ``inference_client.py``). ``list_experiments`` reads the installed experiments' files here, without
the worker: it needs no JAX.
"""

from __future__ import annotations

import ast
import logging
import os
import sys
import threading
from typing import Any, Optional

import experiments

from alexnet_jax.dashboard.workers import worker_process
from alexnet_jax.dashboard.workers.worker_process import WorkerError
from alexnet_jax.runtime import fileio

_log = logging.getLogger(__name__)

TABLES_FILE = 'tables.json'
WORKER_MODULE = 'alexnet_jax.dashboard.workers.config_worker'


def list_experiments() -> list[dict]:
  folder = os.path.dirname(os.path.abspath(experiments.__file__))
  out = []
  for name in sorted(os.listdir(folder)):
    if not name.endswith('.py') or name.startswith('_'):
      continue
    path = os.path.join(folder, name)
    doc = ''
    try:
      with open(path, encoding='utf-8') as f:
        doc = (ast.get_docstring(ast.parse(f.read())) or '').strip()
    except (OSError, SyntaxError, ValueError):
      pass
    out.append({'name': name[:-3], 'path': path, 'doc': doc.splitlines()[0] if doc else ''})
  return out


def experiment_path(name: str) -> str:
  for e in list_experiments():
    if e['name'] == name:
      return e['path']
  raise ValueError(f'experiment {name!r} is not one of the installed experiments')


class ConfigClient:
  """The config worker of one dashboard: started in the background, asked one question at a time."""

  def __init__(self, state_dir: str, *, python: str = sys.executable, timeout_s: float = 60.0):
    self.state_dir = state_dir
    self.python = python
    self.timeout_s = timeout_s
    # Descriptions only: never take an accelerator (a user's JAX_PLATFORMS still wins).
    env = {} if 'JAX_PLATFORMS' in os.environ else {'JAX_PLATFORMS': 'cpu'}
    self._worker = worker_process.WorkerProcess(WORKER_MODULE, python=python, timeout_s=timeout_s,
                                                env=env)
    self._tables: Optional[dict] = None
    self._tables_ready = threading.Event()
    cached = self._read_cached()
    if cached is not None:
      self._tables = cached

  # -- Process --------------------------------------------------------------------------------------

  def _read_cached(self) -> Optional[dict]:
    value = fileio.read_json(os.path.join(self.state_dir, TABLES_FILE))
    return value if isinstance(value, dict) and 'layouts' in value else None

  def ask(self, request: dict, timeout: Optional[float] = None) -> dict:
    """One request, one answer; raises WorkerError when the worker cannot answer."""
    reply = self._worker.ask(request, timeout)
    if 'error' in reply:
      raise WorkerError(reply['error'])
    return reply

  def start(self) -> None:
    """Starts the worker and fetches the tables, in a background thread."""

    def warm():
      try:
        tables = self.ask({'op': 'tables'})
      except Exception as e:  # pylint: disable=broad-except
        _log.warning('dashboard worker: %s', e)
        self._tables_ready.set()
        return
      self._tables = tables
      try:
        fileio.write_json(os.path.join(self.state_dir, TABLES_FILE), tables)
      except OSError:
        pass
      self._tables_ready.set()

    threading.Thread(target=warm, name='dashboard-worker-start', daemon=True).start()

  def close(self) -> None:
    self._worker.close()

  # -- Questions -------------------------------------------------------------------------------------

  def tables(self, wait_s: float = 30.0) -> dict[str, Any]:
    """The tables (cached from an earlier start while the worker warms up); {} if none yet."""
    if self._tables is None:
      self._tables_ready.wait(wait_s)
    return self._tables or {}

  def check(self, experiment: str, overrides: list[str], num_classes: int) -> dict:
    return self.ask({'op': 'check', 'experiment': experiment, 'overrides': overrides,
                     'num_classes': num_classes})

  def lr_curve(self, experiment: str, overrides: list[str], steps_per_epoch: int) -> dict:
    return self.ask({'op': 'lr_curve', 'experiment': experiment, 'overrides': overrides,
                     'steps_per_epoch': steps_per_epoch})
