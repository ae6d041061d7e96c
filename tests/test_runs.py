"""``python -m alexnet_jax.runs``: every kind of run and dataset, with real processes; and prepare's lock."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from alexnet_jax.run import listing
from alexnet_jax.data import errors
from alexnet_jax.data import preparation
from alexnet_jax.data import records
from alexnet_jax.data import synthetic
from alexnet_jax.runtime import lock as lock_lib
from alexnet_jax.runtime import status as status_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))

# A tool in a child process: it writes a running status (as the trainer or prepare would) and lives until
# its stdin closes.
LIVE_STATUS = """
import sys
from alexnet_jax.runtime import status
folder, kind, filename = sys.argv[1:4]
argv = ['/x/alexnet_jax/%s.py' % ('train' if kind == 'train' else 'prepare'), '--workdir=' + folder]
w = status.StatusWriter(folder, kind, argv=argv, filename=filename)
if kind == 'train':
  w.start(step=30, total_steps=100, epoch=3.0, num_epochs=10, progress=0.3, eta_seconds=700,
          images_per_sec=250.0, train={'loss': 0.75, 'top1': 0.6, 'lr': 0.01},
          val={'loss': 0.8, 'top1': 0.55, 'top5': 0.9}, best_val_top1=0.55, best_epoch=2.0, best_step=20)
else:
  w.start(phase='writing', done=40, total=160, progress=0.25, eta_seconds=30, images_per_sec=4.0)
print('ready', flush=True)
sys.stdin.read()
"""


def _child(*args: str) -> subprocess.Popen:
  proc = subprocess.Popen([sys.executable, '-c', textwrap.dedent(LIVE_STATUS), *args], cwd=REPO, env=ENV,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'ready', proc.stderr.read()
  return proc


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


def _finished_run(wd, state, **fields):
  w = status_lib.StatusWriter(wd, 'train', argv=['/x/alexnet_jax/train.py', f'--workdir={wd}'])
  w.start(total_steps=100, num_epochs=10)
  w.finish(state, **fields)


@pytest.fixture
def jobs(tmp_path, children):
  """A jobs folder with one of everything."""
  root = tmp_path / 'jobs'
  _finished_run(root / 'failed_run', 'failed', error='ValueError: bad learning rate', step=3)
  _finished_run(root / 'stopped_run', 'stopped', step=40, progress=0.4, error='SIGTERM: snapshot saved')
  children.append(_child(str(root / 'running_run'), 'train', 'status.json'))
  killed = _child(str(root / 'sweeps' / 'killed_run'), 'train', 'status.json')
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  children.append(killed)
  # A run made before status.json existed: derived from config.json and the tail of metrics.jsonl.
  old = root / 'old_run'
  _write(old / 'config.json', json.dumps({'num_epochs': 4}))
  lines = [{'step': s, 'epoch': s / 10, 'split': 'train', 'loss': 2.0 / s, 'top1': 0.5} for s in range(1, 31)]
  lines.insert(15, {'step': 15, 'epoch': 1.5, 'split': 'val', 'loss': 1.0, 'top1': 0.625, 'top5': 0.9})
  lines.append({'step': 30, 'epoch': 3.0, 'split': 'val', 'loss': 1.1, 'top1': 0.5, 'top5': 0.9})
  _write(old / 'metrics.jsonl', ''.join(json.dumps(r) + '\n' for r in lines) + '{"step": 31, "ep')
  os.makedirs(old / 'checkpoints' / '30')
  _write(old / 'checkpoints' / '30' / 'status.json', '{"state": "running"}')   # never a row
  _write(root / '.hidden' / 'x' / 'status.json', '{"state": "running"}')      # never a row
  # A prepared dataset (with its final status), and a prepare still running for another output.
  ds = root / 'data' / 'flowers'
  _write(ds / 'stats.json', '{"classes": ["a", "b"]}')
  _write(ds / 'labels.txt', 'a\nb\n')
  _write(ds / 'contact_sheets' / 'status.json', 'garbage')                      # never a row
  w = status_lib.StatusWriter(ds, 'prepare', argv=['/x/alexnet_jax/prepare.py'])
  w.start()
  w.finish('done')
  children.append(_child(str(root / 'data'), 'prepare', '.digits.status.json'))
  prepare_pid = children[-1].pid
  _write(root / 'data' / f'.digits.tmp-{prepare_pid}-abc' / 'train.array_record', 'x' * 10000)
  _finished_run(root / 'done_run', 'done', step=100, progress=1.0, train={'loss': 0.25},
                best_val_top1=0.875, best_epoch=9.0)      # the last updated
  return root


def _run_cli(*args, timeout=60):
  return subprocess.run([sys.executable, '-m', 'alexnet_jax.runs', *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


EXPECTED = {'done_run': ('train', 'done'), 'failed_run': ('train', 'failed'),
            'stopped_run': ('train', 'stopped'), 'running_run': ('train', 'running'),
            'sweeps/killed_run': ('train', 'interrupted'), 'old_run': ('train', 'unknown'),
            'data/flowers': ('dataset', 'done'), 'data/digits': ('prepare', 'running')}


def test_rows_of_every_kind(jobs):
  rows = listing.find_runs([jobs])
  by_name = {r['name']: r for r in rows}
  assert {n: (r['kind'], r['status']) for n, r in by_name.items()} == EXPECTED
  assert [r['status'] for r in rows[:2]] == ['running', 'running']          # running rows first
  running = by_name['running_run']
  assert running['progress'] == 0.3 and 0 < running['eta_seconds'] <= 700
  assert running['best_val_top1'] == 0.55 and running['best_epoch'] == 2.0 and running['train_loss'] == 0.75
  assert running['elapsed_seconds'] >= 0 and running['size_bytes'] > 0
  killed = by_name['sweeps/killed_run']
  assert killed['recorded_state'] == 'running' and killed['eta_seconds'] is None
  assert killed['command'].endswith(f'-m alexnet_jax.train --workdir={jobs / "sweeps" / "killed_run"}')
  old = by_name['old_run']                                  # derived from metrics.jsonl's tail
  assert old['best_val_top1'] == 0.625 and old['best_epoch'] == 1.5 and old['train_loss'] == 2.0 / 30
  assert old['step'] == 30 and old['progress'] == 0.75 and old['size_bytes'] > 0
  prep = by_name['data/digits']
  assert prep['progress'] == 0.25 and prep['size_bytes'] >= 10000 and prep['path'] == str(jobs / 'data' / 'digits')
  assert by_name['failed_run']['error'] == 'ValueError: bad learning rate'
  assert rows[2]['name'] == 'done_run'                     # then the most recently updated


def test_table_and_json_from_the_command_line(jobs):
  r = _run_cli(str(jobs))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  header = lines[0].split()
  assert header[:3] == ['NAME', 'KIND', 'STATUS']
  table = {line.split()[0]: line.split() for line in lines[1:] if not line.startswith(' ')}
  assert {name: tuple(cells[1:3]) for name, cells in table.items()} == EXPECTED
  after = {lines[i - 1].split()[0]: line.strip() for i, line in enumerate(lines) if line.startswith('  ')}
  assert after['sweeps/killed_run'].startswith('resume: ')
  assert after['sweeps/killed_run'].endswith(f'-m alexnet_jax.train --workdir={jobs / "sweeps" / "killed_run"}')
  assert after['stopped_run'].startswith('resume: ')
  assert after['failed_run'] == 'error: ValueError: bad learning rate'
  assert '30.0%' in table['running_run'] and '55.00%' in table['running_run']
  assert '87.50%' in ' '.join(table['done_run'])

  r = _run_cli(str(jobs), '--json')
  assert r.returncode == 0, r.stderr
  rows = json.loads(r.stdout)
  assert {row['name']: (row['kind'], row['status']) for row in rows} == EXPECTED
  assert all(set(row) == set(listing.ROW_KEYS) for row in rows)
  by_name = {row['name']: row for row in rows}
  assert by_name['running_run']['progress'] == 0.3 and by_name['data/flowers']['size_bytes'] > 0

  r = _run_cli(str(jobs / 'nowhere'))
  assert r.returncode == 2 and r.stderr.strip().endswith('nowhere: no such folder')


# ``python -m alexnet_jax.runs`` with Ctrl-C as in a terminal: SIGINT unblocked and raising
# KeyboardInterrupt (a test run earlier in this worker may leave it blocked or ignored, and both are
# inherited through exec).
WATCH = ('import runpy, signal, sys\n'
         'signal.signal(signal.SIGINT, signal.default_int_handler)\n'
         'signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n'
         'sys.argv = ["alexnet_jax/runs.py", *sys.argv[1:]]\n'
         'runpy.run_module("alexnet_jax.runs", run_name="__main__", alter_sys=True)\n')


def test_watch_redraws_until_ctrl_c(jobs):
  proc = subprocess.Popen([sys.executable, '-c', WATCH, str(jobs / 'data'), '--watch=0.2'],
                          cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  watchdog = threading.Timer(300, proc.kill)                # only if it never redraws
  watchdog.start()
  try:
    first = proc.stdout.readline()
    assert first.startswith('NAME'), proc.stderr.read()
    seen = first
    while seen.count('NAME') < 2:                           # redrawn: the header again
      line = proc.stdout.readline()
      assert line, proc.stderr.read()
      seen += line
  finally:
    watchdog.cancel()
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err


def test_reads_no_jax(jobs):
  code = textwrap.dedent("""
      import sys
      from alexnet_jax import runs
      sys.argv = ['alexnet-runs', sys.argv[1], '--json']
      try:
        runs.run()
      except SystemExit as e:
        assert not e.code, e.code
      heavy = sorted(m for m in sys.modules
                     if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'orbax', 'tensorflow', 'grain', 'numpy'))
      print('HEAVY', heavy, file=sys.stderr)
      """)
  r = subprocess.run([sys.executable, '-c', code, str(jobs)], cwd=REPO, env=ENV, capture_output=True,
                     text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  assert len(json.loads(r.stdout)) == len(EXPECTED)
  assert 'HEAVY []' in r.stderr, r.stderr


# ---- prepare: its lock and its status --------------------------------------------------------------

# A prepare (the library call the command makes) that holds its first record until RELEASE exists.
SLOW_PREPARE = """
import os, sys, time
from alexnet_jax.data import preparation, records
src, out, release = sys.argv[1:4]
real = records.Writer.write
def held(self, blob):
  while not os.path.exists(release):
    time.sleep(0.02)
  real(self, blob)
records.Writer.write = held
sys.argv = ['/x/alexnet_jax/prepare.py', '--source=' + src, '--output=' + out]
preparation.prepare_dataset(preparation.PrepareOptions(source=src, output=out, image_size=(16, 16),
                                                       workers=1, progress_interval_s=0.0), track=True)
"""


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('src'))
  synthetic.make_image_folder(root, num_classes=2, per_class=4, size=(24, 24))
  return root


def _wait_for(predicate, timeout=60.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(0.05)
  raise AssertionError('timed out')


def test_second_prepare_of_an_output_is_refused(image_folder, tmp_path):
  out, release = tmp_path / 'data' / 'ds', tmp_path / 'release'
  first = subprocess.Popen([sys.executable, '-c', textwrap.dedent(SLOW_PREPARE), image_folder, str(out),
                            str(release)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    live = tmp_path / 'data' / '.ds.status.json'
    _wait_for(lambda: (status_lib.read_status(live) or {}).get('phase') == 'writing' or first.poll())
    assert first.poll() is None, first.communicate()[1]
    rec = status_lib.read_status(live)
    assert rec['state'] == 'running' and rec['kind'] == 'prepare' and rec['total'] == 8
    row, = listing.find_runs([tmp_path / 'data'])
    assert (row['name'], row['kind'], row['status']) == ('ds', 'prepare', 'running')

    t0 = time.monotonic()
    r = subprocess.run([sys.executable, '-m', 'alexnet_jax.prepare', f'--source={image_folder}',
                        f'--output={out}', '--image_size=16,16'], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f'is in use by process {first.pid} on host' in r.stderr, r.stderr
    assert f'-m alexnet_jax.prepare --source={image_folder} --output={out}' in r.stderr
    assert 'use another --output' in r.stderr and 'Traceback' not in r.stderr
    assert status_lib.read_status(live)['pid'] == first.pid           # the refused one wrote nothing
    print(f'refused in {time.monotonic() - t0:.1f} s')

    release.touch()
    assert first.wait(timeout=60) == 0, first.communicate()[1]
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  assert not live.exists()                                             # moved into the dataset
  done = status_lib.read_status(out)
  assert done['state'] == 'done' and done['done'] == done['total'] == 8 and done['counts']['train'] == 6
  assert os.path.exists(out / 'stats.json')
  row, = listing.find_runs([tmp_path / 'data'])
  assert (row['name'], row['kind'], row['status'], row['progress']) == ('ds', 'dataset', 'done', 1.0)
  assert sorted(os.listdir(tmp_path / 'data')) == ['.ds.lock', 'ds']


def test_failed_and_stopped_prepares_leave_only_their_status(image_folder, tmp_path, monkeypatch):
  out = tmp_path / 'ds'
  opts = preparation.PrepareOptions(source=image_folder, output=str(out), image_size=(16, 16), workers=1,
                                    progress_interval_s=0.0)
  real_write = records.Writer.write
  calls = {'n': 0}

  def failing_write(self, blob):
    calls['n'] += 1
    if calls['n'] == 3:
      raise KeyboardInterrupt
    real_write(self, blob)

  monkeypatch.setattr(records.Writer, 'write', failing_write)
  with pytest.raises(KeyboardInterrupt):
    preparation.prepare_dataset(opts, stream=io.StringIO(), track=True)
  rec = status_lib.read_status(preparation.live_status_path(str(out)))
  assert rec['state'] == 'stopped' and rec['done'] >= 2
  assert sorted(os.listdir(tmp_path)) == ['.ds.lock', '.ds.status.json']   # no half dataset
  row, = listing.find_runs([tmp_path])
  assert (row['name'], row['kind'], row['status']) == ('ds', 'prepare', 'stopped')
  assert listing.find_runs([out])[0]['status'] == 'stopped'              # asked for by its output's name

  monkeypatch.setattr(records.Writer, 'write', real_write)
  bad = preparation.PrepareOptions(source=image_folder, output=str(out), min_per_class=100)
  with pytest.raises(errors.DataError, match='fewer than 2 usable classes'):
    preparation.prepare_dataset(bad, stream=io.StringIO(), track=True)
  rec = status_lib.read_status(preparation.live_status_path(str(out)))
  assert rec['state'] == 'failed' and 'fewer than 2 usable classes' in rec['error']

  preparation.prepare_dataset(opts, stream=io.StringIO(), track=True)
  assert sorted(os.listdir(tmp_path)) == ['.ds.lock', 'ds']
  # A request refused before it starts (the output exists) writes no status at all.
  with pytest.raises(errors.DataError, match='already exists'):
    preparation.prepare_dataset(opts, stream=io.StringIO(), track=True)
  assert sorted(os.listdir(tmp_path)) == ['.ds.lock', 'ds']
  with lock_lib.WorkdirLock(out, what='prepare', lock_file=preparation.lock_path(str(out))):
    with pytest.raises(lock_lib.WorkdirBusyError, match='this process'):
      preparation.prepare_dataset(opts, stream=io.StringIO(), track=True)
