"""Inference from a trained run or an exported bundle, on any layout: the library behind ``classify``.

    import alexnet_jax
    model = alexnet_jax.load('runs/demo')              # a workdir (latest snapshot) ...
    model = alexnet_jax.load('demo.tar.gz')            # ... or a bundle written by `export`
    model.predict('cat.jpg')                           # [('cat', 0.93), ('dog', 0.05), ...]
    model.predict(['a.jpg', 'b.png'], top_k=3)         # one such list per image
    model.probabilities(['a.jpg', 'b.png'])            # float32 [2, num_classes]

Three things make a prediction trustworthy, and each has one place here:

* **The right parameters.** ``bundle.ModelFiles`` finds what a path holds: a training workdir (``config.json``,
  ``labels.txt``, ``preprocess.json``/``mean.npy`` and ``checkpoints/<step>/``) or a bundle (the same files
  plus ``params.npz``, checked against the sha256 sums of its ``manifest.json`` before anything is read,
  see ``bundle.py``). A workdir's snapshot is opened read-only and only its parameters are read
  (``run/workdir.py``), so classifying a live run never disturbs its trainer.
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
import os
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
import numpy as np
import PIL.Image

from alexnet_jax import metrics, models
from alexnet_jax import data as data_lib
from alexnet_jax.inference.bundle import BundleError, ModelFiles, check_param_shapes, read_model_files
from alexnet_jax.parallel import layouts, step as step_lib
from alexnet_jax.runtime.progress import Progress
from alexnet_jax.run import workdir as workdir_lib

DEFAULT_LAYOUT = 'single'


# ---- Restoring onto a layout ---------------------------------------------------------------------------

def resolve_layout(name: str, network: models.TowerNetwork) -> layouts.Layout:
  """The layout ``name`` on the devices present (mesh axes derived: 'data' takes what is left)."""
  return layouts.resolve(name, network, mesh_data=-1, mesh_model=-1)


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
    return self.contract.input_shape

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

  def logits(self, batch: np.ndarray) -> np.ndarray:
    """float32 logits [B, K] of a preprocessed batch: NHWC float32 [B, H, W, C] as ``preprocess`` makes
    them (0..255 minus the mean), any B -- what scripts compare with other frameworks on identical inputs.
    Padded to a multiple of the 'data' axis and cropped back."""
    batch = np.asarray(batch, np.float32)
    if batch.ndim != 4 or batch.shape[1:] != self.image_shape:
      raise ValueError(f'logits: expected a batch [B, {", ".join(map(str, self.image_shape))}] '
                       f'(NHWC), got {list(batch.shape)}')
    n = batch.shape[0]
    rows = -(-max(n, 1) // self.layout.data) * self.layout.data
    padded = np.concatenate([batch, np.zeros((rows - n, *batch.shape[1:]), np.float32)])
    return np.asarray(self._dispatch(padded), np.float32)[:n]

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
        if logits.is_fully_addressable:
          logits.copy_to_host_async()   # read back while the next batch is decoded and dispatched
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
    params, number, step_metrics = workdir_lib.restore_params(files.path, config, step, network,
                                                              lay, mesh)
  else:
    if str(step) not in ('latest', 'best', str(files.info.get('step'))):
      raise ValueError(f'--step={step}: the bundle {files.path} holds step {files.info.get("step")} '
                       f'only')
    params = place_params(files.params, network, lay, mesh, image_shape=files.contract.input_shape,
                          name=files.path)
    files.params = None  # the device copy is the one in use
    number, step_metrics = int(files.info.get('step', 0)), files.info.get('metrics')
  if batch_size is None:
    batch_size = min(int(config.get('batch_size', 32)), 64)
  return Model(files, network, params, lay, mesh, number, batch_size=batch_size,
               step_metrics=step_metrics, num_threads=num_threads)


__all__ = ['BundleError', 'Model', 'ModelFiles', 'Prediction', 'load', 'load_from_files',
           'read_model_files']
