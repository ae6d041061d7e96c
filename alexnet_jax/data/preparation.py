"""DIGITS' "New Image Classification Dataset" job: decode and resize once, write ArrayRecord files per split.

`prepare_dataset(PrepareOptions(...))` is what `python -m alexnet_jax.prepare` runs. It

1. lists the source (folder, DIGITS list or tfds) and splits it as DIGITS does (`splits.py`);
2. decodes and resizes every image with DIGITS' `resize_image` (fill noise seeded by seed and path), in grain
   threads (`--workers`, default: every core; Pillow releases the GIL while decoding, resizing and
   encoding), in a fixed order, so that the same options give the same files;
3. writes into a temporary sibling folder ``.<name>.tmp-*``:

   * ``train.array_record`` / ``val.array_record`` / ``test.array_record`` (`records.py` format) and
     DIGITS-style ``train.txt`` / ``val.txt`` / ``test.txt`` lists (original path and label, record order);
   * ``labels.txt``; ``mean.npy`` (float32 mean of the training images) and ``mean.png``;
   * ``stats.json``: classes, counts per split and class, skipped files with their reason, image size,
     resize mode, channels, encoding, bytes, and the training split's PCA basis;
   * ``histogram.png`` and ``contact_sheets/`` (`reports.py`);

4. renames the temporary folder to the output only when everything is written, so an interrupted run
   leaves no half dataset (at worst a hidden ``.<name>.tmp-*`` folder, removed on the next run once its
   process is gone); an existing output is replaced only with ``overwrite=True``. The command
   (``track=True``) also holds ``<parent>/.<name>.lock`` and keeps a live ``<parent>/.<name>.status.json``
   (images done, rate, ETA) that becomes ``<output>/status.json`` at the end (`prepare_dataset`).

Unusable files -- empty, truncated, not images, decompression bombs, unreadable, dangling links -- are
skipped and listed in ``stats.json["skipped"]``; they never stop the job. Progress lines with a rate and an
ETA go to stderr; the final summary goes to stdout.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Callable, TextIO
import zlib

import numpy as np

from alexnet_jax.runtime import confinement
from alexnet_jax.runtime import fileio
from alexnet_jax.data import errors
from alexnet_jax.data import loading
from alexnet_jax.data import records
from alexnet_jax.data import reports
from alexnet_jax.data import resize as resize_lib
from alexnet_jax.data import sources
from alexnet_jax.data import splits as splits_lib
from alexnet_jax.data import statistics
from alexnet_jax.runtime import lock as lock_lib
from alexnet_jax.runtime import progress as progress_lib
from alexnet_jax.runtime import status as status_lib

log = logging.getLogger(__name__)

STATS_VERSION = 1
_SPLIT_STREAM = {'train': 0, 'val': 1, 'test': 2}


@dataclasses.dataclass
class PrepareOptions:
  """The prepare tool's options; the names are its flags (`python -m alexnet_jax.prepare --help`)."""
  source: str
  output: str
  image_size: tuple[int, int] = (256, 256)      # (width, height), DIGITS' "Image size (Width x Height)"
  resize_mode: str = 'squash'
  channels: int = 3
  val_percent: float = 25.0
  test_percent: float = 0.0
  val_source: str = ''
  test_source: str = ''
  image_root: str = ''
  labels_file: str = ''
  tfds_data_dir: str = ''
  min_per_class: int = 2
  max_per_class: int = 0
  encoding: str = 'jpg'
  seed: int = 0
  workers: int = 0                              # 0: one thread per core
  overwrite: bool = False
  draft: bool = True
  progress_interval_s: float = 2.0
  confine_to: tuple = ()                        # resolved roots every image must lie in (confinement.py)


def _check(opts: PrepareOptions) -> None:
  if opts.resize_mode not in resize_lib.RESIZE_MODES:
    raise errors.DataError(f'--resize_mode={opts.resize_mode}: expected one of {"|".join(resize_lib.RESIZE_MODES)}')
  if opts.channels not in (1, 3):
    raise errors.DataError(f'--channels={opts.channels}: expected 1 (grayscale) or 3 (color)')
  if opts.encoding not in records.ENCODINGS:
    raise errors.DataError(f'--encoding={opts.encoding}: expected one of {"|".join(records.ENCODINGS)}')
  w, h = opts.image_size
  if not (0 < w <= 65535 and 0 < h <= 65535):
    raise errors.DataError(f'--image_size={w},{h}: both sides must be in 1..65535')
  if not opts.output:
    raise errors.DataError('--output is required')


def _is_within(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _clean_stale_tmp(parent: str, name: str) -> None:
  """Removes `.<name>.tmp-<pid>-*` folders left by prepare runs that were killed (their pid is gone)."""
  prefix = f'.{name}.tmp-'
  try:
    entries = os.listdir(parent)
  except OSError:
    return
  for e in entries:
    if not e.startswith(prefix):
      continue
    pid_s = e[len(prefix):].split('-', 1)[0]
    if not pid_s.isdigit() or int(pid_s) == os.getpid():
      continue
    try:
      os.kill(int(pid_s), 0)
      continue                      # still running: another prepare is busy there
    except ProcessLookupError:
      pass
    except PermissionError:
      continue
    log.info('removing %s, left by an interrupted prepare run', e)
    shutil.rmtree(os.path.join(parent, e), ignore_errors=True)


def _listing_splits(opts: PrepareOptions):
  common = dict(image_root=opts.image_root, labels_file=opts.labels_file, tfds_data_dir=opts.tfds_data_dir)
  listing = sources.open_source(opts.source, what='--source', **common)
  if isinstance(listing, sources.Prepared):
    raise errors.DataError(f'--source={opts.source}: this is already a prepared dataset')
  skipped = list(listing.skipped)
  _confine(listing, opts, '--source')
  classes, split_map, dropped = splits_lib.split_listing(
      listing, val_percent=0.0 if opts.val_source else opts.val_percent,
      test_percent=0.0 if opts.test_source else opts.test_percent, min_per_class=opts.min_per_class,
      max_per_class=opts.max_per_class, seed=opts.seed, what='-')
  for name, spec, flag in (('val', opts.val_source, '--val_source'), ('test', opts.test_source, '--test_source')):
    if spec:
      other = sources.open_source(spec, what=flag, **common)
      if isinstance(other, sources.Prepared):
        raise errors.DataError(f'{flag}={spec}: a prepared dataset cannot be a split source')
      _confine(other, opts, flag)
      skipped.extend(other.skipped)
      split_map[name] = splits_lib.match_classes(other, classes, name)
  return listing.description, classes, split_map, dropped, skipped


def _confine(listing, opts: PrepareOptions, flag: str) -> None:
  """With ``--confine_to``, every image a listing names -- walked from a folder (links resolved, file by
  file) or named by a list -- must resolve inside the roots; else a DataError before anything is read."""
  if not opts.confine_to:
    return
  if not isinstance(listing.store, sources.FileStore):
    raise errors.DataError(f'{flag}: only image folders and list files can be used with --confine_to')
  try:
    confinement.check_all(listing.keys, opts.confine_to, what=flag)
  except confinement.OutsideRootsError as e:
    raise errors.DataError(str(e)) from None


def noise_rng(seed: int, path: str, stream: int):
  """Fill-mode noise of one prepared record: keyed by its path, so other files failing never change it."""
  return loading.record_noise_rng(seed, zlib.crc32(path.encode('utf-8', 'surrogateescape')), stream)


class _Work:
  """Index -> (record bytes, resized pixels) or the reason it failed. Runs in grain threads.

  With `accumulate`, each thread also adds its images to its own `MomentAccumulator` (merged at the end),
  which keeps the mean-image sums off the single writer thread.
  """

  def __init__(self, split: splits_lib.SplitData, opts: PrepareOptions, accumulate: bool = False):
    self.split, self.opts = split, opts
    self.stream = _SPLIT_STREAM[split.name]
    self.accumulate = accumulate
    self.accumulators: list[statistics.MomentAccumulator] = []
    self._local = threading.local()
    self._lock = threading.Lock()

  def _accumulator(self, image: np.ndarray) -> statistics.MomentAccumulator:
    acc = getattr(self._local, 'acc', None)
    if acc is None:
      acc = self._local.acc = statistics.MomentAccumulator(*image.shape)
      with self._lock:
        self.accumulators.append(acc)
    return acc

  def __call__(self, i: int):
    s, o = self.split, self.opts
    key = s.keys[int(i)]
    path = s.store.describe(key)
    w, h = o.image_size
    try:
      content = s.store.read(key)
      rng = noise_rng(o.seed, path, self.stream)
      image = loading.load_resized(content, image_size=(w, h), resize_mode=o.resize_mode, channels=o.channels,
                                   noise_rng=rng, exact=True, draft=o.draft)
      blob = records.encode_record(image, int(s.labels[int(i)]), path, o.encoding)
      if self.accumulate:
        self._accumulator(image).add(image)
      return blob, image, path
    except errors.DecodeError as e:
      return None, {'path': path, 'reason': e.reason, 'detail': e.detail}, path


def _write_split(tmp: str, split: splits_lib.SplitData, classes: list[str], opts: PrepareOptions,
                 workers: int, stream: TextIO, acc: statistics.MomentAccumulator | None,
                 thumbs: dict[int, list[np.ndarray]] | None,
                 report: Callable[[progress_lib.Progress], None] | None = None):
  """Writes one split; returns (written count per class, skipped list, bytes). `report(progress)` after each image."""
  import grain  # pylint: disable=g-import-not-at-top
  rec_path = os.path.join(tmp, f'{split.name}.array_record')
  writer = records.Writer(rec_path)
  counts = np.zeros(len(classes), np.int64)
  skipped, lines = [], []
  prog = progress_lib.Progress(len(split), f'prepare {split.name}', unit='img', tty=False,
                               log_every_secs=opts.progress_interval_s, log_fn=progress_lib.print_to(stream))
  work = _Work(split, opts, accumulate=acc is not None)
  ds = grain.MapDataset.range(len(split)).map(work).to_iter_dataset(
      grain.ReadOptions(num_threads=workers, prefetch_buffer_size=max(8, 4 * workers)))
  try:
    for i, (blob, image, path) in enumerate(ds):
      prog.update()
      if report is not None:
        report(prog)
      if blob is None:
        skipped.append(image)
        continue
      label = int(split.labels[i])
      writer.write(blob)
      counts[label] += 1
      lines.append(f'{path} {label}\n')
      if thumbs is not None and len(thumbs[label]) < reports.SHEET_MAX:
        thumbs[label].append(np.asarray(reports.thumbnail(image)))
  finally:
    writer.close()
  for part in work.accumulators:
    acc.merge(part)
  prog.close()
  if not writer.count:
    os.remove(rec_path)
    return counts, skipped, 0
  with open(os.path.join(tmp, f'{split.name}.txt'), 'w', encoding='utf-8', errors='surrogateescape') as f:
    f.writelines(lines)
  return counts, skipped, os.path.getsize(rec_path)


def summary_text(stats: dict) -> str:
  """The end-of-job summary: classes, counts per split, skipped files by reason."""
  out = [f'Prepared {stats["output"]}',
         f'  {len(stats["classes"])} classes, {stats["image_size"][0]}x{stats["image_size"][1]} '
         f'{stats["resize_mode"]}, {stats["channels"]} channel(s), encoding {stats["encoding"]}, '
         f'{stats["bytes"] / 2**20:.1f} MiB']
  names = stats['classes']
  out.append('  classes: ' + ', '.join(names[:20]) + (f', ... ({len(names) - 20} more)' if len(names) > 20 else ''))
  for split, per_class in stats['counts'].items():
    counts = list(per_class.values())
    out.append(f'  {split}: {sum(counts)} images ({min(counts)}..{max(counts)} per class)')
  if stats['skipped']:
    out.append(f'  skipped {len(stats["skipped"])} files:')
    for reason, n in sorted(stats['skipped_by_reason'].items(), key=lambda kv: -kv[1]):
      out.append(f'    {n:6d}  {reason}')
  else:
    out.append('  skipped: none')
  if stats.get('dropped_classes'):
    out.append(f'  dropped classes (too few images): {", ".join(stats["dropped_classes"][:20])}')
  return '\n'.join(out)


def lock_path(output: str) -> str:
  """The lock of a prepare making `output`: `<parent>/.<name>.lock` (the output does not exist yet)."""
  parent, name = os.path.split(os.path.abspath(output))
  return os.path.join(parent, f'.{name}.lock')


def live_status_path(output: str) -> str:
  """The status of a prepare making `output` while it runs, or after it failed: `<parent>/.<name>.status.json`.

  On success it moves into `<output>/status.json` (state done) with the rest of the dataset.
  """
  parent, name = os.path.split(os.path.abspath(output))
  return os.path.join(parent, f'.{name}.status.json')


def prepare_dataset(opts: PrepareOptions, *, stream: TextIO | None = None, track: bool = False) -> dict:
  """Runs the whole job (module docstring); returns the contents of stats.json.

  Args:
    opts: what to prepare.
    stream: where progress lines go (default stderr).
    track: what `python -m alexnet_jax.prepare` does: hold the output's lock (`lock_path`), so that a
      second prepare of the same output stops at once naming this one, and keep a live status
      (`live_status_path`: images done/total, rate, ETA) that `python -m alexnet_jax.runs` shows. It
      becomes `<output>/status.json` (done) at the end, and stays beside the output as failed or
      stopped, with the error, if the job does not finish.

  Raises:
    DataError: bad options, a missing source, fewer than 2 usable classes, an existing output without
      `overwrite`. Nothing is written in that case.
    WorkdirBusyError: with `track`, another process is preparing the same output.
  """
  stream = stream if stream is not None else sys.stderr
  _check(opts)
  output = os.path.abspath(opts.output)
  if not track:
    return _prepare(opts, output, stream, None)
  with lock_lib.WorkdirLock(opts.output, what='prepare', lock_file=lock_path(output)):
    status = status_lib.StatusWriter(os.path.dirname(output), 'prepare',
                                     filename=os.path.basename(live_status_path(output)))
    try:
      return _prepare(opts, output, stream, status)
    except BaseException as e:
      status.record_exception(e)              # failed / stopped, with the error; no-op if never started
      raise


def _prepare(opts: PrepareOptions, output: str, stream: TextIO, status: status_lib.StatusWriter | None) -> dict:
  """`prepare_dataset` after the option checks (and under the lock, with `status`, when tracked)."""
  if os.path.lexists(output) and not opts.overwrite:
    raise errors.DataError(f'--output={opts.output} already exists; pass --overwrite to replace it')
  if not opts.source.startswith(sources.TFDS_PREFIX) and os.path.isdir(opts.source) and _is_within(
      output, opts.source):
    raise errors.DataError(f'--output={opts.output} is inside --source={opts.source}; it would become a class')
  t0 = time.time()
  if status is not None:
    status.start(workdir=output, output=output, source=opts.source, phase='listing')
  description, classes, split_map, dropped, skipped = _listing_splits(opts)
  if 'train' not in split_map or not len(split_map['train']):
    raise errors.DataError(f'{description}: the training split is empty (--val_percent + --test_percent = 100?)')
  workers = opts.workers or os.cpu_count() or 1
  sizes_planned = {k: len(v) for k, v in split_map.items() if v is not None and len(v)}
  total_images = sum(sizes_planned.values())
  progress_state = {'before': 0, 'seconds_before': 0.0, 'split_start': None}

  def report(prog: progress_lib.Progress, split_name: str) -> None:
    progress_state['split_start'] = prog.start
    done = progress_state['before'] + prog.n
    elapsed = progress_state['seconds_before'] + time.monotonic() - prog.start
    rate = done / elapsed if elapsed > 0 and done else None
    status.update(phase='writing', split=split_name, done=done, total=total_images,
                  progress=done / total_images if total_images else None, images_per_sec=rate,
                  eta_seconds=(total_images - done) / rate if rate else None)

  if status is not None:
    status.update(force=True, phase='writing', source=description, classes=len(classes), done=0,
                  total=total_images, progress=0.0, splits=sizes_planned)

  parent, name = os.path.dirname(output), os.path.basename(output)
  os.makedirs(parent, exist_ok=True)
  _clean_stale_tmp(parent, name)
  tmp = tempfile.mkdtemp(prefix=f'.{name}.tmp-{os.getpid()}-', dir=parent)
  try:
    w, h = opts.image_size
    acc = statistics.MomentAccumulator(h, w, opts.channels)
    thumbs = {i: [] for i in range(len(classes))}
    counts, sizes = {}, {}
    for split_name in splits_lib.SPLIT_NAMES:
      split = split_map.get(split_name)
      if split is None or not len(split):
        continue
      is_train = split_name == 'train'
      c, bad, nbytes = _write_split(tmp, split, classes, opts, workers, stream, acc if is_train else None,
                                    thumbs if is_train else None,
                                    None if status is None else lambda p, n=split_name: report(p, n))
      progress_state['before'] += len(split)
      if progress_state['split_start'] is not None:
        progress_state['seconds_before'] += time.monotonic() - progress_state['split_start']
        progress_state['split_start'] = None
      skipped.extend(bad)
      if nbytes:
        counts[split_name], sizes[split_name] = c, nbytes
    if 'train' not in counts:
      raise errors.DataError(f'{description}: none of the training images could be decoded')
    for i in np.nonzero(counts['train'] == 0)[0]:
      log.warning('class %r has no usable training image', classes[i])

    with open(os.path.join(tmp, 'labels.txt'), 'w', encoding='utf-8', errors='surrogateescape') as f:
      f.write(''.join(c + '\n' for c in classes))
    mean = acc.mean_image()
    np.save(os.path.join(tmp, 'mean.npy'), mean)
    reports.save_mean_png(os.path.join(tmp, 'mean.png'), mean)
    eigval, eigvec = acc.pca()
    by_reason = collections.Counter(s['reason'] for s in skipped)
    stats = {
        'version': STATS_VERSION,
        'output': output,
        'source': description,
        'classes': classes,
        'counts': {s: {classes[i]: int(n) for i, n in enumerate(c)} for s, c in counts.items()},
        'skipped': skipped,
        'skipped_by_reason': dict(by_reason),
        'dropped_classes': dropped,
        'image_size': [w, h],
        'resize_mode': opts.resize_mode,
        'channels': opts.channels,
        'encoding': opts.encoding,
        'bytes': int(sum(sizes.values())),
        'bytes_per_split': {k: int(v) for k, v in sizes.items()},
        'val_percent': 0.0 if opts.val_source else opts.val_percent,
        'test_percent': 0.0 if opts.test_source else opts.test_percent,
        'val_source': opts.val_source,
        'test_source': opts.test_source,
        'min_per_class': opts.min_per_class,
        'max_per_class': opts.max_per_class,
        'seed': opts.seed,
        'mean_file': 'mean.npy',
        'pca': {'eigval': eigval.tolist(), 'eigvec': eigvec.tolist(), 'pixel_scale': '0..1'},
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'seconds': round(time.time() - t0, 2),
    }
    reports.save_histogram(os.path.join(tmp, 'histogram.png'), classes, counts)
    sheets = os.path.join(tmp, 'contact_sheets')
    os.makedirs(sheets)
    for label, th in thumbs.items():
      reports.save_contact_sheet(reports.contact_sheet_path(sheets, label, classes[label]), th)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)   # mkdtemp made it private; give it the usual permissions
    # stats.json last: a folder with stats.json is a prepared dataset.
    fileio.write_json(os.path.join(tmp, 'stats.json'), stats, indent=1, ensure_ascii=True)
    if status is not None:                   # the record arrives with the dataset, in the same rename
      status_lib.write_status(os.path.join(tmp, status_lib.STATUS_FILE), status.snapshot(
          'done', exit_status=0, phase='done', source=description, done=total_images,
          total=total_images, progress=1.0, eta_seconds=0.0,
          counts={k: int(sum(v.values())) for k, v in stats['counts'].items()},
          skipped=len(skipped), bytes=stats['bytes'], seconds=stats['seconds']))

    if os.path.lexists(output):
      if not opts.overwrite:
        raise errors.DataError(f'--output={opts.output} appeared while preparing; pass --overwrite to replace it')
      old = tempfile.mkdtemp(prefix=f'.{name}.old-{os.getpid()}-', dir=parent)
      os.rename(output, os.path.join(old, name))
      os.rename(tmp, output)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, output)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if status is not None:
    status.discard()                         # its final record is <output>/status.json now
  return stats
