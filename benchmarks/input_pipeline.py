r"""Input-pipeline throughput on this machine: images per second for the training transforms.

    python -m benchmarks.input_pipeline [--json=PATH] [--num_images=300] [--rounds=3]

It generates ImageNet-like JPEGs (500x375, a quarter of them portrait, quality 90, photo-like texture:
smooth shapes at several scales plus sensor-like noise, ~70 KiB each) in 4 class folders, then measures,
round-robin over `--rounds` rounds (the host is noisy: compare numbers of the same run only):

* ``decode``   -- the floor: Pillow open + full decode, a plain loop, one thread (and, with 2 threads, a
                  thread pool: its scaling shows how much of the 2 cores the host gives us right now);
* ``naive``    -- what a torchvision ImageFolder loader does per item in a plain single-threaded loop:
                  open -> convert('RGB') -> resize to 256x256 (BILINEAR) -> random 224 crop -> flip -> array;
* ``folder``   -- `train_iterator` on the folder (DIGITS squash to 256, random 224 crop, flip, PCA lighting,
                  mean subtraction, float32 batches of 32) with 1 and 2 grain threads;
* ``prepared`` -- the same on the output of the prepare tool (256x256, `--encoding`, default jpg), 1 and 2
                  threads, over 3 epochs; ``prepared_<enc>`` for the encodings in `--extra_encodings`.

The JSON maps "naive", "folder", "prepared" and "decode" each to {"<threads>": images per second} (the
median over rounds), plus the ratios the issue sets targets for and the load average around the run.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import shutil
import statistics as stats_lib
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import PIL.Image

from alexnet_jax.data import synthetic

_JSON = flags.DEFINE_string('json', '', 'Write the results here as JSON.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 300, 'Generated JPEGs (4 classes).')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Round-robin rounds; each config runs once per round.')
_THREADS = flags.DEFINE_list('threads', ['1', '2'], 'grain thread counts to measure.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Batch size of the grain pipelines.')
_ENCODING = flags.DEFINE_enum('encoding', 'jpg', ['jpg', 'png', 'raw'], 'Encoding of the prepared dataset.')
_EXTRA = flags.DEFINE_list('extra_encodings', ['raw', 'png'], 'Also measure prepared datasets in these.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Keep the generated files here (default: a temp dir).')


def make_jpegs(root: str, n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(n):
    d = os.path.join(root, f'class_{i % 4}')
    os.makedirs(d, exist_ok=True)
    w, h = (375, 500) if i % 4 == 3 else (500, 375)
    p = os.path.join(d, f'img_{i:05d}.jpg')
    PIL.Image.fromarray(synthetic.photo_like(rng, w, h)).save(p, quality=90)
    paths.append(p)
  return paths


def _decode_one(p):
  with PIL.Image.open(p) as im:
    im.load()


def bench_decode(paths, threads: int = 1):
  """Bare decode rate; with threads > 1 a thread pool (Pillow releases the GIL): the host's capacity now."""
  t = time.perf_counter()
  if threads == 1:
    for p in paths:
      _decode_one(p)
  else:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(_decode_one, paths))
  return len(paths) / (time.perf_counter() - t)


def bench_naive(paths, rng=np.random.default_rng(0)):
  t = time.perf_counter()
  for p in paths:
    with PIL.Image.open(p) as im:
      im = im.convert('RGB').resize((256, 256), PIL.Image.BILINEAR)
    x, y = rng.integers(0, 33, 2)
    im = im.crop((x, y, x + 224, y + 224))
    if rng.random() < 0.5:
      im = im.transpose(PIL.Image.FLIP_LEFT_RIGHT)
    np.asarray(im)
  return len(paths) / (time.perf_counter() - t)


def bench_pipeline(dataset, cfg, threads: int, batch: int, seed: int, epochs: int = 1) -> float:
  """Images/s of `epochs` epochs of train_iterator, after one warm-up batch (thread start, first decode)."""
  from alexnet_jax import data  # pylint: disable=g-import-not-at-top
  cfg.num_threads = threads
  it = data.train_iterator(dataset, cfg, global_batch_size=batch, seed=seed, num_epochs=epochs)
  next(it)
  n = 0
  t = time.perf_counter()
  for b in it:
    n += b['image'].shape[0]
  return n / (time.perf_counter() - t)


def main(argv):
  del argv
  from alexnet_jax import configs  # pylint: disable=g-import-not-at-top
  from alexnet_jax import data  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import preparation  # pylint: disable=g-import-not-at-top

  work = _WORKDIR.value or tempfile.mkdtemp(prefix='input_pipeline_')
  load_before = os.getloadavg()
  folder = os.path.join(work, 'jpegs')
  if not os.path.isdir(folder):
    t = time.time()
    make_jpegs(folder, _NUM_IMAGES.value)
    print(f'generated {_NUM_IMAGES.value} JPEGs in {time.time() - t:.1f} s')
  paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs)
  kib = np.mean([os.path.getsize(p) for p in paths]) / 1024

  cfg = configs.default_config().data
  cfg.source = folder
  cfg.val_percent = 0.0
  cfg.mean_max_images = 64
  folder_ds = data.load_dataset(cfg, seed=0)

  prepared_ds = {}
  for enc in [_ENCODING.value] + [e for e in _EXTRA.value if e and e != _ENCODING.value]:
    out = os.path.join(work, f'prepared_{enc}')
    if not os.path.isdir(out):
      t = time.time()
      preparation.prepare_dataset(preparation.PrepareOptions(
          source=folder, output=out, val_percent=0.0, encoding=enc, progress_interval_s=1e9))
      print(f'prepared ({enc}) in {time.time() - t:.1f} s')
    pcfg = configs.default_config().data
    pcfg.source = out
    prepared_ds[enc] = (data.load_dataset(pcfg, seed=0), pcfg)

  threads = [int(t) for t in _THREADS.value]
  configs_ = [('decode', 1, lambda: bench_decode(paths)), ('naive', 1, lambda: bench_naive(paths))]
  configs_ += [('decode', th, lambda th=th: bench_decode(paths, th)) for th in threads if th > 1]
  for th in threads:
    configs_.append(('folder', th, lambda th=th: bench_pipeline(folder_ds, cfg, th, _BATCH.value, 0)))
  for enc, (ds, pcfg) in prepared_ds.items():
    key = 'prepared' if enc == _ENCODING.value else f'prepared_{enc}'
    for th in threads:
      configs_.append((key, th, lambda th=th, ds=ds, pcfg=pcfg: bench_pipeline(
          ds, pcfg, th, _BATCH.value, 0, epochs=3)))   # 3 epochs: a window as long as the folder one

  samples: dict[tuple[str, int], list[float]] = {}
  for r in range(_ROUNDS.value):
    for name, th, fn in configs_:
      samples.setdefault((name, th), []).append(fn())
    print(f'round {r + 1}/{_ROUNDS.value} done, load average {os.getloadavg()[0]:.2f}')
  load_after = os.getloadavg()

  result: dict = {}
  for (name, th), v in samples.items():
    result.setdefault(name, {})[str(th)] = round(stats_lib.median(v), 1)
  naive = result['naive']['1']
  ratios = {f'folder_{th}t/naive': round(result['folder'][str(th)] / naive, 2) for th in threads}
  ratios.update({f'prepared_{th}t/naive': round(result['prepared'][str(th)] / naive, 2) for th in threads})
  if '1' in result['folder']:
    ratios['folder_1t/decode'] = round(result['folder']['1'] / result['decode']['1'], 2)
  for th in threads:   # how much of the host's current parallel capacity the pipeline uses
    if th > 1:
      ratios[f'decode_{th}t/decode_1t'] = round(result['decode'][str(th)] / result['decode']['1'], 2)
  result['ratios'] = ratios
  result['samples'] = {f'{k[0]}/{k[1]}': [round(x, 1) for x in v] for k, v in samples.items()}
  result['setup'] = {
      'machine': f'{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or "cpu"}',
      'python': platform.python_version(), 'pillow': PIL.__version__, 'num_images': len(paths),
      'mean_jpeg_kib': round(float(kib), 1), 'batch_size': _BATCH.value, 'rounds': _ROUNDS.value,
      'loadavg_before': [round(x, 2) for x in load_before], 'loadavg_after': [round(x, 2) for x in load_after],
  }

  print(f'\n{len(paths)} JPEGs, 500x375 q90, {kib:.0f} KiB mean; median of {_ROUNDS.value} rounds (img/s)')
  print(f'{"config":14s} ' + ' '.join(f'{t + " thr":>10s}' for t in ['1'] + [str(t) for t in threads if t != 1]))
  for name in result:
    if name in ('ratios', 'samples', 'setup'):
      continue
    row = result[name]
    print(f'{name:14s} ' + ' '.join(f'{row.get(str(t), float("nan")):10.0f}' for t in sorted(
        {1} | set(threads))))
  print('ratios:', json.dumps(ratios))
  print(f'load average before {load_before[0]:.2f}, after {load_after[0]:.2f}')
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)
  if not _WORKDIR.value:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
