"""runtime/process.py: /proc/PID/stat read once for every caller, even for a command name with ') ('."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from alexnet_jax.runtime import process

# A child that renames itself (its /proc/PID/comm) to a name holding the stat file's separators.
RENAMED_CHILD = textwrap.dedent("""
  import sys
  with open('/proc/self/comm', 'w') as f:
    f.write('x) S 1 (y')
  print('ready', flush=True)
  sys.stdin.read()
""")


def test_stat_fields_are_counted_from_the_last_parenthesis():
  child = subprocess.Popen([sys.executable, '-c', RENAMED_CHILD], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline().strip() == 'ready'
    with open(f'/proc/{child.pid}/comm', encoding='ascii') as f:
      assert f.read().strip() == 'x) S 1 (y'
    fields = process.proc_stat(child.pid)
    assert fields[0] in ('R', 'S')                   # the state, not a piece of the name
    assert int(fields[1]) == os.getpid()             # field 4, the parent
    record = {'pid': child.pid, 'process_start_ticks': process.process_start_ticks(child.pid)}
    assert isinstance(record['process_start_ticks'], int)
    assert process.process_alive(record) is True
    assert process.process_alive(dict(record, process_start_ticks=record['process_start_ticks'] + 1)) is False
  finally:
    child.stdin.close()
    child.wait()
  assert process.proc_stat(child.pid) is None and process.cpu_ticks(child.pid) is None


def test_cpu_ticks_and_start_of_this_process():
  ticks = process.cpu_ticks()
  assert isinstance(ticks, int) and ticks >= 0
  fields = process.proc_stat()
  assert ticks <= int(fields[11]) + int(fields[12])     # utime + stime, read after: never less
  assert process.process_start_ticks() == process.process_start_ticks(os.getpid()) == int(fields[19])
  assert process.proc_stat(-1) is None and process.process_start_ticks(-1) is None
