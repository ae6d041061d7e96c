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

The lab itself is 30 epochs at 256x256 on a few hundred photos per class (DIGITS reached 96-97%); a CPU
run at full width needs hours at that size, so smaller runs are the honest CPU check. (The dashboard
path, through its REST API, is another mode to add.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from alexnet_jax import demo_data

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


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--mode', choices=['cli'], default='cli')
  p.add_argument('--epochs', type=int, default=5)
  p.add_argument('--size', type=int, default=80, help='stored image size (the lab: 256)')
  p.add_argument('--per-class', type=int, default=150)
  p.add_argument('--set', default='', help='more overrides, e.g. model.bias_init=paper,batch_size=100')
  p.add_argument('--workdir', default='', help='default: a temporary folder')
  args = p.parse_args(argv)
  overrides = [o for o in args.set.split(',') if o]
  with tempfile.TemporaryDirectory(prefix='digits_exercise_') as tmp:
    result = run_cli(epochs=args.epochs, size=args.size, per_class=args.per_class, overrides=overrides,
                     workdir=args.workdir or tmp)
  print(f'digits_exercise --mode=cli: {len(CLASSES)} classes x {args.per_class} images, stored '
        f'{args.size}x{args.size}, {args.epochs} epochs, overrides {overrides or "none"}')
  for epoch, top1 in result['val']:
    print(f'  epoch {epoch:6.2f}  val top-1 {100 * top1:6.2f}%')
  print(f'  wall time {result["wall_s"]:.0f} s (drawing, mean, compilation and validation included)')


if __name__ == '__main__':
  main()
