r"""``benchmarks/device_check.sh``: everything worth measuring on one GPU, prepared to run in one call.

On a lent H200 (through the session's ``device`` tool, which copies the working tree there)::

    bash benchmarks/device_check.sh --fetch-wheels        # here, once: the wheels the device lacks
    run(command='bash benchmarks/device_check.sh', carry=['benchmarks/out/device_wheels'], timeout_s=540)

and on any machine, tiny and on CPU (what ``tests/test_device_check.py`` runs, about a minute)::

    python -m benchmarks.device_check --smoke --out=/tmp/dc_out

It runs these parts, most valuable first, each in its own process with its own time limit (a part that
runs over is stopped, what it measured so far is kept, and the next part starts), and rewrites the JSON
and the markdown summary under ``$OUT`` after every part, so that a run cut short still returns results:

1. ``wheels``    installs, from the wheels carried with the call, the packages of ``device_wheels.txt``
                 that the machine lacks (``pip install --no-index --no-deps --target``), then imports them;
2. ``model``     the train step and inference of ``alexnet`` (two towers, ``single`` layout) and
                 ``alexnet_owt``, full size, 224x224, bfloat16 and float32, batches 256/512/128: compile
                 time, step time (median of rounds of back-to-back steps after warm-up; also one blocked
                 call, the trainer's per-step sync), images/s, MFU against the device's table peak
                 (``benchmarks.common.PEAK_TFLOPS``: H100/H200 dense bf16 989 TFLOP/s, fp32 as TF32 495
                 and as plain FP32 67, NVIDIA's H200 datasheet numbers), the
                 program's memory (XLA) and the process's peak device memory; then one profiler trace of
                 3 train steps (``alexnet_jax.training.profiling.StepProfiler``), returned as a tarball;
3. ``xla_flags`` whether this jaxlib starts with the CPU-only XLA flags ``alexnet_jax/devices.py`` adds
                 (an unknown flag aborts XLA at start-up);
4. ``train``     the real trainer, ``python -m alexnet_jax.train --config=experiments/demo.py`` for 2
                 epochs on the GPU (``layout=single``: the demo's ``model`` layout needs two devices), with
                 the images/s of its ``metrics.jsonl``;
5. ``input``     the input pipeline on all host cores into device memory: the folder and the prepared
                 records (``benchmarks/input_pipeline.py``'s images), as the trainer runs it (malloc
                 settings of ``host_memory.py``) and with glibc's defaults;
6. ``layouts``   ``benchmarks.layouts`` on the one GPU, ``single`` only (``model`` needs two devices).

Nothing here sets an XLA flag: child processes get ``XLA_FLAGS`` without the CPU-only
``--xla_cpu_experimental_*`` entries, and the model, profile and layouts parts never call
``alexnet_jax.runtime.devices`` (which adds one). The model part imports only jax, flax, optax, numpy, absl,
``alexnet_jax.models`` / ``alexnet_jax.parallel`` and ``alexnet_jax.training.profiling``, so it runs even when a
wheel is missing -- except that ``alexnet_jax/models/__init__.py`` imports ``ml_collections`` at import
time (for a type annotation only): when it is absent, a stub module stands in for it there and the
report says so.

Outputs under ``--out`` (``$OUT`` in the wrapper; at most 8 files come back from the device, 16 MiB
each, so there are only these): ``device_check.json``, ``device_check.md``, ``device_check.log`` (the
wrapper's tee), ``train_step_trace.tar.gz`` (untar it, then ``tensorboard --logdir=trace`` or open its
``*.trace.json.gz`` in https://ui.perfetto.dev) and ``demo_metrics.jsonl``. Scratch files (datasets,
the demo's workdir) go to ``--scratch``.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
import types
from typing import Any, Callable, Sequence

from benchmarks import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS_LIST = os.path.join(ROOT, 'benchmarks', 'device_wheels.txt')
WHEEL_DIR = os.path.join(ROOT, 'benchmarks', 'out', 'device_wheels')
DEFAULT_SCRATCH = '/tmp/device_check'
JSON_NAME, MD_NAME = 'device_check.json', 'device_check.md'
TRACE_NAME, DEMO_METRICS_NAME = 'train_step_trace.tar.gz', 'demo_metrics.jsonl'
# The device tool returns files of at most 16 MiB; keep a margin.
MAX_RETURN_BYTES = 15 * 2**20
PARTS = ('wheels', 'model', 'xla_flags', 'train', 'input', 'layouts')
# Modules whose import the wheels part checks after installing (import name, distribution).
CHECK_IMPORTS = (('grain', 'grain'), ('array_record.python.array_record_module', 'array-record'),
                 ('ml_collections', 'ml-collections'), ('tensorboardX', 'tensorboardX'),
                 ('tensorflow_datasets', 'tensorflow-datasets'))
# What PERF_NOTES.md expects of alexnet_owt's bf16 train step at batch 256-512 on an H100/H200.
EXPECTED_OWT_BF16_TRAIN = (38_000, 57_000)
SOMETHING_WRONG_BELOW = 15_000

# ---- Plans: what each part runs ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes and time limits of every part: ``FULL`` on the device, ``SMOKE`` on a CPU in about a minute.

  ``model_configs`` are (model, dtype, batch, mode) in the order they run, most valuable first: when the
  model part's time runs out, the rest are skipped and reported as such.
  """
  name: str
  model_configs: tuple[tuple[str, str, int, str], ...]
  width: float
  image_size: int
  num_classes: int
  warmup: int            # untimed calls after compiling
  rounds: int            # timed rounds; the step time is the median over rounds
  steps_per_round: int   # back-to-back calls per round, blocked once at its end
  blocked_calls: int     # calls timed one by one, each blocked (the trainer syncs every step)
  profile: tuple[str, str, int] | None   # (model, dtype, batch) of the traced train step
  profile_steps: int
  layouts: dict
  input: dict
  train_args: tuple[str, ...]
  budgets: dict
  total_budget_s: float

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _model_order(models, dtype_modes, batches):
  return tuple((m, d, b, mode) for b in batches for mode, d in dtype_modes for m in models)


def _cores() -> int:
  return common.usable_cores()


FULL = Plan(
    name='full',
    # Batch 256 in every mode and dtype first, then 512, then 128: each (batch, mode, dtype) runs both
    # networks back to back, so that a stop at any point leaves them comparable. Within a batch: bf16
    # training (what a GPU user runs), fp32 training (the paper's), then inference.
    model_configs=_model_order(('alexnet', 'alexnet_owt'),
                               (('train', 'bfloat16'), ('train', 'float32'), ('infer', 'bfloat16'),
                                ('infer', 'float32')), (256, 512, 128)),
    width=1.0, image_size=224, num_classes=1000,
    warmup=3, rounds=5, steps_per_round=5, blocked_calls=3,
    profile=('alexnet', 'bfloat16', 256), profile_steps=3,
    layouts=dict(model='alexnet', width=1.0, batch=256, image_size=224, num_classes=1000,
                 dtype='bfloat16', steps=10, warmup=2),
    input=dict(num_images=2048, batch=256, threads=(8, 16), window_s=3.0, glibc_threads=(16,)),
    train_args=('--config=experiments/demo.py', '--config.layout=single', '--config.num_epochs=2'),
    # Seconds per part; what a part leaves unused goes to the next ones. Sum <= total <= 8 minutes.
    budgets=dict(wheels=20, model=230, xla_flags=20, train=75, input=60, layouts=45),
    total_budget_s=450,
)

SMOKE = Plan(
    name='smoke',
    # On a 2-core CPU each AlexNet's init and train step take 10-30 s to compile: one network, one
    # train program (the two-tower network runs in the layouts tests and on the device).
    model_configs=(('alexnet_owt', 'float32', 8, 'train'), ('alexnet_owt', 'bfloat16', 8, 'infer')),
    width=0.0625, image_size=67, num_classes=10,
    warmup=1, rounds=2, steps_per_round=1, blocked_calls=1,
    profile=('alexnet_owt', 'float32', 8), profile_steps=3,
    layouts=dict(model='lenet', width=0.5, batch=8, image_size=28, num_classes=10, dtype='float32',
                 steps=2, warmup=1),
    input=dict(num_images=32, batch=8, threads=(1, 2), window_s=0.3, glibc_threads=(2,)),
    train_args=('--config=experiments/demo.py', '--config.layout=single', '--config.num_epochs=1',
                '--config.lr.warmup_epochs=0.2', '--config.model.name=lenet'),
    budgets=dict(wheels=60, model=240, xla_flags=60, train=240, input=120, layouts=120),
    total_budget_s=900,
)


def plan_for(smoke: bool) -> Plan:
  return SMOKE if smoke else FULL


# ---- Environment of the child processes ----------------------------------------------------------------


def sanitized_xla_flags(value: str) -> str:
  """``XLA_FLAGS`` without the CPU-only ``--xla_cpu_experimental_*`` flags (they come and go between
  jaxlib versions, and an unknown flag aborts XLA at start-up)."""
  kept = [f for f in value.split() if not f.startswith('--xla_cpu_experimental_')]
  return ' '.join(kept)


def child_env(site_dir: str | None, extra: dict | None = None) -> dict:
  env = dict(os.environ)
  flags_value = sanitized_xla_flags(env.get('XLA_FLAGS', ''))
  if flags_value:
    env['XLA_FLAGS'] = flags_value
  else:
    env.pop('XLA_FLAGS', None)   # never blank-but-set: XLA then takes it for a file name
  path = [p for p in (site_dir if site_dir and os.path.isdir(site_dir) else None, ROOT,
                      env.get('PYTHONPATH')) if p]
  env['PYTHONPATH'] = os.pathsep.join(path)
  env['PYTHONUNBUFFERED'] = '1'
  env.update(extra or {})
  return env


def run_child(cmd: Sequence[str], timeout_s: float, env: dict, *, capture: bool = False,
              log: Callable[[str], Any] = print) -> dict:
  """Runs ``cmd`` in its own process group; past ``timeout_s`` sends SIGTERM, then SIGKILL after 5 s.

  Returns {'rc', 'timed_out', 'wall_s'} (+ 'output' when ``capture``).
  """
  log(f'$ {" ".join(cmd)}   (limit {timeout_s:.0f} s)')
  t = time.monotonic()
  proc = subprocess.Popen(list(cmd), cwd=ROOT, env=env, start_new_session=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None, text=capture or None)
  timed_out = False
  try:
    out, _ = proc.communicate(timeout=max(1.0, timeout_s))
  except subprocess.TimeoutExpired:
    timed_out = True
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
      try:
        os.killpg(proc.pid, sig)
      except ProcessLookupError:
        break
      try:
        out, _ = proc.communicate(timeout=wait)
        break
      except subprocess.TimeoutExpired:
        continue
    else:
      out = None
  result = {'rc': proc.returncode, 'timed_out': timed_out, 'wall_s': round(time.monotonic() - t, 2)}
  if capture:
    result['output'] = out or ''
  return result


# ---- Part 1: wheels --------------------------------------------------------------------------------------


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
  import importlib.metadata  # pylint: disable=g-import-not-at-top
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


def run_wheels_part(plan: Plan, budget_s: float, *, wheel_dir: str, site_dir: str, wheels_list: str,
                    log=print) -> tuple[str, dict]:
  """Installs what is missing into ``site_dir`` (children get it on PYTHONPATH), then checks imports."""
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
        f'`bash benchmarks/device_check.sh --fetch-wheels` and carry {os.path.relpath(wheel_dir, ROOT)})')
  if files:
    cmd = [sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile',
           '--no-cache-dir', '--upgrade', '--target', site_dir, *files]
    r = run_child(cmd, budget_s * 0.7, child_env(None), capture=True, log=log)
    result['pip'] = {'rc': r['rc'], 'timed_out': r['timed_out'], 'wall_s': r['wall_s'],
                     'output_tail': r['output'][-2000:]}
  code = ('import importlib, importlib.metadata, json\n'
          'out = {}\n'
          f'for module, dist in {list(CHECK_IMPORTS)!r}:\n'
          '  try:\n'
          '    importlib.import_module(module)\n'
          '    out[module] = "ok " + importlib.metadata.version(dist)\n'
          '  except Exception as e:\n'
          '    out[module] = f"{type(e).__name__}: {e}"[:300]\n'
          'print("IMPORTS " + json.dumps(out))\n')
  left = max(10.0, budget_s - (time.monotonic() - t0))
  r = run_child([sys.executable, '-c', code], left, child_env(site_dir), capture=True, log=log)
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


# ---- Part 2: model step and inference (+ the profile) ---------------------------------------------------


class _ConfigDictStub(dict):
  """Stands in for ``ml_collections.ConfigDict`` (attribute access, ``.get``) when the wheel is missing."""

  def __getattr__(self, key):
    try:
      return self[key]
    except KeyError:
      raise AttributeError(key) from None


def ensure_ml_collections() -> str:
  """Imports ``ml_collections``, or registers a stub module when it is missing; says which.

  ``alexnet_jax/models/__init__.py`` imports it at import time only for ``build``'s type annotation, and
  ``benchmarks/layouts.py`` wraps a dict in a ``ConfigDict``; the stub covers both.
  """
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top
    return f'ml_collections {getattr(ml_collections, "__version__", "")}'.strip()
  except ImportError:
    stub = types.ModuleType('ml_collections')
    stub.ConfigDict = _ConfigDictStub
    stub.__stub__ = True
    sys.modules['ml_collections'] = stub
    return 'stub (ml_collections is not installed)'


def _flops(cost) -> float | None:
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and cost.get('flops') else None


def _memory_stats(device) -> dict | None:
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (not every backend has them)
    return None
  if not stats:
    return None
  keys = ('bytes_in_use', 'peak_bytes_in_use', 'bytes_limit', 'largest_alloc_size', 'num_allocs')
  return {k: int(stats[k]) for k in keys if k in stats}


def config_key(model: str, dtype: str, batch: int, mode: str) -> str:
  return f'{model}/{dtype}/b{batch}/{mode}'


def run_model_part(plan: Plan, part_json: str, budget_s: float, *, trace_out: str | None,
                   scratch: str, profile: bool = True, log=print) -> dict:
  """Compiles, warms up and times ``plan.model_configs`` one after another, writing ``part_json`` after
  each; traces the profile configuration after its timing. Configurations already in ``part_json``
  (a rerun after a crash) are kept, not run again."""
  t0 = time.monotonic()
  deadline = t0 + budget_s - 8   # leave time to write the results
  ml_status = ensure_ml_collections()
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import models as models_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.parallel import compare  # pylint: disable=g-import-not-at-top
  from alexnet_jax.parallel import layouts as layouts_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.parallel import step as step_lib  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  report = _read_json(part_json) or {}
  results = report.setdefault('results', {})
  report.update({
      'machine': {**common.machine_info(probe=False), 'memory_stats_at_start': _memory_stats(device),
                  'jax_default_matmul_precision': str(getattr(jax.config, 'jax_default_matmul_precision',
                                                              None)),
                  'cuda_plugin': _plugin_versions()},
      'ml_collections': ml_status,
      'config': {'width': plan.width, 'image_size': plan.image_size, 'num_classes': plan.num_classes,
                 'warmup': plan.warmup, 'rounds': plan.rounds, 'steps_per_round': plan.steps_per_round,
                 'blocked_calls': plan.blocked_calls, 'layout': 'single',
                 'optimizer': 'sgd(0.01, momentum=0.9), state donated', 'dropout': 0.5,
                 'order': [config_key(*c) for c in plan.model_configs]},
      'peaks': {d: dict(zip(('flops_per_s', 'source'), common.peak(device, d)))
                for d in ('bfloat16', 'float32')},
  })
  report['peaks']['float32_simt'] = {
      'flops_per_s': common.table_peak(device.device_kind, device.platform, 'float32_simt'),
      'source': 'table, plain FP32 (precision=highest)'}
  report['skipped'] = {}
  common.write_json(part_json, report)
  log(f'model: {device.device_kind} ({device.platform}), ml_collections: {ml_status}')

  tx = optax.sgd(0.01, momentum=0.9)
  holders: dict = {}
  compile_max: dict[str, float] = {}
  timing_max: dict[str, float] = {}
  last_peak = (_memory_stats(device) or {}).get('peak_bytes_in_use')
  profile_done = not (profile and plan.profile)

  image_shape = (plan.image_size, plan.image_size, 3)

  def holder_for(model, dtype):
    """The steps of (model, dtype) and the train state they share with the model's other dtype.

    Parameters stay float32 whatever the compute dtype, so one state per network serves both dtypes
    (one initialization to compile instead of two, which takes 10-30 s on a small CPU).
    """
    if (model, dtype) not in holders:
      network = models_lib.REGISTRY[model](plan.num_classes, width=plan.width, dropout=0.5, lrn='paper',
                                           bias_init='paper', weight_init='paper',
                                           dtype=models_lib.DTYPES[dtype])
      layout = layouts_lib.resolve('single', network, num_devices=1)
      mesh = layout.make_mesh()
      shapes = step_lib.abstract_train_state(network, layout, mesh, tx, image_shape=image_shape)
      leaves, treedef = jax.tree.flatten(shapes)
      signature = (str(treedef), [(a.shape, str(a.dtype)) for a in leaves])
      shared = next((h for (m, _), h in holders.items() if m == model and h['signature'] == signature),
                    None)
      state = shared['state_box'] if shared else {
          'state': step_lib.create_train_state(network, layout, mesh, tx, seed=0,
                                               image_shape=image_shape)}
      holders[(model, dtype)] = {
          'state_box': state, 'signature': signature, 'mesh': mesh,
          'train': step_lib.make_train_step(network, layout, mesh, tx),
          'eval': step_lib.make_eval_step(network, layout, mesh)}
    return holders[(model, dtype)]

  for model, dtype, batch, mode in plan.model_configs:
    key = config_key(model, dtype, batch, mode)
    if key in results:
      continue
    # The longest compile and timing of this mode so far (an inference program compiles in about half
    # the time of a train step); unknown counts as nothing.
    known = compile_max.get(mode, 0.5 * max(compile_max.values(), default=0.0))
    estimate = 1.25 * known + 2.0 * timing_max.get(mode, 0.0)
    if time.monotonic() + estimate > deadline:
      report['skipped'][key] = f'time: about {estimate:.0f} s needed, {deadline - time.monotonic():.0f} left'
      log(f'{key}: skipped ({report["skipped"][key]})')
      continue
    try:
      h = holder_for(model, dtype)
      images, labels = compare.example_batch(batch, plan.image_size, 3, plan.num_classes)
      images, labels = jax.device_put(images), jax.device_put(labels)
      batch_arrays = {'image': images, 'label': labels}
      t = time.perf_counter()
      box = h['state_box']
      with jax.set_mesh(h['mesh']):
        if mode == 'train':
          lowered = h['train'].jitted.lower(box['state'], batch_arrays)
        else:
          lowered = h['eval'].jitted.lower(box['state'].params, images)
        lower_s = time.perf_counter() - t
        compiled = lowered.compile()
      compile_s = time.perf_counter() - t
      compile_max[mode] = max(compile_max.get(mode, 0.0), compile_s)

      if mode == 'train':
        def launch(h=h, box=box, compiled=compiled, batch_arrays=batch_arrays):
          with jax.set_mesh(h['mesh']):
            box['state'], metrics = compiled(box['state'], batch_arrays)
          return (box['state'], metrics)
      else:
        def launch(h=h, box=box, compiled=compiled, images=images):
          with jax.set_mesh(h['mesh']):
            return compiled(box['state'].params, images)

      def blocked(launch=launch):
        jax.block_until_ready(launch())

      t = time.perf_counter()
      for _ in range(plan.warmup):
        blocked()
      memory_now = _memory_stats(device)
      blocked_s = []
      for _ in range(plan.blocked_calls):
        s = time.perf_counter()
        blocked()
        blocked_s.append(time.perf_counter() - s)
      per_step = []
      for _ in range(plan.rounds):
        s = time.perf_counter()
        out = None
        for _ in range(plan.steps_per_round):
          out = launch()
        jax.block_until_ready(out)
        per_step.append((time.perf_counter() - s) / plan.steps_per_round)
      timing_max[mode] = max(timing_max.get(mode, 0.0), time.perf_counter() - t)
      if mode == 'train':
        loss = float(out[1]['loss'])
      timing = common.Timing(per_step)
      flops_compiled = common.cost_flops(compiled)
      try:   # the unoptimized program: convolutions are still convolutions, not library calls
        flops = _flops(lowered.cost_analysis())
        flops_source = 'lowered'
      except Exception:  # pylint: disable=broad-except
        flops = None
      if not flops:
        flops, flops_source = flops_compiled, 'compiled'
      achieved = flops / timing.median if flops else None
      peak = report['peaks'][dtype]['flops_per_s']
      simt = report['peaks']['float32_simt']['flops_per_s']
      program = common.memory(compiled)
      parts = [program[k] for k in ('argument_bytes', 'output_bytes', 'temp_bytes')]
      program['total_bytes'] = (None if None in parts else sum(parts) - (program['alias_bytes'] or 0))
      peak_now = (memory_now or {}).get('peak_bytes_in_use')
      results[key] = {
          'model': model, 'dtype': dtype, 'batch': batch, 'mode': mode,
          'lower_s': round(lower_s, 3), 'compile_s': round(compile_s, 3),
          'step': timing.to_json(), 'step_ms': 1e3 * timing.median,
          'blocked_call_ms': 1e3 * statistics.median(blocked_s) if blocked_s else None,
          'images_per_s': timing.rate(batch),
          'flops_per_image': flops / batch if flops else None, 'flops_source': flops_source,
          'flops_per_image_compiled': flops_compiled / batch if flops_compiled else None,
          'achieved_tflops': achieved / 1e12 if achieved else None,
          'mfu': achieved / peak if achieved and peak else None,
          'mfu_vs_plain_fp32': achieved / simt if achieved and simt and dtype == 'float32' else None,
          'program_memory': program,
          'device_memory_after_warmup': memory_now,
          # The process's peak only grows: it belongs to this configuration only when it rose here.
          'peak_bytes_in_use': peak_now,
          'peak_set_here': bool(peak_now and (last_peak is None or peak_now > last_peak)),
          **({'loss': loss} if mode == 'train' else {}),
      }
      last_peak = peak_now if peak_now else last_peak
      r = results[key]
      log(f'{key}: compile {compile_s:.1f} s, step {r["step_ms"]:.2f} ms, {r["images_per_s"]:,.0f} img/s'
          + (f', MFU {100 * r["mfu"]:.1f}%' if r['mfu'] else ''))
    except Exception as e:  # pylint: disable=broad-except  (one failing configuration is a result too)
      results[key] = {'model': model, 'dtype': dtype, 'batch': batch, 'mode': mode,
                      'error': f'{type(e).__name__}: {e}'[:2000]}
      log(f'{key}: FAILED\n{traceback.format_exc()}')
      compiled = None
    common.write_json(part_json, report)

    if (not profile_done and compiled is not None and mode == 'train'
        and (model, dtype, batch) == tuple(plan.profile)):
      profile_done = True
      if time.monotonic() + 20 > deadline:
        report['profile'] = {'key': key, 'skipped': 'no time left'}
      else:
        report['profile'] = capture_profile(blocked, key, plan.profile_steps, scratch, trace_out, log)
      common.write_json(part_json, report)
    del compiled
  report['wall_s'] = round(time.monotonic() - t0, 1)
  common.write_json(part_json, report)
  return report


def capture_profile(call: Callable[[], None], key: str, steps: int, scratch: str,
                    trace_out: str | None, log=print) -> dict:
  """Traces ``steps`` blocked calls of ``call`` and packs the session into ``trace_out`` (a .tar.gz)."""
  from alexnet_jax.training import profiling  # pylint: disable=g-import-not-at-top
  directory = os.path.join(scratch, 'trace')
  shutil.rmtree(directory, ignore_errors=True)
  t = time.perf_counter()
  profiler = profiling.StepProfiler(directory, 0, steps, create_perfetto_trace=True,
                                    name='train_step', log=log)
  with profiler:
    for i in range(steps + 1):
      profiler.step(i)
      if i < steps:
        call()
  capture_s = time.perf_counter() - t
  files = {os.path.relpath(p, directory): os.path.getsize(p) for p in profiler.files()}
  out: dict[str, Any] = {'key': key, 'steps': steps, 'capture_s': round(capture_s, 2),
                         'files': files, 'skipped': profiler.skipped, 'tarball': None}
  if profiler.session_dir and trace_out:
    for drop in ((), ('perfetto_trace.json.gz',), ('perfetto_trace.json.gz', '.trace.json.gz')):
      size = pack_trace(directory, trace_out, exclude=drop)
      if size <= MAX_RETURN_BYTES:
        out.update(tarball=os.path.basename(trace_out), tarball_bytes=size, left_out=list(drop))
        break
    else:
      os.remove(trace_out)
      out['tarball'] = None
      out['too_big'] = f'{size / 2**20:.1f} MiB even as xplane.pb alone; kept in {directory}'
  log(f'profile: {out}')
  return out


def pack_trace(directory: str, path: str, exclude: Sequence[str] = ()) -> int:
  """Writes ``directory`` as ``path`` (.tar.gz, top folder ``trace/``) without files ending in
  ``exclude``; returns its size in bytes."""
  tmp = path + '.tmp'
  with tarfile.open(tmp, 'w:gz') as tar:
    for dirpath, _, names in os.walk(directory):
      for name in sorted(names):
        if any(name.endswith(e) for e in exclude):
          continue
        full = os.path.join(dirpath, name)
        tar.add(full, arcname=os.path.join('trace', os.path.relpath(full, directory)))
  os.replace(tmp, path)
  return os.path.getsize(path)


def _plugin_versions() -> dict:
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  out = {}
  for dist in importlib.metadata.distributions():
    name = (dist.metadata['Name'] or '').lower()
    if name.startswith(('jax-cuda', 'jax_cuda', 'jaxlib', 'nvidia-cudnn')):
      out[name] = dist.version
  return out


# ---- Part 5: input pipeline into device memory ----------------------------------------------------------


def _make_images(root: str, n: int, workers: int) -> list[str]:
  """``n`` of input_pipeline's JPEGs in 4 class folders, drawn by ``workers`` processes (fork: no
  threads have started yet in this process)."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import multiprocessing  # pylint: disable=g-import-not-at-top
  from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top
  if os.path.isdir(root):
    return sorted(glob.glob(os.path.join(root, '*', '*.jpg')))
  tmp = root + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  shards = max(1, min(workers, n // 8 or 1))
  counts = [n // shards + (i < n % shards) for i in range(shards)]
  with concurrent.futures.ProcessPoolExecutor(shards, mp_context=multiprocessing.get_context('fork')) as ex:
    list(ex.map(input_pipeline.make_jpegs, [os.path.join(tmp, f'shard{i}') for i in range(shards)],
                counts, range(shards)))
  for i in range(shards):
    for path in glob.glob(os.path.join(tmp, f'shard{i}', '*', '*.jpg')):
      cls = os.path.basename(os.path.dirname(path))
      os.makedirs(os.path.join(root + '.new', cls), exist_ok=True)
      os.replace(path, os.path.join(root + '.new', cls, f's{i}_{os.path.basename(path)}'))
  os.replace(root + '.new', root)
  shutil.rmtree(tmp, ignore_errors=True)
  return sorted(glob.glob(os.path.join(root, '*', '*.jpg')))


def pipeline_to_device(dataset, data_config, threads: int, batch: int, window_s: float) -> dict:
  """Images/s of ``train_iterator`` with ``threads`` grain threads, each batch put on the device.

  grain reads whole batches per thread and caps the batches in flight at ``prefetch`` (its
  ``prefetch_buffer_size``), so ``prefetch`` is raised to ``threads`` here. Timing starts after the
  first wave of ``threads`` batches (they finish together and would count as free) and lasts
  ``window_s``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import data  # pylint: disable=g-import-not-at-top
  data_config.num_threads = threads
  data_config.prefetch = max(int(data_config.prefetch), threads)
  epochs = 10_000
  it = data.train_iterator(dataset, data_config, global_batch_size=batch, seed=0, num_epochs=epochs)

  def put(b):
    return jax.block_until_ready((jax.device_put(b['image']), jax.device_put(b['label'])))

  t_first = time.perf_counter()
  for _ in range(max(1, threads)):
    put(next(it))
  first_wave_s = time.perf_counter() - t_first
  n, t = 0, time.perf_counter()
  while time.perf_counter() - t < window_s:
    b = next(it)
    put(b)
    n += b['image'].shape[0]
  elapsed = time.perf_counter() - t
  close = getattr(it, 'close', None)
  if close:
    close()
  return {'images_per_s': n / elapsed, 'images': n, 'seconds': round(elapsed, 3),
          'first_wave_s': round(first_wave_s, 3), 'threads': threads, 'prefetch': data_config.prefetch}


def run_input_part(plan: Plan, part_json: str, budget_s: float, *, scratch: str, malloc: str,
                   log=print) -> dict:
  """The folder and prepared pipelines into device memory at ``plan.input['threads']`` threads."""
  t0 = time.monotonic()
  deadline = t0 + budget_s - 5
  p = plan.input
  cores = _cores()
  threads = p['threads'] if malloc == 'retained' else p['glibc_threads']
  threads = sorted({min(t, cores) for t in threads})
  root = os.path.join(scratch, 'input')
  os.makedirs(root, exist_ok=True)
  folder = os.path.join(root, 'jpegs')
  t = time.perf_counter()
  paths = _make_images(folder, p['num_images'], cores)
  generate_s = time.perf_counter() - t
  from alexnet_jax import configs  # pylint: disable=g-import-not-at-top
  from alexnet_jax import data  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import host_memory  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import preparation  # pylint: disable=g-import-not-at-top
  from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top
  prepared = os.path.join(root, 'prepared_jpg')
  t = time.perf_counter()
  if not os.path.isdir(prepared):
    preparation.prepare_dataset(preparation.PrepareOptions(
        source=folder, output=prepared, val_percent=0.0, encoding='jpg', progress_interval_s=1e9))
  prepare_s = time.perf_counter() - t
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]

  report: dict[str, Any] = {
      'malloc': malloc, 'host_memory_retained': host_memory.is_retaining(), 'cores': cores,
      'device': f'{device.device_kind} ({device.platform})', 'num_images': len(paths),
      'mean_jpeg_kib': round(sum(os.path.getsize(x) for x in paths) / len(paths) / 1024, 1),
      'batch': p['batch'], 'window_s': p['window_s'], 'generate_s': round(generate_s, 2),
      'prepare_s': round(prepare_s, 2), 'results': {}}
  # The host's bare decode rate on all cores (a thread pool of Pillow decodes) and the copy rate of one
  # batch into device memory: the two ceilings of the pipeline. The batch is what the pipeline hands over
  # (augment_on='device', the default): uint8 images at the stored 256x256, cropped on the device.
  report['decode_all_cores_images_per_s'] = input_pipeline.bench_decode(paths, cores)
  host = np.zeros((p['batch'], 256, 256, 3), np.uint8)
  jax.block_until_ready(jax.device_put(host))
  t = time.perf_counter()
  for _ in range(3):
    jax.block_until_ready(jax.device_put(host))
  per = (time.perf_counter() - t) / 3
  report['host_to_device'] = {'batch_bytes': host.nbytes, 'gb_per_s': host.nbytes / per / 1e9,
                              'images_per_s': p['batch'] / per}
  common.write_json(part_json, report)

  sources = {}
  folder_cfg = configs.default_config().data
  folder_cfg.source, folder_cfg.val_percent, folder_cfg.mean_max_images = folder, 0.0, 64
  sources['folder'] = (data.load_dataset(folder_cfg, seed=0), folder_cfg)
  prepared_cfg = configs.default_config().data
  prepared_cfg.source = prepared
  sources['prepared'] = (data.load_dataset(prepared_cfg, seed=0), prepared_cfg)
  for kind, (dataset, cfg) in sources.items():
    for th in threads:
      key = f'{kind}/{th}'
      if time.monotonic() + 2 * p['window_s'] + 2 > deadline:
        report['results'][key] = {'skipped': 'no time left'}
        continue
      report['results'][key] = pipeline_to_device(dataset, cfg, th, p['batch'], p['window_s'])
      log(f'input ({malloc}) {key}: {report["results"][key]["images_per_s"]:,.0f} img/s into '
          f'{device.platform} memory')
      common.write_json(part_json, report)
  report['wall_s'] = round(time.monotonic() - t0, 1)
  common.write_json(part_json, report)
  return report


# ---- Part 6: layouts -------------------------------------------------------------------------------------


def run_layouts_part(plan: Plan, part_json: str, log=print) -> dict:
  """``benchmarks.layouts`` with ``single`` only: one GPU cannot hold a two-device mesh."""
  ml_status = ensure_ml_collections()
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import layouts as layouts_bench  # pylint: disable=g-import-not-at-top
  cfg = plan.layouts
  report = layouts_bench.benchmark(['single'], devices=1, model=cfg['model'], width=cfg['width'],
                                   batch=cfg['batch'], image_size=cfg['image_size'],
                                   num_classes=cfg['num_classes'], dtype=cfg['dtype'],
                                   steps=cfg['steps'], warmup=cfg['warmup'], xla='env', log=log)
  report['ml_collections'] = ml_status
  report['not_run'] = {name: f'needs {n} devices, {jax.device_count()} here'
                       for name, n in (('model', 2), ('data', 2), ('hybrid', 4), ('weird_trick', 2),
                                       ('auto', 2)) if jax.device_count() < n}
  log(layouts_bench.format_report(report))
  common.write_json(part_json, report)
  return report


# ---- Parts 3 and 4, run by the parent: the XLA flag probe and the real trainer ---------------------------

PROBE_CODE = '''
import os
from alexnet_jax.runtime import devices
devices.add_cpu_xla_flags()
print('XLA_FLAGS=' + os.environ.get('XLA_FLAGS', ''), flush=True)
import jax, jax.numpy as jnp
d = jax.devices()
print('DEVICES', d[0].platform, d[0].device_kind, len(d), flush=True)
print('SUM', float(jnp.arange(4.0).sum()), flush=True)
'''

# The trainer with alexnet_jax.runtime.devices' CPU-only XLA flags removed, for a jaxlib that does not know them.
TRAIN_WITHOUT_CPU_FLAGS = ('from alexnet_jax import devices; devices.CPU_XLA_FLAGS = (); '
                           'from alexnet_jax import train; train.run()')


def run_xla_flags_part(budget_s: float, site_dir: str, log=print) -> tuple[str, dict]:
  """Starts JAX as the entry points do (``devices.add_cpu_xla_flags()``) and reports whether it lives."""
  env = child_env(site_dir, {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'})
  env.pop('XLA_FLAGS', None)
  r = run_child([sys.executable, '-c', PROBE_CODE], budget_s, env, capture=True, log=log)
  out = r['output']
  flags_line = next((l for l in out.splitlines() if l.startswith('XLA_FLAGS=')), '')
  devices_line = next((l for l in out.splitlines() if l.startswith('DEVICES ')), '')
  ok = r['rc'] == 0 and 'SUM 6.0' in out
  result = {'starts_with_cpu_flags': ok, 'rc': r['rc'], 'timed_out': r['timed_out'],
            'wall_s': r['wall_s'], 'xla_flags': flags_line[len('XLA_FLAGS='):],
            'devices': devices_line[len('DEVICES '):],
            'unknown_flag_error': bool(re.search(r'[Uu]nknown flag', out)),
            'output_tail': out[-1500:]}
  log(f'xla_flags: JAX {"starts" if ok else "does NOT start"} with XLA_FLAGS={result["xla_flags"]!r}')
  return ('ok' if ok else 'failed'), result


def read_metrics_file(path: str) -> list[dict]:
  records = []
  try:
    with open(path, encoding='utf-8') as f:
      for line in f:
        line = line.strip()
        if line:
          try:
            records.append(json.loads(line))
          except json.JSONDecodeError:
            pass
  except FileNotFoundError:
    pass
  return records


def run_train_part(plan: Plan, budget_s: float, *, scratch: str, out: str, site_dir: str,
                   cpu_flags_ok: bool | None, log=print) -> tuple[str, dict]:
  """``python -m alexnet_jax.train`` on the demo config; images/s from its ``metrics.jsonl``."""
  workdir = os.path.join(scratch, 'demo')
  shutil.rmtree(workdir, ignore_errors=True)   # a fresh run, not a resume of an earlier call's
  cores = _cores()
  args = [*plan.train_args, f'--workdir={workdir}', f'--config.data.num_threads={cores}',
          f'--config.data.prefetch={max(8, cores)}']
  patched = cpu_flags_ok is False
  launcher = ['-c', TRAIN_WITHOUT_CPU_FLAGS] if patched else ['-m', 'alexnet_jax.train']
  r = run_child([sys.executable, *launcher, *args], budget_s, child_env(site_dir), log=log)
  records = read_metrics_file(os.path.join(workdir, 'metrics.jsonl'))
  if records:
    shutil.copyfile(os.path.join(workdir, 'metrics.jsonl'), os.path.join(out, DEMO_METRICS_NAME))
  train = [x for x in records if x.get('split') == 'train']
  val = [x for x in records if x.get('split') == 'val']
  rates = [x['images_per_sec'] for x in train if x.get('images_per_sec')]
  config = _read_json(os.path.join(workdir, 'config.json')) or {}
  result = {
      'command': ' '.join(['python', *launcher, *args]),
      'cpu_xla_flags_removed': patched, 'rc': r['rc'], 'timed_out': r['timed_out'],
      'wall_s': r['wall_s'], 'steps': train[-1]['step'] if train else 0,
      'epochs': train[-1]['epoch'] if train else 0,
      # The first window includes compilation; the steady rate is the median of the others.
      'images_per_s_first_window': rates[0] if rates else None,
      'images_per_s_median_after_first': statistics.median(rates[1:]) if len(rates) > 1 else None,
      'images_per_s_last': rates[-1] if rates else None,
      'last_train': train[-1] if train else None, 'val': val[-1] if val else None,
      'batch_size': config.get('batch_size'), 'model': (config.get('model') or {}).get('name'),
      'width': (config.get('model') or {}).get('width'),
      'metrics_file': DEMO_METRICS_NAME if records else None,
  }
  ok = r['rc'] == 0 and bool(train)
  return ('ok' if ok else ('timeout' if r['timed_out'] else 'failed')), result


# ---- The report ------------------------------------------------------------------------------------------


def _read_json(path: str) -> dict | None:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _f(v, digits: int = 1, scale: float = 1.0) -> str:
  if v is None:
    return '-'
  if isinstance(v, str):
    return v
  v = v * scale
  if abs(v) >= 1000:
    return f'{v:,.0f}'
  return f'{v:.{digits}f}'


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return lines


def tower_ratios(results: dict) -> dict[str, float]:
  """alexnet's FLOP rate over alexnet_owt's, per (dtype, batch, mode) where both ran."""
  out = {}
  for key, r in results.items():
    if r.get('model') != 'alexnet' or 'error' in r:
      continue
    o = results.get(key.replace('alexnet/', 'alexnet_owt/', 1))
    if o and 'error' not in o and r.get('achieved_tflops') and o.get('achieved_tflops'):
      out[key.split('/', 1)[1]] = r['achieved_tflops'] / o['achieved_tflops']
  return out


def format_markdown(report: dict) -> str:
  """The summary (``device_check.md``): one section per part, whatever state each part is in."""
  parts = report.get('parts', {})
  machine = report.get('machine') or {}
  lines = [f'# Device check ({report.get("plan", {}).get("name", "?")} plan), {report.get("started", "")}',
           '']
  kind = machine.get('device_kind', '?')
  lines.append(f'**Machine:** {kind} ({machine.get("platform", "?")}) x{machine.get("device_count", "?")}; '
               f'jax {machine.get("jax", "?")}, jaxlib {machine.get("jaxlib", "?")}, flax '
               f'{machine.get("flax", "?")}; Python {machine.get("python", report.get("python", "?"))}; '
               f'{report.get("cores", "?")} host cores. {report.get("nvidia_smi") or ""}'.rstrip())
  lines.append(f'**Wall time:** {_f(report.get("wall_s"))} s of a {report.get("budget_s")} s budget.')
  lines.append('')
  lines += _table(['part', 'status', 'wall s', 'limit s'],
                  [[name, parts.get(name, {}).get('status', 'not run yet'),
                    _f(parts.get(name, {}).get('wall_s')), _f(parts.get(name, {}).get('limit_s'), 0)]
                   for name in PARTS])
  lines.append('')
  for title, fn, name in (('Model step and inference', _md_model, 'model'),
                          ('Profiler trace of the train step', _md_profile, 'model'),
                          ('XLA flags of alexnet_jax/devices.py', _md_xla_flags, 'xla_flags'),
                          ('End-to-end demo train', _md_train, 'train'),
                          ('Input pipeline into device memory', _md_input, 'input'),
                          ('Layouts', _md_layouts, 'layouts'),
                          ('Wheels', _md_wheels, 'wheels')):
    lines.append(f'## {title}')
    lines.append('')
    part = parts.get(name) or {}
    result = part.get('result')
    if not result:
      lines.append(f'Not measured: {part.get("status", "not run yet")}.'
                   + (f' {part["error"]}' if part.get('error') else ''))
    else:
      try:
        lines += fn(result, part)
      except Exception as e:  # pylint: disable=broad-except  (a summary must always be written)
        lines.append(f'(could not summarize: {type(e).__name__}: {e})')
    lines.append('')
  return '\n'.join(lines)


def _md_model(result: dict, part: dict) -> list[str]:
  cfg = result.get('config', {})
  peaks = result.get('peaks', {})
  lines = [f'{cfg.get("width")} width, {cfg.get("image_size")}px, {cfg.get("num_classes")} classes, layout '
           f'single, SGD momentum, state donated. Step time: median of {cfg.get("rounds")} rounds of '
           f'{cfg.get("steps_per_round")} back-to-back calls after {cfg.get("warmup")} warm-up calls; '
           f'"blocked" = one call waited for on its own (what the trainer does each step). MFU = XLA\'s '
           f'FLOPs of the unoptimized program / step time / table peak: '
           + ', '.join(f'{d} {_f((p or {}).get("flops_per_s"), 1, 1e-12)} TFLOP/s'
                       for d, p in peaks.items()) + ' (fp32 runs as TF32 at JAX\'s default precision; '
           f'"MFU fp32" divides by the plain-FP32 rate). Program MiB = XLA\'s argument + output + temp - '
           f'alias; peak MiB = the process\'s `peak_bytes_in_use` after warm-up (* = set by this row; '
           f'it never goes down). ml_collections: {result.get("ml_collections")}.', '']
  rows = []
  for key, r in result.get('results', {}).items():
    if 'error' in r:
      rows.append([r['model'], r['dtype'], r['batch'], r['mode'], 'ERROR', r['error'][:80]] + [''] * 7)
      continue
    mem = r.get('program_memory') or {}
    peak = r.get('peak_bytes_in_use')
    rows.append([r['model'], r['dtype'], r['batch'], r['mode'], _f(r['images_per_s'], 0),
                 _f(r['step_ms'], 2), _f(r.get('blocked_call_ms'), 2), _f(r['compile_s']),
                 _f(r.get('flops_per_image'), 2, 1e-9), _f(r.get('achieved_tflops')),
                 _f(r.get('mfu'), 1, 100), _f(r.get('mfu_vs_plain_fp32'), 0, 100),
                 _f(mem.get('total_bytes'), 0, 2**-20),
                 (_f(peak, 0, 2**-20) + ('*' if r.get('peak_set_here') else '')) if peak else '-'])
  lines += _table(['model', 'dtype', 'batch', 'mode', 'img/s', 'step ms', 'blocked ms', 'compile s',
                   'GFLOP/img', 'TFLOP/s', 'MFU %', 'MFU fp32 %', 'program MiB', 'peak MiB'], rows)
  ratios = tower_ratios(result.get('results', {}))
  if ratios:
    lines += ['', 'alexnet FLOP rate / alexnet_owt FLOP rate (the towers\' cost; 1.0 = none): ' +
              ', '.join(f'{k} {v:.2f}' for k, v in ratios.items())]
  owt = [r['images_per_s'] for r in result.get('results', {}).values()
         if r.get('model') == 'alexnet_owt' and r.get('dtype') == 'bfloat16' and r.get('mode') == 'train'
         and r.get('batch', 0) >= 256 and 'error' not in r]
  if owt and result.get('machine', {}).get('platform') == 'gpu':
    best = max(owt)
    lo, hi = EXPECTED_OWT_BF16_TRAIN
    verdict = ('something is wrong (PERF_NOTES: below ~15k)' if best < SOMETHING_WRONG_BELOW else
               'within PERF_NOTES\' expectation' if lo <= best <= hi else
               'above PERF_NOTES\' expectation' if best > hi else 'below PERF_NOTES\' 20-30% expectation')
    lines += ['', f'alexnet_owt bf16 train, best of batch >= 256: {best:,.0f} img/s; PERF_NOTES expects '
              f'{lo:,}-{hi:,} (20-30% of the bf16 peak): {verdict}.']
  if result.get('skipped'):
    lines += ['', 'Skipped for time: ' + ', '.join(result['skipped'])]
  done = set(result.get('results', {})) | set(result.get('skipped') or {})
  not_reached = [k for k in cfg.get('order', []) if k not in done]
  if not_reached:
    lines += ['', 'Not reached (the part was stopped): ' + ', '.join(not_reached)]
  return lines


def _md_profile(result: dict, part: dict) -> list[str]:
  p = result.get('profile')
  if not p:
    return ['No trace taken' + (' (the model part did not reach the profiled configuration).'
                                if part.get('status') != 'ok' else '.')]
  if p.get('skipped') and not p.get('files'):
    return [f'No trace: {p["skipped"]}.']
  lines = [f'{p.get("steps")} train steps of `{p.get("key")}` traced in {p.get("capture_s")} s '
           '(`alexnet_jax.training.profiling.StepProfiler`).']
  if p.get('tarball'):
    lines.append(f'Returned as `{p["tarball"]}` ({_f(p.get("tarball_bytes"), 1, 2**-20)} MiB'
                 + (f', without {", ".join(p["left_out"])}' if p.get('left_out') else '') +
                 '): `tar xzf` it, then `tensorboard --logdir=trace` (Profile tab, needs '
                 'tensorboard-plugin-profile) or open `trace/plugins/profile/*/*.trace.json.gz` in '
                 'https://ui.perfetto.dev.')
  elif p.get('too_big'):
    lines.append(f'Too big to return: {p["too_big"]}.')
  lines += [''] + _table(['file', 'MiB'],
                         [[k, _f(v, 2, 2**-20)] for k, v in (p.get('files') or {}).items()])
  return lines


def _md_xla_flags(result: dict, part: dict) -> list[str]:
  ok = result.get('starts_with_cpu_flags')
  if result.get('timed_out'):
    return [f'The probe (JAX started as the entry points start it) did not finish in {result.get("wall_s")} '
            's; the demo train then ran with `alexnet_jax.runtime.devices.CPU_XLA_FLAGS` emptied, to be safe.']
  if ok and not result.get('xla_flags'):
    return ['`alexnet_jax.runtime.devices.add_cpu_xla_flags()` set no XLA flag in this jaxlib (it adds a CPU flag '
            f'only where it finds it defined), and JAX starts; devices: {result.get("devices")}.']
  lines = [f'`XLA_FLAGS={result.get("xla_flags")}` (what `alexnet_jax.runtime.devices.add_cpu_xla_flags()` sets): '
           + ('JAX starts and computes with it' if ok else
              '**JAX does not start with it** (rc ' + str(result.get('rc')) + (
                  ', "unknown flag"' if result.get('unknown_flag_error') else '') + ')') +
           (f'; devices: {result.get("devices")}' if result.get('devices') else '') + '.']
  if not ok:
    lines += ['', '```', (result.get('output_tail') or '')[-800:], '```']
  return lines


def _md_train(result: dict, part: dict) -> list[str]:
  val = result.get('val') or {}
  lines = [f'`{result.get("command")}`' + (' (CPU-only XLA flags removed first: this jaxlib does not '
                                           'start with them)' if result.get('cpu_xla_flags_removed') else ''),
           '',
           f'{result.get("model")} width {result.get("width")}, batch {result.get("batch_size")}: '
           f'{result.get("steps")} steps ({_f(result.get("epochs"), 2)} epochs) in '
           f'{_f(result.get("wall_s"))} s '
           f'of wall time (data drawing, mean pass and compilation included); rc {result.get("rc")}'
           + (' (stopped at the time limit)' if result.get('timed_out') else '') + '.',
           f'Images/s from metrics.jsonl: first window {_f(result.get("images_per_s_first_window"), 0)} '
           f'(includes compilation), median of the others '
           f'{_f(result.get("images_per_s_median_after_first"), 0)}, last '
           f'{_f(result.get("images_per_s_last"), 0)}.']
  if val:
    lines.append(f'Validation at the end: top-1 {_f(val.get("top1"), 2, 100)}%, '
                 f'loss {_f(val.get("loss"), 3)}.')
  if result.get('metrics_file'):
    lines.append(f'The whole log is returned as `{result["metrics_file"]}`.')
  return lines


def _md_input(result: dict, part: dict) -> list[str]:
  lines = []
  for malloc, r in result.items():
    if not isinstance(r, dict) or 'results' not in r:
      lines.append(f'{malloc}: {r}')
      continue
    h2d = r.get('host_to_device') or {}
    lines += [f'**malloc {malloc}** ({r.get("cores")} cores, {r.get("num_images")} JPEGs of '
              f'{r.get("mean_jpeg_kib")} KiB, batch {r.get("batch")}, {r.get("window_s")} s windows, '
              f'into {r.get("device")} memory). Ceilings: bare Pillow decode on all cores '
              f'{_f(r.get("decode_all_cores_images_per_s"), 0)} img/s; one uint8 256x256 batch to the device '
              f'{_f(h2d.get("gb_per_s"), 1)} GB/s = {_f(h2d.get("images_per_s"), 0)} img/s.', '']
    rows = [[k.split('/')[0], k.split('/')[1], _f(v.get('images_per_s'), 0), v.get('prefetch', '-'),
             _f(v.get('first_wave_s'), 2), v.get('skipped', '')] for k, v in r['results'].items()]
    lines += _table(['pipeline', 'threads', 'img/s', 'prefetch', 'first wave s', 'note'], rows)
    lines.append('')
  lines.append('`folder` = `train_iterator` on the JPEG folder (DIGITS squash to 256, random 224 crop, '
               'mirror, PCA lighting, mean); `prepared` = the same on `python -m alexnet_jax.prepare` '
               'records (256x256 jpg). grain caps the batches in flight at `data.prefetch` (8 by default), '
               'so prefetch is raised to the thread count here.')
  return lines


def _md_layouts(result: dict, part: dict) -> list[str]:
  cfg = result.get('config', {})
  lines = [f'{cfg.get("model")} width {cfg.get("width")}, batch {cfg.get("batch")}, '
           f'{cfg.get("image_size")}px, '
           f'{cfg.get("dtype")} (`benchmarks.layouts`, {cfg.get("steps")} timed steps).', '']
  rows = []
  for name, r in result.get('layouts', {}).items():
    mem = r.get('memory_per_device') or {}
    rows.append([name, _f(r.get('compile_s')), _f(1e3 * r['step']['median_s'], 2), _f(r['images_per_s'], 0),
                 _f(r.get('mfu'), 1, 100), _f(mem.get('temp_bytes'), 0, 2**-20),
                 _f(r.get('first_step_loss'), 4)])
  lines += _table(['layout', 'compile s', 'step ms', 'img/s', 'MFU %', 'temp MiB', 'first loss'], rows)
  if result.get('not_run'):
    lines += ['', 'Not run here: ' + ', '.join(f'`{k}` ({v})' for k, v in result['not_run'].items()) +
              '. The two-tower `model` layout puts one tower on each of two devices, so one GPU runs '
              '`single` only (both towers on it, vmapped).']
  return lines


def _md_wheels(result: dict, part: dict) -> list[str]:
  lines = [f'{result.get("listed")} listed in benchmarks/device_wheels.txt; already installed: '
           f'{len(result.get("already_installed", {}))}; installed now: '
           f'{", ".join(result.get("to_install") or []) or "none"}'
           + (f'; **no wheel carried for** {", ".join(result["no_wheel_carried"])}'
              if result.get('no_wheel_carried') else '') + '.']
  if result.get('pip'):
    lines.append(f'pip: rc {result["pip"]["rc"]} in {result["pip"]["wall_s"]} s.')
  lines += [''] + _table(['module', 'import'], [[k, v] for k, v in (result.get('imports') or {}).items()])
  return lines


def write_outputs(report: dict, out: str) -> None:
  common.write_json(os.path.join(out, JSON_NAME), report)
  text = format_markdown(report)
  tmp = os.path.join(out, MD_NAME + '.tmp')
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text + '\n')
  os.replace(tmp, os.path.join(out, MD_NAME))


def _nvidia_smi() -> str | None:
  if not shutil.which('nvidia-smi'):
    return None
  try:
    r = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,clocks.max.sm',
                        '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
    return f'nvidia-smi: {r.stdout.strip()}' if r.returncode == 0 else None
  except (OSError, subprocess.TimeoutExpired):
    return None


# ---- The parent: runs the parts in order within the budget ----------------------------------------------


def orchestrate(plan: Plan, *, out: str, scratch: str, parts: Sequence[str], wheel_dir: str,
                wheels_list: str, budget_s: float | None = None, log=print) -> dict:
  """Runs ``parts`` in ``PARTS`` order, each as a child process within its share of the budget."""
  t0 = time.monotonic()
  budget_s = budget_s or plan.total_budget_s
  deadline = t0 + budget_s
  os.makedirs(out, exist_ok=True)
  os.makedirs(scratch, exist_ok=True)
  site_dir = os.path.join(scratch, 'site')
  report: dict[str, Any] = {
      'benchmark': 'device_check', 'plan': plan.to_json(), 'smoke': plan.name == 'smoke',
      'started': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      'budget_s': budget_s, 'python': platform.python_version(), 'cores': _cores(),
      'nvidia_smi': _nvidia_smi(), 'parts': {}, 'machine': {}}
  for name in PARTS:
    report['parts'][name] = {'status': 'pending' if name in parts else 'not requested'}
  write_outputs(report, out)
  planned = 0.0
  cpu_flags_ok = None
  for name in PARTS:
    if name not in parts:
      continue
    planned += plan.budgets[name]
    now = time.monotonic()
    # A part may use its own budget plus whatever the earlier parts left unused, within the deadline.
    limit = min(planned - (now - t0), deadline - now - 2)
    entry = report['parts'][name]
    if limit < 8:
      entry.update(status='skipped: no time left', limit_s=round(max(limit, 0), 1))
      write_outputs(report, out)
      continue
    entry.update(status='running', limit_s=round(limit, 1))
    write_outputs(report, out)
    log(f'==== {name} (limit {limit:.0f} s)')
    start = time.monotonic()
    try:
      if name == 'wheels':
        status, result = run_wheels_part(plan, limit, wheel_dir=wheel_dir, site_dir=site_dir,
                                         wheels_list=wheels_list, log=log)
      elif name == 'xla_flags':
        status, result = run_xla_flags_part(limit, site_dir, log=log)
        cpu_flags_ok = result['starts_with_cpu_flags']
      elif name == 'train':
        status, result = run_train_part(plan, limit, scratch=scratch, out=out, site_dir=site_dir,
                                        cpu_flags_ok=cpu_flags_ok, log=log)
      elif name == 'input':
        status, result = _run_input_children(plan, limit, scratch=scratch, site_dir=site_dir, log=log)
      else:
        status, result = _run_part_child(name, plan, limit, scratch=scratch, out=out, site_dir=site_dir,
                                         log=log)
        if name == 'model' and result:
          report['machine'] = result.get('machine', {})
    except Exception as e:  # pylint: disable=broad-except  (the next parts still run)
      status, result = 'error', None
      entry['error'] = f'{type(e).__name__}: {e}'
      log(traceback.format_exc())
    entry.update(status=status, wall_s=round(time.monotonic() - start, 1), result=result)
    report['wall_s'] = round(time.monotonic() - t0, 1)
    write_outputs(report, out)
    log(f'==== {name}: {status} in {entry["wall_s"]} s')
  report['wall_s'] = round(time.monotonic() - t0, 1)
  write_outputs(report, out)
  return report


def _part_cmd(name: str, plan: Plan, limit: float, part_json: str, scratch: str, extra=()) -> list[str]:
  return [sys.executable, '-m', 'benchmarks.device_check', f'--part={name}', f'--part_json={part_json}',
          f'--part_budget_s={limit:.0f}', f'--scratch={scratch}', f'--smoke={plan.name == "smoke"}',
          *extra]


def _run_part_child(name: str, plan: Plan, limit: float, *, scratch: str, out: str, site_dir: str,
                    log=print) -> tuple[str, dict | None]:
  part_json = os.path.join(scratch, f'{name}.json')
  if os.path.exists(part_json):
    os.remove(part_json)
  extra = [f'--trace_out={os.path.join(out, TRACE_NAME)}'] if name == 'model' else []
  t = time.monotonic()
  r = run_child(_part_cmd(name, plan, limit, part_json, scratch, extra), limit, child_env(site_dir), log=log)
  left = limit - (time.monotonic() - t)
  if name == 'model' and r['rc'] != 0 and not r['timed_out'] and left > 30:
    # A crash (the profiler, say): once more, without the profile, keeping what was measured.
    log(f'model part exited with {r["rc"]}; running the remaining configurations without the profile')
    r2 = run_child(_part_cmd(name, plan, left, part_json, scratch, [*extra, '--noprofile']), left,
                   child_env(site_dir), log=log)
    r = {**r2, 'first_rc': r['rc']}
  result = _read_json(part_json)
  if result is not None:
    result['child'] = r
  status = 'ok' if r['rc'] == 0 else ('timeout (partial)' if r['timed_out'] else f'failed (rc {r["rc"]})')
  if name == 'model' and result and result.get('skipped'):
    status += f', {len(result["skipped"])} configs skipped for time'
  return status, result


def _run_input_children(plan: Plan, limit: float, *, scratch: str, site_dir: str,
                        log=print) -> tuple[str, dict]:
  """The pipeline as the trainer runs it (malloc settings retained), then with glibc's defaults."""
  results, statuses = {}, []
  t0 = time.monotonic()
  for malloc, share in (('retained', 0.65), ('glibc_default', 1.0)):
    left = limit - (time.monotonic() - t0)
    sub_limit = min(left, limit * share) if malloc == 'retained' else left
    if sub_limit < 8:
      results[malloc] = 'skipped: no time left'
      statuses.append('skipped')
      continue
    part_json = os.path.join(scratch, f'input_{malloc}.json')
    if os.path.exists(part_json):
      os.remove(part_json)
    extra = [f'--input_malloc={malloc}'] + (['--noretain_host_memory'] if malloc != 'retained' else [])
    r = run_child(_part_cmd('input', plan, sub_limit, part_json, scratch, extra), sub_limit,
                  child_env(site_dir), log=log)
    results[malloc] = _read_json(part_json) or f'no result (rc {r["rc"]})'
    statuses.append('ok' if r['rc'] == 0 else ('timeout' if r['timed_out'] else f'rc {r["rc"]}'))
  status = 'ok' if all(s == 'ok' for s in statuses) else 'partial: ' + ', '.join(statuses)
  return status, results


# ---- Command line ----------------------------------------------------------------------------------------


def define_flags() -> None:
  """The command-line flags (defined only when run as a command; names differ from input_pipeline's)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('out', os.environ.get('OUT') or os.path.join(ROOT, 'benchmarks', 'out', 'device_check'),
                      'Where the JSON, the markdown summary, the trace and the demo metrics go ($OUT).')
  flags.DEFINE_string('scratch', DEFAULT_SCRATCH, 'Scratch folder (datasets, the demo workdir).')
  flags.DEFINE_bool('smoke', False, 'Tiny sizes on any machine (CPU): checks that the script works.')
  flags.DEFINE_list('parts', list(PARTS), f'Parts to run, of {",".join(PARTS)} (always in that order).')
  flags.DEFINE_float('budget_s', None, 'Total time limit in seconds (default: the plan\'s).')
  flags.DEFINE_string('wheel_dir', WHEEL_DIR, 'The carried wheels.')
  flags.DEFINE_string('wheels_list', WHEELS_LIST, 'The pinned list of wheels to install where missing.')
  flags.DEFINE_bool('fetch_wheels', False, 'Download the wheels into --wheel_dir (here, not on the device).')
  # Internal: one part in this process (what the parent starts).
  flags.DEFINE_enum('part', None, ['model', 'input', 'layouts'], 'Internal: run one part here.')
  flags.DEFINE_string('part_json', None, 'Internal: the part\'s JSON.')
  flags.DEFINE_float('part_budget_s', 60.0, 'Internal: the part\'s time limit.')
  flags.DEFINE_string('trace_out', None, 'Internal: where the model part writes the trace tarball.')
  flags.DEFINE_bool('profile', True, 'Internal: the model part traces the profile configuration.')
  flags.DEFINE_enum('input_malloc', 'retained', ['retained', 'glibc_default'], 'Internal: input part.')


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  plan = plan_for(f.smoke)
  if f.fetch_wheels:
    sys.exit(fetch_wheels(f.wheel_dir, f.wheels_list))
  if f.part == 'model':
    run_model_part(plan, f.part_json, f.part_budget_s, trace_out=f.trace_out, scratch=f.scratch,
                   profile=f.profile)
  elif f.part == 'input':
    run_input_part(plan, f.part_json, f.part_budget_s, scratch=f.scratch, malloc=f.input_malloc)
  elif f.part == 'layouts':
    run_layouts_part(plan, f.part_json)
  else:
    unknown = [p for p in f.parts if p not in PARTS]
    if unknown:
      raise ValueError(f'--parts: unknown {unknown}; choose from {",".join(PARTS)}')
    report = orchestrate(plan, out=f.out, scratch=f.scratch, parts=f.parts, wheel_dir=f.wheel_dir,
                         wheels_list=f.wheels_list, budget_s=f.budget_s)
    print(f'wrote {os.path.join(f.out, JSON_NAME)} and {os.path.join(f.out, MD_NAME)} '
          f'in {report["wall_s"]} s')


if __name__ == '__main__':
  from alexnet_jax.runtime import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
