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
3. ``xla_flags`` whether this jaxlib starts with the CPU-only XLA flags
                 ``alexnet_jax/runtime/devices.py`` adds (an unknown flag aborts XLA at start-up);
4. ``train``     the real trainer, ``python -m alexnet_jax.train --config=experiments/demo.py`` for 2
                 epochs on the GPU (``layout=single``: the demo's ``model`` layout needs two devices), with
                 the images/s of its ``metrics.jsonl``;
5. ``input``     the input pipeline on all host cores into device memory: the folder and the prepared
                 records (``benchmarks/input_pipeline.py``'s images), as the trainer runs it (malloc
                 settings of ``host_memory.py``) and with glibc's defaults;
6. ``layouts``   ``benchmarks.layouts`` on the one GPU, ``single`` only (``model`` needs two devices).

Nothing here sets an XLA flag: child processes get ``XLA_FLAGS`` without the CPU-only
``--xla_cpu_experimental_*`` entries, and the model, profile and layouts parts never call
``alexnet_jax.runtime.devices`` (which adds one). The model part imports only jax, flax, optax, numpy,
absl, ``alexnet_jax.models`` / ``alexnet_jax.parallel`` and ``alexnet_jax.training.profiling``, so it
runs even when a wheel is missing; ``benchmarks.layouts`` wraps its settings in an
``ml_collections.ConfigDict``: when that wheel is absent, a stub module stands in for it and the report
says so.

Outputs under ``--out`` (``$OUT`` in the wrapper; at most 8 files come back from the device, 16 MiB
each, so there are only these): ``device_check.json``, ``device_check.md``, ``device_check.log`` (the
wrapper's tee), ``train_step_trace.tar.gz`` (untar it, then ``tensorboard --logdir=trace`` or open its
``*.trace.json.gz`` in https://ui.perfetto.dev) and ``demo_metrics.jsonl``. Scratch files (datasets,
the demo's workdir) go to ``--scratch``.

The code: this module runs the parts in order within the budget (``orchestrate``) and is the command;
``device_plan`` says what to run (sizes, order, budgets), ``device_runner`` how (child processes, time
limits, the XLA-flag probe and the trainer), ``device_parts`` what the model, input and layouts children
measure (with ``benchmarks.model_step`` and ``benchmarks.input_pipeline``), ``device_wheels`` the wheels
and ``device_report`` the JSON and the markdown summary.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from typing import Any, Sequence

from absl import flags

from benchmarks import common
from benchmarks import device_parts
from benchmarks import device_plan
from benchmarks import device_report
from benchmarks import device_runner
from benchmarks import device_wheels


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


def orchestrate(plan: device_plan.Plan, *, out: str, scratch: str, parts: Sequence[str], wheel_dir: str,
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
      'budget_s': budget_s, 'python': platform.python_version(), 'cores': common.usable_cores(),
      'nvidia_smi': _nvidia_smi(), 'parts': {}, 'machine': {}}
  for name in device_plan.PARTS:
    report['parts'][name] = {'status': 'pending' if name in parts else 'not requested'}
  device_report.write_outputs(report, out)
  planned = 0.0
  cpu_flags_ok = None
  for name in device_plan.PARTS:
    if name not in parts:
      continue
    planned += plan.budgets[name]
    now = time.monotonic()
    # A part may use its own budget plus whatever the earlier parts left unused, within the deadline.
    limit = min(planned - (now - t0), deadline - now - 2)
    entry = report['parts'][name]
    if limit < 8:
      entry.update(status='skipped: no time left', limit_s=round(max(limit, 0), 1))
      device_report.write_outputs(report, out)
      continue
    entry.update(status='running', limit_s=round(limit, 1))
    device_report.write_outputs(report, out)
    log(f'==== {name} (limit {limit:.0f} s)')
    start = time.monotonic()
    try:
      if name == 'wheels':
        status, result = device_wheels.run_wheels_part(plan, limit, wheel_dir=wheel_dir, site_dir=site_dir,
                                                       wheels_list=wheels_list, log=log)
      elif name == 'xla_flags':
        status, result = device_runner.run_xla_flags_part(limit, site_dir, log=log)
        cpu_flags_ok = result['starts_with_cpu_flags']
      elif name == 'train':
        status, result = device_runner.run_train_part(plan, limit, scratch=scratch, out=out,
                                                      site_dir=site_dir, cpu_flags_ok=cpu_flags_ok, log=log)
      elif name == 'input':
        status, result = device_runner.run_input_children(plan, limit, scratch=scratch, site_dir=site_dir,
                                                          log=log)
      else:
        status, result = device_runner.run_part_child(name, plan, limit, scratch=scratch, out=out,
                                                      site_dir=site_dir, log=log)
        if name == 'model' and result:
          report['machine'] = result.get('machine', {})
    except Exception as e:  # pylint: disable=broad-except  (the next parts still run)
      status, result = 'error', None
      entry['error'] = f'{type(e).__name__}: {e}'
      log(traceback.format_exc())
    entry.update(status=status, wall_s=round(time.monotonic() - start, 1), result=result)
    report['wall_s'] = round(time.monotonic() - t0, 1)
    device_report.write_outputs(report, out)
    log(f'==== {name}: {status} in {entry["wall_s"]} s')
  report['wall_s'] = round(time.monotonic() - t0, 1)
  device_report.write_outputs(report, out)
  return report


# ---- Command line ----------------------------------------------------------------------------------------


def define_flags() -> None:
  """The command-line flags (defined only when run as a command; names differ from input_pipeline's)."""
  flags.DEFINE_string('out', os.environ.get('OUT') or os.path.join(device_runner.ROOT, 'benchmarks', 'out',
                                                                   'device_check'),
                      'Where the JSON, the markdown summary, the trace and the demo metrics go ($OUT).')
  flags.DEFINE_string('scratch', device_plan.DEFAULT_SCRATCH, 'Scratch folder (datasets, the demo workdir).')
  flags.DEFINE_bool('smoke', False, 'Tiny sizes on any machine (CPU): checks that the script works.')
  flags.DEFINE_list('parts', list(device_plan.PARTS),
                    f'Parts to run, of {",".join(device_plan.PARTS)} (always in that order).')
  flags.DEFINE_float('budget_s', None, 'Total time limit in seconds (default: the plan\'s).')
  flags.DEFINE_string('wheel_dir', device_wheels.WHEEL_DIR, 'The carried wheels.')
  flags.DEFINE_string('wheels_list', device_wheels.WHEELS_LIST,
                      'The pinned list of wheels to install where missing.')
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
  f = flags.FLAGS
  plan = device_plan.plan_for(f.smoke)
  if f.fetch_wheels:
    sys.exit(device_wheels.fetch_wheels(f.wheel_dir, f.wheels_list))
  if f.part == 'model':
    device_parts.run_model_part(plan, f.part_json, f.part_budget_s, trace_out=f.trace_out,
                                scratch=f.scratch, profile=f.profile)
  elif f.part == 'input':
    device_parts.run_input_part(plan, f.part_json, f.part_budget_s, scratch=f.scratch,
                                malloc=f.input_malloc)
  elif f.part == 'layouts':
    device_parts.run_layouts_part(plan, f.part_json)
  else:
    unknown = [p for p in f.parts if p not in device_plan.PARTS]
    if unknown:
      raise ValueError(f'--parts: unknown {unknown}; choose from {",".join(device_plan.PARTS)}')
    report = orchestrate(plan, out=f.out, scratch=f.scratch, parts=f.parts, wheel_dir=f.wheel_dir,
                         wheels_list=f.wheels_list, budget_s=f.budget_s)
    print(f'wrote {os.path.join(f.out, device_plan.JSON_NAME)} and '
          f'{os.path.join(f.out, device_plan.MD_NAME)} in {report["wall_s"]} s')


if __name__ == '__main__':
  from alexnet_jax.runtime import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
