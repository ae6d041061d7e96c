r"""The dashboard's inference process: classify, visualize, export and count communication, outside the web.

    python -m alexnet_jax.dashboard.workers.inference_worker [--cache_size=3]   # JSON lines, as config_worker.py

The web process never imports JAX (DASHBOARD.md), so Classify One, Download Model and the layout census
of the model page run here, in a process that ``inference_client.Predictor`` starts and talks to over a pipe
(``worker_process``). What makes it worth a process of its own is that it **keeps models loaded**: an
LRU of ``inference.Model``s keyed by (workdir, concrete step, layout) -- plus the snapshot folder's inode
and mtime, so a run deleted and trained again under the same name is not served stale -- so the first
Classify One on a snapshot pays for the restore and the compilation and the next ones only for the
image. Everything is the library's own code: ``inference`` (restore onto a layout, the run's
preprocessing), ``visualization.visualize``, ``exporting.export_model``, ``parallel.census``.

On a CPU host it forces four host devices before JAX starts (``devices.force_cpu_devices``), so the
two-tower layouts can be chosen (and the census compiles every layout); on an accelerator host it uses
the devices there are. (The snapshot table the page shows is read by the web process itself, from
metrics.jsonl: ``snapshots.snapshot_table``.) Requests (``step`` is 'best', 'latest' or a number):

    {"op": "classify_one", "workdir", "step", "layout", "top_k", "image_path",
     "out_dir"?, "visualize_dir"?}
        -> {"predictions": [[label, percent], ...], "probabilities": [...], "labels": [...], "step",
            "epoch", "layout", "input_png", "timings": {"load_s", "classify_s", "total_s"}, "cached",
            "visualizations"?}
    {"op": "export", "workdir", "step", "format": "tar.gz" | "zip", "cache_dir"}
        -> {"path", "size", "info", "step", "cached", "seconds"}
    {"op": "census", "workdir" | "network": {"model": {...}, "num_classes", "crop_size", "channels"},
     "cache_dir", "layouts"?}
        -> {"network", "batch", "devices", "layouts": [{"name", "available", "reason"?, ...}], "cached"}
    {"op": "ping"} -> {"pong": true, "models": [...]}
    {"op": "import_pretrained" | "verify_bundle" | "export_onnx", ...}   -> pretrained_ops.py

A "workdir" may also be a bundle folder (a pretrained model): Classify One loads it as it is, at its step.

A problem with the request -- an image that is not one, a missing file, a step that does not exist, a
layout that needs more devices -- is answered ``{"error": "<one line>", "user_error": true}``; the
process goes on with the next request.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import sys
import time
from typing import Any, Optional

# Importing these starts no JAX backend: ``ready`` can still choose the devices.
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax import configs, data, inference, metrics, models
from alexnet_jax.inference import bundle, exporting
from alexnet_jax.runtime import devices, fileio
from alexnet_jax.inference import visualization
from alexnet_jax.dashboard.workers import pretrained_ops
from alexnet_jax.dashboard.workers.worker_process import one_line, serve
from alexnet_jax.parallel import census as census_lib, compare, layouts, step as step_lib
from alexnet_jax.run import checkpoints, listing
from alexnet_jax.runtime import status
from alexnet_jax.run import workdir as workdir_lib

DEFAULT_CACHE_SIZE = 3
FORCED_CPU_DEVICES = 4          # enough for the two-tower layouts (and hybrid: 2 x 2)
MAX_IMAGE_BYTES = 64 * 2**20    # an upload cap of its own; Pillow's bomb guard limits the pixels
CENSUS_LAYOUTS = ('single', 'model', 'data', 'hybrid')   # those of python -m alexnet_jax.census
CENSUS_BATCH = 8                # divisible by every layout's batch shards on 4 devices
CENSUS_VERSION = 1              # part of the cache key: bump when the census' output changes
EXPORT_FORMATS = ('tar.gz', 'zip')
UNSCALED_LAYERS = ('loss', 'metrics', 'other')   # census rows that cross once per step, not per image


class UserError(Exception):
  """A request that cannot be served as asked; its message is for the page."""


# ---- Start-up -------------------------------------------------------------------------------------------

def ready() -> dict[str, Any]:
  """Chooses the devices (before JAX starts its backends) and says what it got."""
  devices.force_cpu_devices(FORCED_CPU_DEVICES)   # only the CPU backend reads it
  return {'platform': jax.default_backend(), 'devices': jax.device_count(), 'pid': os.getpid()}


# ---- Runs and steps ------------------------------------------------------------------------------------------

def _workdir(request: dict) -> str:
  workdir = request.get('workdir')
  if not workdir or not os.path.isdir(workdir):
    raise UserError(f'{workdir}: no such run directory')
  return os.path.realpath(workdir)


def steps_per_epoch(workdir: str) -> Optional[float]:
  """Steps per epoch of a run, from its status.json or the last records of its metrics.jsonl."""
  record = status.read_status(workdir)
  candidates = [record] if isinstance(record, dict) else []
  candidates += reversed(listing.read_metrics_tail(os.path.join(workdir, listing.METRICS_FILE), 8192))
  for r in candidates:
    step, epoch = r.get('step'), r.get('epoch')
    if isinstance(step, (int, float)) and isinstance(epoch, (int, float)) and step > 0 and epoch > 0:
      return step / epoch
  return None


def concrete_step(workdir: str, step: Any) -> int:
  """'best' | 'latest' | N -> the snapshot number (errors list the snapshots there are); a bundle's
  (a pretrained model classified straight away) is the one step it holds."""
  if os.path.isfile(os.path.join(workdir, bundle.MANIFEST_FILE)):
    info = fileio.read_json(os.path.join(workdir, bundle.INFO_FILE))
    return int(info.get('step') or 0) if isinstance(info, dict) else 0
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise UserError(f'{workdir} has no snapshots yet')
  with checkpoints.Checkpointer(workdir, read_only=True) as ckpt:
    try:
      number = workdir_lib.resolve_step(ckpt, 'latest' if step in (None, '') else step)
    except (FileNotFoundError, ValueError) as e:
      raise UserError(one_line(e)) from None
    return ckpt.latest_step() if number is None else int(number)


def snapshot_identity(workdir: str, step: int) -> tuple[int, int]:
  """(inode, mtime) of the snapshot's folder (a bundle's manifest): a run trained again under the same
  path differs."""
  return pretrained_ops.identity(workdir, step)


# ---- Loaded models --------------------------------------------------------------------------------------

class ModelCache:
  """The ``size`` most recently used models, keyed by (workdir, step, snapshot identity, layout)."""

  def __init__(self, size: int = DEFAULT_CACHE_SIZE):
    self.size = max(1, int(size))
    self._models: collections.OrderedDict = collections.OrderedDict()

  def get(self, workdir: str, step: int, layout: str):
    """(model, was it loaded already, seconds spent loading)."""
    key = (workdir, step, snapshot_identity(workdir, step), layout)
    if key in self._models:
      self._models.move_to_end(key)
      return self._models[key], True, 0.0
    started = time.perf_counter()
    model = _load(workdir, step, layout)
    self._models[key] = model
    while len(self._models) > self.size:
      self._models.popitem(last=False)
    return model, False, time.perf_counter() - started

  def keys(self) -> list[list[Any]]:
    return [[k[0], k[1], k[3]] for k in self._models]


def _load(workdir: str, step: int, layout: str):
  try:
    return inference.load(workdir, step=step, layout=layout)
  except (FileNotFoundError, ValueError, bundle.BundleError) as e:   # LayoutError is a ValueError
    raise UserError(one_line(e)) from None


# ---- Classify One ---------------------------------------------------------------------------------------

def _check_image_file(path: Any) -> str:
  if not isinstance(path, str) or not path:
    raise UserError('no image given')
  try:
    size = os.path.getsize(path)
  except OSError:
    raise UserError(f'{path}: missing file') from None
  if size > MAX_IMAGE_BYTES:
    raise UserError(f'{path}: {size:,d} bytes, larger than the {MAX_IMAGE_BYTES:,d}-byte cap')
  return path


def _decode_message(path: str, error) -> str:
  detail = one_line(error) if error.detail else error.reason
  text = f'{path}: {detail}'
  return text if len(text) <= 400 else text[:400] + '...'


def preprocess(model, path: str):
  """The network input of the image (the run's own procedure) or a ``UserError`` naming the file."""
  try:
    return model.preprocess(path)
  except data.DecodeError as e:
    raise UserError(_decode_message(path, e)) from None
  except (OSError, ValueError) as e:
    raise UserError(f'{path}: {one_line(e)}') from None


def probabilities_of(model, crops) -> Any:
  """float32 [num_classes] of one preprocessed input, padded to the batch ``Model.classify`` uses for
  one image (the 'data' axis), so the numbers are those of ``model.probabilities(image)``."""
  batch = np.zeros((model.layout.data,) + crops.shape, np.float32)
  batch[0] = crops
  return model.probabilities_of_batch(batch)[0]


def network_view(model, crops):
  """The centre crop as the network sees it, before the mean is subtracted: uint8 [h, w, C]."""
  centre = crops[4] if crops.ndim == 4 else crops   # ten crops: TL, TR, BL, BR, centre, mirrors
  return np.uint8(np.clip(np.rint(centre + model.contract.centre_mean()), 0, 255))


def _input_png_path(request: dict) -> Optional[str]:
  if request.get('out_dir'):
    return os.path.join(request['out_dir'], 'input.png')
  if request.get('visualize_dir'):
    folder = os.path.normpath(request['visualize_dir'])
    return f'{folder}-input.png'
  return None


def _save_view(model, crops, path: Optional[str]) -> Optional[str]:
  if path is None:
    return None
  view = network_view(model, crops)
  return visualization.save_png(view[..., 0] if view.shape[-1] == 1 else view, path)


def _visualize(model, path: str, folder: Optional[str]) -> Optional[dict]:
  if not folder:
    return None
  try:
    stats = visualization.visualize(model, folder, image=path)
  except FileExistsError as e:
    raise UserError(one_line(e)) from None
  return dict(stats, folder=os.path.abspath(folder))


def classify_one(request: dict, cache: ModelCache) -> dict[str, Any]:
  started = time.perf_counter()
  workdir = _workdir(request)
  path = _check_image_file(request.get('image_path'))
  step = concrete_step(workdir, request.get('step', 'best'))
  model, cached, load_s = cache.get(workdir, step, str(request.get('layout') or 'single'))
  t = time.perf_counter()
  crops = preprocess(model, path)
  probs = probabilities_of(model, crops)
  classify_s = time.perf_counter() - t
  top_k = max(1, min(int(request.get('top_k') or 5), model.num_classes))
  ranked = metrics.top_n(probs[None], top_k, model.classes)[0]
  per_epoch = steps_per_epoch(workdir)
  answer = {
      'predictions': [[label, round(100.0 * p, 2)] for label, p in ranked],
      'probabilities': [float(p) for p in probs], 'labels': list(model.classes),
      'step': model.step, 'epoch': None if not per_epoch else round(model.step / per_epoch, 4),
      'layout': model.layout.name, 'ten_crop': model.ten_crop,
      'input_png': _save_view(model, crops, _input_png_path(request)), 'cached': cached}
  visualizations = _visualize(model, path, request.get('visualize_dir'))
  if visualizations is not None:
    answer['visualizations'] = visualizations
  answer['timings'] = {'load_s': round(load_s, 4), 'classify_s': round(classify_s, 4),
                       'total_s': round(time.perf_counter() - started, 4)}
  return answer


# ---- Download Model -------------------------------------------------------------------------------------

def _digest(*parts: Any) -> str:
  return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _cache_dir(request: dict) -> str:
  folder = request.get('cache_dir')
  if not folder:
    raise UserError('no cache_dir given')
  os.makedirs(folder, exist_ok=True)
  return folder


def export(request: dict) -> dict[str, Any]:
  """The snapshot as a bundle, made once per (workdir, step, format) in ``cache_dir``."""
  started = time.perf_counter()
  fmt = request.get('format') or 'tar.gz'
  if fmt not in EXPORT_FORMATS:
    raise UserError(f'format={fmt!r}: choose one of {", ".join(EXPORT_FORMATS)}')
  workdir = _workdir(request)
  step = concrete_step(workdir, request.get('step', 'best'))
  name = (f'{os.path.basename(workdir) or "run"}-step{step}-'
          f'{_digest(workdir, step, snapshot_identity(workdir, step))}.{fmt}')
  path = os.path.join(_cache_dir(request), name)
  info_path = path + '.info.json'
  cached = os.path.isfile(path) and os.path.isfile(info_path)
  if cached:
    with open(info_path, encoding='utf-8') as f:
      info = json.load(f)
  else:
    try:   # written beside ``path`` and renamed into place: a concurrent export of it is harmless
      _, info = exporting.export_model(workdir, path, step=step, overwrite=True)
    except (FileNotFoundError, ValueError) as e:
      raise UserError(one_line(e)) from None
    fileio.write_json(info_path, info)
  return {'path': path, 'size': os.path.getsize(path), 'info': info, 'step': step, 'format': fmt,
          'cached': cached, 'seconds': round(time.perf_counter() - started, 4)}


# ---- Layout and communication ---------------------------------------------------------------------------

def network_shape(request: dict) -> dict[str, Any]:
  """What the census depends on: the model config, the classes, the input's size and channels.

  'input_size' is the network input's [W, H] (a rectangle when the crop is DIGITS' "none"); a request may
  give it, or only 'crop_size' for a square.
  """
  if request.get('workdir'):
    try:
      files = bundle.read_model_files(_workdir(request))
    except (FileNotFoundError, ValueError) as e:
      raise UserError(one_line(e)) from None
    h, w = files.contract.input_hw
    return {'model': files.config.model.to_dict(), 'num_classes': len(files.classes),
            'crop_size': files.contract.crop_size, 'input_size': [w, h],
            'channels': files.contract.channels}
  net = request.get('network')
  if not isinstance(net, dict):
    raise UserError('give a workdir or a network')
  model = configs.default_config().model
  try:
    model.update(dict(net.get('model') or {}))
    if models.is_custom_name(model.name):   # never import code named by a request
      raise ValueError(f'model.name={model.name!r}: choose one of {", ".join(models.REGISTRY)}')
    crop = int(net.get('crop_size') or 224)
    w, h = data.parse_image_size(net.get('input_size') or crop)
    return {'model': model.to_dict(), 'num_classes': int(net.get('num_classes') or 1000),
            'crop_size': crop, 'input_size': [w, h], 'channels': int(net.get('channels') or 3)}
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise UserError(f'network: {one_line(e)}') from None


def census_of_layout(network, name: str, image_shape: tuple[int, int, int]) -> dict[str, Any]:
  """Compiles the train step of ``network`` in layout ``name`` (nothing is allocated or run: the
  state is abstract) and reads its collectives with ``parallel.census``."""
  rule = layouts.rule(name)
  try:
    layout = layouts.resolve(name, network, batch_size=CENSUS_BATCH)
  except layouts.LayoutError as e:
    return {'name': name, 'available': False, 'reason': one_line(e), 'moves': rule.moves}
  mesh = layout.make_mesh()
  tx = optax.sgd(0.01, momentum=0.9)   # element-wise, as the census command's: it adds no collective
  state = step_lib.abstract_train_state(network, layout, mesh, tx, image_shape=image_shape)
  sharding = layout.batch_sharding(mesh)
  batch = {'image': jax.ShapeDtypeStruct((CENSUS_BATCH, *image_shape), jnp.float32, sharding=sharding),
           'label': jax.ShapeDtypeStruct((CENSUS_BATCH,), jnp.int32, sharding=sharding)}
  step = step_lib.make_train_step(network, layout, mesh, tx, donate=False)
  with jax.set_mesh(mesh):
    compiled = step.jitted.lower(state, batch).compile()
  collectives = census_lib.census(
      compiled.as_text(), mesh,
      census_lib.parameter_shapes(state.params) if layout.compiler_partitioned else None)
  return dict(census_rows(collectives, layout.num_devices), name=name, available=True,
              moves=rule.moves, mesh={'data': layout.data, 'model': layout.model},
              devices=layout.num_devices, param_count=network.param_count(state.params),
              param_bytes_per_device=compare.per_device_bytes(state.params))


def census_rows(collectives, num_devices: int) -> dict[str, Any]:
  """Collectives grouped by (pass, layer, op, axis). The exchanged activations (and their gradients)
  cross per image: bytes summed over the devices, over the batch. The parameter gradients, the loss
  and metrics, and what the census could not attribute to a layer ('other': e.g. a network whose
  layers are not named conv*/fc*) are counted once per step, per device, whatever the batch."""
  grouped: dict = collections.OrderedDict()
  for c in collectives:
    row = grouped.setdefault((c.pass_, c.layer, c.op, c.axis), {
        'pass': c.pass_, 'layer': c.layer, 'op': c.op, 'axis': c.axis, 'count': 0,
        'bytes_per_step': 0, 'shapes': []})
    row['count'] += 1
    row['bytes_per_step'] += c.bytes
    row['shapes'].append(c.shape)
  per_image = per_step = 0
  for row in grouped.values():
    scales = row['pass'] in ('forward', 'backward') and row['layer'] not in UNSCALED_LAYERS
    row['bytes_per_image'] = row['bytes_per_step'] * num_devices / CENSUS_BATCH if scales else None
    per_image += row['bytes_per_image'] or 0
    per_step += 0 if scales else row['bytes_per_step']
  return {'rows': list(grouped.values()), 'activation_bytes_per_image': per_image,
          'bytes_per_step_per_device': per_step,
          'total_bytes_per_step_per_device': sum(c.bytes for c in collectives)}


def census(request: dict) -> dict[str, Any]:
  """Every layout's census of the run's network, computed once per network shape (a JSON file)."""
  started = time.perf_counter()
  shape = network_shape(request)
  names = list(request.get('layouts') or CENSUS_LAYOUTS)
  for name in names:
    if name not in layouts.RULES:
      raise UserError(f'layout {name!r} is not one of {", ".join(layouts.RULES)}')
  key = dict(shape, layouts=names, batch=CENSUS_BATCH, devices=jax.device_count(),
             platform=jax.default_backend(), version=CENSUS_VERSION)
  path = os.path.join(_cache_dir(request), f'census-{_digest(key)}.json')
  cached = fileio.read_json(path)
  if isinstance(cached, dict):
    return dict(cached, cached=True, path=path, seconds=round(time.perf_counter() - started, 4))
  try:
    network = models.build(ml_collections.ConfigDict(shape['model']), shape['num_classes'])
  except (ValueError, TypeError) as e:
    raise UserError(one_line(e)) from None
  w, h = shape.get('input_size') or (shape['crop_size'], shape['crop_size'])
  image_shape = (h, w, shape['channels'])
  report = {'network': shape, 'batch': CENSUS_BATCH, 'devices': key['devices'],
            'platform': key['platform'], 'towers': network.num_towers,
            'layouts': [census_of_layout(network, name, image_shape) for name in names]}
  fileio.write_json(path, report)
  return dict(report, cached=False, path=path, seconds=round(time.perf_counter() - started, 4))


# ---- The loop -------------------------------------------------------------------------------------------

def make_answer(cache: ModelCache):
  """``answer(request) -> dict`` for ``worker_process.serve``, with ``UserError`` as a user error."""
  ops = {'classify_one': lambda r: classify_one(r, cache),
         'export': export, 'census': census,
         'ping': lambda r: {'pong': True, 'models': cache.keys()}, **pretrained_ops.OPS}

  def answer(request: dict) -> dict:
    op = ops.get(request.get('op'))
    if op is None:
      return {'error': f'unknown op {request.get("op")!r}', 'user_error': True}
    try:
      return op(request)
    except (UserError, pretrained_ops.Refused) as e:
      return {'error': str(e), 'user_error': True}
  return answer


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description='The dashboard inference worker (JSON lines).')
  parser.add_argument('--cache_size', type=int, default=DEFAULT_CACHE_SIZE,
                      help='models kept loaded (least recently used dropped first)')
  args = parser.parse_args(argv)
  return serve(make_answer(ModelCache(args.cache_size)), ready)


if __name__ == '__main__':
  sys.exit(main())
