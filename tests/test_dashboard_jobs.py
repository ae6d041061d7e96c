"""Dashboard jobs without the web layer: the runner's exit record, Abort, re-attaching, the queue, streams.

The job commands here are tiny Python processes (``python -c``), not the real tools, so the job machinery
itself is what is timed: each test takes a second or two.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from alexnet_jax.dashboard import jobs as jobs_lib
from alexnet_jax.dashboard import errors as errors_lib
from alexnet_jax.dashboard.workers import runner as runner_lib
from alexnet_jax.dashboard import security
from alexnet_jax.dashboard import stream as stream_lib

SLEEPER = ['python', '-c', 'import time, sys; print("sta" + "rted", flush=True); time.sleep(60)']
# A stand-in for the trainer: on SIGTERM it "snapshots" and exits 75, as train.py does.
STOPPABLE = ['python', '-c', 'import signal, sys, time\n'
             'signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n'
             'print("tr" + "aining", flush=True)\n'
             'time.sleep(60)']


def _until(predicate, timeout=300.0):   # a ceiling: an event that takes seconds on a busy host
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if predicate():
      return True
    time.sleep(0.05)
  return predicate()


def _log(jobdir):
  try:
    return (jobdir / runner_lib.OUTPUT_LOG).read_text()
  except FileNotFoundError:
    return ''


def _manager(path, **kw):
  return jobs_lib.JobManager(str(path), poll_s=0.05, devices=['cpu'], **kw)


def _dataset_job(m, argv, name='d'):
  return m.create('dataset', name=name, argv=argv, form={})


def test_runner_records_the_exit_status(tmp_path):
  status = subprocess.run([sys.executable, '-m', 'alexnet_jax.dashboard.workers.runner', str(tmp_path), '--',
                           'python', '-c', 'import sys; print("hello"); sys.exit(3)'], timeout=30).returncode
  assert status == 3
  record = json.loads((tmp_path / runner_lib.EXIT_FILE).read_text())
  assert record['exit_status'] == 3 and record['signal'] is None and record['runner_pid'] > 0
  assert 'hello' in (tmp_path / runner_lib.OUTPUT_LOG).read_text()
  assert subprocess.run([sys.executable, '-m', 'alexnet_jax.dashboard.workers.runner', 'x'],
                        capture_output=True, timeout=30).returncode == 2


# The runner, with the group's SIGTERM (an Abort) arriving after its handlers are installed but before
# the tool exists -- on a busy host the few milliseconds in which an Abort pressed at once lands there.
EARLY_ABORT = '''
import os, signal, subprocess, sys
from alexnet_jax.dashboard.workers import runner
start = subprocess.Popen
def popen(*args, **kwargs):
  os.kill(os.getpid(), signal.SIGTERM)
  return start(*args, **kwargs)
subprocess.Popen = popen
sys.exit(runner.main(['runner', sys.argv[1], '--', 'python', '-c', 'import time; time.sleep(600)']))
'''


def test_an_abort_before_the_tool_started_still_stops_it(tmp_path):
  proc = subprocess.Popen([sys.executable, '-c', EARLY_ABORT, str(tmp_path)], start_new_session=True)
  try:
    proc.wait(timeout=120)            # the tool sleeps 600 s unless the runner passes the signal on
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  record = json.loads((tmp_path / runner_lib.EXIT_FILE).read_text())
  assert record['signal'] == signal.SIGTERM and record['exit_status'] is None, record


def test_abort_and_resume(tmp_path):
  m = _manager(tmp_path)
  job = _dataset_job(m, STOPPABLE)
  m.tick()
  assert job.state == 'running' and job.doc['attempt'] == 1
  assert _until(lambda: 'training' in _log(tmp_path / job.id))
  assert m.abort(job.id) == 'aborting'
  assert _until(lambda: (m.tick(), job.state)[1] == 'stopped')
  assert job.doc['exit_status'] == 75 and job.doc['devices'] == []
  assert [h['state'] for h in job.doc['history']] == ['queued', 'running', 'stopped']
  assert m.resume(job.id) == 'queued'
  m.tick()
  assert job.state == 'running' and job.doc['attempt'] == 2
  assert job.doc['argv'] == STOPPABLE                                       # the same argv
  with pytest.raises(errors_lib.DashboardError):
    m.resume(job.id)                                                        # running: not resumable
  m.abort(job.id)
  assert _until(lambda: (m.tick(), job.state)[1] == 'stopped')
  on_disk = json.loads((tmp_path / job.id / 'job.json').read_text())
  assert on_disk['state'] == 'stopped' and on_disk['attempt'] == 2


def test_failure_keeps_the_error(tmp_path):
  m = _manager(tmp_path)
  job = _dataset_job(m, ['python', '-c', 'import sys; print("error: no such folder", file=sys.stderr); '
                                          'sys.exit(1)'])
  m.tick()
  assert _until(lambda: (m.tick(), job.state)[1] == 'failed')
  assert job.doc['exit_status'] == 1 and job.doc['error'] == 'error: no such folder'
  assert m.job_row(job)['status_text'] == 'Error'


def test_a_restarted_dashboard_reattaches_a_running_job(tmp_path):
  m = _manager(tmp_path)
  job = _dataset_job(m, STOPPABLE)
  m.tick()
  pid = job.doc['pid']
  assert _until(lambda: 'training' in _log(tmp_path / job.id))
  del m                                    # the dashboard "restarts": a new manager on the same folder
  again = _manager(tmp_path)
  twin = again.get(job.id)
  assert twin.state == 'running' and twin.doc['pid'] == pid        # re-attached, not interrupted
  again.tick()
  assert twin.state == 'running'
  assert again.abort(job.id) == 'aborting'                          # killpg works without being the parent
  assert _until(lambda: (again.tick(), twin.state)[1] == 'stopped')  # from the runner's exit.json
  assert twin.doc['exit_status'] == 75


def test_a_job_whose_process_vanished_is_interrupted(tmp_path):
  m = _manager(tmp_path)
  job = _dataset_job(m, SLEEPER)
  m.tick()
  os.killpg(job.doc['pid'], signal.SIGKILL)          # runner and tool die without an exit record
  assert _until(lambda: (m.tick(), job.state)[1] == 'interrupted')
  assert m.resume(job.id) == 'queued'
  # A record whose pid now belongs to another process (start time differs) is not re-attached.
  m.tick()
  m.abort(job.id)
  assert _until(lambda: (m.tick(), job.state)[1] == 'stopped')
  doc = json.loads((tmp_path / job.id / 'job.json').read_text())
  doc.update(state='running', pid=os.getpid(), process_start_ticks=1, abort_requested=False)
  (tmp_path / job.id / 'job.json').write_text(json.dumps(doc))
  (tmp_path / job.id / 'exit.json').unlink(missing_ok=True)
  assert _manager(tmp_path).get(job.id).state == 'interrupted'


def test_a_runner_that_cannot_start_leaves_its_reason(tmp_path):
  # A broken install: the interpreter cannot import the runner, so no exit record is ever written. The
  # job is interrupted, and its state and log say why instead of a bare "gone".
  broken = tmp_path / 'python'
  broken.write_text('#!/bin/sh\necho "/usr/bin/python: Error while finding module specification for '
                    '\'alexnet_jax.dashboard.workers.runner\' (ModuleNotFoundError: No module named '
                    '\'alexnet_jax\')" >&2\nexit 1\n')
  broken.chmod(0o755)
  m = _manager(tmp_path / 'jobs', python=str(broken))
  job = _dataset_job(m, SLEEPER)
  m.tick()
  assert _until(lambda: (m.tick(), job.state)[1] == 'interrupted')
  assert "No module named 'alexnet_jax'" in job.doc['history'][-1]['note']
  assert "No module named 'alexnet_jax'" in _log(tmp_path / 'jobs' / job.id)


def test_queue_limits(tmp_path):
  m = _manager(tmp_path, max_dataset_jobs=2)
  datasets = [_dataset_job(m, SLEEPER, name=f'd{i}') for i in range(3)]
  m.tick()
  assert [d.state for d in datasets] == ['running', 'running', 'queued']
  assert m.job_row(datasets[2])['status_text'] == 'Waiting: other datasets are being built'
  model = m.create('model', name='m', argv=SLEEPER, form={}, dataset=datasets[0].id)
  other = m.create('model', name='m2', argv=SLEEPER, form={}, dataset=datasets[0].id)
  m.tick()
  assert model.state == 'queued' and m.job_row(model)['status_text'] == 'Waiting: dataset not done'
  for d in datasets:
    m.abort(d.id)
  assert _until(lambda: (m.tick(), all(d.state == 'stopped' for d in datasets))[1])
  m.tick()
  assert model.wait_reason == 'dataset stopped: resume it first'
  datasets[0].doc['state'] = 'done'                    # pretend the prepare finished
  m.tick()
  assert model.state == 'running' and model.doc['devices'] == ['cpu']
  assert other.state == 'queued' and other.wait_reason == f'devices busy ({model.id})'
  assert m.device_summary() == {'devices': [{'name': 'cpu', 'job': model.id}], 'free': 0, 'total': 1}
  with pytest.raises(errors_lib.DashboardError, match='used by'):
    m.delete(datasets[0].id)
  assert m.delete(model.id) == 'deleting'                # running: aborted first, removed when it stops
  assert _until(lambda: (m.tick(), m.get(model.id) is None)[1])
  assert not (tmp_path / model.id).exists()
  assert other.state == 'running'                        # the freed device went to the next job
  m.abort(other.id)
  assert _until(lambda: (m.tick(), other.state)[1] == 'stopped')


def test_gpu_hosts_give_each_job_its_layouts_devices(tmp_path):
  m = jobs_lib.JobManager(str(tmp_path), poll_s=0.05, devices=['gpu0', 'gpu1', 'gpu2'])
  d = _dataset_job(m, ['python', '-c', 'pass'])
  d.doc['state'] = 'done'
  env = ['python', '-c', 'import os, time; print(os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True); '
                         'time.sleep(60)']
  two = m.create('model', name='two', argv=env, form={}, dataset=d.id, devices_needed=2)
  one = m.create('model', name='one', argv=env, form={}, dataset=d.id, devices_needed=1)
  big = m.create('model', name='big', argv=env, form={}, dataset=d.id, devices_needed=2)
  m.tick()
  assert two.doc['devices'] == ['gpu0', 'gpu1'] and one.doc['devices'] == ['gpu2'] and big.state == 'queued'
  assert _until(lambda: '0,1' in _log(tmp_path / two.id))
  for j in (two, one, big):
    m.abort(j.id)
  assert _until(lambda: (m.tick(), all(j.state == 'stopped' for j in (two, one, big)))[1])


def test_metrics_tail_reads_only_what_was_appended(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  tail = stream_lib.MetricsTail(str(path))
  assert tail.poll() == (False, [])
  path.write_text('{"step": 1, "split": "train", "loss": 2.0}\n{"step": 2, "split": "tr')
  reset, records = tail.poll()
  assert not reset and [r['step'] for r in records] == [1]           # the torn line waits
  with open(path, 'a') as f:
    f.write('ain", "loss": NaN}\n')
  reset, records = tail.poll()
  assert records == [{'step': 2, 'split': 'train', 'loss': None}]    # NaN -> null for the browser
  read = tail.bytes_read
  assert tail.poll() == (False, []) and tail.bytes_read == read      # nothing new: nothing read
  tmp = tmp_path / 'new'
  tmp.write_text('{"step": 1, "split": "train", "loss": 2.0}\n')
  os.replace(tmp, path)                                              # a resume rewrote it: new inode
  reset, records = tail.poll()
  assert reset and [r['step'] for r in records] == [1]


def test_confine(tmp_path):
  root = tmp_path / 'root'
  (root / 'a').mkdir(parents=True)
  (tmp_path / 'secret').mkdir()
  os.symlink(tmp_path / 'secret', root / 'link')
  roots = security.resolve_roots([root])
  assert security.confine(str(root / 'a'), roots, want='dir') == (root / 'a').resolve()
  assert security.confine('a', roots, want='dir') == (root / 'a').resolve()       # relative to the root
  for bad, words in ((str(tmp_path / 'secret'), 'no such folder inside'), ('link', 'no such folder inside'),
                     (str(root / 'a' / '..' / '..' / 'secret'), 'no such folder inside'),
                     ('nope', 'no such folder inside'), ('', 'required'), ('a\x00b', 'not a valid path')):
    with pytest.raises(security.PathError, match=words) as e:
      security.confine(bad, roots, want='dir')
    assert str(tmp_path / 'secret') not in str(e.value).replace(bad, '')   # no link target named
  with pytest.raises(security.PathError, match='not a file'):
    security.confine('a', roots, want='file')
  assert security.origin_ok(None, '127.0.0.1:5000')
  assert security.origin_ok('http://127.0.0.1:5000', '127.0.0.1:5000')
  assert not security.origin_ok('http://127.0.0.1:5001', '127.0.0.1:5000')
  assert not security.origin_ok('null', '127.0.0.1:5000')
  assert security.split_host('[::1]:5000') == '::1' and security.split_host('LOCALHOST:1') == 'localhost'
