"""tfds sources: ``tfds:NAME[:SPLIT]``, a dataset prepared by tensorflow-datasets in ArrayRecord format.

Read through `tfds.data_source` (no TensorFlow needed; API_NOTES.md §8). SPLIT defaults to ``train`` and
may use tfds' slicing syntax (``train[:80%]``). Class names come from the ``label`` feature. The labels are
read in batches of undecoded records, of which only the label is parsed (the offline mock cannot do that
and decodes); tfds keeps no per-record labels in its metadata, so the first listing still reads every
record once (for imagenet2012, ~140 GB of I/O) -- hence the cache: with `cache_dir` (the run's workdir)
the labels are kept in ``<cache_dir>/listing_cache/tfds-<hash>.npz``, keyed by dataset name, split,
resolved data_dir, full name and version, record count, class names, the mtime of the prepared copy's
``dataset_info.json`` and `listing.LISTING_VERSION`.

tensorflow_datasets is imported when a tfds source is used (0.5 s), not when this module is.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import time

import numpy as np

from alexnet_jax.data import errors
from alexnet_jax.data.listing import cache_file
from alexnet_jax.data.listing import LazyStore
from alexnet_jax.data.listing import Listing
from alexnet_jax.data.listing import LISTING_VERSION
from alexnet_jax.data.listing import read_cache
from alexnet_jax.data.listing import write_cache

log = logging.getLogger(__name__)

TFDS_PREFIX = 'tfds:'


class TfdsStore(LazyStore):
  """Keys are record indices of a `tfds.data_source`; `read` returns encoded bytes when tfds allows it."""

  def __init__(self, name: str, split: str, data_dir: str | None):
    super().__init__()
    self.name, self.split, self.data_dir = name, split, data_dir
    self.raw_bytes = True

  def _open(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # 0.5 s; only when used
    kwargs = dict(split=self.split, data_dir=self.data_dir)
    if self.raw_bytes:
      # Undecoded JPEG bytes let us decode with Pillow's draft mode in our own threads. The offline mock
      # (tfds.testing.mock_data) cannot skip decoding without TensorFlow, so fall back to decoded arrays.
      try:
        src = tfds.data_source(self.name, decoders={'image': tfds.decode.SkipDecoding()}, **kwargs)
        if len(src):
          src[0]
        return src
      except Exception:  # pylint: disable=broad-except
        self.raw_bytes = False
    return tfds.data_source(self.name, **kwargs)

  def read(self, key: int):
    image = self.source[int(key)]['image']
    if isinstance(image, (bytes, bytearray)):
      return bytes(image)
    return np.asarray(image)

  def label(self, key: int) -> int:
    return int(self.source[int(key)]['label'])

  def describe(self, key: int) -> str:
    return f'tfds:{self.name}:{self.split}#{key}'

  def __repr__(self):
    return f'TfdsStore({self.name!r}, {self.split!r})'


def parse_tfds_spec(spec: str) -> tuple[str, str]:
  """'tfds:NAME[:SPLIT]' -> (NAME, SPLIT); SPLIT defaults to 'train'."""
  body = spec[len(TFDS_PREFIX):]
  name, _, split = body.partition(':')
  if not name:
    raise errors.DataError(f'{spec!r}: expected tfds:NAME[:SPLIT]')
  return name, split or 'train'


_TFDS_BATCH = 1024   # records per task of the label-reading threads


def _raw_label_reader(store: TfdsStore, n: int):
  """A function (start, stop) -> labels that parses only the label out of the serialized records; None when
  this dataset cannot be read that way (the offline mock needs TensorFlow for it).

  The records come undecoded (``DeserializeMethod.RAW_BYTES``) and each is parsed as a ``tf.train.Example``
  (upb, in C) of which only the ``label`` int64 is touched: the image bytes are neither decoded nor copied
  into numpy. They are read one by one, in order: on a local ArrayRecord copy (6,000 records of 40 KB) that
  took 28-33 us of CPU per record, where ArrayRecord's batched ``__getitems__`` took 75-100 us and the
  decoded path (``SkipDecoding``, what this listing did before) 60 us. `read_tfds_labels` runs several
  such ranges in threads, which hides the latency of remote storage.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
    raw = tfds.data_source(store.name, split=store.split, data_dir=store.data_dir,
                           deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    parse = tf_example_pb2.Example.FromString

    def read(start: int, stop: int) -> list[int]:
      return [parse(raw[i]).features.feature['label'].int64_list.value[0] for i in range(start, stop)]

    probe = min(n, 8)
    if read(0, probe) != [store.label(i) for i in range(probe)]:
      raise ValueError('labels parsed from the raw records differ from the decoded ones')
    return read
  except Exception as e:  # pylint: disable=broad-except
    log.debug('tfds:%s: labels cannot be parsed from raw records (%s: %s); decoding them',
              store.name, type(e).__name__, e)
    return None


def _decoded_label_reader(store: TfdsStore):
  """(start, stop) -> labels through the store's own source (images skipped where tfds can; the mock
  decodes them). One record at a time: ArrayRecord's batched ``__getitems__`` was slower (see above)."""
  src = store.source
  return lambda start, stop: [int(src[i]['label']) for i in range(start, stop)]


def read_tfds_labels(store: TfdsStore, n: int) -> np.ndarray:
  """Every record's label, int32 [n], in ranges of `_TFDS_BATCH` records read by a few threads, parsing
  only the label where tfds allows it (`_raw_label_reader`), else decoding records without their image."""
  labels = np.empty(n, np.int32)
  read = _raw_label_reader(store, n)
  threads = min(8, os.cpu_count() or 1) if read is not None else 1
  read = read or _decoded_label_reader(store)
  spans = [(s, min(n, s + _TFDS_BATCH)) for s in range(0, n, _TFDS_BATCH)]

  def fill(span: tuple[int, int]) -> None:
    labels[span[0]:span[1]] = read(*span)

  if threads > 1 and len(spans) > 1:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(fill, spans))
  else:
    for span in spans:
      fill(span)
  return labels


def _tfds_cache_key(store: TfdsStore, src, classes: list[str], n: int) -> dict:
  """What a cached label list depends on: the dataset, split, version, prepared copy and class names."""
  info = src.dataset_info
  data_dir = str(info.data_dir)
  try:
    stamp = os.stat(os.path.join(data_dir, 'dataset_info.json')).st_mtime_ns   # re-prepared: new stamp
  except OSError:
    stamp = None
  return {'kind': 'tfds', 'version': LISTING_VERSION, 'name': store.name, 'split': store.split,
          'data_dir': data_dir, 'full_name': str(info.full_name), 'dataset_version': str(info.version),
          'records': n, 'info_mtime_ns': stamp,
          'classes_sha1': hashlib.sha1('\n'.join(classes).encode('utf-8', 'surrogateescape')).hexdigest()}


def list_tfds(spec: str, *, data_dir: str = '', what: str = 'source', cache_dir: str | None = None) -> Listing:
  """Lists a tfds dataset through `tfds.data_source`, reading every label once (module docstring).

  Args:
    spec: ``tfds:NAME[:SPLIT]``.
    data_dir: tfds' data_dir ('' for its default).
    what: the flag or config field that named it, for error messages.
    cache_dir: where to keep the labels (the run's workdir); a later call with the same dataset, split,
      version and prepared copy reads them from there instead of from the records.
  """
  name, split = parse_tfds_spec(spec)
  store = TfdsStore(name, split, data_dir or None)
  try:
    src = store.source
    names = list(src.dataset_info.features['label'].names)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.DataError(
        f'{what}={spec!r}: tfds.data_source({name!r}, split={split!r}) failed: {type(e).__name__}: {e}. '
        'The dataset must be prepared in ArrayRecord format (file_format="array_record").') from None
  n = len(src)
  key = path = None
  if cache_dir:
    key = _tfds_cache_key(store, src, names, n)
    path = cache_file(cache_dir, key)
    got = read_cache(path)
    cached = got[1].get('labels') if got is not None and got[0].get('key') == key else None
    if cached is not None and cached.shape == (n,):
      log.info('%s: %d labels read from %s', spec, n, path)
      return Listing(names, list(range(n)), cached.astype(np.int32), store, [], spec)
  log.info('%s: reading %d labels%s', spec, n, f' (cached afterwards in {cache_dir})' if cache_dir else '')
  t0 = time.perf_counter()
  labels = read_tfds_labels(store, n)
  log.info('%s: %d labels read in %.1f s', spec, n, time.perf_counter() - t0)
  if path is not None:
    write_cache(path, {'key': key}, labels=labels)
  return Listing(names, list(range(n)), labels, store, [], spec)
