r"""DIGITS' classroom exercise as a user runs it: three categories, the standard AlexNet, DIGITS' defaults.

    PYTHONPATH=. python -m benchmarks.digits_exercise --mode=cli                     # defaults below
    PYTHONPATH=. python -m benchmarks.digits_exercise --mode=cli --epochs=30 --size=256 --per-class=200
    PYTHONPATH=. python -m benchmarks.digits_exercise --mode=cli --set=model.weight_init=paper,\
        model.bias_init=paper,model.lrn=paper                                       # the paper's start

``--mode=cli`` draws a folder of three generated categories (``demo_data.draw``: checkerboard, disc,
stripes on noisy, randomly tinted backgrounds at random positions, sizes and colours, so colour alone
does not tell them apart), then runs ``python -m alexnet_jax.train --config=experiments/digits_exercise.py``
on it -- full-width two-tower AlexNet from DIGITS' start, SGD 0.01 with momentum 0.9, step-down x0.1 every
33%, batch 128, 25% held out for validation -- and prints validation top-1 after every epoch and the wall
time of the whole run (drawing, mean pass and compilation included). ``--set`` passes more
``--config.x=v`` overrides (comma-separated); ``--epochs``, ``--size`` (stored size; crop = 7/8 of it, as
the exercise's 256 -> 224) and ``--per-class`` scale it down for a CPU.

``--mode=rest`` is the lab as a DIGITS user clicks it, through the dashboard's REST API (the routes and
field names of DIGITS' own scripts): it starts ``python -m alexnet_jax.dashboard`` on a fresh jobs folder,
posts New Dataset (``folder_train``, ``resize_width`` x ``resize_height``, squash, 25% validation, PNG
encoding) and New Model (``standard_networks``, SGD, ``learning_rate=0.01``, ``train_epochs``, ``crop_size``
blank = none, mean image, batch size blank = the network's default) with nothing else, waits for both,
then classifies the validation list with ``classify_many.json`` (DIGITS' synchronous answer) and one
image with ``classify_one.json``. It prints validation top-1 per epoch, the Classify Many accuracy and
the wall times:

    PYTHONPATH=. python -m benchmarks.digits_exercise --mode=rest --size=300x200 --epochs=30
    PYTHONPATH=. python -m benchmarks.digits_exercise --mode=rest --network=lenet --size=28x28 \
        --channels=1 --layout=single
    PYTHONPATH=. python -m benchmarks.digits_exercise --mode=rest --network=googlenet --layout=single

The lab itself is 30 epochs at 256x256 or 300x200 on a few hundred photos per class (DIGITS reached
96-97%). Results are recorded in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np

from alexnet_jax.data import demo as demo_data

CLASSES = ('checkerboard', 'disc', 'stripes')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def draw_folder(root: str, per_class: int, size: int, seed: int = 0) -> str:
  """``root/<class>/<n>.jpg``: ``per_class`` generated images of each of ``CLASSES``, ``size`` square."""
  rng = np.random.default_rng(seed)
  for name in CLASSES:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      demo_data.draw(name, rng, size).save(os.path.join(root, name, f'{i:04d}.jpg'), quality=90)
  return root


def val_top1_per_epoch(workdir: str) -> list[tuple[float, float]]:
  """(epoch, validation top-1) of each validation record in ``workdir/metrics.jsonl``."""
  out = []
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    for line in f:
      record = json.loads(line)
      if record.get('split') == 'val' and 'top1' in record:
        out.append((record['epoch'], record['top1']))
  return out


def run_cli(*, epochs: int, size: int, per_class: int, overrides: list[str], workdir: str) -> dict:
  """Draws the folder, trains with the CLI, returns {'val': [(epoch, top1)], 'wall_s', 'argv'}."""
  folder = draw_folder(os.path.join(workdir, 'images'), per_class, max(size, 80))
  crop = size * 7 // 8          # as the lab's 256 -> 224
  argv = [sys.executable, '-m', 'alexnet_jax.train', '--config=experiments/digits_exercise.py',
          f'--workdir={os.path.join(workdir, "run")}', f'--config.data.source={folder}',
          f'--config.num_epochs={epochs}', f'--config.data.image_size={size}',
          f'--config.data.crop_size={crop}', *[f'--config.{o}' for o in overrides]]
  start = time.perf_counter()
  if subprocess.run(argv, cwd=REPO, check=False).returncode != 0:
    raise SystemExit(f'digits_exercise: the training run failed (its log is above): {" ".join(argv)}')
  wall = time.perf_counter() - start
  return {'val': val_top1_per_epoch(os.path.join(workdir, 'run')), 'wall_s': wall, 'argv': argv}


# ---- Through the dashboard's REST API (--mode=rest) -------------------------------------------------

class Dashboard:
  """A real ``python -m alexnet_jax.dashboard`` on 127.0.0.1, spoken to as DIGITS' scripts speak."""

  def __init__(self, jobs_dir: str, data_root: str):
    from benchmarks.dashboard import Server  # pylint: disable=g-import-not-at-top
    self.server = Server(jobs_dir, data_root)
    self.server.start()
    self.base = self.server.base
    with open(os.path.join(jobs_dir, '.dashboard', 'token'), encoding='utf-8') as f:
      token = f.read().strip()
    # A script is not a browser: the token as a bearer header, the Origin of the dashboard itself.
    self.headers = {'Authorization': f'Bearer {token}', 'Origin': self.base}

  def close(self) -> None:
    self.server.stop()

  def get(self, route: str) -> dict:
    request = urllib.request.Request(self.base + route, headers=self.headers)
    with urllib.request.urlopen(request, timeout=600) as r:
      return json.load(r)

  def post(self, route: str, fields: dict, files: dict | None = None, timeout: float = 600) -> dict:
    if files:
      boundary = uuid.uuid4().hex
      parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
               for k, v in fields.items()]
      parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.txt"\r\n'
                f'Content-Type: text/plain\r\n\r\n'.encode() + data + b'\r\n' for k, data in files.items()]
      body = b''.join(parts) + f'--{boundary}--\r\n'.encode()
      content_type = f'multipart/form-data; boundary={boundary}'
    else:
      body, content_type = urllib.parse.urlencode(fields).encode(), 'application/x-www-form-urlencoded'
    request = urllib.request.Request(self.base + route, data=body, method='POST',
                                     headers={**self.headers, 'Content-Type': content_type})
    try:
      with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.load(r)
    except urllib.error.HTTPError as e:
      raise SystemExit(f'digits_exercise: POST {route} answered {e.code}: {e.read().decode()[:2000]}') from None

  def wait(self, kind: str, job_id: str, every_s: float = 5.0) -> dict:
    """Polls ``/{kind}/{id}.json`` until the job ends; prints a line when its state or epoch moves."""
    seen = None
    while True:
      view = self.get(f'/{kind}/{job_id}.json')
      mark = (view.get('status'), view.get('epoch'))
      if mark != seen:
        print(f'  {kind[:-1]} {job_id}: {view.get("status")}'
              + (f', epoch {view["epoch"]:.2f}' if view.get('epoch') is not None else ''), flush=True)
        seen = mark
      if view.get('status') in ('Done', 'Error', 'Aborted'):      # DIGITS' status names
        return view
      time.sleep(every_s)


def run_rest(*, network: str, epochs: int, width: int, height: int, channels: int, per_class: int,
             layout: str, workdir: str, batch_size: str = '') -> dict:
  """The lab through the dashboard: dataset, model, Classify Many, Classify One. Returns the numbers."""
  folder = draw_folder(os.path.join(workdir, 'images'), per_class, max(width, height))
  dash = Dashboard(os.path.join(workdir, 'jobs'), workdir)
  try:
    t0 = time.perf_counter()
    dataset = dash.post('/datasets/images/classification.json', {
        'method': 'folder', 'folder_train': folder, 'resize_width': width, 'resize_height': height,
        'resize_channels': channels, 'resize_mode': 'squash', 'folder_pct_val': 25, 'encoding': 'png',
        'dataset_name': f'lab {width}x{height}'})
    dataset_view = dash.wait('datasets', dataset['id'])
    if dataset_view['status'] != 'Done':
      raise SystemExit(f'digits_exercise: the dataset job ended {dataset_view["status"]}')
    t1 = time.perf_counter()
    # New Model with DIGITS' defaults: only what the lab's instructions say is filled in.
    fields = {'method': 'standard', 'standard_networks': network, 'dataset': dataset['id'],
              'train_epochs': epochs, 'solver_type': 'SGD', 'learning_rate': '0.01', 'crop_size': '',
              'use_mean': 'image', 'batch_size': batch_size, 'model_name': f'lab {network}'}
    if layout:
      fields['layout'] = layout
    model = dash.post('/models/images/classification.json', fields)
    model_view = dash.wait('models', model['id'])
    t2 = time.perf_counter()
    if model_view['status'] != 'Done':
      raise SystemExit(f'digits_exercise: the model job ended {model_view["status"]}; see '
                       f'{model_view.get("directory")}/train.log')
    val_list = os.path.join(workdir, 'jobs', dataset['id'], 'dataset', 'val.txt')
    with open(val_list, 'rb') as f:
      listed = f.read()
    many = dash.post('/models/images/classification/classify_many.json',
                     {'job_id': model['id'], 'snapshot_epoch': model_view['snapshots'][-1]},
                     files={'image_list': listed}, timeout=3600)
    t3 = time.perf_counter()
    first = listed.decode().splitlines()[0].rsplit(' ', 1)[0]
    one = dash.post('/models/images/classification/classify_one.json',
                    {'job_id': model['id'], 'image_path': first})
    labels = dict(line.rsplit(' ', 1) for line in listed.decode().splitlines() if line.strip())
    classes = open(os.path.join(workdir, 'jobs', dataset['id'], 'dataset', 'labels.txt')).read().split()
    right = sum(1 for path, top in many['classifications'].items()
                if top and top[0][0] == classes[int(labels.get(path, -1))])
    return {'val': val_top1_per_epoch(model_view['directory']), 'snapshots': model_view['snapshots'],
            'classify_many': {'images': len(many['classifications']), 'top1': right / max(1, len(labels))},
            'classify_one': {'image': first, 'predictions': one['predictions'][:3]},
            'wall_s': {'dataset': t1 - t0, 'model': t2 - t1, 'classify_many': t3 - t2},
            'model_dir': model_view['directory']}
  finally:
    dash.close()


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--mode', choices=['cli', 'rest'], default='cli')
  p.add_argument('--epochs', type=int, default=5)
  p.add_argument('--size', default='80', help='stored image size, N or WxH (the lab: 256, 300x200)')
  p.add_argument('--network', default='alexnet', help='rest: alexnet | lenet | googlenet | alexnet_owt')
  p.add_argument('--channels', type=int, default=3, help='rest: 3 (colour) or 1 (grayscale)')
  p.add_argument('--layout', default='', help='rest: the New Model layout field (blank: its default)')
  p.add_argument('--batch-size', default='', help="rest: the New Model batch size field (blank: the "
                 "network's default, as the lab)")
  p.add_argument('--per-class', type=int, default=150)
  p.add_argument('--set', default='', help='more overrides, e.g. model.bias_init=paper,batch_size=100')
  p.add_argument('--workdir', default='', help='default: a temporary folder')
  args = p.parse_args(argv)
  overrides = [o for o in args.set.split(',') if o]
  width, _, height = args.size.partition('x')
  width, height = int(width), int(height or width)
  with tempfile.TemporaryDirectory(prefix='digits_exercise_') as tmp:
    if args.mode == 'cli':
      if width != height:
        raise SystemExit('--mode=cli takes a square --size (the crop is 7/8 of it); use --mode=rest for WxH')
      result = run_cli(epochs=args.epochs, size=width, per_class=args.per_class, overrides=overrides,
                       workdir=args.workdir or tmp)
    else:
      result = run_rest(network=args.network, epochs=args.epochs, width=width, height=height,
                        channels=args.channels, per_class=args.per_class, layout=args.layout,
                        workdir=args.workdir or tmp, batch_size=args.batch_size)
  print(f'digits_exercise --mode={args.mode}: {len(CLASSES)} classes x {args.per_class} images, stored '
        f'{width}x{height}, {args.epochs} epochs' + (f', overrides {overrides or "none"}'
                                                    if args.mode == 'cli' else f', {args.network}'
                                                    f', batch {args.batch_size or "the network default"}'))
  for epoch, top1 in result['val']:
    print(f'  epoch {epoch:6.2f}  val top-1 {100 * top1:6.2f}%')
  if args.mode == 'rest':
    print(f'  Classify Many (validation list, snapshot {result["snapshots"][-1]}): '
          f'{100 * result["classify_many"]["top1"]:.2f}% top-1 on {result["classify_many"]["images"]} images')
    print(f'  Classify One {result["classify_one"]["image"]}: {result["classify_one"]["predictions"]}')
    print('  wall time: ' + ', '.join(f'{k} {v:.0f} s' for k, v in result['wall_s'].items()))
  else:
    print(f'  wall time {result["wall_s"]:.0f} s (drawing, mean, compilation and validation included)')


if __name__ == '__main__':
  main()
