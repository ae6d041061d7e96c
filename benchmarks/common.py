"""What every benchmark shares: timing, XLA option sets, the machine, peak FLOP rates, tables and JSON.

* ``interleave`` times several configurations **round-robin, one call each per round**, after warm-up:
  on a shared or noisy host the load moves between phases that last seconds to minutes, and only
  numbers taken in the same rounds can be compared. Ratios are the median of per-round ratios.
* ``XLA_OPTIONS`` are named sets of XLA CPU options passed to ``lowered.compile(compiler_options=...)``.
  Options given per compilation (not through ``XLA_FLAGS``) let one process hold programs compiled with
  different options and time them interleaved. ``xla_cpu_experimental_ynn_fusion_type`` is a repeated
  enum: a value sets the *whole* list (``''`` = none), not a signed edit as on the command line.
  ``XLA_LEVERS`` are edits of a set, named ``set+lever[+lever...]`` (``tuned+sched_memory``): one run
  can time a baseline, each lever and any combination side by side. An option this jaxlib does not
  know is dropped, never passed (``alexnet_jax.runtime.devices.known_options``; ``xla_options_dropped`` says).
* ``peak`` picks the peak FLOP rate that model-FLOPs utilization (MFU) divides by: ``--peak_tflops``,
  else a table of known devices, else the FMA probe of this CPU.
* ``cpu_fma_probe`` runs a tiny AVX-512 FMA loop (compiled with the system C compiler, cached) on all
  cores: against the table's peak it says how much of the CPU this process was getting *right now*, the
  best load indicator there is on a shared host (the load average counts waiting threads, not stolen time).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any, Callable, Sequence

from alexnet_jax.runtime import fileio

# ---- XLA option sets (per compilation) --------------------------------------------------------------

_YNN = 'xla_cpu_experimental_ynn_fusion_type'
XLA_OPTIONS: dict[str, dict[str, Any]] = {
    # Whatever XLA_FLAGS (or, unset, jaxlib) says: what the project's own entry points get.
    'env': {},
    # jaxlib 0.10.2's default, spelled out so that XLA_FLAGS cannot change it: convolutions, dots and
    # reductions go to YNNPACK.
    'default': {_YNN: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,'
                      'LIBRARY_FUSION_TYPE_REDUCE'},
    # YNNPACK for dots and reductions only, convolutions on XLA's own (Eigen) kernels; the command-line
    # form is --xla_cpu_experimental_ynn_fusion_type=-individual_convolution (PERF_NOTES.md section 5).
    'ynn_dots': {_YNN: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'},
    # No YNNPACK at all: Eigen for everything.
    'eigen': {_YNN: ''},
}
XLA_OPTIONS['tuned'] = XLA_OPTIONS['ynn_dots']

# CPU levers tried on top of 'tuned' (issue 16), each an edit of an option set. The spellings are this
# jaxlib's (0.10.2: the enum names are in libjax_common.so, where `xla_knows_flag` looks). None won on
# alexnet_owt's train step (benchmarks/RESULTS.md, 2026-12-02), so 'tuned' does not include any of them.
XLA_LEVERS: dict[str, dict[str, Any]] = {
    # XLA:CPU's HLO scheduler aimed at peak memory. The default policy picks the concurrency-optimized
    # schedule when its memory is affordable: for our train step, always (the same program as 'tuned').
    # Measured: a different schedule, 11% more temporaries, speed even with 'tuned'.
    'sched_memory': {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'},
    # XLA:CPU's optimization preset for run time (the other values: DEFAULT, FAST_COMPILE). Measured:
    # for our train step, the same program as without it.
    'fast_runtime': {'xla_cpu_opt_preset': 'CPU_OPT_PRESET_FAST_RUNTIME'},
    # JAX's own knobs (jax_optimization_level / jax_exec_time_optimization_effort), which JAX puts on
    # the ExecutableBuildOptions: the highest effort level (EffortLevel.O3 = 39) and effort 1.0.
    # Measured: the same program as without them.
    'effort_o3': {'optimization_level': 39, 'exec_time_optimization_effort': 1.0},
    # YNNPACK for dots only: reductions on XLA's own kernels, like convolutions. Measured: training
    # 5-6% slower.
    'ynn_no_reduce': {_YNN: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'},
}
for _lever in XLA_LEVERS:
  XLA_OPTIONS[f'tuned+{_lever}'] = {**XLA_OPTIONS['tuned'], **XLA_LEVERS[_lever]}


def xla_options_requested(name: str) -> dict[str, Any]:
  """The options set ``name`` asks for (``set`` or ``set+lever+...``), before any filtering."""
  if name in XLA_OPTIONS:
    return dict(XLA_OPTIONS[name])
  base, *levers = name.split('+')
  if base not in XLA_OPTIONS or any(lever not in XLA_LEVERS for lever in levers):
    raise ValueError(f'--xla={name!r} is not an option set; choose one of {sorted(XLA_OPTIONS)}, '
                     f'optionally followed by +lever for levers in {sorted(XLA_LEVERS)}')
  options = dict(XLA_OPTIONS[base])
  for lever in levers:
    options.update(XLA_LEVERS[lever])
  return options


def xla_options_dropped(name: str, platform_name: str = 'cpu') -> list[str]:
  """The options of set ``name`` that this jaxlib does not know (left out by ``xla_options``)."""
  if platform_name != 'cpu':
    return []
  from alexnet_jax.runtime import devices
  return devices.known_options(xla_options_requested(name))[1]


def xla_options(name: str, platform_name: str) -> dict[str, Any]:
  """The compile options of set ``name`` (CPU options apply on CPU only; elsewhere none), without any
  this jaxlib does not know: an unknown option fails the compilation, so it is dropped instead."""
  options = xla_options_requested(name)
  if platform_name != 'cpu':
    return {}
  from alexnet_jax.runtime import devices
  return devices.known_options(options)[0]


# ---- Timing ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
  """Seconds per call of one configuration, over the timed reps."""
  seconds: list[float]

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  @property
  def min(self) -> float:
    return min(self.seconds)

  @property
  def max(self) -> float:
    return max(self.seconds)

  def rate(self, items: float) -> float:
    """Items per second at the median time."""
    return items / self.median

  def to_json(self) -> dict:
    return {'median_s': self.median, 'min_s': self.min, 'max_s': self.max, 'reps': len(self.seconds),
            'seconds': [round(s, 6) for s in self.seconds]}


def interleave(calls: dict[str, Callable[[], Any]], *, reps: int, warmup: int = 2,
               on_round: Callable[[int], None] | None = None) -> dict[str, Timing]:
  """Times each ``calls[name]()`` ``reps`` times, round-robin, after ``warmup`` untimed calls each.

  Each call must block until its work is done (``jax.block_until_ready`` inside it).
  """
  for fn in calls.values():
    for _ in range(warmup):
      fn()
  times: dict[str, list[float]] = {name: [] for name in calls}
  for r in range(reps):
    for name, fn in calls.items():
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
    if on_round:
      on_round(r)
  return {name: Timing(ts) for name, ts in times.items()}


def paired_ratio(a: Timing, b: Timing) -> float:
  """Median over rounds of ``time_b / time_a`` (= rate_a / rate_b): how much faster ``a`` is than ``b``.

  Pairing by round cancels most of the host's slow drift, which the ratio of two medians does not.
  """
  return statistics.median(tb / ta for ta, tb in zip(a.seconds, b.seconds))


# ---- Peak FLOP rates ---------------------------------------------------------------------------------

# Dense TFLOP/s per device. GPU figures are NVIDIA's datasheet numbers without sparsity (SXM parts).
# 'float32' on these GPUs is the TF32 tensor-core rate: XLA runs float32 dots and convolutions in TF32 at
# JAX's default matmul precision; 'float32_simt' is the plain-FMA rate (precision='highest').
# CPU entries are per *core* (multiplied by the cores this process may use).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    'NVIDIA H100 PCIe': {'float32': 378.0, 'float32_simt': 51.2, 'bfloat16': 756.0},
    'NVIDIA H100': {'float32': 494.7, 'float32_simt': 66.9, 'bfloat16': 989.4},
    'NVIDIA H200': {'float32': 494.7, 'float32_simt': 66.9, 'bfloat16': 989.4},
    'NVIDIA A100': {'float32': 156.0, 'float32_simt': 19.5, 'bfloat16': 312.0},
    # PERF_NOTES.md: "Intel Xeon Processor" (family 6 model 167, AVX-512 + AMX), measured FMA peak
    # 430-452 GFLOP/s on 2 threads -> 222.5 per core; bf16 is AMX's theoretical rate (~2.6 TFLOP/s/core).
    'cpu:GenuineIntel:6:167': {'float32': 0.2225, 'bfloat16': 2.66},
    # AMD EPYC Zen 5 (family 26 model 2) KVM guest: 2 x 512-bit FMA pipes = 64 FP32 FLOP/cycle; the FMA
    # probe reads up to 264 GFLOP/s on one core (~4.1 GHz boost) and 160-260 on two while the host is
    # shared, so 265 per core is the best measured, not a guaranteed all-core rate. bf16: avx512_bf16
    # dot products (no AMX), twice the fp32 rate.
    'cpu:AuthenticAMD:26:2': {'float32': 0.265, 'bfloat16': 0.53},
    # AMD EPYC Zen 4 (family 25 model 17) KVM guest: AVX-512 on 256-bit pipes, 2 FMA = 32 FP32
    # FLOP/cycle; the FMA probe reads 114-116 GFLOP/s on one thread (~3.6 GHz; 2026-12-02, load 3.5, when
    # two threads read only 107-110 because the host was shared). bf16: avx512_bf16, twice fp32.
    'cpu:AuthenticAMD:25:17': {'float32': 0.115, 'bfloat16': 0.23},
}


def _cpuinfo() -> dict[str, str]:
  info = {}
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if ':' in line:
          k, v = line.split(':', 1)
          info.setdefault(k.strip(), v.strip())
  except OSError:
    pass
  return info


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def cpu_key() -> str:
  info = _cpuinfo()
  return f'cpu:{info.get("vendor_id", "?")}:{info.get("cpu family", "?")}:{info.get("model", "?")}'


def table_peak(device_kind: str, platform_name: str, dtype: str) -> float | None:
  """Peak FLOP/s of one device from ``PEAK_TFLOPS`` (a CPU counts all usable cores), or None."""
  if platform_name == 'cpu':
    row = PEAK_TFLOPS.get(cpu_key())
    return row[dtype] * 1e12 * usable_cores() if row and dtype in row else None
  for name in sorted(PEAK_TFLOPS, key=len, reverse=True):   # 'H100 PCIe' before 'H100'
    if not name.startswith('cpu:') and device_kind.startswith(name):
      value = PEAK_TFLOPS[name].get(dtype)
      return value * 1e12 if value else None
  return None


_FMA_C = r'''
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
int main(int argc, char **argv) {
  long iters = argc > 1 ? atol(argv[1]) : 10000000;
  double t0 = omp_get_wtime();
  float sink = 0;
  #pragma omp parallel reduction(+:sink)
  {
    /* 12 independent chains with distinct values (identical ones would be merged by the compiler). */
    float s = (float)omp_get_thread_num();
    __m512 a[12];
    for (int j = 0; j < 12; j++) a[j] = _mm512_set1_ps(s + 1.0f + 0.1f * j);
    __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (long i = 0; i < iters; i++) {
      a[0] = _mm512_fmadd_ps(a[0], b, c); a[1] = _mm512_fmadd_ps(a[1], b, c);
      a[2] = _mm512_fmadd_ps(a[2], b, c); a[3] = _mm512_fmadd_ps(a[3], b, c);
      a[4] = _mm512_fmadd_ps(a[4], b, c); a[5] = _mm512_fmadd_ps(a[5], b, c);
      a[6] = _mm512_fmadd_ps(a[6], b, c); a[7] = _mm512_fmadd_ps(a[7], b, c);
      a[8] = _mm512_fmadd_ps(a[8], b, c); a[9] = _mm512_fmadd_ps(a[9], b, c);
      a[10] = _mm512_fmadd_ps(a[10], b, c); a[11] = _mm512_fmadd_ps(a[11], b, c);
    }
    __m512 t = a[0];
    for (int j = 1; j < 12; j++) t = _mm512_add_ps(t, a[j]);
    sink += _mm512_reduce_add_ps(t);
  }
  double dt = omp_get_wtime() - t0;
  printf("%.6g %d %g\n", (double)iters * 12 * 16 * 2 * omp_get_max_threads() / dt, omp_get_max_threads(), sink);
  return 0;
}
'''


@functools.lru_cache(maxsize=1)
def _fma_binary() -> str | None:
  cc = shutil.which('gcc') or shutil.which('cc')
  if cc is None or platform.machine() != 'x86_64' or 'avx512f' not in _cpuinfo().get('flags', ''):
    return None
  directory = os.path.join(tempfile.gettempdir(), f'alexnet_jax_fma_probe_{os.getuid()}')
  binary = os.path.join(directory, 'fma_probe')
  if not os.path.exists(binary):
    os.makedirs(directory, exist_ok=True)
    src = os.path.join(directory, 'fma_probe.c')
    with open(src, 'w', encoding='utf-8') as f:
      f.write(_FMA_C)
    tmp = f'{binary}.{os.getpid()}'
    r = subprocess.run([cc, '-O2', '-mavx512f', '-fopenmp', src, '-o', tmp], capture_output=True)
    if r.returncode:
      return None
    os.replace(tmp, binary)
  return binary


def cpu_fma_probe(threads: int | None = None, iters: int = 5_000_000, repeats: int = 3) -> float | None:
  """Best-of-``repeats`` FP32 FLOP/s of an AVX-512 FMA loop on ``threads`` threads (~0.1 s each).

  None where there is no C compiler or no AVX-512.
  """
  binary = _fma_binary()
  if binary is None:
    return None
  env = dict(os.environ, OMP_NUM_THREADS=str(threads or usable_cores()))
  best = 0.0
  for _ in range(repeats):
    out = subprocess.run([binary, str(iters)], capture_output=True, text=True, env=env)
    if out.returncode == 0:
      best = max(best, float(out.stdout.split()[0]))
  return best or None


def peak(device, dtype: str, override_tflops: float | None = None) -> tuple[float | None, str]:
  """(peak FLOP/s of one device for ``dtype``, where the number comes from)."""
  if override_tflops:
    return override_tflops * 1e12, '--peak_tflops'
  value = table_peak(device.device_kind, device.platform, dtype)
  if value:
    return value, ('table ' + (cpu_key() if device.platform == 'cpu' else device.device_kind))
  if device.platform == 'cpu' and dtype == 'float32':
    probed = cpu_fma_probe()
    if probed:
      return probed, 'FMA probe (this run; low if the host is busy)'
  return None, 'unknown device: pass --peak_tflops'


# ---- The machine -------------------------------------------------------------------------------------


def load_average() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def machine_info(probe: bool = True) -> dict:
  """The machine, the software and the load: what a reader needs to compare two runs."""
  import jax
  import jaxlib
  import flax
  info = _cpuinfo()
  device = jax.devices()[0]
  out = {
      'cpu_model': info.get('model name', platform.processor() or platform.machine()),
      'cpu_key': cpu_key(),
      'cores': usable_cores(),
      'cpu_flags': sorted(set(info.get('flags', '').split()) & {
          'avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_fp16', 'avx512_vnni', 'amx_bf16',
          'amx_tile', 'amx_int8'}),
      'python': platform.python_version(),
      'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
      'platform': device.platform, 'device_kind': device.device_kind, 'device_count': jax.device_count(),
      'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''),
      'load_average': load_average(),
  }
  if probe and device.platform == 'cpu':
    probed = cpu_fma_probe()
    table = table_peak(device.device_kind, 'cpu', 'float32')
    out['fma_probe_gflops'] = round(probed / 1e9, 1) if probed else None
    out['table_peak_gflops'] = round(table / 1e9, 1) if table else None
    if probed and table:
      # ~1.0 on an idle host; 0.5 means our vCPUs got about half the table's peak while probing.
      out['cpu_share_now'] = round(probed / table, 2)
  return out


def describe(info: dict) -> str:
  """One line naming the machine and its load, for the top of a table."""
  share = f', CPU share now {info["cpu_share_now"]:.2f} (FMA probe {info["fma_probe_gflops"]} of ' \
          f'{info["table_peak_gflops"]} GFLOP/s)' if 'cpu_share_now' in info else ''
  return (f'{info["cpu_model"]} ({info["cores"]} cores), {info["platform"]}: {info["device_kind"]} x'
          f'{info["device_count"]}; jax {info["jax"]}; load average {info["load_average"]}{share}')


def describe_run(report: dict) -> str:
  """``describe`` of ``report['machine']`` (its load average taken before the run) with the load average
  after it (``report['load_after']``)."""
  return f'{describe(report["machine"])}, after the run {report["load_after"]}'


# ---- Output ------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A plain text table: strings left-aligned, everything else right-aligned."""
  cells = [[str(h) for h in headers]] + [[fmt(v) for v in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  numeric = [all(not isinstance(row[i], str) for row in rows) for i in range(len(headers))]

  def line(r):
    return '  '.join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()

  return '\n'.join([line(cells[0]), line(['-' * w for w in widths])] + [line(r) for r in cells[1:]])


def fmt(v: Any) -> str:
  if v is None:
    return '-'
  if isinstance(v, bool):
    return 'yes' if v else 'NO'
  if isinstance(v, float):
    if v == 0:
      return '0'
    if abs(v) >= 100:
      return f'{v:,.0f}'
    if abs(v) >= 10:
      return f'{v:.1f}'
    return f'{v:.3g}' if abs(v) < 1 else f'{v:.2f}'
  if isinstance(v, int):
    return f'{v:,d}'
  return str(v)


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented JSON atomically (a reader never sees half a file); arrays become lists,
  dataclasses dicts, anything else its ``str`` (``fileio.plain``; NaN stays NaN)."""
  fileio.write_json(path, fileio.plain(obj, finite=False), indent=2)


def print_and_save(text: str, report: Any, json_path: str | None) -> None:
  """What a benchmark's command ends with: its table printed, and with ``--json`` its report written
  there (``write_json``), saying so."""
  print(text)
  if json_path:
    write_json(json_path, report)
    print(f'wrote {json_path}')




def mib(n: float | None) -> float | None:
  return None if n is None else n / 2**20


def cost_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled program (per device), from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


def memory(compiled) -> dict[str, int | None]:
  """Argument, output, temporary and aliased bytes per device of a compiled program."""
  m = compiled.memory_analysis()
  get = lambda k: int(getattr(m, k)) if m is not None and hasattr(m, k) else None
  return {'argument_bytes': get('argument_size_in_bytes'), 'output_bytes': get('output_size_in_bytes'),
          'temp_bytes': get('temp_size_in_bytes'), 'alias_bytes': get('alias_size_in_bytes')}
