"""What the model, input and layouts parts of the device check measure, each in a child process.

Each part is a ``python -m benchmarks.device_check --part=NAME`` child (``benchmarks.device_runner``
starts it within its time limit) that writes its results to ``--part_json`` after every step, so that
a part stopped at its limit still leaves what it measured. The measuring is the benchmarks' own:

* ``model``   the programs of ``benchmarks.model_step`` (``Programs``: layout ``single``, SGD with
              momentum, state donated), compiled and timed one configuration after another, most valuable
              first, as long as the time lasts: rounds of back-to-back calls (the step time), calls
              blocked one by one (the trainer's per-step sync), XLA's FLOPs, memory, MFU; then one trace
              of the profile configuration (``model_step.trace``), packed into a tarball small enough to
              come back from the device;
* ``input``   ``benchmarks.input_pipeline``'s JPEGs, bare decode and ``pipeline_to_device`` on the folder
              and on the prepared records, at all host cores;
* ``layouts`` ``benchmarks.layouts.benchmark`` with ``single`` only (one GPU cannot hold a two-device mesh).

JAX, ``alexnet_jax.models`` and the data pipeline are imported inside the part functions, not here: the
parent process imports this module to dispatch ``--part`` and must not import JAX; the data pipeline
comes after the input part has forked its image makers; and ``ml_collections`` (which
``benchmarks.layouts`` needs) is replaced by a stand-in first when that wheel is missing
(``device_wheels.ensure_ml_collections``). The model part imports only jax, flax, optax, numpy, absl,
``alexnet_jax.models`` / ``alexnet_jax.parallel`` and ``alexnet_jax.training.profiling``, so it runs
even when no wheel could be installed.
"""

from __future__ import annotations

import concurrent.futures
import glob
import importlib.metadata
import multiprocessing
import os
import shutil
import statistics
import tarfile
import time
import traceback
from typing import Any, Callable, Sequence

from alexnet_jax.runtime import fileio
from benchmarks import common
from benchmarks import device_plan
from benchmarks import device_wheels
from benchmarks import input_pipeline
from benchmarks import model_step

# ---- The model part: train step and inference (+ the profile) ------------------------------------------


def _memory_stats(device) -> dict | None:
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (not every backend has them)
    return None
  if not stats:
    return None
  keys = ('bytes_in_use', 'peak_bytes_in_use', 'bytes_limit', 'largest_alloc_size', 'num_allocs')
  return {k: int(stats[k]) for k in keys if k in stats}


def _plugin_versions() -> dict:
  out = {}
  for dist in importlib.metadata.distributions():
    name = (dist.metadata['Name'] or '').lower()
    if name.startswith(('jax-cuda', 'jax_cuda', 'jaxlib', 'nvidia-cudnn')):
      out[name] = dist.version
  return out


def _time_calls(plan: device_plan.Plan, launch: Callable[[], Any]) -> tuple[list[float], list[float], Any]:
  """Warm-up, then ``plan.blocked_calls`` calls waited for one by one, then ``plan.rounds`` rounds of
  ``plan.steps_per_round`` back-to-back calls waited for at the end: (blocked seconds, seconds per call
  of each round, the last output)."""
  import jax  # pylint: disable=g-import-not-at-top  (see the module docstring)
  blocked_s = []
  for _ in range(plan.blocked_calls):
    s = time.perf_counter()
    jax.block_until_ready(launch())
    blocked_s.append(time.perf_counter() - s)
  per_step = []
  out = None
  for _ in range(plan.rounds):
    s = time.perf_counter()
    for _ in range(plan.steps_per_round):
      out = launch()
    jax.block_until_ready(out)
    per_step.append((time.perf_counter() - s) / plan.steps_per_round)
  return blocked_s, per_step, out


def run_model_part(plan: device_plan.Plan, part_json: str, budget_s: float, *, trace_out: str | None,
                   scratch: str, profile: bool = True, log=print) -> dict:
  """Compiles, warms up and times ``plan.model_configs`` one after another, writing ``part_json`` after
  each; traces the profile configuration after its timing. Configurations already in ``part_json``
  (a rerun after a crash) are kept, not run again."""
  t0 = time.monotonic()
  deadline = t0 + budget_s - 8   # leave time to write the results
  ml_status = device_wheels.ensure_ml_collections()
  import jax  # pylint: disable=g-import-not-at-top  (after the stand-in for ml_collections)
  import optax  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  report = fileio.read_json(part_json) or {}
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
                 'order': [device_plan.config_key(*c) for c in plan.model_configs]},
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
  programs: dict = {}
  compile_max: dict[str, float] = {}
  timing_max: dict[str, float] = {}
  last_peak = (_memory_stats(device) or {}).get('peak_bytes_in_use')
  profile_done = not (profile and plan.profile)

  def programs_for(model, dtype):
    """The steps of (model, dtype), sharing the train state of the model's other dtype."""
    if (model, dtype) not in programs:
      share = next((p for (m, _), p in programs.items() if m == model), None)
      programs[(model, dtype)] = model_step.Programs(
          model, dtype, tx, width=plan.width, image_size=plan.image_size, num_classes=plan.num_classes,
          share=share)
    return programs[(model, dtype)]

  for model, dtype, batch, mode in plan.model_configs:
    key = device_plan.config_key(model, dtype, batch, mode)
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
      p = programs_for(model, dtype)
      arrays = p.example_batch(batch)
      t = time.perf_counter()
      lowered = p.lower(mode, arrays)
      lower_s = time.perf_counter() - t
      compiled = p.compile(lowered)
      compile_s = time.perf_counter() - t
      compile_max[mode] = max(compile_max.get(mode, 0.0), compile_s)
      launch = p.launcher(mode, compiled, arrays)

      def blocked(launch=launch):
        jax.block_until_ready(launch())

      t = time.perf_counter()
      for _ in range(plan.warmup):
        blocked()
      memory_now = _memory_stats(device)
      blocked_s, per_step, out = _time_calls(plan, launch)
      timing_max[mode] = max(timing_max.get(mode, 0.0), time.perf_counter() - t)
      timing = common.Timing(per_step)
      flops_compiled = common.cost_flops(compiled)
      try:   # the unoptimized program: convolutions are still convolutions, not library calls
        flops = common.cost_flops(lowered)
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
          **({'loss': float(out[1]['loss'])} if mode == 'train' else {}),
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
  directory = os.path.join(scratch, 'trace')
  shutil.rmtree(directory, ignore_errors=True)
  t = time.perf_counter()
  profiler = model_step.trace(call, directory, steps, name='train_step', log=log, create_perfetto_trace=True)
  capture_s = time.perf_counter() - t
  files = {os.path.relpath(p, directory): os.path.getsize(p) for p in profiler.files()}
  out: dict[str, Any] = {'key': key, 'steps': steps, 'capture_s': round(capture_s, 2),
                         'files': files, 'skipped': profiler.skipped, 'tarball': None}
  if profiler.session_dir and trace_out:
    for drop in ((), ('perfetto_trace.json.gz',), ('perfetto_trace.json.gz', '.trace.json.gz')):
      size = pack_trace(directory, trace_out, exclude=drop)
      if size <= device_plan.MAX_RETURN_BYTES:
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


# ---- The input part: the pipeline into device memory ---------------------------------------------------


def make_images(root: str, n: int, workers: int) -> list[str]:
  """``n`` of input_pipeline's JPEGs in 4 class folders, drawn by ``workers`` processes (fork: no
  threads have started yet in this process)."""
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


def run_input_part(plan: device_plan.Plan, part_json: str, budget_s: float, *, scratch: str, malloc: str,
                   log=print) -> dict:
  """The folder and prepared pipelines into device memory at ``plan.input['threads']`` threads."""
  t0 = time.monotonic()
  deadline = t0 + budget_s - 5
  p = plan.input
  cores = common.usable_cores()
  threads = p['threads'] if malloc == 'retained' else p['glibc_threads']
  threads = sorted({min(t, cores) for t in threads})
  root = os.path.join(scratch, 'input')
  os.makedirs(root, exist_ok=True)
  folder = os.path.join(root, 'jpegs')
  t = time.perf_counter()
  paths = make_images(folder, p['num_images'], cores)
  generate_s = time.perf_counter() - t
  # Imported once the image makers have forked (a fork after the data pipeline started threads is unsafe).
  from alexnet_jax import configs  # pylint: disable=g-import-not-at-top
  from alexnet_jax import data  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import host_memory  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import preparation  # pylint: disable=g-import-not-at-top
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
      report['results'][key] = input_pipeline.pipeline_to_device(dataset, cfg, th, p['batch'], p['window_s'])
      log(f'input ({malloc}) {key}: {report["results"][key]["images_per_s"]:,.0f} img/s into '
          f'{device.platform} memory')
      common.write_json(part_json, report)
  report['wall_s'] = round(time.monotonic() - t0, 1)
  common.write_json(part_json, report)
  return report


# ---- The layouts part -------------------------------------------------------------------------------------


def run_layouts_part(plan: device_plan.Plan, part_json: str, log=print) -> dict:
  """``benchmarks.layouts`` with ``single`` only: one GPU cannot hold a two-device mesh."""
  ml_status = device_wheels.ensure_ml_collections()
  import jax  # pylint: disable=g-import-not-at-top  (after the stand-in for ml_collections)
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
