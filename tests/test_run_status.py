"""status.json through a run's life, liveness of real processes, and the one-writer lock of a workdir."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import types

import pytest
from absl import logging as absl_logging

from alexnet_jax.runtime import lock as lock_lib
from alexnet_jax.runtime import logs
from alexnet_jax.runtime import process
from alexnet_jax.runtime import status as status_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))


def _child(code: str, *args: str) -> subprocess.Popen:
  """A Python child that runs ``code``, prints 'ready' when set up, then waits for stdin to close."""
  proc = subprocess.Popen([sys.executable, '-c', textwrap.dedent(code), *args], cwd=REPO, env=ENV,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  line = proc.stdout.readline()
  if line.strip() != 'ready':
    proc.kill()
    raise AssertionError(f'child did not start: {line!r} {proc.stderr.read()}')
  return proc


STATUS_CHILD = """
import sys
from alexnet_jax.runtime import status
w = status.StatusWriter(sys.argv[1], 'train', argv=['/venv/lib/alexnet_jax/train.py', '--workdir=' + sys.argv[1]])
w.start(step=5, total_steps=10)
print('ready', flush=True)
sys.stdin.read()
"""

LOCK_CHILD = """
import sys
from alexnet_jax.runtime import lock
held = lock.WorkdirLock(sys.argv[1], what='train',
                        argv=['/venv/bin/alexnet-train', '--config=experiments/demo.py', '--workdir=' + sys.argv[1]])
held.acquire()
print('ready', flush=True)
sys.stdin.read()
"""


# ---- status.json through a life ---------------------------------------------------------------------

def test_status_through_a_life(tmp_path, monkeypatch):
  wd = tmp_path / 'run'
  # The throttle's clock is the test's (a busy host may pause the test for seconds anywhere).
  clock = [1000.0]
  monkeypatch.setattr(status_lib, 'time', types.SimpleNamespace(time=time.time, monotonic=lambda: clock[0]))
  argv = ['/somewhere/alexnet_jax/train.py', '--config=experiments/demo.py', f'--workdir={wd}']
  w = status_lib.StatusWriter(wd, 'train', argv=argv)
  w.start(total_steps=100, num_epochs=2)
  rec = status_lib.read_status(wd)
  assert rec['state'] == 'running' and rec['kind'] == 'train' and rec['pid'] == os.getpid()
  assert rec['host'] and rec['total_steps'] == 100 and rec['attempt'] == 1
  assert rec['argv'] == argv and rec['cwd'] == os.getcwd()
  assert rec['command'].endswith(f"-m alexnet_jax.train --config=experiments/demo.py --workdir={wd}")
  assert rec['started'].endswith('+00:00') and abs(rec['started_unix'] - time.time()) < 60
  if os.path.exists('/proc/self/stat'):
    assert rec['process_start_ticks'] == process.process_start_ticks()
  assert process.process_alive(rec) is True and status_lib.effective_state(rec) == 'running'

  # Throttled: a burst of updates within min_interval_s writes nothing; the last values wait in memory.
  for step in range(1, 200):
    clock[0] += 0.01
    w.update(step=step, train={'loss': 1.0 / step})
  assert w.writes == 1
  assert 'step' not in status_lib.read_status(wd)
  # Forced updates always write, and carry everything merged so far.
  w.update(force=True, val={'top1': 0.5, 'top5': 0.9}, best_val_top1=0.5, best_epoch=1.0, snapshots=[50])
  rec = status_lib.read_status(wd)
  assert w.writes == 2 and rec['step'] == 199 and rec['train'] == {'loss': 1.0 / 199}
  assert rec['val']['top1'] == 0.5 and rec['snapshots'] == [50]
  w.update(force=True, images_per_sec=float('nan'))          # plain JSON: no NaN for a browser
  assert status_lib.read_status(wd)['images_per_sec'] is None
  w.finish('done', step=200, progress=1.0)
  rec = status_lib.read_status(wd)
  assert rec['state'] == 'done' and rec['exit_status'] == 0 and rec['step'] == 200
  assert rec['finished_unix'] >= rec['started_unix'] and rec['elapsed_seconds'] >= 0
  assert status_lib.effective_state(rec) == 'done'
  w.update(force=True, step=999)                              # finished: nothing more is written
  assert status_lib.read_status(wd)['step'] == 200

  # The interval elapses: the next update writes.
  w2 = status_lib.StatusWriter(wd, 'train', argv=argv, min_interval_s=0.2)
  w2.start()
  assert status_lib.read_status(wd)['attempt'] == 2         # a resume counts on
  assert status_lib.read_status(wd)['first_started'] == rec['started']
  clock[0] += 0.19
  assert not w2.update(step=1)
  clock[0] += 0.02
  assert w2.update(step=2) and status_lib.read_status(wd)['step'] == 2
  w2.finish('stopped', error='SIGTERM: snapshot saved')
  rec = status_lib.read_status(wd)
  assert rec['state'] == 'stopped' and rec['error'] == 'SIGTERM: snapshot saved'


def test_context_manager_records_failure_stop_and_done(tmp_path):
  with pytest.raises(RuntimeError, match='disk on fire'):
    with status_lib.StatusWriter(tmp_path / 'a', 'train', argv=['x']) as w:
      w.update(step=3)
      raise RuntimeError('disk on fire\nsecond line of the message')
  rec = status_lib.read_status(tmp_path / 'a')
  assert rec['state'] == 'failed' and rec['error'] == 'RuntimeError: disk on fire'
  assert rec['exit_status'] == 1 and rec['step'] == 3

  with pytest.raises(KeyboardInterrupt):
    with status_lib.StatusWriter(tmp_path / 'b', 'sweep', argv=['x']):
      raise KeyboardInterrupt
  assert status_lib.read_status(tmp_path / 'b')['state'] == 'stopped'

  with status_lib.StatusWriter(tmp_path / 'c', 'evaluate', argv=['x']) as w:
    assert status_lib.read_status(tmp_path / 'c')['state'] == 'running'
  assert status_lib.read_status(tmp_path / 'c')['state'] == 'done'

  with status_lib.StatusWriter(tmp_path / 'd', 'train', argv=['x']) as w:
    w.finish('stopped', exit_status=75)                    # an explicit finish wins over the exit
  rec = status_lib.read_status(tmp_path / 'd')
  assert rec['state'] == 'stopped' and rec['exit_status'] == 75

  with pytest.raises(ValueError, match='kind'):
    status_lib.StatusWriter(tmp_path, 'bake')


def test_disabled_writer_writes_nothing(tmp_path):
  with status_lib.StatusWriter(tmp_path / 'wd', 'train', enabled=False) as w:
    w.update(force=True, step=1)
  assert not os.path.exists(tmp_path / 'wd')


def test_rewrites_are_atomic_for_a_concurrent_reader(tmp_path):
  wd = tmp_path / 'run'
  w = status_lib.StatusWriter(wd, 'train', argv=['x'])
  w.start()
  stop = tmp_path / 'stop'
  reader = subprocess.Popen([sys.executable, '-c', textwrap.dedent("""
      import json, os, sys
      path, stop, enough = sys.argv[1:4]
      reads = bad = 0
      while not os.path.exists(stop):
        try:
          with open(path) as f:
            doc = json.load(f)
          assert doc['state'] == 'running' and len(doc['snapshots']) == 2000
          reads += 1
          if reads == 50:
            open(enough, 'w').close()
        except Exception as e:
          bad += 1
          print(type(e).__name__, e, file=sys.stderr)
      print(reads, bad)
      """), str(wd / 'status.json'), str(stop), str(tmp_path / 'enough')], stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  try:
    w.update(force=True, snapshots=list(range(2000)))      # ~10 KB: a torn write would show
    # Rewrites go on until the reader has read 50 times while they did (however slowly either runs).
    deadline = time.monotonic() + 300
    n = 0
    while n < 100 or not (tmp_path / 'enough').exists():
      assert reader.poll() is None and time.monotonic() < deadline, reader.communicate()
      w.update(force=True, step=n, snapshots=list(range(n, n + 2000)))
      n += 1
  finally:
    stop.touch()
    out, err = reader.communicate(timeout=300)
  reads, bad = map(int, out.split())
  assert bad == 0, err
  assert reads >= 50 and n >= 100
  leftovers = [name for name in os.listdir(wd) if name != 'status.json']
  assert not leftovers                                     # no temporary file left behind


def test_mode_is_kept_across_rewrites(tmp_path):
  wd = tmp_path / 'run'
  w = status_lib.StatusWriter(wd, 'train', argv=['x'])
  w.start()
  path = wd / 'status.json'
  os.chmod(path, 0o640)
  w.update(force=True, step=1)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
  w.finish('done')
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
  assert status_lib.read_status(wd)['state'] == 'done'


def test_read_status_tolerates_anything(tmp_path):
  assert status_lib.read_status(tmp_path) is None                    # a folder without status.json
  assert status_lib.read_status(tmp_path / 'nope' / 'status.json') is None
  good = json.dumps({'state': 'running', 'kind': 'train', 'pid': 1})
  cases = {'truncated': good[:len(good) // 2], 'garbage': '\x00\xffnot json at all', 'empty': '',
           'list': '[1, 2, 3]', 'number': '42'}
  for name, text in cases.items():
    folder = tmp_path / name
    folder.mkdir()
    (folder / 'status.json').write_bytes(text.encode('latin-1'))
    rec = status_lib.read_status(folder)
    assert rec['state'] == 'unreadable', name
    assert str(folder / 'status.json') in rec['error'], name
    assert status_lib.effective_state(rec) == 'unreadable'
  (tmp_path / 'dir_as_file').mkdir()
  (tmp_path / 'dir_as_file' / 'status.json').mkdir()
  assert status_lib.read_status(tmp_path / 'dir_as_file')['state'] == 'unreadable'
  assert status_lib.effective_state(None) == 'unknown'


# ---- Liveness of real processes ------------------------------------------------------------------------

def _wait_until_zombie(pid: int, timeout: float = 120.0) -> None:
  """Waits until ``pid`` (a child not yet reaped) has died: state Z in /proc/PID/stat (Linux)."""
  deadline = time.monotonic() + timeout
  while True:
    with open(f'/proc/{pid}/stat', 'rb') as f:
      data = f.read()
    if data[data.rfind(b')') + 2:].split()[0] == b'Z':
      return
    assert time.monotonic() < deadline, f'process {pid} still alive after SIGKILL'
    time.sleep(0.01)


def test_effective_state_of_live_exited_and_killed_processes(tmp_path, children):
  live, exited, killed = tmp_path / 'live', tmp_path / 'exited', tmp_path / 'killed'
  for wd in (live, exited, killed):
    children.append(_child(STATUS_CHILD, str(wd)))
  p_live, p_exited, p_killed = children
  for wd, p in ((live, p_live), (exited, p_exited), (killed, p_killed)):
    rec = status_lib.read_status(wd)
    assert rec['pid'] == p.pid and status_lib.effective_state(rec) == 'running'
    assert rec['command'].split()[1:3] == ['-m', 'alexnet_jax.train']
  p_exited.stdin.close()                                   # exits without finishing its record
  p_exited.wait(timeout=30)
  p_killed.send_signal(signal.SIGKILL)
  _wait_until_zombie(p_killed.pid)                         # killed, not yet reaped: a zombie is dead too
  assert status_lib.effective_state(status_lib.read_status(killed)) == 'interrupted'
  p_killed.wait(timeout=30)
  assert status_lib.effective_state(status_lib.read_status(killed)) == 'interrupted'
  assert status_lib.effective_state(status_lib.read_status(exited)) == 'interrupted'
  assert process.process_alive(status_lib.read_status(exited)) is False
  rec = status_lib.read_status(live)
  assert status_lib.effective_state(rec) == 'running' and process.process_alive(rec) is True

  # pid reuse: the pid exists (the live child) but started at another time.
  if rec.get('process_start_ticks') is not None:
    reused = dict(rec, process_start_ticks=rec['process_start_ticks'] - 1)
    assert process.process_alive(reused) is False
    assert status_lib.effective_state(reused) == 'interrupted'
  if rec.get('boot_id'):
    assert status_lib.effective_state(dict(rec, boot_id='another-boot')) == 'interrupted'
  # Another host cannot be checked from here: unknown, and the recorded state stands.
  elsewhere = dict(rec, host=rec['host'] + '-elsewhere', pid=p_exited.pid)
  assert process.process_alive(elsewhere) is None
  assert status_lib.effective_state(elsewhere) == 'running'


def test_command_is_the_rerun_form():
  argv = process.command_argv(['/venv/lib/python3/site-packages/alexnet_jax/train.py', '--a=b c'])
  assert argv[1:] == ['-m', 'alexnet_jax.train', '--a=b c']
  assert process.command_argv(['/venv/bin/alexnet-train', '--x'])[1:] == ['-m', 'alexnet_jax.train', '--x']
  assert process.command_argv(['/r/alexnet_jax/data/__main__.py'])[1:] == ['-m', 'alexnet_jax.data']
  assert process.command_argv(['tools/my_script.py', '-v'])[1:] == ['tools/my_script.py', '-v']
  assert process.command_argv(['/usr/bin/other', 'a']) == ['/usr/bin/other', 'a']
  text = process.command_string(['/r/alexnet_jax/train.py', "--workdir=runs/it's here"])
  assert text.endswith("-m alexnet_jax.train '--workdir=runs/it'\"'\"'s here'")


def test_log_file_gets_each_line_once(tmp_path):
  root = logging.getLogger()
  old_level = root.level
  root.setLevel(logging.INFO)
  h1 = logs.attach_log_file(tmp_path)
  h2 = logs.attach_log_file(tmp_path, 'train.log')
  try:
    assert h1 is h2
    absl_logging.info('step %d: loss %.2f', 7, 0.5)
    logging.getLogger('alexnet_jax.data').warning('class %r has no image', 'cats')
  finally:
    h1.detach()
    root.setLevel(old_level)
  absl_logging.info('after detach')
  lines = (tmp_path / 'train.log').read_text().splitlines()
  assert len(lines) == 2, lines
  assert lines[0].startswith('I') and lines[0].endswith('] step 7: loss 0.50')   # absl's console format
  assert lines[1].startswith('W') and lines[1].endswith("] class 'cats' has no image")
  assert h1 not in root.handlers
  logs.detach_log_file(None)


# ---- The lock ----------------------------------------------------------------------------------------

def test_lock_names_its_holder_and_a_killed_holder_never_blocks(tmp_path, children):
  wd = tmp_path / 'runs' / 'demo'
  holder = _child(LOCK_CHILD, str(wd))
  children.append(holder)
  t0 = time.monotonic()
  with pytest.raises(lock_lib.WorkdirBusyError) as info:
    lock_lib.WorkdirLock(wd).acquire()
  assert time.monotonic() - t0 < 1.0                       # at once, not after a timeout
  message = str(info.value)
  assert isinstance(info.value, ValueError)
  assert message.startswith(f'{wd} is in use by process {holder.pid} on host ')
  assert '-m alexnet_jax.train --config=experiments/demo.py' in message
  assert message.endswith('stop it first or use another --workdir')
  assert info.value.holder['pid'] == holder.pid
  assert lock_lib.read_holder(wd)['what'] == 'train'

  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=30)
  t0 = time.monotonic()
  with lock_lib.WorkdirLock(wd, what='train') as held:
    assert held.locked and time.monotonic() - t0 < 1.0
    assert lock_lib.read_holder(wd)['pid'] == os.getpid()
    with pytest.raises(lock_lib.WorkdirBusyError, match=r'\(this process\)'):
      lock_lib.WorkdirLock(wd).acquire()                   # not re-entrant, even in one process
  assert not held.locked
  assert os.path.exists(wd / '.lock')                       # never removed: removing races openers
  with lock_lib.WorkdirLock(wd):                             # and free again after release
    pass


def test_lock_of_a_prepare_lives_beside_its_output(tmp_path):
  out = tmp_path / 'data' / 'ds'
  with lock_lib.WorkdirLock(out, what='prepare', lock_file=tmp_path / 'data' / '.ds.lock'):
    with pytest.raises(lock_lib.WorkdirBusyError, match='use another --output$'):
      lock_lib.WorkdirLock(out, what='prepare', lock_file=tmp_path / 'data' / '.ds.lock').acquire()
  assert not out.exists()                                  # the output is not made by the lock


def test_a_failing_rewrite_does_not_stop_the_run(tmp_path, caplog):
  wd = tmp_path / 'run'
  w = status_lib.StatusWriter(wd, 'train', argv=['x'])
  w.start()
  os.unlink(wd / 'status.json')
  os.rmdir(wd)
  (tmp_path / 'run').write_text('a file where the workdir was')   # every later write fails
  with caplog.at_level(logging.WARNING):
    w.update(force=True, step=1)
    w.update(force=True, step=2)
    w.finish('done')
  assert sum('cannot update' in r.getMessage() for r in caplog.records) == 1
  with pytest.raises(OSError):                                      # but a start that cannot write fails
    status_lib.StatusWriter(tmp_path / 'run' / 'sub', 'train', argv=['x']).start()
