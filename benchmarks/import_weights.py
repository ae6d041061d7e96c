r"""Importing weights (issue 22, "Weights in"): time and peak memory of ``import_weights`` on full-size files.

    python -m benchmarks.import_weights [--reps=3] [--cases=pth_zip,pth_legacy,safetensors,caffe,caffe_v1]
        [--json=PATH]

Each case writes a full-size file with random weights into a temporary folder (torchvision's AlexNet: 61.1M
parameters, 233 MiB, as ``torch.save``'s zip ``.pth``, torch < 1.6's legacy ``.pth`` and ``.safetensors``;
written without torch by ``tests/torch_writers.py``; and bvlc_alexnet's ``.caffemodel``, 244 MB in Caffe's
current ``layer`` format with packed floats or 305 MB in the V1 ``layers`` format with unpacked ones, with
its deploy.prototxt and a 256x256 mean, written by ``tests/caffe_files.py``), then imports it ``--reps`` times, **each time in a
fresh process**, so that the peak resident memory (``VmHWM``) is that import's own. A process imports
the same libraries and starts JAX's CPU backend (as the import does), notes its peak RSS so far
(``rss_before``), calls ``importers.import_weights(...)`` to a folder bundle, and reports its peak RSS
after. ``baseline`` is a process that does all of this but the import. The import's own memory is
``peak - rss_before`` (same process), and ``copies`` is that divided by the file's size: how many copies
of the weights the import holds at its peak. Reading a file and converting it cannot hold fewer than two
(the file's bytes and the converted parameters) without streaming.

* ``import_s``: the ``import_weights`` call (read, convert, check against the network, write and verify
  the bundle); ``process_s``: the whole process, as ``python -m alexnet_jax.import_weights`` costs a user
  (Python and JAX start-up included). Medians of ``--reps``; the cases take turns within each repetition,
  so a change in the host's load falls on all of them alike.

A case is one entry of ``CASES``: a name, a writer ``(folder, num_classes) -> import_weights'
keyword arguments`` (``source`` and whatever else the format needs), and a description. Benchmarks are not
tests (STYLE.md): tests/test_benchmarks.py checks only that the report is whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from benchmarks import common
from tests import caffe_files
from tests import torch_writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_FLAG = '--child'


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  write: Callable[[str, int], dict[str, Any]]   # (folder, num_classes) -> import_weights' keyword arguments
  description: str


def _torchvision(filename: str, **writer_kwargs) -> Callable[[str, int], dict[str, Any]]:
  def write(folder: str, num_classes: int) -> dict[str, Any]:
    path = os.path.join(folder, filename)
    state = torch_writers.random_state_dict(num_classes=num_classes)
    if filename.endswith('.safetensors'):
      torch_writers.write_safetensors(path, state)
    else:
      torch_writers.write_pth(path, state, **writer_kwargs)
    return {'source': path}
  return write


def _caffe(*, v1: bool) -> Callable[[str, int], dict[str, Any]]:
  """bvlc_alexnet at its real shapes: the caffemodel (the new ``layer`` format, packed floats; or V1
  ``layers``, unpacked, as the 2012-era files are), its deploy.prototxt and a 256x256 mean.binaryproto."""
  def write(folder: str, num_classes: int) -> dict[str, Any]:
    tag = 'v1' if v1 else 'v2'
    model = os.path.join(folder, f'bvlc_alexnet_{tag}.caffemodel')
    prototxt = os.path.join(folder, f'deploy_{tag}.prototxt')
    mean = os.path.join(folder, 'mean.binaryproto')
    caffe_files.write_caffemodel(model, caffe_files.alexnet_blobs(1.0, num_classes), v1=v1, packed=not v1)
    with open(prototxt, 'w') as f:
      f.write(caffe_files.deploy_text(caffe_files.alexnet_layers(1.0, num_classes), input_chw=(3, 227, 227),
                                      v1=v1))
    caffe_files.write_binaryproto(mean, np.full((3, 256, 256), 110.0, np.float32))
    return {'source': model, 'prototxt': prototxt, 'mean': mean}
  return write


CASES = [
    Case('pth_zip', _torchvision('alexnet.pth'), "torchvision alexnet, torch.save's zip .pth"),
    Case('pth_legacy', _torchvision('alexnet_legacy.pth', legacy=True),
         'torchvision alexnet, legacy .pth (torch < 1.6)'),
    Case('safetensors', _torchvision('alexnet.safetensors'), 'torchvision alexnet, .safetensors'),
    Case('caffe', _caffe(v1=False), 'bvlc_alexnet .caffemodel (layer, packed) + deploy.prototxt + mean'),
    Case('caffe_v1', _caffe(v1=True), 'bvlc_alexnet .caffemodel (V1 layers, unpacked) + prototxt + mean'),
]


# ---- The measured process -----------------------------------------------------------------------------

def _peak_rss_bytes() -> int:
  """This process's peak resident memory: /proc's VmHWM, which starts afresh at exec. (Not
  ``getrusage().ru_maxrss``: Linux carries it across exec from the forking parent, here the 700 MB of the
  writer.)"""
  with open('/proc/self/status', encoding='ascii') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024   # kB
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # no /proc: an upper bound


def child(spec: dict[str, Any]) -> dict[str, Any]:
  """One measured process: the libraries, JAX's backend, then (unless ``spec['args']`` is None) the import."""
  import jax
  from alexnet_jax.inference import importers
  jax.devices()   # the import starts the backend (jax.eval_shape): count it in the baseline
  out: dict[str, Any] = {'rss_before': _peak_rss_bytes()}
  if spec['args'] is not None:
    t = time.perf_counter()
    path, info = importers.import_weights(**spec['args'], output=spec['output'])
    out['import_s'] = time.perf_counter() - t
    out['parameters'] = info['model']['parameters']
    out['bundle_bytes'] = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
  out['peak'] = _peak_rss_bytes()
  return out


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
  t = time.perf_counter()
  out = subprocess.run([sys.executable, '-m', 'benchmarks.import_weights', CHILD_FLAG, json.dumps(spec)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  elapsed = time.perf_counter() - t
  if out.returncode:
    raise RuntimeError(f'the measured process failed ({out.returncode}): {out.stderr[-2000:]}')
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result['process_s'] = elapsed
  return result


# ---- The benchmark ------------------------------------------------------------------------------------

def _median(rows: list[dict], key: str) -> float:
  return statistics.median(r[key] for r in rows)


def benchmark(cases: list[Case], *, reps: int = 3, num_classes: int = 1000,
              log: Callable[[str], None] = print) -> dict[str, Any]:
  """Writes each case's file, then measures ``reps`` imports of each (round-robin) and ``reps`` baselines."""
  report: dict[str, Any] = {'machine': common.machine_info(), 'load_before': common.load_average(),
                            'reps': reps, 'num_classes': num_classes, 'cases': {}}
  tmp = tempfile.mkdtemp(prefix='import-weights-bench-')
  try:
    args, sizes = {}, {}
    for case in cases:
      folder = os.path.join(tmp, case.name)
      os.makedirs(folder)
      args[case.name] = case.write(folder, num_classes)
      sizes[case.name] = os.path.getsize(args[case.name]['source'])
      log(f'{case.name}: wrote {common.mib(sizes[case.name]):.0f} MiB')
    runs: dict[str, list[dict]] = {case.name: [] for case in cases}
    baseline: list[dict] = []
    for r in range(reps):
      baseline.append(_run_child({'args': None}))
      for case in cases:
        output = os.path.join(tmp, 'bundle')
        runs[case.name].append(_run_child({'args': args[case.name], 'output': output}))
        shutil.rmtree(output)
        last = runs[case.name][-1]
        log(f'rep {r + 1}/{reps} {case.name}: {last["import_s"]:.2f} s, peak '
            f'{common.mib(last["peak"]):.0f} MiB')
    report['baseline'] = {'peak_rss_bytes': _median(baseline, 'peak'),
                          'process_s': _median(baseline, 'process_s')}
    for case in cases:
      rows = runs[case.name]
      own = statistics.median(row['peak'] - row['rss_before'] for row in rows)
      report['cases'][case.name] = {
          'description': case.description, 'file_bytes': sizes[case.name],
          'parameters': rows[0]['parameters'], 'bundle_bytes': rows[0]['bundle_bytes'],
          'import_s': common.Timing([row['import_s'] for row in rows]).to_json(),
          'process_s': _median(rows, 'process_s'),
          'peak_rss_bytes': _median(rows, 'peak'), 'rss_before_bytes': _median(rows, 'rss_before'),
          'own_peak_bytes': own, 'copies_of_file': own / sizes[case.name]}
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  report['load_after'] = common.load_average()
  return report


def format_report(report: dict[str, Any]) -> str:
  rows = [[name, common.mib(c['file_bytes']), c['import_s']['median_s'], c['import_s']['min_s'],
           c['import_s']['max_s'], c['process_s'], common.mib(c['peak_rss_bytes']),
           common.mib(c['rss_before_bytes']), common.mib(c['own_peak_bytes']), c['copies_of_file']]
          for name, c in report['cases'].items()]
  base = report['baseline']
  return '\n'.join([
      common.describe_run(report),
      f'medians of {report["reps"]} imports, each in a fresh process; baseline process (libraries + JAX '
      f'backend, no import): peak RSS {common.mib(base["peak_rss_bytes"]):.0f} MiB, '
      f'{base["process_s"]:.2f} s',
      common.format_table(['case', 'file MiB', 'import s', 'min', 'max', 'process s', 'peak RSS MiB',
                           'before MiB', 'own MiB', 'copies'], rows)])


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == [CHILD_FLAG]:
    print(json.dumps(child(json.loads(argv[1]))))
    return 0
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--cases', default=','.join(c.name for c in CASES),
                      help=f'comma-separated, of {", ".join(c.name for c in CASES)}')
  parser.add_argument('--num_classes', type=int, default=1000, help="classifier.6's rows (1000: ImageNet)")
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  by_name = {c.name: c for c in CASES}
  names = [n for n in args.cases.split(',') if n]
  unknown = [n for n in names if n not in by_name]
  if unknown or not names or args.reps < 1:
    parser.error(f'--cases={args.cases}: choose from {", ".join(by_name)}' if unknown or not names else
                 f'--reps={args.reps}: at least 1')
  report = benchmark([by_name[n] for n in names], reps=args.reps, num_classes=args.num_classes)
  common.print_and_save(format_report(report), report, args.json)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
