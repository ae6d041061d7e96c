r"""The dashboard's speed: start time, page renders with 200 jobs, the live stream's cost, idle CPU.

    python -m benchmarks.dashboard [--jobs=200] [--repeats=15] [--idle_s=20] [--json=PATH]

The issue's targets: the web process starts in under 2 s (and never imports JAX), Home and job pages
render in under 300 ms with 200 jobs in the folder, the live stream reads only the bytes appended to
metrics.jsonl, and an idle dashboard uses under 1% of a core. Measured against the real server
(``python -m alexnet_jax.dashboard`` in a subprocess, HTTP on 127.0.0.1) on a jobs folder of ``--jobs``
synthetic jobs -- half dataset jobs (stats.json, lists, mean.png), half model jobs (status.json, a
64 KiB-plus metrics.jsonl of 800 records, config.json, train.log, 5 snapshots of 4 files) -- like the
folder ``runs.benchmark`` lists. It prints medians (and the spread) of:

* ``start_s``: from ``exec`` to the first answered ``/index.json``, over 5 starts;
* ``import_create_s``: importing the app and building it, in-process (no server);
* ``render_ms``: Home (``/``), ``/index.json``, a model page, a dataset page and their JSON twins.
  ``cold`` is a request after the 2 s listing cache expired (it walks the whole folder, sizes
  included); ``warm`` reuses the listing, as a page refreshing every 2 s mostly does;
* ``stream``: an SSE stream on a model whose metrics.jsonl has 100,000 records: time to the first
  event (the whole file, once), the latency from an append to its event, and ``MetricsTail.poll`` once
  caught up (one ``stat``) against re-reading the file;
* ``idle_cpu_percent``: CPU of the web process over ``--idle_s`` seconds with no client, then with 5
  live streams open on finished jobs (``/proc/PID/stat``, utime + stime); the worker process (which
  imports JAX for the forms' checks) separately.

Benchmarks are not tests (STYLE.md): nothing here asserts a speed; results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from alexnet_jax.runtime import fileio
from alexnet_jax.runtime import process
from alexnet_jax.dashboard import stream as stream_lib

HZ = os.sysconf('SC_CLK_TCK')


# ---- A jobs folder of N synthetic jobs -------------------------------------------------------------

def make_jobs(root: str, num_jobs: int) -> dict[str, list[str]]:
  """Writes ``num_jobs`` job folders (half datasets, half models) under ``root``; returns their ids."""
  line = json.dumps({'step': 100, 'epoch': 1.0, 'split': 'train', 'loss': 0.5, 'top1': 0.8, 'lr': 0.01})
  val = json.dumps({'step': 100, 'epoch': 1.0, 'split': 'val', 'loss': 0.6, 'top1': 0.75, 'top5': 0.9})
  ids = {'dataset': [], 'model': []}
  now = time.time()
  png = _tiny_png()
  for i in range(num_jobs):
    kind = 'dataset' if i % 2 == 0 else 'model'
    job_id = f'20250101-{i:06d}-{i % 65536:04x}'
    jobdir = os.path.join(root, job_id)
    os.makedirs(jobdir)
    doc = {'version': 1, 'id': job_id, 'kind': kind, 'name': f'{kind} {i}', 'group': f'g{i % 7}',
           'notes': '', 'created': '2025-01-01T00:00:00+00:00', 'created_unix': now - 1000 + i,
           'queued_unix': now - 1000 + i, 'argv': ['python', '-m', f'alexnet_jax.{"prepare" if kind == "dataset" else "train"}'],
           'cwd': root, 'form': {'resize_width': 64, 'resize_height': 64, 'resize_channels': 3,
                                 'resize_mode': 'squash', 'encoding': 'jpg'},
           'dataset': ids['dataset'][-1] if kind == 'model' else None, 'devices_needed': 1, 'attempt': 1,
           'devices': [], 'state': 'done', 'pid': 2**22 + i, 'started_unix': now - 900 + i,
           'finished_unix': now - 800 + i,
           'history': [{'state': s, 'time': '2025-01-01T00:00:00+00:00', 'unix': now} for s in
                       ('queued', 'running', 'done')]}
    fileio.write_json(os.path.join(jobdir, 'job.json'), doc)
    with open(os.path.join(jobdir, 'output.log'), 'w') as f:
      f.write('I0101 00:00:00.000000 1 x.py:1] a log line\n' * 200)
    if kind == 'dataset':
      out = os.path.join(jobdir, 'dataset')
      os.makedirs(out)
      classes = [f'class_{c}' for c in range(10)]
      fileio.write_json(os.path.join(out, 'stats.json'), {
          'classes': classes, 'counts': {'train': {c: 75 for c in classes}, 'val': {c: 25 for c in classes}},
          'image_size': [64, 64], 'resize_mode': 'squash', 'channels': 3, 'encoding': 'jpg',
          'source': 'folder /data/x', 'skipped': [], 'dropped_classes': []})
      with open(os.path.join(out, 'labels.txt'), 'w') as f:
        f.write('\n'.join(classes) + '\n')
      for split, n in (('train', 750), ('val', 250)):
        with open(os.path.join(out, f'{split}.txt'), 'w') as f:
          f.writelines(f'/data/x/class_{k % 10}/{k:05d}.jpg {k % 10}\n' for k in range(n))
        with open(os.path.join(out, f'{split}.array_record'), 'wb') as f:
          f.write(b'\0' * 65536)
      with open(os.path.join(out, 'mean.png'), 'wb') as f:
        f.write(png)
      fileio.write_json(os.path.join(out, 'status.json'), {
          'kind': 'prepare', 'state': 'done', 'started_unix': now - 900, 'finished_unix': now - 800,
          'updated_unix': now - 800, 'progress': 1.0, 'done': 1000, 'total': 1000, 'phase': 'done'})
    else:
      with open(os.path.join(jobdir, 'metrics.jsonl'), 'w') as f:
        for k in range(800):
          f.write((val if k % 10 == 9 else line) + '\n')
      with open(os.path.join(jobdir, 'train.log'), 'w') as f:
        f.write('I0101 00:00:00.000000 1 train.py:1] a log line\n' * 200)
      fileio.write_json(os.path.join(jobdir, 'config.json'), {
          'num_epochs': 10, 'model': {'name': 'alexnet', 'width': 0.25}, 'layout': 'model',
          'optimizer': 'sgd', 'learning_rate': 0.01, 'lr': {'policy': 'step'}, 'batch_size': 32})
      for s in range(5):
        snap = os.path.join(jobdir, 'checkpoints', str(100 * (s + 1)))
        os.makedirs(snap)
        for part in range(4):
          with open(os.path.join(snap, f'part{part}'), 'wb') as f:
            f.write(b'x' * 4096)
      fileio.write_json(os.path.join(jobdir, 'status.json'), {
          'kind': 'train', 'state': 'done', 'pid': 2**22 + i, 'host': socket.gethostname(), 'step': 500,
          'total_steps': 500, 'epoch': 10.0, 'started_unix': now - 900, 'finished_unix': now - 800,
          'updated_unix': now - 800, 'train': {'loss': 0.5}, 'best_val_top1': 0.8, 'best_epoch': 9.0,
          'snapshots': [100, 200, 300, 400, 500]})
    with open(os.path.join(jobdir, 'exit.json'), 'w') as f:
      json.dump({'exit_status': 0, 'runner_pid': 2**22 + i}, f)
    ids[kind].append(job_id)
  return ids


def _tiny_png() -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  import PIL.Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  PIL.Image.new('RGB', (64, 64), (120, 120, 120)).save(buf, format='PNG')
  return buf.getvalue()


# ---- The server ------------------------------------------------------------------------------------

class Server:
  def __init__(self, jobs_dir: str, data_root: str):
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      self.port = s.getsockname()[1]
    self.base = f'http://127.0.0.1:{self.port}'
    self.args = [sys.executable, '-m', 'alexnet_jax.dashboard', f'--jobs_dir={jobs_dir}',
                 f'--port={self.port}', f'--data_root={data_root}']
    self.proc = None

  def start(self) -> float:
    t0 = time.perf_counter()
    self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
      try:
        with urllib.request.urlopen(self.base + '/index.json', timeout=5) as r:
          r.read()
          return time.perf_counter() - t0
      except OSError:
        if self.proc.poll() is not None:
          raise RuntimeError('the dashboard exited') from None
        time.sleep(0.01)

  def stop(self) -> None:
    if self.proc is not None:
      self.proc.terminate()
      self.proc.wait(timeout=30)
      self.proc = None

  def children(self) -> list[int]:
    try:
      with open(f'/proc/{self.proc.pid}/task/{self.proc.pid}/children') as f:
        return [int(p) for p in f.read().split()]
    except OSError:
      return []


def cpu_seconds(pid: int) -> float:
  ticks = process.cpu_ticks(pid)
  if ticks is None:
    raise OSError(f'cannot read /proc/{pid}/stat')
  return ticks / HZ


def get_ms(url: str) -> float:
  t0 = time.perf_counter()
  with urllib.request.urlopen(url, timeout=30) as r:
    r.read()
  return 1000 * (time.perf_counter() - t0)


def summary(values: list[float], digits: int = 1) -> dict:
  return {'median': round(statistics.median(values), digits), 'min': round(min(values), digits),
          'max': round(max(values), digits), 'n': len(values)}


# ---- Measurements ------------------------------------------------------------------------------------

def measure_renders(server: Server, ids: dict, repeats: int) -> dict:
  model, dataset = ids['model'][len(ids['model']) // 2], ids['dataset'][len(ids['dataset']) // 2]
  urls = {'home': '/', 'index.json': '/index.json', 'model page': f'/models/{model}',
          'model.json': f'/models/{model}.json', 'dataset page': f'/datasets/{dataset}',
          'dataset.json': f'/datasets/{dataset}.json', 'explore': f'/datasets/{dataset}/explore?label=3'}
  for url in urls.values():
    get_ms(server.base + url)                              # warm-up: templates compiled, caches filled
  out = {}
  for name, url in urls.items():
    warm = [get_ms(server.base + url) for _ in range(repeats)]
    cold = []
    if name in ('home', 'index.json'):
      for _ in range(max(3, repeats // 3)):
        time.sleep(2.1)                                    # the listing cache (jobs.ROWS_TTL_S) expires
        cold.append(get_ms(server.base + url))
    out[name] = {'warm_ms': summary(warm)}
    if cold:
      out[name]['cold_ms'] = summary(cold)
  return out


def mark_running(jobs_dir: str, job_id: str) -> None:
  """Makes a job look re-attached and running (its pid is this process), so its stream polls at the
  running rate (``app.STREAM_POLL_S``) rather than the finished one."""
  path = os.path.join(jobs_dir, job_id, 'job.json')
  with open(path) as f:
    doc = json.load(f)
  doc.update(state='running', pid=os.getpid(), host=socket.gethostname(), boot_id=process.boot_id(),
             process_start_ticks=process.process_start_ticks())
  fileio.write_json(path, doc)
  os.unlink(os.path.join(jobs_dir, job_id, 'exit.json'))


def measure_stream(server: Server, jobs_dir: str, model: str, appends: int = 10) -> dict:
  """One live stream of a running job whose metrics.jsonl holds 100,000 records."""
  path = os.path.join(jobs_dir, model, 'metrics.jsonl')
  size = os.path.getsize(path)
  latencies, first_event = [], None
  t0 = time.perf_counter()
  response = urllib.request.urlopen(f'{server.base}/models/{model}/stream', timeout=30)
  appended_at: dict[int, float] = {}
  stop = threading.Event()

  def appender():
    time.sleep(1.0)
    for k in range(appends):
      if stop.is_set():
        return
      with open(path, 'a') as f:
        appended_at[200000 + k] = time.perf_counter()
        f.write(json.dumps({'step': 200000 + k, 'epoch': 1.0, 'split': 'train', 'loss': 0.4}) + '\n')
      time.sleep(0.7)

  thread = threading.Thread(target=appender, daemon=True)
  thread.start()
  event = None
  deadline = time.monotonic() + 60
  try:
    for raw in response:
      text = raw.decode().rstrip('\n')
      if text.startswith('event: '):
        event = text[7:]
      elif text.startswith('data: ') and event == 'metrics':
        now = time.perf_counter()
        records = json.loads(text[6:])
        if first_event is None:
          first_event = now - t0
          continue
        for r in records:
          if r.get('step') in appended_at:
            latencies.append(1000 * (now - appended_at[r['step']]))
      if len(latencies) >= appends or time.monotonic() > deadline:
        break
  finally:
    stop.set()
    response.close()
  tail = stream_lib.MetricsTail(path)
  tail.poll()
  polls = []
  for _ in range(200):
    t = time.perf_counter()
    tail.poll()
    polls.append(1e6 * (time.perf_counter() - t))
  rereads = []
  for _ in range(5):
    t = time.perf_counter()
    with open(path, 'rb') as f:
      [json.loads(x) for x in f.read().split(b'\n') if x]
    rereads.append(1e3 * (time.perf_counter() - t))
  return {'metrics_records': 100_000 + appends, 'metrics_bytes': size, 'first_event_s': round(first_event, 3),
          'append_to_event_ms': summary(latencies) if latencies else None,
          'poll_caught_up_us': summary(polls, 2), 'reread_whole_file_ms': summary(rereads),
          'stream_poll_interval_s': 0.5}


def write_big_metrics(jobs_dir: str, model: str, records: int = 100_000) -> None:
  line = json.dumps({'step': 1, 'epoch': 0.01, 'split': 'train', 'loss': 0.5, 'top1': 0.8, 'lr': 0.01})
  with open(os.path.join(jobs_dir, model, 'metrics.jsonl'), 'w') as f:
    for _ in range(records):
      f.write(line + '\n')


def measure_idle(server: Server, ids: dict, seconds: float) -> dict:
  pid = server.proc.pid
  time.sleep(12.0)                              # the worker's start-up (it imports JAX) is over
  workers = server.children()
  c0 = cpu_seconds(pid)
  w0 = sum(cpu_seconds(w) for w in workers)
  time.sleep(seconds)
  idle = 100 * (cpu_seconds(pid) - c0) / seconds
  worker = 100 * (sum(cpu_seconds(w) for w in workers) - w0) / seconds
  streams = [urllib.request.urlopen(f'{server.base}/models/{m}/stream', timeout=30) for m in ids['model'][:5]]
  # (finished jobs: their streams poll every app.STREAM_IDLE_POLL_S)
  time.sleep(3.0)
  c0 = cpu_seconds(pid)
  time.sleep(seconds)
  with_streams = 100 * (cpu_seconds(pid) - c0) / seconds
  for s in streams:
    s.close()
  return {'web_idle_percent_of_a_core': round(idle, 2), 'web_with_5_streams_percent': round(with_streams, 2),
          'worker_idle_percent': round(worker, 2), 'seconds': seconds}


def measure_import(jobs_dir: str) -> dict:
  code = ('import sys, time; t = time.perf_counter(); from alexnet_jax.dashboard import app as a; '
          f'a.create_app(a.Settings(jobs_dir={jobs_dir!r}, start_worker=False)); '
          'print(time.perf_counter() - t, "jax" in sys.modules)')
  times = []
  for _ in range(5):
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    seconds, jax_loaded = out.stdout.split()
    times.append(float(seconds))
  return {'import_create_s': summary(times, 3), 'jax_imported': jax_loaded == 'True'}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m benchmarks.dashboard', description=__doc__.split('\n\n')[0])
  p.add_argument('--jobs', type=int, default=200)
  p.add_argument('--repeats', type=int, default=15)
  p.add_argument('--idle_s', type=float, default=20.0)
  p.add_argument('--json', default='')
  args = p.parse_args(argv)
  tmp = tempfile.mkdtemp(prefix='dashboard-bench-')
  try:
    jobs_dir, data = os.path.join(tmp, 'jobs'), os.path.join(tmp, 'data')
    os.makedirs(data)
    t = time.perf_counter()
    ids = make_jobs(jobs_dir, args.jobs)
    print(f'{args.jobs} jobs written in {time.perf_counter() - t:.1f} s ({jobs_dir})', flush=True)
    report = {'machine': f'{platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}',
              'jobs': args.jobs}
    report.update(measure_import(jobs_dir))
    server = Server(jobs_dir, data)
    starts = []
    for _ in range(5):
      starts.append(server.start())
      server.stop()
    report['start_s'] = summary(starts, 3)
    live = ids['model'][-1]
    write_big_metrics(jobs_dir, live)
    mark_running(jobs_dir, live)
    server.start()
    try:
      report['render'] = measure_renders(server, ids, args.repeats)
      report['stream'] = measure_stream(server, jobs_dir, live)
      report['idle'] = measure_idle(server, ids, args.idle_s)
    finally:
      server.stop()
    report['load_after'] = round(os.getloadavg()[0], 1)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps(report, indent=1))
  print(f"\nstart {report['start_s']['median']} s (import + app {report['import_create_s']['median']} s, "
        f"jax imported: {report['jax_imported']})")
  for name, r in report['render'].items():
    cold = f", cold {r['cold_ms']['median']} ms" if 'cold_ms' in r else ''
    print(f"{name:14s} warm {r['warm_ms']['median']} ms{cold}")
  s = report['stream']
  latency = s['append_to_event_ms'] and s['append_to_event_ms']['median']
  print(f"stream: first event {s['first_event_s']} s for {s['metrics_records']} records; append -> event "
        f"{latency} ms; caught-up poll {s['poll_caught_up_us']['median']} us vs "
        f"re-reading {s['reread_whole_file_ms']['median']} ms")
  i = report['idle']
  print(f"idle CPU: web {i['web_idle_percent_of_a_core']}% of a core, with 5 streams "
        f"{i['web_with_5_streams_percent']}%, worker {i['worker_idle_percent']}%")
  if args.json:
    fileio.write_json(args.json, report, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
