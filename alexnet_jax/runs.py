r"""DIGITS' home page in a terminal: every run and prepared dataset under some folders, one row each.

    python -m alexnet_jax.runs [DIR ...] [--json] [--watch[=SECONDS]] [--max_depth=6]

    NAME          KIND     STATUS       PROGRESS  ETA    BEST VAL TOP-1  TRAIN LOSS  ELAPSED  SIZE
    demo2         train    running      42.0%     01:25  78.12% (ep 3)   0.4123      01:02    12.3 MiB
    data/flowers  prepare  running      61.5%     00:40  -               -           01:04    80.1 MiB
    demo          train    interrupted  10.0%     -      55.00% (ep 1)   1.2031      00:31    40.2 MiB
      resume: python -m alexnet_jax.train --config=experiments/demo.py --workdir=runs/demo

Each DIR (default: the current folder) is searched recursively, ``--max_depth`` levels down, for runs
and prepared datasets (``alexnet_jax/run/listing.py`` says what counts as which, and reads only status
files). Interrupted rows (and stopped ones) print the command that resumes them, failed ones their error.
Running rows come first, then the most recently updated.
``--json`` prints the rows as a JSON list (the keys of ``find_runs``); ``--watch`` redraws every
SECONDS (default 2) until Ctrl-C.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Sequence

from absl import flags

from alexnet_jax.runtime import cli
from alexnet_jax.run.listing import ROW_KEYS, find_runs, format_table


# ---- The command -------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _show(dirs: Sequence[str], as_json: bool, max_depth: int, *, clear: bool = False,
          compact: bool = False) -> None:
  rows = find_runs(dirs, max_depth=max_depth)
  if as_json:
    text = json.dumps([{k: r.get(k) for k in ROW_KEYS} for r in rows], indent=None if compact else 1)
  else:
    text = format_table(rows)
  if clear:
    sys.stdout.write('\x1b[H\x1b[2J')
    sys.stdout.write(time.strftime('%H:%M:%S') + f'  every {FLAGS.watch:g} s, Ctrl-C to stop\n\n')
  sys.stdout.write(text + '\n')
  sys.stdout.flush()


def main(argv: Sequence[str]) -> None:
  dirs = list(argv[1:]) or ['.']
  if FLAGS.max_depth < 0:
    raise ValueError(f'--max_depth={FLAGS.max_depth}: must be 0 or more')
  if not FLAGS.watch:
    _show(dirs, FLAGS.json, FLAGS.max_depth)
    return
  if FLAGS.watch < 0:
    raise ValueError(f'--watch={FLAGS.watch:g}: expected a number of seconds > 0')
  tty = sys.stdout.isatty()
  try:
    while True:
      # A terminal is redrawn in place; a pipe gets one block (or one JSON list per line) per refresh.
      _show(dirs, FLAGS.json, FLAGS.max_depth, clear=tty, compact=FLAGS.json and not tty)
      time.sleep(FLAGS.watch)
  except KeyboardInterrupt:
    sys.stdout.write('\n')


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  flags.DEFINE_bool('json', False, 'Print the rows as a JSON list instead of a table.')
  flags.DEFINE_float('watch', 0.0, 'Redraw every this many seconds until Ctrl-C (a bare --watch: 2).')
  flags.DEFINE_integer('max_depth', 6, 'Folder levels below each DIR to search.')


def _expand_watch(argv: list[str]) -> list[str]:
  """A bare ``--watch`` means ``--watch=2`` (``--watch 5`` means ``--watch=5``); absl needs a value."""
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a in ('--watch', '-watch') and i > 0:
      nxt = argv[i + 1] if i + 1 < len(argv) else ''
      try:
        float(nxt)
        out.append(f'--watch={nxt}')
        i += 2
        continue
      except ValueError:
        out.append('--watch=2')
    else:
      out.append(a)
    i += 1
  return out


def run() -> None:
  """Console-script entry point (``alexnet-runs``)."""
  define_flags()
  sys.argv = _expand_watch(sys.argv)
  cli.run(main)


if __name__ == '__main__':
  run()
