"""Inference from a trained run or an exported bundle, on any layout: the library behind ``classify``.

    import alexnet_jax
    model = alexnet_jax.load('runs/demo')              # a workdir (latest snapshot) ...
    model = alexnet_jax.load('demo.tar.gz')            # ... or a bundle written by `export`
    model.predict('cat.jpg')                           # [('cat', 0.93), ('dog', 0.05), ...]
    model.predict(['a.jpg', 'b.png'], top_k=3)         # one such list per image
    model.probabilities(['a.jpg', 'b.png'])            # float32 [2, num_classes]

Three things make a prediction trustworthy, and each has one place here:

* **The right parameters.** ``ModelFiles`` finds what a path holds: a training workdir (``config.json``,
  ``labels.txt``, ``preprocess.json``/``mean.npy`` and ``checkpoints/<step>/``) or a bundle (the same files
  plus ``params.npz``, checked against the sha256 sums of its ``manifest.json`` before anything is read,
  see ``export.py``).
* **Any layout.** A snapshot's tower-split arrays are ``[tower, ...]`` whatever layout wrote them
  (DESIGN.md), so they are restored *straight into the target layout's shardings* (orbax with a sharded
  restore target, API_NOTES.md section 6; ``jax.device_put`` per leaf for a bundle). A run trained with the
  towers on two devices classifies on one CPU device, and the reverse, with the same probabilities up to
  float32 round-off (tests/test_classify.py checks 1e-5).
* **The right preprocessing.** Every image goes through ``data.preprocess_for_eval`` with the run's own
  ``PreprocessContract`` -- the function evaluation uses -- so classify and evaluate agree on every image
  (in DIGITS they did not, its most reported bug). Ten-crop (the paper's section 4.1) follows the run's
  ``config.data.ten_crop_eval`` unless asked otherwise.

Batches have a fixed size (the last one is padded), so the eval step compiles once per input shape; fewer
images than a batch use the next power of two instead (one image does not pay for 64, and a notebook
calling ``predict`` with 1, 3, 5 ... images compiles a handful of shapes, not one per count).
Images are decoded by a few threads while the device runs the previous batch. A bad image never stops a
batch: ``Model.classify`` reports it in its result (``Prediction.error``) and goes on; the convenience
methods ``predict``/``probabilities`` raise instead, naming the image.

Single-process only: every process would classify the whole list.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
import ml_collections
import numpy as np
import PIL.Image

from alexnet_jax import checkpoints, metrics, models
from alexnet_jax import data as data_lib
from alexnet_jax.data import sources as sources_lib
from alexnet_jax.parallel import layouts, step as step_lib
from alexnet_jax.progress import Progress

CONFIG_FILE = 'config.json'
PARAMS_FILE = 'params.npz'
MANIFEST_FILE = 'manifest.json'
INFO_FILE = 'info.json'
DEFAULT_LAYOUT = 'single'
ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.zip')


class BundleError(ValueError):
  """A bundle that is not one, is truncated, or does not match its manifest (tampered or corrupted)."""


# ---- What a path holds ---------------------------------------------------------------------------------

def is_archive(path: str | os.PathLike) -> bool:
  return os.fspath(path).lower().endswith(ARCHIVE_SUFFIXES)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
  import hashlib
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while True:
      block = f.read(chunk)
      if not block:
        return h.hexdigest()
      h.update(block)


def verify_bundle_dir(directory: str, *, name: Optional[str] = None) -> dict[str, Any]:
  """Checks every file of ``manifest.json`` (present, size, sha256); returns the manifest.

  Raises ``BundleError`` saying which file is missing, truncated or altered. Files the manifest does not
  list are never read, so they are ignored.
  """
  name = name or directory
  path = os.path.join(directory, MANIFEST_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      manifest = json.load(f)
    files = manifest['files']
  except FileNotFoundError:
    raise BundleError(f'{name} is not an alexnet_jax model bundle: it has no {MANIFEST_FILE} '
                      f'(write bundles with python -m alexnet_jax.export)') from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise BundleError(f'{name}: {MANIFEST_FILE} is unreadable ({e}); the bundle is truncated or '
                      f'corrupted, export it again') from None
  if not isinstance(files, dict):
    raise BundleError(f'{name}: {MANIFEST_FILE} has no file list; the bundle is corrupted')
  for rel, expected in sorted(files.items()):
    file_path = os.path.join(directory, rel)
    if os.path.isabs(rel) or '..' in rel.replace('\\', '/').split('/'):
      raise BundleError(f'{name}: the manifest names an unsafe path {rel!r}; not reading this bundle')
    if not isinstance(expected, dict) or not {'bytes', 'sha256'} <= set(expected):
      raise BundleError(f'{name}: {MANIFEST_FILE} has no size and sha256 for {rel}; the bundle is '
                        f'corrupted')
    if not os.path.isfile(file_path):
      raise BundleError(f'{name} is incomplete: {rel} is missing (the manifest lists it)')
    size = os.path.getsize(file_path)
    if size != expected['bytes']:
      raise BundleError(f'{name} is truncated or altered: {rel} has {size} bytes, the manifest says '
                        f'{expected["bytes"]}; copy or export the bundle again')
    if sha256_file(file_path) != expected['sha256']:
      raise BundleError(f'{name}: {rel} does not match its sha256 in the manifest: the bundle was '
                        f'modified or corrupted after export; copy or export it again')
  return manifest


def extract_archive(path: str, destination: str) -> str:
  """Unpacks a .tar.gz/.tgz/.zip bundle into ``destination``; returns the folder holding the manifest.

  Member paths are checked (no absolute paths, no ``..``, no links), and a truncated or corrupt archive
  is a ``BundleError`` rather than a library traceback.
  """
  import tarfile
  import zipfile
  import zlib
  try:
    if path.lower().endswith('.zip'):
      with zipfile.ZipFile(path) as z:
        bad = z.testzip()  # reads every member and checks its CRC
        if bad is not None:
          raise BundleError(f'{path} is corrupt: the zip member {bad} fails its CRC check')
        for member in z.namelist():
          parts = member.replace('\\', '/').split('/')
          if member.startswith(('/', '\\')) or '..' in parts:
            raise BundleError(f'{path}: unsafe member path {member!r}; not extracting this archive')
        z.extractall(destination)
    else:
      with tarfile.open(path, 'r:*') as t:
        t.extractall(destination, filter='data')  # refuses absolute paths, '..' and links outside
  except BundleError:
    raise
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such bundle') from None
  except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
    raise BundleError(f'{path} is truncated or corrupt and cannot be unpacked ({type(e).__name__}: '
                      f'{e}); copy or export the bundle again') from None
  if os.path.exists(os.path.join(destination, MANIFEST_FILE)):
    return destination
  entries = [e for e in os.listdir(destination) if not e.startswith('.')]
  if len(entries) == 1 and os.path.isfile(os.path.join(destination, entries[0], MANIFEST_FILE)):
    return os.path.join(destination, entries[0])  # an archive of the bundle folder itself
  raise BundleError(f'{path} is not an alexnet_jax model bundle: it has no {MANIFEST_FILE}')


@dataclasses.dataclass
class ModelFiles:
  """Everything but the parameters, read from a workdir or a (verified) bundle.

  Attributes:
    path: what the user gave.
    kind: 'workdir' or 'bundle'.
    config: the run's resolved config (``config.json``).
    classes: class names, label i = ``classes[i]`` (``labels.txt``).
    contract: the preprocessing the network was trained with.
    info: a bundle's ``info.json`` (empty for a workdir).
    params: a bundle's parameters as numpy arrays (None for a workdir: they come from a checkpoint).
  """
  path: str
  kind: str
  config: ml_collections.ConfigDict
  classes: list[str]
  contract: data_lib.PreprocessContract
  info: dict[str, Any]
  params: Optional[dict[str, Any]] = None


def _read_common(directory: str, *, what: str) -> tuple[ml_collections.ConfigDict, list[str],
                                                          data_lib.PreprocessContract]:
  config_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{what} has no {CONFIG_FILE}: give the --workdir of a training run or '
                            f'a bundle written by python -m alexnet_jax.export')
  with open(config_path, encoding='utf-8') as f:
    config = ml_collections.ConfigDict(json.load(f))
  labels_path = os.path.join(directory, data_lib.contract.LABELS_FILE)
  if not os.path.isfile(labels_path):
    raise FileNotFoundError(f'{what} has no labels.txt: was the run started by this version of '
                            f'alexnet_jax.train?')
  classes = sources_lib.read_labels_file(labels_path, what=what)
  contract = data_lib.load_contract(directory)
  return config, classes, contract


def read_model_files(path: str | os.PathLike) -> ModelFiles:
  """Reads a workdir or a bundle (folder or archive, verified against its manifest)."""
  path = os.fspath(path)
  if is_archive(path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path}: no such bundle')
    scratch = tempfile.mkdtemp(prefix='alexnet_bundle_')
    try:
      return _read_bundle_dir(extract_archive(path, scratch), name=path)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)  # everything was read into memory
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no such workdir or bundle (expected a training run directory, '
                            f'a bundle directory, or a {"/".join(ARCHIVE_SUFFIXES)} bundle)')
  if os.path.exists(os.path.join(path, MANIFEST_FILE)):
    return _read_bundle_dir(path, name=path)
  config, classes, contract = _read_common(path, what=path)
  return ModelFiles(path, 'workdir', config, classes, contract, {})


def _read_bundle_dir(directory: str, *, name: str) -> ModelFiles:
  manifest = verify_bundle_dir(directory, name=name)
  for required in (PARAMS_FILE, CONFIG_FILE, INFO_FILE, data_lib.contract.LABELS_FILE,
                   data_lib.contract.CONTRACT_FILE, data_lib.contract.MEAN_FILE):
    if required not in manifest['files']:
      raise BundleError(f'{name}: the manifest does not list {required}; not a complete bundle')
  config, classes, contract = _read_common(directory, what=name)
  with open(os.path.join(directory, INFO_FILE), encoding='utf-8') as f:
    info = json.load(f)
  params = load_params_npz(os.path.join(directory, PARAMS_FILE), name=name)
  return ModelFiles(name, 'bundle', config, classes, contract, info, params)


# ---- Parameters as one .npz file -----------------------------------------------------------------------

def flatten_params(params: Any, prefix: str = '', *, to_host: bool = True) -> dict[str, Any]:
  """``{'towers': {'conv1': {'kernel': a}}}`` -> ``{'towers/conv1/kernel': a}``; with ``to_host`` the
  leaves become numpy arrays (gathered from whatever devices hold them)."""
  out: dict[str, Any] = {}
  for key, value in params.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flatten_params(value, name + '/', to_host=to_host))
    else:
      out[name] = np.asarray(jax.device_get(value)) if to_host else value
  return out


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *path, leaf = name.split('/')
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def save_params_npz(params: Any, path: str) -> None:
  """Writes the parameter tree as an uncompressed ``.npz`` (numpy only, no pickle)."""
  with open(path, 'wb') as f:
    np.savez(f, **flatten_params(params))


def load_params_npz(path: str, *, name: str = '') -> dict[str, Any]:
  """Reads what ``save_params_npz`` wrote (``allow_pickle=False``: a bundle can never run code)."""
  import zipfile
  try:
    with np.load(path, allow_pickle=False) as z:
      return unflatten_params({k: z[k] for k in z.files})
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
    raise BundleError(f'{name or path}: cannot read {PARAMS_FILE} ({type(e).__name__}: {e})') from None


def check_param_shapes(params: dict[str, Any], expected: dict[str, Any], *, name: str) -> None:
  """Raises ``BundleError`` listing every parameter whose name, shape or dtype differs from the network's."""
  have = {k: (tuple(v.shape), np.dtype(v.dtype))
          for k, v in flatten_params(params, to_host=False).items()}
  want = {k: (tuple(v.shape), np.dtype(v.dtype))
          for k, v in flatten_params(expected, to_host=False).items()}
  problems = [f'{k} missing' for k in sorted(set(want) - set(have))]
  problems += [f'{k} unexpected' for k in sorted(set(have) - set(want))]
  problems += [f'{k}: {have[k][0]} {have[k][1]}, the network needs {want[k][0]} {want[k][1]}'
               for k in sorted(set(have) & set(want)) if have[k] != want[k]]
  if problems:
    raise BundleError(f'{name}: the parameters do not fit the network of its config.json: '
                      + '; '.join(problems[:8]) + (' ...' if len(problems) > 8 else ''))


# ---- Restoring onto a layout ---------------------------------------------------------------------------

def devices_for_layout(name: str) -> int:
  """Devices a layout needs for the two-tower network (what entry points pass to ``ensure_devices``
  before JAX starts: single 1, model 2, data 2, hybrid 4)."""
  from alexnet_jax import configs, train
  probe = configs.default_config()
  probe.layout = name
  return train.devices_needed(probe)


def resolve_layout(name: str, network: models.TowerNetwork) -> layouts.Layout:
  """The layout ``name`` on the devices present (mesh axes derived: 'data' takes what is left)."""
  return layouts.resolve(name, network, mesh_data=-1, mesh_model=-1)


def restore_params_from_workdir(workdir: str, config: ml_collections.ConfigDict, step: str | int,
                                network: models.TowerNetwork, layout: layouts.Layout, mesh
                                ) -> tuple[Any, int, Optional[dict[str, Any]]]:
  """(params in ``layout``'s shardings, the step, the metrics saved with it) of snapshot ``step``.

  ``step`` is 'latest', 'best' or a number; a missing step lists the available ones.
  """
  from alexnet_jax import evaluate, train
  with checkpoints.Checkpointer(workdir, keep=config.get('keep_snapshots', 3)) as ckpt:
    number = evaluate.resolve_step(ckpt, str(step))
    params = train.restore_params(ckpt, number, network, layout, mesh, config)
    saved_metrics = ckpt.metrics(number)
  return params, number, saved_metrics


def place_params(params: dict[str, Any], network: models.TowerNetwork, layout: layouts.Layout, mesh,
                 *, image_shape: tuple[int, int, int], name: str) -> Any:
  """Host (numpy) parameters -> device arrays with ``layout``'s shardings, after checking their shapes."""
  expected = jax.eval_shape(lambda k: network.init(k, image_shape), jax.random.key(0))
  check_param_shapes(params, expected, name=name)
  shardings = layout.param_shardings(mesh, expected)
  return jax.tree.map(lambda a, s: jax.device_put(np.asarray(a), s), params, shardings)


# ---- Results -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Prediction:
  """The outcome for one input of ``Model.classify``.

  Attributes:
    index: position in the input sequence.
    probabilities: float32 [num_classes] (the softmax, or the 10 crops' averaged softmax), or None.
    error: why the image could not be classified ('missing file: [Errno 2] ...'), or None.
    reason: the short category of ``error`` (``data.errors.REASONS``: 'missing file', ...), or None.
  """
  index: int
  probabilities: Optional[np.ndarray]
  error: Optional[str] = None
  reason: Optional[str] = None


def describe(item: Any) -> str:
  """A short name for an input image in messages."""
  if isinstance(item, (str, os.PathLike)):
    return os.fspath(item)
  if isinstance(item, (bytes, bytearray, memoryview)):
    return f'<{len(item)} bytes>'
  if isinstance(item, PIL.Image.Image):
    return f'<PIL image {item.size[0]}x{item.size[1]} {item.mode}>'
  if isinstance(item, np.ndarray):
    return f'<array {item.shape} {item.dtype}>'
  return f'<{type(item).__name__}>'


def _is_single(images: Any) -> bool:
  """One image (a path, bytes, a PIL image, an HxW(xC) array) rather than a sequence of them."""
  if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, PIL.Image.Image)):
    return True
  return isinstance(images, np.ndarray) and images.ndim <= 3 and images.dtype == np.uint8


# ---- The model -----------------------------------------------------------------------------------------

class Model:
  """A trained network ready to classify: parameters on a layout, its labels and its preprocessing.

  Build it with ``load(path)``. Attributes: ``classes``, ``num_classes``, ``step``, ``config``, ``contract``,
  ``layout``, ``mesh``, ``network``, ``params`` (device arrays in the layout's shardings), ``info``
  (a bundle's info.json), ``ten_crop`` (the default test-time procedure), ``batch_size``.
  """

  def __init__(self, files: ModelFiles, network: models.TowerNetwork, params: Any,
               layout: layouts.Layout, mesh, step: int, *, batch_size: int,
               step_metrics: Optional[dict[str, Any]] = None, num_threads: int = 0):
    self.files = files
    self.path = files.path
    self.kind = files.kind
    self.config = files.config
    self.classes = list(files.classes)
    self.contract = files.contract
    self.info = files.info
    self.network = network
    self.params = params
    self.layout = layout
    self.mesh = mesh
    self.step = int(step)
    self.step_metrics = step_metrics
    self.ten_crop = bool(files.config.data.get('ten_crop_eval', False))
    # A multiple of the 'data' axis, so that every device gets whole rows.
    self.batch_size = -(-max(1, int(batch_size)) // layout.data) * layout.data
    self.num_threads = num_threads or max(1, min(8, os.cpu_count() or 1))
    self._eval_step: Optional[Callable] = None

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.contract.crop_size, self.contract.crop_size, self.contract.channels)

  def __repr__(self) -> str:
    return (f'Model({self.network.name} from {self.kind} {self.path!r}, step {self.step}, '
            f'{self.num_classes} classes, layout {self.layout.name} on {self.layout.num_devices} '
            f'device(s))')

  # ---- Building blocks ---------------------------------------------------------------------------

  def eval_step(self) -> Callable:
    """``eval_step(params, images) -> logits`` for the layout, compiled on first use."""
    if self._eval_step is None:
      self._eval_step = step_lib.make_eval_step(self.network, self.layout, self.mesh)
    return self._eval_step

  def preprocess(self, image: Any, ten_crop: Optional[bool] = None) -> np.ndarray:
    """The network input of one image (``data.preprocess_for_eval`` with this model's contract)."""
    return data_lib.preprocess_for_eval(image, self.contract,
                                        self.ten_crop if ten_crop is None else ten_crop)

  def host_params(self) -> dict[str, Any]:
    """The parameters as numpy arrays (``[tower, ...]`` for tower-split layers), whatever the layout."""
    return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), self.params)

  def _dispatch(self, batch: np.ndarray) -> jax.Array:
    """Starts the eval step on preprocessed inputs [B, H, W, C] or [B, 10, H, W, C]; returns at once."""
    sharding = self.layout.batch_sharding(self.mesh)
    return self.eval_step()(self.params, jax.device_put(np.asarray(batch, np.float32), sharding))

  def probabilities_of_batch(self, batch: np.ndarray) -> np.ndarray:
    """Class probabilities float32 [B, K] of preprocessed inputs (B a multiple of the 'data' axis)."""
    return _softmax(np.asarray(self._dispatch(batch)))

  # ---- Classification ----------------------------------------------------------------------------

  def classify(self, images: Iterable[Any], *, ten_crop: Optional[bool] = None,
               total: Optional[int] = None, progress: bool | str = False,
               batch_size: Optional[int] = None) -> Iterator[Prediction]:
    """Classifies many images in fixed-size batches, yielding one ``Prediction`` per input, in order.

    Decoding runs on ``num_threads`` threads, a bounded window ahead of the device, so memory stays
    flat for lists of any length. An image that cannot be read or decoded gives a ``Prediction`` with
    ``error`` set; the others are unaffected.

    Args:
      images: paths, encoded bytes, PIL images or uint8 arrays (any mix; an iterator is fine).
      ten_crop: the paper's 10-crop procedure; None: the run's own setting (``self.ten_crop``).
      total: the number of images, for the progress bar (taken from ``len(images)`` when it has one).
      progress: show a progress bar (True, or a label for it) on stderr.
      batch_size: images per device call (default ``self.batch_size``).
    """
    ten_crop = self.ten_crop if ten_crop is None else bool(ten_crop)
    if total is None and hasattr(images, '__len__'):
      total = len(images)  # type: ignore[arg-type]
    size = self.batch_size if batch_size is None else int(batch_size)
    if total:  # one image should not pay for a batch of 64 (powers of two: few compiled shapes)
      size = min(size, 1 << (int(total) - 1).bit_length())
    size = -(-max(1, size) // self.layout.data) * self.layout.data  # whole rows on every device
    crop_shape = ((10,) if ten_crop else ()) + self.image_shape
    blank = np.zeros(crop_shape, np.float32)

    def work(item):
      try:
        return self.preprocess(item, ten_crop), None
      except data_lib.DecodeError as e:
        return None, (e.reason, str(e))
      except (OSError, ValueError, TypeError) as e:  # e.g. an array of an unusable shape or dtype
        return None, ('unusable input', f'unusable input: {type(e).__name__}: {e}')

    label = progress if isinstance(progress, str) else 'classify'
    bar_options = (dict(tty=None, log_every_secs=30.0) if progress else
                   dict(tty=False, log_every_secs=None, log_fn=lambda *args: None))
    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool, \
        Progress(total, label, unit='img', **bar_options) as bar:
      pending: collections.deque = collections.deque()
      source = enumerate(images)
      exhausted = False
      in_flight = None  # (indices, errors, device logits) of the batch the device is working on

      def fill():
        nonlocal exhausted
        while not exhausted and len(pending) < 2 * size:
          try:
            index, item = next(source)
          except StopIteration:
            exhausted = True
            return
          pending.append((index, pool.submit(work, item)))

      def finish(batch_record) -> list[Prediction]:
        indices, errors, logits = batch_record
        probs = _softmax(np.asarray(logits))
        bar.update(len(indices))
        return [Prediction(i, None, err[1], err[0]) if err else Prediction(i, probs[row])
                for row, (i, err) in enumerate(zip(indices, errors))]

      while True:
        fill()
        if not pending:
          break
        indices, errors, rows = [], [], []
        while pending and len(indices) < size:
          index, future = pending.popleft()
          image, err = future.result()
          indices.append(index)
          errors.append(err)
          rows.append(blank if image is None else image)
          fill()
        rows += [blank] * (size - len(rows))  # pad: one compiled shape for every batch
        logits = self._dispatch(np.stack(rows))
        if in_flight is not None:  # dispatch is asynchronous: fetch the previous batch meanwhile
          yield from finish(in_flight)
        in_flight = (indices, errors, logits)
      if in_flight is not None:
        yield from finish(in_flight)

  def probabilities(self, images: Any, *, ten_crop: Optional[bool] = None) -> np.ndarray:
    """float32 [N, num_classes] for a sequence of images, [num_classes] for one image.

    Raises ``data.DecodeError`` naming the first image that cannot be decoded.
    """
    single = _is_single(images)
    items = [images] if single else list(images)
    out = np.zeros((len(items), self.num_classes), np.float32)
    for p in self.classify(items, ten_crop=ten_crop):
      if p.error:
        raise data_lib.DecodeError(p.reason or 'unusable input',
                                   f'{describe(items[p.index])}: {p.error}')
      out[p.index] = p.probabilities
    return out[0] if single else out

  def predict(self, images: Any, top_k: int = 5, *, ten_crop: Optional[bool] = None
              ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
    """The ``top_k`` (label, probability) pairs, highest first: a list for one image, a list of such
    lists for a sequence of images."""
    probs = self.probabilities(images, ten_crop=ten_crop)
    ranked = metrics.top_n(np.atleast_2d(probs), top_k, self.classes)
    return ranked[0] if probs.ndim == 1 else ranked


def _softmax(logits: np.ndarray) -> np.ndarray:
  """Softmax in float64 on the host (the ten-crop step returns log of averaged probabilities, which
  this maps back to those probabilities exactly)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def load(path: str | os.PathLike, *, step: str | int = 'latest', layout: str = DEFAULT_LAYOUT,
         batch_size: Optional[int] = None, num_threads: int = 0) -> Model:
  """Loads a model from a training workdir or an exported bundle, onto ``layout``.

  Args:
    path: a workdir, a bundle directory, or a ``.tar.gz``/``.tgz``/``.zip`` bundle.
    step: for a workdir, 'latest', 'best' or a snapshot number (a bundle holds one step).
    layout: single (default: one device), model (towers on two devices), data or hybrid. The layout
      only changes where the arithmetic runs, not its result.
    batch_size: images per device call; default: the run's batch size (at most 64).
    num_threads: decoding threads (default: the CPU count, at most 8).

  Raises:
    FileNotFoundError: no such path, no checkpoints, or a missing step (the message lists the steps).
    BundleError: a bundle that is truncated, tampered with or incomplete.
    LayoutError: a layout needing more devices than are present.
  """
  return load_from_files(read_model_files(path), step=step, layout=layout, batch_size=batch_size,
                         num_threads=num_threads)


def load_from_files(files: ModelFiles, *, step: str | int = 'latest', layout: str = DEFAULT_LAYOUT,
                    batch_size: Optional[int] = None, num_threads: int = 0) -> Model:
  """``load`` in two halves: ``read_model_files`` (cheap: labels, contract, config -- enough to check a
  request, e.g. an image list's labels, before any device work) then this (parameters onto devices)."""
  config = files.config
  network = models.build(config.model, len(files.classes))
  lay = resolve_layout(layout, network)
  mesh = lay.make_mesh()
  if files.kind == 'workdir':
    params, number, step_metrics = restore_params_from_workdir(files.path, config, step, network,
                                                               lay, mesh)
  else:
    if str(step) not in ('latest', 'best', str(files.info.get('step'))):
      raise ValueError(f'--step={step}: the bundle {files.path} holds step {files.info.get("step")} '
                       f'only')
    image_shape = (files.contract.crop_size, files.contract.crop_size, files.contract.channels)
    params = place_params(files.params, network, lay, mesh, image_shape=image_shape,
                          name=files.path)
    files.params = None  # the device copy is the one in use
    number, step_metrics = int(files.info.get('step', 0)), files.info.get('metrics')
  if batch_size is None:
    batch_size = min(int(config.get('batch_size', 32)), 64)
  return Model(files, network, params, lay, mesh, number, batch_size=batch_size,
               step_metrics=step_metrics, num_threads=num_threads)


__all__ = ['BundleError', 'Model', 'ModelFiles', 'Prediction', 'load', 'load_from_files',
           'read_model_files', 'verify_bundle_dir']
