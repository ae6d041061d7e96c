r"""Input-pipeline throughput on this machine: images per second from the records into device memory.

    python -m benchmarks.input_pipeline [--json=PATH] [--num_images=300] [--rounds=3]

It generates ImageNet-like JPEGs (500x375, a quarter of them portrait, quality 90, photo-like texture:
smooth shapes at several scales plus sensor-like noise, ~70 KiB each) in 4 class folders, then measures,
round-robin over `--rounds` rounds (the host is noisy: compare numbers of the same run only):

* ``decode``   -- the floor: Pillow open + full decode, a plain loop, one thread (and, with 2 threads, a
                  thread pool: its scaling shows how much of the 2 cores the host gives us right now);
* ``naive``    -- what a torchvision ImageFolder loader does per item in a plain single-threaded loop:
                  open -> convert('RGB') -> resize to 256x256 (BILINEAR) -> random 224 crop -> flip -> array;
* ``decode_prepared_<enc>`` -- bare decoding of the prepared records at their stored size (256x256), one
                  thread: what the prepared pipeline cannot beat;
* ``<source>_<augment_on>`` -- `train_iterator` on the folder or on the output of the prepare tool
                  (256x256, `--encoding`, plus `--extra_encodings`), each batch put into device memory
                  (`jax.device_put`, as the trainer does), with 1 and 2 grain threads, for both
                  ``augment_on`` values: ``host`` (before: random 224 crop, flip, PCA lighting and mean
                  subtraction on the host, float32 [B, 224, 224, 3]) and ``device`` (after: the stored
                  uint8 [B, 256, 256, 3] plus three int32 keys; the crop etc. happen in the train step);
                  ``..._w<N>`` with N grain worker processes (`--workers`, `mp_prefetch`) of one
                  thread each. Each configuration is timed for `--window_s` after a warm-up.

With `--step_cost` it also times one tiny train step fed host-augmented float32 crops against the same
step augmenting stored uint8 images itself, and the device augmentation alone at full size (256 -> 224).

The JSON maps every configuration to {"<threads>": images per second} (the median over rounds), plus the
bytes sent to the device per image, the ratios the issues set targets for (medians of per-round ratios),
the samples of every round and the load average.
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
from typing import Sequence

from absl import flags
import numpy as np
import PIL.Image

from alexnet_jax.data import synthetic

FLAGS = flags.FLAGS


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


def bench_decode_records(dataset, passes: int = 3) -> float:
  """Bare decode of a prepared split's records at their stored size, one thread, `passes` times over
  (the floor of the prepared pipeline: it cannot read faster than it decodes)."""
  split = dataset.split('train')
  store, keys = split.store, list(split.keys)
  store.read(keys[0])   # opens the ArrayRecord file
  t = time.perf_counter()
  for _ in range(passes):
    for k in keys:
      store.read(k)
  return passes * len(keys) / (time.perf_counter() - t)


def _step_fields(batch) -> dict:
  from alexnet_jax.parallel import step as step_lib  # pylint: disable=g-import-not-at-top
  return {k: batch[k] for k in step_lib.BATCH_FIELDS if k in batch}


def bytes_to_device_per_image(batch) -> float:
  """What the trainer sends to the devices per image: the step's fields of one batch, divided by B."""
  fields = _step_fields(batch)
  return sum(a.nbytes for a in fields.values()) / len(fields['label'])


def pipeline_to_device(dataset, cfg, threads: int, batch: int, window_s: float, *, workers: int = 0,
                       seed: int = 0) -> dict:
  """Images/s of ``train_iterator`` into device memory: the step's fields of each batch, ``jax.device_put``
  and waited for, over ``window_s`` seconds.

  grain reads whole batches per thread and caps the batches in flight at ``prefetch`` (its
  ``prefetch_buffer_size``), so ``prefetch`` is raised to ``threads`` here. Timing starts after a first
  wave of max(threads, 2 * workers) batches (grain's threads finish their first batches together and
  would count as free; worker processes take seconds to start), whose time is ``first_wave_s``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import data  # pylint: disable=g-import-not-at-top
  cfg.num_threads, cfg.worker_count = threads, workers
  cfg.prefetch = max(int(cfg.prefetch), threads)
  it = data.train_iterator(dataset, cfg, global_batch_size=batch, seed=seed, num_epochs=10_000)
  t_first = time.perf_counter()
  for _ in range(max(threads, 2 * workers)):
    jax.block_until_ready(jax.device_put(_step_fields(next(it))))
  first_wave_s = time.perf_counter() - t_first
  n = 0
  t = time.perf_counter()
  while time.perf_counter() - t < window_s:
    fields = _step_fields(next(it))
    jax.block_until_ready(jax.device_put(fields))
    n += len(fields['label'])
  elapsed = time.perf_counter() - t
  close = getattr(it, 'close', None)
  if close:
    close()
  return {'images_per_s': n / elapsed, 'images': n, 'seconds': round(elapsed, 3),
          'first_wave_s': round(first_wave_s, 3), 'threads': threads, 'prefetch': cfg.prefetch}


def _median_ms(fn, reps: int = 7) -> float:
  fn()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1000 * stats_lib.median(times)


def bench_step_cost(batch: int = 32, rounds: int = 5) -> dict:
  """Milliseconds per train step of a tiny AlexNet (1/8 width, 72 -> 64 crops, one device) fed float32
  crops versus stored uint8 images augmented in the step; and the augmentation alone at 256 -> 224."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import configs, models  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import device_augment, transforms  # pylint: disable=g-import-not-at-top
  from alexnet_jax.parallel import layouts, step as step_lib  # pylint: disable=g-import-not-at-top
  cfg = configs.default_config()
  cfg.model.width, size, crop = 0.125, 72, 64
  network = models.build(cfg.model, 4)
  layout = layouts.resolve('single', network)
  mesh = layout.make_mesh()
  tx = optax.sgd(0.01, momentum=0.9)
  flags_ = transforms.AugmentFlags.from_config(cfg.data, 3)
  rng = np.random.default_rng(0)

  def augment_for(s, c):
    mean = rng.uniform(0, 255, (s, s, 3)).astype(np.float32)
    return device_augment.TrainAugment(mean=mean, eigval=transforms.IMAGENET_EIGVAL,
                                       eigvec=transforms.IMAGENET_EIGVEC, crop_size=c, flags=flags_, seed=0)

  def stored(b, s):
    return {'image': rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
            'label': rng.integers(0, 4, b).astype(np.int32),
            **{k: np.arange(b, dtype=np.int32) for k in device_augment.KEY_FIELDS}}

  state = step_lib.create_train_state(network, layout, mesh, tx, seed=0, image_shape=(crop, crop, 3))
  train_step = step_lib.make_train_step(network, layout, mesh, tx, donate=False,
                                        augment=augment_for(size, crop))
  uint8_batch = jax.device_put(stored(batch, size))
  float_batch = jax.device_put({'image': rng.normal(0, 50, (batch, crop, crop, 3)).astype(np.float32),
                                'label': uint8_batch['label']})
  full = augment_for(256, 224)
  full_batch = jax.device_put(stored(batch, 256))
  full_constants = jax.device_put(full.constants)
  augment_alone = jax.jit(full)
  calls = {
      'step_float32_crops': lambda: jax.block_until_ready(train_step(state, float_batch)),
      'step_uint8_augmented': lambda: jax.block_until_ready(train_step(state, uint8_batch)),
      'augment_256_to_224': lambda: jax.block_until_ready(augment_alone(full_constants, full_batch)),
  }
  samples = {k: [] for k in calls}
  for _ in range(rounds):
    for k, fn in calls.items():
      samples[k].append(_median_ms(fn))
  out = {k: round(stats_lib.median(v), 2) for k, v in samples.items()}
  out['device_augment_cost_ms'] = round(out['step_uint8_augmented'] - out['step_float32_crops'], 2)
  out['augment_256_to_224_us_per_image'] = round(1000 * out['augment_256_to_224'] / batch, 1)
  out['batch'] = batch
  out['device'] = str(jax.devices()[0].device_kind)
  return out


def _data_config(source: str, augment_on: str, **kw):
  from alexnet_jax import configs  # pylint: disable=g-import-not-at-top
  cfg = configs.default_config().data
  cfg.source, cfg.augment_on = source, augment_on
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def benchmark(work: str, *, num_images: int = 300, rounds: int = 3, threads: Sequence[int] = (1, 2),
              batch: int = 32, encoding: str = 'jpg', extra_encodings: Sequence[str] = ('raw',),
              augments: Sequence[str] = ('host', 'device'), workers: Sequence[int] = (1, 2),
              folder_pipeline: bool = True, step_cost: bool = True, window_s: float = 2.0) -> dict:
  """Generates ``num_images`` JPEGs under ``work`` (unless there), prepares them, times every
  configuration round-robin over ``rounds`` rounds, prints the table and returns the results (what
  ``--json`` writes). The arguments are the flags' (``batch``: --batch_size, ``augments``: --augment_on,
  ``folder_pipeline``: --folder)."""
  from alexnet_jax import data  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import host_memory
  from alexnet_jax.data import preparation  # pylint: disable=g-import-not-at-top

  load_before = os.getloadavg()
  folder = os.path.join(work, 'jpegs')
  if not os.path.isdir(folder):
    t = time.time()
    make_jpegs(folder, num_images)
    print(f'generated {num_images} JPEGs in {time.time() - t:.1f} s')
  paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs)
  kib = np.mean([os.path.getsize(p) for p in paths]) / 1024
  threads, augments, workers = list(threads), list(augments), list(workers)

  configs_ = [('decode', 1, lambda: bench_decode(paths)), ('naive', 1, lambda: bench_naive(paths))]
  configs_ += [('decode', th, lambda th=th: bench_decode(paths, th)) for th in threads if th > 1]
  bytes_per_image: dict[str, float] = {}

  window = window_s

  def add_pipeline(key, ds, cfg):
    first = next(data.train_iterator(ds, cfg, global_batch_size=batch, seed=0, num_epochs=1))
    bytes_per_image[cfg.augment_on] = bytes_to_device_per_image(first)
    for th in threads:
      configs_.append((key, th, lambda th=th: pipeline_to_device(ds, cfg, th, batch, window)[
          'images_per_s']))

  if folder_pipeline:
    for aug in augments:
      cfg = _data_config(folder, aug, val_percent=0.0, mean_max_images=64)
      add_pipeline(f'folder_{aug}', data.load_dataset(cfg, seed=0), cfg)
  encodings = [encoding] + [e for e in extra_encodings if e and e != encoding]
  for enc in encodings:
    out = os.path.join(work, f'prepared_{enc}')
    if not os.path.isdir(out):
      t = time.time()
      preparation.prepare_dataset(preparation.PrepareOptions(
          source=folder, output=out, val_percent=0.0, encoding=enc, progress_interval_s=1e9))
      print(f'prepared ({enc}) in {time.time() - t:.1f} s')
    for aug in augments:
      cfg = _data_config(out, aug)
      ds = data.load_dataset(cfg, seed=0)
      add_pipeline(f'prepared_{enc}_{aug}', ds, cfg)
      if aug == 'device':
        configs_.append((f'decode_prepared_{enc}', 1, lambda ds=ds: bench_decode_records(ds)))
        for w in workers:
          configs_.append((f'prepared_{enc}_{aug}_w{w}', 1, lambda ds=ds, cfg=cfg, w=w: pipeline_to_device(
              ds, cfg, 1, batch, window, workers=w)['images_per_s']))

  samples: dict[tuple[str, int], list[float]] = {}
  for r in range(rounds):
    for name, th, fn in configs_:
      samples.setdefault((name, th), []).append(fn())
    print(f'round {r + 1}/{rounds} done, load average {os.getloadavg()[0]:.2f}')
  load_after = os.getloadavg()

  result: dict = {}
  for (name, th), v in samples.items():
    result.setdefault(name, {})[str(th)] = round(stats_lib.median(v), 1)
  result['ratios'] = _ratios(samples, threads, encodings)
  result['bytes_to_device_per_image'] = {k: int(v) for k, v in bytes_per_image.items()}
  if step_cost:
    result['step_cost_ms'] = bench_step_cost()
  result['samples'] = {f'{k[0]}/{k[1]}': [round(x, 1) for x in v] for k, v in samples.items()}
  result['setup'] = {
      'machine': f'{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or "cpu"}',
      'python': platform.python_version(), 'pillow': PIL.__version__, 'num_images': len(paths),
      'mean_jpeg_kib': round(float(kib), 1), 'batch_size': batch, 'rounds': rounds,
      'loadavg_before': [round(x, 2) for x in load_before],
      'loadavg_after': [round(x, 2) for x in load_after],
      'host_memory_retained': host_memory.is_retaining(),
  }
  _print_table(result, threads, len(paths), kib)
  return result


def main(argv):
  del argv
  work = FLAGS.workdir or tempfile.mkdtemp(prefix='input_pipeline_')
  result = benchmark(work, num_images=FLAGS.num_images, rounds=FLAGS.rounds,
                     threads=[int(t) for t in FLAGS.threads], batch=FLAGS.batch_size,
                     encoding=FLAGS.encoding, extra_encodings=FLAGS.extra_encodings,
                     augments=FLAGS.augment_on, workers=[int(w) for w in FLAGS.workers if w],
                     folder_pipeline=FLAGS.folder, step_cost=FLAGS.step_cost, window_s=FLAGS.window_s)
  if FLAGS.json:
    with open(FLAGS.json, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)
  if not FLAGS.workdir:
    shutil.rmtree(work, ignore_errors=True)


def _ratios(samples: dict, threads: list[int], encodings: list[str]) -> dict:
  """The ratios the issues set targets for (prepared 2 threads / naive >= 6x; prepared 1 thread within
  25% of bare decoding of its records), for every pipeline measured: the median of per-round ratios
  (the two configurations of a ratio ran minutes apart at most; the load moves between rounds)."""
  def paired(a, b):
    if a not in samples or b not in samples:
      return None
    return round(stats_lib.median(x / y for x, y in zip(samples[a], samples[b])), 2)

  names = sorted({name for name, _ in samples})
  ratios = {}
  for name in names:
    if name.startswith(('folder_', 'prepared_')):
      for th in threads:
        ratios[f'{name}_{th}t/naive'] = paired((name, th), ('naive', 1))
  for enc in encodings:
    for name in names:
      if name.startswith(f'prepared_{enc}_'):
        ratios[f'{name}_1t/decode_prepared_{enc}'] = paired((name, 1), (f'decode_prepared_{enc}', 1))
  for th in threads:   # how much of the host's parallel capacity there was
    if th > 1:
      ratios[f'decode_{th}t/decode_1t'] = paired(('decode', th), ('decode', 1))
  return {k: v for k, v in ratios.items() if v is not None}


def _print_table(result: dict, threads: list[int], n: int, kib: float) -> None:
  columns = sorted({1} | set(threads))
  print(f'\n{n} JPEGs, 500x375 q90, {kib:.0f} KiB mean; median of the rounds (img/s into device memory)')
  print(f'{"config":28s} ' + ' '.join(f'{str(t) + " thr":>10s}' for t in columns))
  for name, row in result.items():
    if name in ('ratios', 'samples', 'setup', 'bytes_to_device_per_image', 'step_cost_ms'):
      continue
    print(f'{name:28s} ' + ' '.join(f'{row.get(str(t), float("nan")):10.0f}' for t in columns))
  print('bytes to the device per image:', json.dumps(result['bytes_to_device_per_image']))
  print('ratios:', json.dumps(result['ratios'], indent=1))
  if 'step_cost_ms' in result:
    print('train step (ms):', json.dumps(result['step_cost_ms']))
  setup = result['setup']
  print(f'load average before {setup["loadavg_before"][0]:.2f}, after {setup["loadavg_after"][0]:.2f}')


def define_flags() -> None:
  """The command-line flags (defined only when run as a command, so the device check can import
  this module beside its own flags)."""
  flags.DEFINE_string('json', '', 'Write the results here as JSON.')
  flags.DEFINE_integer('num_images', 300, 'Generated JPEGs (4 classes).')
  flags.DEFINE_integer('rounds', 3, 'Round-robin rounds; each config runs once per round.')
  flags.DEFINE_list('threads', ['1', '2'], 'grain thread counts to measure.')
  flags.DEFINE_integer('batch_size', 32, 'Batch size of the grain pipelines.')
  flags.DEFINE_enum('encoding', 'jpg', ['jpg', 'png', 'raw'], 'Encoding of the prepared dataset.')
  flags.DEFINE_list('extra_encodings', ['raw'], 'Also measure prepared datasets in these.')
  flags.DEFINE_list('augment_on', ['host', 'device'], 'config.data.augment_on values to compare.')
  flags.DEFINE_list('workers', ['1', '2'], 'grain worker processes (1 thread each) to try on the '
                    'prepared records, device path; empty for none.')
  flags.DEFINE_bool('folder', True, 'Also measure the pipeline on the JPEG folder.')
  flags.DEFINE_bool('step_cost', True, 'Also time the train step with and without device '
                    'augmentation (tiny config) and the augmentation alone at 256 -> 224.')
  flags.DEFINE_float('window_s', 2.0, 'Seconds each pipeline configuration is timed per round.')
  flags.DEFINE_string('workdir', '', 'Keep the generated files here (default: a temp dir).')


if __name__ == '__main__':
  from alexnet_jax.runtime import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)   # as the trainer runs: freed host memory kept (--noretain_host_memory: glibc's defaults)
