"""How long ``python -m alexnet_jax.runs`` (``run/listing.find_runs``) takes over many workdirs.

    python -m benchmarks.runs_listing [--num_runs=500] [--repeats=3]

Writes ``num_runs`` synthetic workdirs into a temporary folder (status.json, config.json, a 64 KiB-plus
metrics.jsonl, a train.log and 5 snapshot folders each; one in ten 'running' for a dead process, so the
liveness check runs; one in ten without status.json) and prints the first listing's time and the best of
``repeats`` more, naming the machine.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import tempfile
import time
from typing import Optional

from absl import app, flags

from alexnet_jax.runtime import fileio
from alexnet_jax.run import listing

def make_benchmark_tree(root: str, num_runs: int = 500) -> None:
  """Writes ``num_runs`` synthetic workdirs under ``root`` (for ``benchmark``).

  Each has a status.json, a config.json, a 64 KiB-plus metrics.jsonl, a train.log and a ``checkpoints/``
  folder of 5 snapshots x 4 files; one in ten is a 'running' record of a dead process (so the liveness
  check runs), one in ten has no status.json (derived from metrics.jsonl).
  """
  line = json.dumps({'step': 100, 'epoch': 1.0, 'split': 'train', 'loss': 0.5, 'top1': 0.8, 'lr': 0.01})
  host = socket.gethostname()
  for i in range(num_runs):
    wd = os.path.join(root, f'group{i % 10}', f'run{i:04d}')
    for s in range(5):
      snap = os.path.join(wd, 'checkpoints', str(100 * s))
      os.makedirs(snap)
      for part in range(4):
        with open(os.path.join(snap, f'part{part}'), 'wb') as f:
          f.write(b'x' * 4096)
    with open(os.path.join(wd, listing.METRICS_FILE), 'w') as f:
      f.write((line + '\n') * 800)
    with open(os.path.join(wd, 'train.log'), 'w') as f:
      f.write('I0101 00:00:00.000000 1 train.py:1] a log line\n' * 200)
    fileio.write_json(os.path.join(wd, listing.CONFIG_FILE), {'num_epochs': 10})
    if i % 10 != 9:
      record = {'kind': 'train', 'state': 'running' if i % 10 == 0 else 'done', 'pid': 2**22 + i,
                'host': host, 'step': 100, 'total_steps': 1000, 'started_unix': 1e9,
                'updated_unix': 1e9 + i, 'train': {'loss': 0.5}, 'best_val_top1': 0.8,
                'best_epoch': 1.0, 'command': 'python -m alexnet_jax.train'}
      fileio.write_json(os.path.join(wd, listing.STATUS_FILE), record)


def benchmark(num_runs: int = 500, root: Optional[str] = None, repeats: int = 3) -> dict[str, float]:
  """Times ``find_runs`` over ``num_runs`` synthetic workdirs (``make_benchmark_tree``); not a test.

  Returns:
    {'num_runs', 'rows', 'first_s' (the first pass), 'best_s' (best of ``repeats`` more)}.
  """
  with tempfile.TemporaryDirectory(dir=root) as tmp:
    make_benchmark_tree(tmp, num_runs)
    t0 = time.perf_counter()
    rows = listing.find_runs([tmp])
    first = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
      t0 = time.perf_counter()
      listing.find_runs([tmp])
      best = min(best, time.perf_counter() - t0)
  return {'num_runs': num_runs, 'rows': len(rows), 'first_s': round(first, 4), 'best_s': round(best, 4)}


_NUM_RUNS = flags.DEFINE_integer('num_runs', 500, 'Synthetic workdirs to list.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed listings after the first.')


def main(argv):
  del argv
  result = benchmark(_NUM_RUNS.value, repeats=_REPEATS.value)
  print(f'{platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}): {result}')


if __name__ == '__main__':
  app.run(main)
