"""The wheels the device lacks: fetched here, carried with the call, installed there for the children.

``device_wheels.txt`` pins them (``NAME==VERSION``; ``# sdist-only`` for pure-Python packages PyPI has
no wheel of). ``fetch_wheels`` downloads them here for CPython 3.12 on manylinux x86-64; on the device,
``run_wheels_part`` installs the listed packages that ``importlib.metadata`` does not find into a folder
that the children get first on their ``PYTHONPATH``, then checks that they import.

``ensure_ml_collections`` is what the model and layouts parts call first: ``benchmarks.layouts`` wraps
its settings in an ``ml_collections.ConfigDict``, so where that wheel could not be installed a stub
module stands in for it, and the report says which.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
import types
from typing import Any

from benchmarks import device_plan
from benchmarks import device_runner

WHEELS_LIST = os.path.join(device_runner.ROOT, 'benchmarks', 'device_wheels.txt')
WHEEL_DIR = os.path.join(device_runner.ROOT, 'benchmarks', 'out', 'device_wheels')
# Modules whose import the wheels part checks after installing (import name, distribution).
CHECK_IMPORTS = (('grain', 'grain'), ('array_record.python.array_record_module', 'array-record'),
                 ('ml_collections', 'ml-collections'), ('tensorboardX', 'tensorboardX'),
                 ('tensorflow_datasets', 'tensorflow-datasets'))


def normalize(name: str) -> str:
  """A distribution name as PEP 503 compares them."""
  return re.sub(r'[-_.]+', '-', name).lower()


def read_wheels_list(path: str = WHEELS_LIST) -> list[dict]:
  """The pinned requirements of ``device_wheels.txt``: [{'name', 'version', 'sdist_only'}]."""
  entries = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      requirement, _, comment = line.partition('#')
      requirement = requirement.strip()
      if not requirement:
        continue
      m = re.fullmatch(r'([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)', requirement)
      if not m:
        raise ValueError(f'{path}: {requirement!r} is not NAME==VERSION')
      entries.append({'name': m[1], 'version': m[2], 'sdist_only': 'sdist-only' in comment})
  return entries


def _installed_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def wheel_file_for(entry: dict, wheel_dir: str) -> str | None:
  """The wheel of ``entry`` in ``wheel_dir`` (file names spell the distribution with underscores)."""
  want = normalize(entry['name'])
  for path in sorted(glob.glob(os.path.join(wheel_dir, '*.whl'))):
    dist, version = os.path.basename(path).split('-')[:2]
    if normalize(dist) == want and version == entry['version']:
      return path
  return None


_IMPORTS_CODE = ('import importlib, importlib.metadata, json\n'
                 'out = {}\n'
                 f'for module, dist in {list(CHECK_IMPORTS)!r}:\n'
                 '  try:\n'
                 '    importlib.import_module(module)\n'
                 '    out[module] = "ok " + importlib.metadata.version(dist)\n'
                 '  except Exception as e:\n'
                 '    out[module] = f"{type(e).__name__}: {e}"[:300]\n'
                 'print("IMPORTS " + json.dumps(out))\n')


def run_wheels_part(plan: device_plan.Plan, budget_s: float, *, wheel_dir: str, site_dir: str,
                    wheels_list: str, log=print) -> tuple[str, dict]:
  """Installs what is missing into ``site_dir`` (children get it on PYTHONPATH), then checks imports."""
  del plan   # the same wheels for every plan
  t0 = time.monotonic()
  entries = read_wheels_list(wheels_list)
  present, missing = {}, []
  for e in entries:
    version = _installed_version(e['name'])
    if version is not None:
      present[e['name']] = version
    else:
      missing.append(e)
  files, no_file = [], []
  for e in missing:
    path = wheel_file_for(e, wheel_dir)
    (files if path else no_file).append(path or f'{e["name"]}=={e["version"]}')
  result: dict[str, Any] = {'listed': len(entries), 'already_installed': present,
                            'to_install': [os.path.basename(f) for f in files],
                            'no_wheel_carried': no_file, 'wheel_dir': wheel_dir, 'site_dir': site_dir}
  if no_file:
    log(f'wheels: no carried wheel for {", ".join(no_file)} (fetch them with '
        f'`bash benchmarks/device_check.sh --fetch-wheels` and carry '
        f'{os.path.relpath(wheel_dir, device_runner.ROOT)})')
  if files:
    cmd = [sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile',
           '--no-cache-dir', '--upgrade', '--target', site_dir, *files]
    r = device_runner.run_child(cmd, budget_s * 0.7, device_runner.child_env(None), capture=True, log=log)
    result['pip'] = {'rc': r['rc'], 'timed_out': r['timed_out'], 'wall_s': r['wall_s'],
                     'output_tail': r['output'][-2000:]}
  left = max(10.0, budget_s - (time.monotonic() - t0))
  r = device_runner.run_child([sys.executable, '-c', _IMPORTS_CODE], left, device_runner.child_env(site_dir),
                              capture=True, log=log)
  line = [l for l in r['output'].splitlines() if l.startswith('IMPORTS ')]
  result['imports'] = json.loads(line[-1][len('IMPORTS '):]) if line else {
      'error': r['output'][-1500:]}
  ok = bool(line) and all(v.startswith('ok') for v in result['imports'].values())
  pip_ok = result.get('pip', {}).get('rc', 0) == 0
  return ('ok' if ok and pip_ok and not no_file else 'partial'), result


def fetch_wheels(wheel_dir: str = WHEEL_DIR, wheels_list: str = WHEELS_LIST, log=print) -> int:
  """Downloads the wheels of ``device_wheels.txt`` for the device (CPython 3.12, manylinux x86-64).

  Binary-only for all but the ``# sdist-only`` entries, which are pure Python and built here into
  ``py3-none-any`` wheels. Returns pip's exit status (0 when all are there).
  """
  entries = read_wheels_list(wheels_list)
  os.makedirs(wheel_dir, exist_ok=True)
  platforms = ['manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_24_x86_64',
               'manylinux_2_17_x86_64', 'manylinux2014_x86_64', 'manylinux1_x86_64']
  binary = [f'{e["name"]}=={e["version"]}' for e in entries if not e['sdist_only']]
  source = [f'{e["name"]}=={e["version"]}' for e in entries if e['sdist_only']]
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
         '--python-version', '3.12', '--implementation', 'cp', '--abi', 'cp312', '--abi', 'abi3',
         '--abi', 'none']
  for p in platforms:
    cmd += ['--platform', p]
  cmd += ['-d', wheel_dir, *binary]
  log('$ ' + ' '.join(cmd))
  rc = subprocess.call(cmd)
  if source:
    cmd = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-w', wheel_dir, *source]
    log('$ ' + ' '.join(cmd))
    rc = rc or subprocess.call(cmd)
  missing = [f'{e["name"]}=={e["version"]}' for e in entries if not wheel_file_for(e, wheel_dir)]
  total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(wheel_dir, '*.whl')))
  log(f'{len(entries) - len(missing)}/{len(entries)} wheels in {wheel_dir}, {total / 2**20:.1f} MiB'
      + (f'; missing: {", ".join(missing)}' if missing else ''))
  return rc or (1 if missing else 0)


class ConfigDictStub(dict):
  """Stands in for ``ml_collections.ConfigDict`` (attribute access, ``.get``) when the wheel is missing."""

  def __getattr__(self, key):
    try:
      return self[key]
    except KeyError:
      raise AttributeError(key) from None


def ensure_ml_collections() -> str:
  """Imports ``ml_collections``, or registers a stub module when it is missing; says which.

  ``benchmarks/layouts.py`` wraps a dict in a ``ConfigDict`` (attribute access and ``.get``: what
  ``alexnet_jax.models.build`` reads); the stub covers that.
  """
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top  (may be missing: then the stub)
    return f'ml_collections {getattr(ml_collections, "__version__", "")}'.strip()
  except ImportError:
    stub = types.ModuleType('ml_collections')
    stub.ConfigDict = ConfigDictStub
    stub.__stub__ = True
    sys.modules['ml_collections'] = stub
    return 'stub (ml_collections is not installed)'
