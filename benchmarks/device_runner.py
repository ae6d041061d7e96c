"""How the device check runs its parts: child processes with a clean environment and a hard time limit.

Every part runs in a process of its own (a crash or a hang costs that part only): ``run_child`` stops a
child that runs over its limit (SIGTERM, then SIGKILL) and keeps what it wrote. The model, input and
layouts parts are ``python -m benchmarks.device_check --part=NAME`` children (``benchmarks.device_parts``
does their work) that write their results to a JSON file as they go; the XLA-flag probe and the demo
trainer are plain commands whose output this module reads.

Nothing here imports JAX: the parent process only starts children, so a wheel installed for them, or a
jaxlib that aborts at start-up, cannot take the parent down. Children get ``XLA_FLAGS`` without the
CPU-only ``--xla_cpu_experimental_*`` entries (they come and go between jaxlib versions, and an unknown
flag aborts XLA at start-up).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from alexnet_jax.run import metrics_writer
from alexnet_jax.runtime import fileio
from benchmarks import common
from benchmarks import device_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- The environment and the time limit of a child ----------------------------------------------------


def sanitized_xla_flags(value: str) -> str:
  """``XLA_FLAGS`` without the CPU-only ``--xla_cpu_experimental_*`` flags (they come and go between
  jaxlib versions, and an unknown flag aborts XLA at start-up)."""
  kept = [f for f in value.split() if not f.startswith('--xla_cpu_experimental_')]
  return ' '.join(kept)


def child_env(site_dir: str | None, extra: dict | None = None) -> dict:
  """This process's environment for a child: sanitized ``XLA_FLAGS``, ``site_dir`` (the installed
  wheels) and the repository first on ``PYTHONPATH``, unbuffered output, then ``extra``."""
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


# ---- The model, input and layouts parts: children that write their JSON as they go ----------------------


def _part_cmd(name: str, plan: device_plan.Plan, limit: float, part_json: str, scratch: str,
              extra=()) -> list[str]:
  return [sys.executable, '-m', 'benchmarks.device_check', f'--part={name}', f'--part_json={part_json}',
          f'--part_budget_s={limit:.0f}', f'--scratch={scratch}', f'--smoke={plan.name == "smoke"}',
          *extra]


def _fresh(path: str) -> str:
  if os.path.exists(path):
    os.remove(path)
  return path


def run_part_child(name: str, plan: device_plan.Plan, limit: float, *, scratch: str, out: str,
                   site_dir: str, log=print) -> tuple[str, dict | None]:
  """The model or layouts part in a child; a model part that crashes (the profiler, say) with time left
  runs once more without the profile, keeping the configurations already measured."""
  part_json = _fresh(os.path.join(scratch, f'{name}.json'))
  extra = [f'--trace_out={os.path.join(out, device_plan.TRACE_NAME)}'] if name == 'model' else []
  t = time.monotonic()
  r = run_child(_part_cmd(name, plan, limit, part_json, scratch, extra), limit, child_env(site_dir), log=log)
  left = limit - (time.monotonic() - t)
  if name == 'model' and r['rc'] != 0 and not r['timed_out'] and left > 30:
    log(f'model part exited with {r["rc"]}; running the remaining configurations without the profile')
    r2 = run_child(_part_cmd(name, plan, left, part_json, scratch, [*extra, '--noprofile']), left,
                   child_env(site_dir), log=log)
    r = {**r2, 'first_rc': r['rc']}
  result = fileio.read_json(part_json)
  if result is not None:
    result['child'] = r
  status = 'ok' if r['rc'] == 0 else ('timeout (partial)' if r['timed_out'] else f'failed (rc {r["rc"]})')
  if name == 'model' and result and result.get('skipped'):
    status += f', {len(result["skipped"])} configs skipped for time'
  return status, result


def run_input_children(plan: device_plan.Plan, limit: float, *, scratch: str, site_dir: str,
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
    part_json = _fresh(os.path.join(scratch, f'input_{malloc}.json'))
    extra = [f'--input_malloc={malloc}'] + (['--noretain_host_memory'] if malloc != 'retained' else [])
    r = run_child(_part_cmd('input', plan, sub_limit, part_json, scratch, extra), sub_limit,
                  child_env(site_dir), log=log)
    results[malloc] = fileio.read_json(part_json) or f'no result (rc {r["rc"]})'
    statuses.append('ok' if r['rc'] == 0 else ('timeout' if r['timed_out'] else f'rc {r["rc"]}'))
  status = 'ok' if all(s == 'ok' for s in statuses) else 'partial: ' + ', '.join(statuses)
  return status, results


# ---- The XLA flag probe and the real trainer: plain commands ------------------------------------------

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

# The trainer with alexnet_jax.runtime.devices' CPU-only XLA flags removed, for a jaxlib that does not
# know them.
TRAIN_WITHOUT_CPU_FLAGS = ('from alexnet_jax.runtime import devices; devices.CPU_XLA_FLAGS = (); '
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


def run_train_part(plan: device_plan.Plan, budget_s: float, *, scratch: str, out: str, site_dir: str,
                   cpu_flags_ok: bool | None, log=print) -> tuple[str, dict]:
  """``python -m alexnet_jax.train`` on the demo config; images/s from its ``metrics.jsonl``."""
  workdir = os.path.join(scratch, 'demo')
  shutil.rmtree(workdir, ignore_errors=True)   # a fresh run, not a resume of an earlier call's
  cores = common.usable_cores()
  args = [*plan.train_args, f'--workdir={workdir}', f'--config.data.num_threads={cores}',
          f'--config.data.prefetch={max(8, cores)}']
  patched = cpu_flags_ok is False
  launcher = ['-c', TRAIN_WITHOUT_CPU_FLAGS] if patched else ['-m', 'alexnet_jax.train']
  r = run_child([sys.executable, *launcher, *args], budget_s, child_env(site_dir), log=log)
  records = metrics_writer.read_metrics(workdir)
  if records:
    shutil.copyfile(os.path.join(workdir, metrics_writer.METRICS_FILE),
                    os.path.join(out, device_plan.DEMO_METRICS_NAME))
  train = [x for x in records if x.get('split') == 'train']
  val = [x for x in records if x.get('split') == 'val']
  rates = [x['images_per_sec'] for x in train if x.get('images_per_sec')]
  config = fileio.read_json(os.path.join(workdir, 'config.json')) or {}
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
      'metrics_file': device_plan.DEMO_METRICS_NAME if records else None,
  }
  ok = r['rc'] == 0 and bool(train)
  return ('ok' if ok else ('timeout' if r['timed_out'] else 'failed')), result
