"""The device check's summary: ``device_check.json`` (the whole report) and ``device_check.md`` (tables).

Both are rewritten after every part, so that a run cut short still returns what it measured; the
markdown has one section per part whatever state the part is in (not run, running, failed, partial).
``tests/test_device_report.py`` pins their format.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from alexnet_jax.runtime import fileio
from benchmarks import common
from benchmarks import device_plan

JSON_NAME, MD_NAME = device_plan.JSON_NAME, device_plan.MD_NAME
# What PERF_NOTES.md expects of alexnet_owt's bf16 train step at batch 256-512 on an H100/H200.
EXPECTED_OWT_BF16_TRAIN = (38_000, 57_000)
SOMETHING_WRONG_BELOW = 15_000


def write_outputs(report: dict, out: str) -> None:
  """Writes ``report`` as ``OUT/device_check.json`` and its summary as ``OUT/device_check.md``, each
  whole (a reader never sees half a file)."""
  common.write_json(os.path.join(out, JSON_NAME), report)
  with fileio.atomic_write(os.path.join(out, MD_NAME), 'w') as f:
    f.write(format_markdown(report) + '\n')


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
                   for name in device_plan.PARTS])
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
            's; the demo train then ran with `alexnet_jax.runtime.devices.CPU_XLA_FLAGS` emptied, to be '
            'safe.']
  if ok and not result.get('xla_flags'):
    return ['`alexnet_jax.runtime.devices.add_cpu_xla_flags()` set no XLA flag in this jaxlib (it adds a '
            f'CPU flag only where it finds it defined), and JAX starts; devices: {result.get("devices")}.']
  lines = [f'`XLA_FLAGS={result.get("xla_flags")}` (what '
           '`alexnet_jax.runtime.devices.add_cpu_xla_flags()` sets): '
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
