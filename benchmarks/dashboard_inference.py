r"""The dashboard's inference speed: first and later Classify One, a 1,000-image Classify Many, a download.

    python -m benchmarks.dashboard_inference [--images=1000] [--repeats=10] [--json=PATH]

Against the real server (``python -m alexnet_jax.dashboard`` in a subprocess, HTTP on 127.0.0.1), on a
jobs folder it fills through the dashboard's own routes: a dataset job over ``--images`` generated JPEGs
(4 classes, 64x48, squashed to 72x72) and a model job (AlexNet, width 1/16, crop 64, one epoch). Then:

* ``classify_one_first_s``: the first Classify One of a snapshot on a layout (the worker restores it
  and compiles the eval step), for ``single`` and for ``model`` (the towers on two devices);
* ``classify_one_later_ms``: the median of ``--repeats`` later ones (the model stays loaded);
* ``classify_many_s``: from the POST of a ``--images``-line list to the job's ``done`` (a new process:
  JAX import, restore, compile, then the images), with the job's own images/s;
* ``download_first_s`` / ``download_later_ms``: the .tar.gz bundle (exported once, then cached).

Benchmarks are not tests (STYLE.md): nothing here asserts a speed; results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time

import httpx

from alexnet_jax.data import synthetic
from benchmarks.dashboard import Server


def _wait(client: httpx.Client, url: str, timeout: float = 1200) -> dict:
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    view = client.get(url).json()
    if (view.get('state') or view.get('status')) not in ('queued', 'running'):   # ours; DIGITS' in status
      return view
    time.sleep(0.2)
  raise RuntimeError(f'{url} did not finish in {timeout} s')


def _post(client: httpx.Client, url: str, **kw) -> dict:
  r = client.post(url, **kw)
  if r.status_code != 200:
    raise RuntimeError(f'{url}: HTTP {r.status_code}: {r.text[:500]}')
  return r.json()


def _classify_one(client: httpx.Client, model: str, image: str, layout: str) -> tuple[float, dict]:
  t0 = time.perf_counter()
  answer = _post(client, '/models/images/classification/classify_one.json',
                 data={'job_id': model, 'image_path': image, 'layout': layout})
  return time.perf_counter() - t0, answer


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--images', type=int, default=1000)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  tmp = tempfile.mkdtemp(prefix='dashboard-inference-')
  data, jobs = os.path.join(tmp, 'data'), os.path.join(tmp, 'jobs')
  per_class = -(-args.images // 4)
  synthetic.make_image_folder(os.path.join(data, 'shapes'), num_classes=4, per_class=per_class, size=(64, 48))
  server = Server(jobs, data)
  result: dict = {'machine': f'{platform.node()} ({os.cpu_count()} CPUs)', 'load_before': os.getloadavg()}
  try:
    server.start()
    token = open(os.path.join(jobs, '.dashboard', 'token'), encoding='utf-8').read().strip()
    client = httpx.Client(base_url=server.base, headers={'Authorization': f'Bearer {token}'}, timeout=600)
    dataset = _post(client, '/datasets/images/classification.json', data={
        'method': 'folder', 'folder_train': os.path.join(data, 'shapes'), 'resize_width': '72',
        'resize_height': '72', 'resize_mode': 'squash', 'folder_pct_val': '25', 'folder_pct_test': '0',
        'dataset_name': 'shapes'})['id']
    assert _wait(client, f'/datasets/{dataset}.json')['status'] == 'Done'
    model = _post(client, '/models/images/classification.json', data={
        'dataset': dataset, 'model_name': 'bench', 'train_epochs': '1', 'batch_size': '32',
        'learning_rate': '0.01', 'standard_networks': 'alexnet', 'width': '0.0625', 'crop_size': '64',
        'layout': 'single', 'solver_type': 'sgd', 'lr_policy': 'fixed', 'snapshot_interval': '1',
        'val_interval': '1'})['id']
    assert _wait(client, f'/models/{model}.json')['status'] == 'Done'
    folder = os.path.join(data, 'shapes')
    classes = sorted(os.listdir(folder))
    images = [(os.path.join(folder, c, n), i) for i, c in enumerate(classes)
              for n in sorted(os.listdir(os.path.join(folder, c)))][:args.images]

    for layout in ('single', 'model'):
      first, answer = _classify_one(client, model, images[0][0], layout)
      later = [_classify_one(client, model, images[k % len(images)][0], layout)[0]
               for k in range(1, args.repeats + 1)]
      result[f'classify_one_{layout}'] = {
          'first_s': round(first, 3), 'first_worker_timings': answer.get('timings'),
          'later_ms': {'median': round(1000 * statistics.median(later), 1),
                       'min': round(1000 * min(later), 1), 'max': round(1000 * max(later), 1)}}

    listing = '\n'.join(f'{path} {label}' for path, label in images) + '\n'
    t0 = time.perf_counter()
    job = _post(client, '/models/images/classification/classify_many.json', data={'job_id': model},
                files={'image_list': ('list.txt', listing.encode(), 'text/plain')})['job_id']
    view = _wait(client, f'/jobs/{job}.json')
    result['classify_many'] = {'images': len(images), 'seconds': round(time.perf_counter() - t0, 2),
                               'status': view['status'], 'images_per_sec_in_job': view.get('images_per_sec'),
                               'top1': (view.get('accuracy') or {}).get('top1')}

    t0 = time.perf_counter()
    first = client.get(f'/models/{model}/download.tar.gz')
    first_s = time.perf_counter() - t0
    later = []
    for _ in range(3):
      t0 = time.perf_counter()
      client.get(f'/models/{model}/download.tar.gz').raise_for_status()
      later.append(time.perf_counter() - t0)
    result['download'] = {'bytes': len(first.content), 'first_s': round(first_s, 3),
                          'later_ms': round(1000 * statistics.median(later), 1)}
  finally:
    server.stop()
    result['load_after'] = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)
  text = json.dumps(result, indent=1)
  print(text)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      f.write(text + '\n')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
