"""Weights from elsewhere as an ordinary bundle: the library behind ``python -m alexnet_jax.import_weights``.

The bundle it writes is the one ``export`` writes (``inference/bundle.py``: params.npz, config.json,
labels.txt, mean.npy, preprocess.json, info.json, manifest.json with sha256 sums), so ``alexnet_jax.load``,
``classify --bundle`` and ``--config.init_from`` take it as they take an exported run. Its step is 0 and its
``info.json`` names the source file, its sha256 and its format.

Supported (issue 22, "Weights in"), the format recognised from the file (``detect_format``):

* **torchvision's ``alexnet``** state dict, as ``.pth`` (``torch.save``'s zip format, or the legacy format
  of torch < 1.6 that torchvision's published ``alexnet-owt-7be5be79.pth`` predates; read by a restricted
  unpickler that admits tensors' storages only: ``torch_files.py``) or ``.safetensors``, into
  ``alexnet_owt`` with torchvision's preprocessing folded in (``torchvision.py``). PyTorch is not needed.
  A ``classifier.6`` of another class count (a fine-tuned torchvision AlexNet) is imported as it is.
* **Caffe**: a ``.caffemodel`` (both of Caffe's formats; ``caffe_proto.py``) with its ``deploy.prototxt``
  (``prototxt=``, default: ``deploy.prototxt`` beside the caffemodel; ``prototxt.py``, ``caffe_net.py``) and
  optionally a mean ``.binaryproto`` (``mean=``): bvlc_alexnet into the two-tower ``alexnet`` with Caffe's
  LRN across both towers (``caffe_alexnet.py``), DIGITS' LeNet into ``lenet``, bvlc_googlenet into
  ``googlenet`` (``caffe_googlenet.py``); BGR to RGB and the preprocessing contract in ``caffe_model.py``.
* **a DIGITS "Download Model" archive** (``.tar.gz``/``.tgz``/``.tar``/``.zip`` holding a caffemodel,
  ``deploy.prototxt``, ``mean.binaryproto``, ``labels.txt`` and ``info.json``), read safely
  (``digits_archive.py``), with DIGITS' preprocessing contract (image size, resize mode, channels, mean).

Every bad input is a ``WeightsError`` (a ValueError) whose message names the file and the reason
(a missing input file: FileNotFoundError); nothing is written then. ``read_source`` reads any of them into
memory without writing a bundle: what ``--config.init_from`` uses (``training/finetune.py``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import tempfile
from typing import Any, Optional

import jax

from alexnet_jax import configs, models
from alexnet_jax import data as data_lib
from alexnet_jax.data import lists as lists_lib
from alexnet_jax.inference import bundle, exporting
from alexnet_jax.inference.importers import caffe_model, digits_archive, torch_files, torchvision
from alexnet_jax.inference.importers.torch_files import WeightsError
from alexnet_jax.models import trees
from alexnet_jax.run.workdir import CONFIG_FILE
from alexnet_jax.runtime import fileio

FORMATS = ('auto', 'torchvision', 'caffe', 'digits')
TORCH_SUFFIXES = ('.pth', '.pt', '.safetensors')
CAFFE_SUFFIX = '.caffemodel'
ARCHIVE_SUFFIXES = digits_archive.ARCHIVE_SUFFIXES
DEFAULT_PROTOTXT = 'deploy.prototxt'


def detect_format(source: str, fmt: str = 'auto', *, prototxt: Optional[str] = None,
                  mean: Optional[str] = None) -> str:
  """The source's format: ``torchvision``, ``caffe`` or ``digits`` (from the name, and for an archive its
  contents); a clear error for anything else."""
  del mean
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt}: expected one of {", ".join(FORMATS)}')
  lower = source.lower()
  if fmt == 'auto':
    if lower.endswith(CAFFE_SUFFIX):
      fmt = 'caffe'
    elif lower.endswith(ARCHIVE_SUFFIXES):
      fmt = 'digits'
    elif lower.endswith(('.prototxt', '.binaryproto')):
      raise WeightsError(f'--source={source}: a prototxt or mean file holds no weights; give the '
                         f'.caffemodel as --source, and this file as --prototxt / --mean')
    else:
      fmt = 'torchvision'
  if fmt == 'digits' and os.path.isfile(source) and not digits_archive.looks_like_digits(source):
    raise WeightsError(f'--source={source}: an archive without a .caffemodel, so not a DIGITS "Download '
                       f'Model" archive (an alexnet_jax bundle is used as it is, without importing)')
  if fmt != 'caffe' and prototxt:
    raise WeightsError(f'--prototxt={prototxt} applies to a .caffemodel only (--source={source} is {fmt})')
  return fmt


def caffe_prototxt(source: str, prototxt: Optional[str]) -> str:
  """The deploy.prototxt of a caffemodel: ``prototxt``, or ``deploy.prototxt`` beside it."""
  if prototxt:
    if not os.path.isfile(prototxt):
      raise FileNotFoundError(f'--prototxt={prototxt}: no such file')
    return prototxt
  beside = os.path.join(os.path.dirname(os.path.abspath(source)), DEFAULT_PROTOTXT)
  if not os.path.isfile(beside):
    raise WeightsError(f'{source}: a .caffemodel needs its network description: pass '
                       f'--prototxt=deploy.prototxt to import_weights, or put deploy.prototxt beside the '
                       f'caffemodel (what --config.init_from reads; there is none at {beside})')
  return beside


@dataclasses.dataclass
class Imported:
  """A source read into memory: what a bundle (or ``--config.init_from``) needs of it."""
  params: dict[str, Any]
  config: Any
  classes: list[str]
  contract: data_lib.PreprocessContract
  source: str
  source_format: str
  preprocessing: str
  notes: list[str] = dataclasses.field(default_factory=list)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def config_for(model: dict[str, Any], contract: data_lib.PreprocessContract):
  """A bundle's config.json: ``model``'s fields (name, width, lrn) on one device, with ``contract``."""
  config = configs.default_config()
  for key, value in model.items():
    setattr(config.model, key, value)
  config.layout = 'single'
  w, h = contract.image_size
  config.data.image_size = w if w == h else f'{w},{h}'
  config.data.crop_size = contract.crop_size
  config.data.resize_mode = contract.resize_mode
  config.data.channels = contract.channels
  config.data.mean = contract.mean_mode
  config.data.draft = False
  return config


def _classes(labels: Optional[str], num_classes: int, source: str, layer: str = 'classifier.6') -> list[str]:
  if not labels:
    return [f'class_{i}' for i in range(num_classes)]
  classes = lists_lib.read_labels_file(labels, what='--labels')
  if len(classes) != num_classes:
    raise WeightsError(f'--labels={labels} names {len(classes)} classes, but {source} has {num_classes} '
                       f'outputs ({layer})')
  return classes


def _check_against_network(imported: Imported) -> None:
  """The converted parameters fit the network the bundle's config builds (names, shapes, dtypes)."""
  network = models.build(imported.config.model, len(imported.classes))
  expected = jax.eval_shape(lambda key: network.init(key, imported.contract.input_shape), jax.random.key(0))
  try:
    bundle.check_param_shapes(imported.params, expected, name=imported.source)
  except ValueError as e:
    raise WeightsError(str(e)) from None


def _read_torchvision(source: str, labels: Optional[str]) -> Imported:
  state = torch_files.read_state_dict(source)
  if not torchvision.looks_like(state):
    raise WeightsError(f'--source={source}: not a torchvision AlexNet state dict (it has no features.0 / '
                       f'classifier.6 weights; its first names: {sorted(state)[:4]})')
  params = torchvision.convert(state, source=source)
  del state
  num_classes = int(params['head']['bias'].shape[0])
  contract = data_lib.PreprocessContract(     # torchvision's: its 256 resize and 224 crop, RGB, the mean
      (torchvision.IMAGE_SIZE, torchvision.IMAGE_SIZE), torchvision.CROP_SIZE, torchvision.RESIZE_MODE, 3,
      'image', torchvision.mean_image(), draft=False)
  config = config_for({'name': 'alexnet_owt'}, contract)
  return Imported(params, config, _classes(labels, num_classes, source), contract, source, 'torchvision',
                  'torchvision: RGB, /255, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225); folded '
                  'into conv1 and the mean image')


def _from_caffe(loaded: caffe_model.CaffeImport, classes: list[str], source: str, fmt: str) -> Imported:
  mapped = loaded.mapped
  config = config_for(mapped.model, loaded.contract)
  preprocessing = ('Caffe: BGR turned RGB in the first convolution and the mean image; mean image at the '
                   'resized size, centre crop as Caffe\'s test-time data transformer')
  return Imported(mapped.params, config, classes, loaded.contract, source, fmt, preprocessing,
                  list(loaded.notes), {'caffe_layers': mapped.caffe_names})


def _read_caffe(source: str, labels, prototxt, mean) -> Imported:
  deploy = caffe_prototxt(source, prototxt)
  if mean and not os.path.isfile(mean):
    raise FileNotFoundError(f'--mean={mean}: no such file')
  loaded = caffe_model.load(source, deploy, mean)
  classes = _classes(labels, loaded.mapped.num_classes, source, 'the last InnerProduct layer')
  imported = _from_caffe(loaded, classes, source, 'caffe')
  imported.extra.update({'prototxt': os.path.abspath(deploy),
                         'mean': os.path.abspath(mean) if mean else None})
  return imported


def _read_digits(source: str, labels) -> Imported:
  with tempfile.TemporaryDirectory(prefix='digits_import_') as folder:
    model = digits_archive.read(source, folder)
    mean_mode = 'image' if model.mean else 'none'
    loaded = caffe_model.load(model.caffemodel, model.prototxt, model.mean, image_wh=model.image_wh,
                              resize_mode=model.resize_mode, mean_mode=mean_mode)
    if model.channels is not None and model.channels != loaded.mapped.channels:
      raise WeightsError(f'{source}: info.json says {model.channels} image channels, deploy.prototxt '
                         f'{loaded.mapped.channels}')
    classes = _classes(labels or model.labels, loaded.mapped.num_classes, source,
                       'the last InnerProduct layer')
    if not labels and not model.labels:
      loaded.notes.append('no labels.txt in the archive: classes named class_0, class_1, ...')
  imported = _from_caffe(loaded, classes, source, 'digits')
  imported.extra['digits'] = {k: model.info.get(k) for k in ('name', 'digits version', 'image dimensions',
                                                              'image resize mode', 'snapshot file', 'job id')
                              if k in model.info}
  return imported


def read_source(source: str | os.PathLike, *, fmt: str = 'auto', labels: Optional[str] = None,
                prototxt: Optional[str] = None, mean: Optional[str] = None) -> Imported:
  """Reads a torchvision file, a Caffe model or a DIGITS archive into memory, checked against the network
  it maps to (module docstring)."""
  source = os.fspath(source)
  if not os.path.isfile(source):
    raise FileNotFoundError(f'--source={source}: no such file')
  source_format = detect_format(source, fmt, prototxt=prototxt, mean=mean)
  if source_format in ('caffe', 'digits'):
    if mean and source_format == 'digits':
      raise WeightsError(f'--mean={mean}: a DIGITS archive carries its own mean file')
    try:
      imported = (_read_caffe(source, labels, prototxt, mean) if source_format == 'caffe'
                  else _read_digits(source, labels))
    except WeightsError:
      raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
      # A value of the wrong kind where caffe.proto has a number (num_output: "abc"), or a field of the
      # wrong wire type: the files are malformed; say so, naming them, rather than a traceback.
      raise WeightsError(f'--source={source}: not a Caffe model this importer can read '
                         f'({type(e).__name__}: {e})') from None
  else:
    if mean:
      raise WeightsError(f'--mean={mean} applies to a Caffe model; torchvision\'s mean is built in')
    imported = _read_torchvision(source, labels)
  _check_against_network(imported)
  return imported


def write_bundle_dir(folder: str, imported: Imported) -> dict[str, Any]:
  """Writes the bundle files of an ``Imported`` source into ``folder``; returns its info.json."""
  config, classes, contract, params = imported.config, imported.classes, imported.contract, imported.params
  os.makedirs(folder, exist_ok=True)
  bundle.save_params_npz(params, os.path.join(folder, bundle.PARAMS_FILE))
  fileio.write_json(os.path.join(folder, CONFIG_FILE), json.loads(config.to_json_best_effort()), indent=2,
                    sort_keys=True)
  with open(os.path.join(folder, data_lib.contract.LABELS_FILE), 'w', encoding='utf-8') as f:
    f.write(''.join(f'{name}\n' for name in classes))
  contract.save(folder)
  towers = int(next(iter(params['towers'].values()))['kernel'].shape[0])
  info = {
      'format': bundle.FORMAT, 'format_version': bundle.FORMAT_VERSION,
      'model': {'name': config.model.name, 'width': config.model.width, 'towers': towers,
                'num_classes': len(classes), 'dtype': config.model.dtype, 'lrn': config.model.lrn,
                'parameters': trees.param_count(params)},
      'classes': list(classes),
      'preprocess': contract.to_json(),
      'ten_crop': False,
      'step': 0,
      'metrics': {},
      'trained_layout': 'single',
      'parameters_file': {'name': bundle.PARAMS_FILE, 'format': 'npz',
                          'note': "tower-split arrays are [tower, ...]; 'head/bias': the last layer's bias"},
      'imported_from': {'file': os.path.abspath(imported.source),
                        'sha256': bundle.sha256_file(imported.source),
                        'format': imported.source_format, 'preprocessing': imported.preprocessing,
                        'notes': list(imported.notes), **imported.extra},
      'versions': bundle.versions(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  fileio.write_json(os.path.join(folder, bundle.INFO_FILE), info, indent=2)
  bundle.write_manifest(folder)
  return info


def import_weights(source: str | os.PathLike, output: str | os.PathLike, *, labels: Optional[str] = None,
                   fmt: str = 'auto', overwrite: bool = False, prototxt: Optional[str] = None,
                   mean: Optional[str] = None) -> tuple[str, dict[str, Any]]:
  """Imports ``source`` as a bundle at ``output`` (.tar.gz, .tgz, .zip or a folder), atomically.

  ``prototxt`` and ``mean``: a caffemodel's deploy.prototxt (default: the one beside it) and mean
  ``.binaryproto``. Returns (the bundle's path, its info.json). Raises ``WeightsError`` (a ValueError) for a
  file that cannot or must not be read, or whose shapes do not fit the network (naming the layer and both
  shapes), FileNotFoundError for a missing input and FileExistsError for an existing ``output`` without
  ``overwrite``; nothing is written then.
  """
  output = os.path.abspath(os.fspath(output))
  exporting.check_output(output, overwrite)
  imported = read_source(source, fmt=fmt, labels=labels, prototxt=prototxt, mean=mean)
  info = exporting.publish(output, lambda folder: write_bundle_dir(folder, imported))
  return output, info


__all__ = ['FORMATS', 'Imported', 'WeightsError', 'config_for', 'detect_format', 'import_weights',
           'read_source', 'write_bundle_dir']
