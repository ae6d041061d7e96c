"""Weights from elsewhere as an ordinary bundle: the library behind ``python -m alexnet_jax.import_weights``.

The bundle it writes is the one ``export`` writes (``inference/bundle.py``: params.npz, config.json,
labels.txt, mean.npy, preprocess.json, info.json, manifest.json with sha256 sums), so ``alexnet_jax.load``,
``classify --bundle`` and ``--config.init_from`` take it as they take an exported run. Its step is 0 and its
``info.json`` names the source file, its sha256 and its format.

Supported (issue 22, "Weights in"):

* **torchvision's ``alexnet``** state dict, as ``.pth`` (``torch.save``'s zip format, or the legacy format
  of torch < 1.6 that torchvision's published ``alexnet-owt-7be5be79.pth`` predates; read by a restricted
  unpickler that admits tensors' storages only: ``torch_files.py``) or ``.safetensors``, into
  ``alexnet_owt`` with torchvision's preprocessing folded in (``torchvision.py``). PyTorch is not needed.
  A ``classifier.6`` of another class count (a fine-tuned torchvision AlexNet) is imported as it is.

Not yet supported (a clear error says so): **Caffe** ``.caffemodel`` + ``deploy.prototxt`` (the two-tower
``alexnet`` with Caffe's LRN, or GoogLeNet) and **DIGITS "Download Model" archives**; other networks'
state dicts (only torchvision's AlexNet names and shapes are mapped).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Optional

import jax

from alexnet_jax import configs, models
from alexnet_jax import data as data_lib
from alexnet_jax.data import lists as lists_lib
from alexnet_jax.inference import bundle, exporting
from alexnet_jax.inference.importers import torch_files, torchvision
from alexnet_jax.inference.importers.torch_files import WeightsError
from alexnet_jax.models import trees
from alexnet_jax.run.workdir import CONFIG_FILE
from alexnet_jax.runtime import fileio

FORMATS = ('auto', 'torchvision', 'caffe', 'digits')
SUPPORTED = ('auto', 'torchvision')
CAFFE_SUFFIXES = ('.caffemodel', '.prototxt', '.binaryproto')
ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.tar')


def _unsupported(what: str, source: str) -> WeightsError:
  return WeightsError(f'--source={source}: {what} cannot be imported yet (only torchvision\'s alexnet, '
                      f'as .pth or .safetensors, is supported so far)')


def detect_format(source: str, fmt: str = 'auto') -> str:
  """The source's format: ``torchvision``, or a clear error for the formats not supported yet."""
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt}: expected one of {", ".join(FORMATS)}')
  lower = source.lower()
  if fmt == 'caffe' or (fmt == 'auto' and lower.endswith(CAFFE_SUFFIXES)):
    raise _unsupported('a Caffe model (.caffemodel + deploy.prototxt)', source)
  if fmt == 'digits' or (fmt == 'auto' and lower.endswith(ARCHIVE_SUFFIXES)):
    raise _unsupported('a DIGITS "Download Model" archive', source)
  return 'torchvision'


def model_config(num_classes: int):
  """The bundle's config.json: alexnet_owt on one device, with the torchvision-equivalent contract."""
  del num_classes   # the class count is labels.txt's
  config = configs.default_config()
  config.model.name = 'alexnet_owt'
  config.layout = 'single'
  config.data.image_size = torchvision.IMAGE_SIZE
  config.data.crop_size = torchvision.CROP_SIZE
  config.data.resize_mode = torchvision.RESIZE_MODE
  config.data.channels = 3
  config.data.mean = 'image'
  config.data.draft = False
  return config


def _classes(labels: Optional[str], num_classes: int, source: str) -> list[str]:
  if not labels:
    return [f'class_{i}' for i in range(num_classes)]
  classes = lists_lib.read_labels_file(labels, what='--labels')
  if len(classes) != num_classes:
    raise ValueError(f'--labels={labels} names {len(classes)} classes, but {source} has {num_classes} '
                     f'outputs (classifier.6)')
  return classes


def _check_against_network(params: dict[str, Any], config, num_classes: int, source: str) -> None:
  """The converted parameters fit the network the bundle's config builds (names, shapes, dtypes)."""
  network = models.build(config.model, num_classes)
  shape = (torchvision.CROP_SIZE, torchvision.CROP_SIZE, 3)
  expected = jax.eval_shape(lambda key: network.init(key, shape), jax.random.key(0))
  bundle.check_param_shapes(params, expected, name=source)


def write_bundle_dir(folder: str, *, params: dict[str, Any], config, classes: list[str], source: str,
                     source_format: str) -> dict[str, Any]:
  """Writes the bundle files of imported ``params`` into ``folder``; returns its info.json."""
  os.makedirs(folder, exist_ok=True)
  bundle.save_params_npz(params, os.path.join(folder, bundle.PARAMS_FILE))
  fileio.write_json(os.path.join(folder, CONFIG_FILE), json.loads(config.to_json_best_effort()), indent=2,
                    sort_keys=True)
  with open(os.path.join(folder, data_lib.contract.LABELS_FILE), 'w', encoding='utf-8') as f:
    f.write(''.join(f'{name}\n' for name in classes))
  contract = data_lib.PreprocessContract(
      (torchvision.IMAGE_SIZE, torchvision.IMAGE_SIZE), torchvision.CROP_SIZE, torchvision.RESIZE_MODE, 3,
      'image', torchvision.mean_image(), draft=False)
  contract.save(folder)
  info = {
      'format': bundle.FORMAT, 'format_version': bundle.FORMAT_VERSION,
      'model': {'name': 'alexnet_owt', 'width': config.model.width, 'towers': 1,
                'num_classes': len(classes), 'dtype': config.model.dtype, 'lrn': config.model.lrn,
                'parameters': trees.param_count(params)},
      'classes': list(classes),
      'preprocess': contract.to_json(),
      'ten_crop': False,
      'step': 0,
      'metrics': {},
      'trained_layout': 'single',
      'parameters_file': {'name': bundle.PARAMS_FILE, 'format': 'npz',
                          'note': "tower-split arrays are [tower, ...]; 'head/bias' is fc8's bias"},
      'imported_from': {'file': os.path.abspath(source), 'sha256': bundle.sha256_file(source),
                        'format': source_format,
                        'preprocessing': 'torchvision: RGB, /255, mean (0.485, 0.456, 0.406), std (0.229, '
                                         '0.224, 0.225); folded into conv1 and the mean image'},
      'versions': bundle.versions(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  fileio.write_json(os.path.join(folder, bundle.INFO_FILE), info, indent=2)
  bundle.write_manifest(folder)
  return info


def import_weights(source: str | os.PathLike, output: str | os.PathLike, *, labels: Optional[str] = None,
                   fmt: str = 'auto', overwrite: bool = False) -> tuple[str, dict[str, Any]]:
  """Imports ``source`` as a bundle at ``output`` (.tar.gz, .tgz, .zip or a folder), atomically.

  Returns (the bundle's path, its info.json). Raises ``WeightsError`` (a ValueError) for a file that
  cannot or must not be read, or whose shapes do not fit the network (naming the layer and both shapes),
  and FileExistsError for an existing ``output`` without ``overwrite``; nothing is written then.
  """
  source, output = os.fspath(source), os.path.abspath(os.fspath(output))
  exporting.check_output(output, overwrite)
  source_format = detect_format(source, fmt)
  state = torch_files.read_state_dict(source)
  if not torchvision.looks_like(state):
    raise WeightsError(f'--source={source}: not a torchvision AlexNet state dict (it has no features.0 / '
                       f'classifier.6 weights; its first names: {sorted(state)[:4]})')
  params = torchvision.convert(state, source=source)
  del state
  num_classes = int(params['head']['bias'].shape[0])
  classes = _classes(labels, num_classes, source)
  config = model_config(num_classes)
  _check_against_network(params, config, num_classes, source)
  info = exporting.publish(output, lambda folder: write_bundle_dir(
      folder, params=params, config=config, classes=classes, source=source, source_format=source_format))
  return output, info


__all__ = ['FORMATS', 'WeightsError', 'detect_format', 'import_weights', 'write_bundle_dir']
