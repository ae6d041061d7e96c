"""Starting a run from an earlier model: DIGITS' "Previous networks" and "Pretrained model" tabs.

    python -m alexnet_jax.train --config=experiments/digits_exercise.py --workdir=runs/flowers \
        --config.data.source=/data/flowers --config.init_from=runs/imagenet:best

``--config.init_from`` names a training workdir or an exported bundle (folder or archive, see
``export.py``), or a weights file from elsewhere that ``import_weights`` reads (a torchvision ``.pth`` /
``.safetensors``, a Caffe ``FILE.caffemodel`` with its ``deploy.prototxt`` beside it, a DIGITS "Download
Model" archive: read in memory by ``inference/importers``, as if imported into a bundle first),
optionally followed by ``:STEP`` (a snapshot number, ``latest`` -- the default -- or
``best``; a bundle or weights file holds one step). The trainer (``trainer.py``) calls ``initialize_from``
once, after the new run's parameters were initialized and before its first step; a run that resumes from its
own snapshots never does (big_vision's order: workdir, then init-from, then scratch).

What is copied. Parameters are matched by name (``towers/conv1/kernel``, ``head/bias`` ...), as Caffe
copies layers by name when DIGITS fine-tunes:

* a parameter whose shape is the same in both networks is copied (into the new run's layout: the
  arrays are ``[tower, ...]`` whatever layout wrote them, so a model trained with the towers on two
  devices starts a run on one, and the reverse);
* when the dataset has a different number of classes, the parameters whose last axis is the class
  count (AlexNet's fc8 kernel and the head bias; GoogLeNet's three classifiers) keep their fresh
  initialization, and the log says so -- the usual transfer-learning recipe;
* anything else that differs (another network, another width, another crop size for the fully-connected
  layers, a layer one model has and the other lacks) stops the run with a message naming every such
  layer, before any step is taken.

The optimizer state, step and learning-rate schedule start fresh: fine-tuning is a new run.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from alexnet_jax import models
from alexnet_jax.inference import bundle, importers
from alexnet_jax.parallel import layouts
from alexnet_jax.run import workdir as workdir_lib

STEP_NAMES = ('latest', 'best')


def parse_spec(spec: str) -> tuple[str, str]:
  """``PATH[:STEP]`` -> (PATH, STEP); STEP is ``latest`` unless given. A path that exists as written
  (even with a ``:`` in it) is taken whole."""
  flag = f'--config.init_from={spec}'
  if not spec:
    raise ValueError(f'{flag}: give a training workdir or an exported bundle')
  if os.path.exists(spec):
    return spec, 'latest'
  path, sep, step = spec.rpartition(':')
  if sep and os.path.exists(path):
    if step.isdigit() or step in STEP_NAMES:
      return path, step
    raise ValueError(f'{flag}: {step!r} is not a step; use {path}:N (a snapshot number), '
                     f'{path}:latest or {path}:best')
  raise FileNotFoundError(f'{flag}: no such workdir or bundle (the form is PATH or PATH:STEP, STEP '
                          f'a snapshot number, latest or best)')


def _replicated_layout(mesh: Mesh) -> layouts.Layout:
  """A layout that keeps every parameter whole on every device of ``mesh``.

  The earlier network may have another tower count than the new one's layout splits, so its
  parameters are restored replicated (they are only read once, to be copied).
  """
  return layouts.Layout('data', data=mesh.shape['data'], model=mesh.shape['model'],
                        towers_on_model_axis=False)


def load_earlier(spec: str, mesh: Mesh) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """The earlier model's parameters as ``{'towers/conv1/kernel': numpy array}`` and a description
  (``path``, ``kind``, ``step``, ``network``, ``num_classes``, ``input_size``: its input's 'WxH')."""
  path, step = parse_spec(spec)
  if is_foreign_weights(path):
    return _load_foreign(spec, path, step)
  files = bundle.read_model_files(path)
  num_classes = len(files.classes)
  network = models.build(files.config.model, num_classes)
  if files.kind == 'workdir':
    params, number, _ = workdir_lib.restore_params(
        files.path, files.config, step, network, _replicated_layout(mesh), mesh)
    host = bundle.flatten_params(params)
  else:
    number = files.info.get('step')
    if step not in (*STEP_NAMES, str(number)):
      raise ValueError(f'--config.init_from={spec}: the bundle {path} holds step {number} only')
    host = bundle.flatten_params(files.params)
  h, w = files.contract.input_hw
  about = {'path': path, 'kind': files.kind, 'step': number, 'network': network.name,
           'num_classes': num_classes, 'input_size': f'{w}x{h}'}
  return host, about


def is_foreign_weights(path: str) -> bool:
  """Whether ``path`` is a file ``import_weights`` reads (not a workdir or an alexnet_jax bundle)."""
  lower = path.lower()
  if not os.path.isfile(path):
    return False
  if lower.endswith((*importers.TORCH_SUFFIXES, importers.CAFFE_SUFFIX)):
    return True
  return lower.endswith(importers.ARCHIVE_SUFFIXES) and importers.digits_archive.looks_like_digits(path)


def _load_foreign(spec: str, path: str, step: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """A torchvision file, caffemodel (deploy.prototxt beside it) or DIGITS archive, read in memory."""
  if step not in ('latest', '0'):
    raise ValueError(f'--config.init_from={spec}: {path} is a weights file, which holds no steps')
  try:
    imported = importers.read_source(path)
  except importers.WeightsError as e:
    raise ValueError(f'--config.init_from={spec}: {e}') from None
  h, w = imported.contract.input_hw
  about = {'path': path, 'kind': f'{imported.source_format} file', 'step': 0,
           'network': imported.config.model.name, 'num_classes': len(imported.classes),
           'input_size': f'{w}x{h}'}
  return bundle.flatten_params(imported.params), about


def _is_class_dependent(old: tuple[int, ...], new: tuple[int, ...], old_k: int, new_k: int) -> bool:
  """True when the two shapes differ only in a last axis that is the class count of each model."""
  return (old_k != new_k and len(old) == len(new) and old[:-1] == new[:-1]
          and old[-1] == old_k and new[-1] == new_k)


def _layer(name: str) -> str:
  return name.rsplit('/', 1)[0]


def classifier_layers(shapes: dict[str, tuple[int, ...]], num_classes: int) -> set[str]:
  """The layers with a parameter whose last axis is the class count (``shapes``: name -> shape): the
  ones a new class count re-initializes here, and the ones ``finetune.preset=head`` trains for a
  custom network (``finetune_controls.py``)."""
  return {_layer(name) for name, shape in shapes.items() if shape and shape[-1] == num_classes}


def _place(value: np.ndarray, like: jax.Array) -> jax.Array:
  """``value`` as a global array with ``like``'s dtype and sharding (works across processes too)."""
  value = np.asarray(value, dtype=like.dtype)
  return jax.make_array_from_callback(value.shape, like.sharding, lambda index: value[index])


def initialize_from(spec: str, network: models.TowerNetwork, layout: layouts.Layout, mesh: Mesh,
                    params: Any) -> Any:
  """``params`` with every parameter of the earlier model ``spec`` that fits copied in.

  Args:
    spec: ``WORKDIR_OR_BUNDLE[:STEP]`` (``config.init_from``).
    network: the new run's network (its class count is the new dataset's).
    layout: the new run's layout (``params`` is already placed in it; the copies keep each leaf's
      sharding).
    mesh: the new run's mesh.
    params: the new run's freshly initialized parameters.

  Returns:
    The parameters to start from: copied where the shapes match, freshly initialized where only the
    class count differs (logged).

  Raises:
    ValueError: some layers differ in another way (each is named), or the spec is malformed.
    FileNotFoundError: no such workdir, bundle or snapshot.
  """
  del layout  # the placement is read from ``params`` itself
  old, about = load_earlier(spec, mesh)
  new = bundle.flatten_params(params, to_host=False)
  old_k, new_k = about['num_classes'], network.num_classes

  copied: dict[str, Any] = {}
  reinitialized: set[str] = set()
  problems: list[tuple[str, str]] = []   # (parameter, what is wrong)
  for name, leaf in new.items():
    if name not in old:
      problems.append((name, f'{name} is not in the earlier model'))
      continue
    old_shape, new_shape = tuple(old[name].shape), tuple(leaf.shape)
    if old_shape == new_shape:
      copied[name] = _place(old[name], leaf)
    elif _is_class_dependent(old_shape, new_shape, old_k, new_k):
      reinitialized.add(_layer(name))
    else:
      problems.append((name, f'{name}: {old_shape} in the earlier model, {new_shape} here'))
  problems += [(name, f'{name} is only in the earlier model') for name in sorted(set(old) - set(new))]
  if problems:
    bad_layers = sorted({_layer(name) for name, _ in problems})
    details = [text for _, text in problems]
    raise ValueError(
        f'--config.init_from={spec}: the earlier model ({about["network"]}, {old_k} classes, '
        f'{about["input_size"]} inputs) does not fit this run\'s network ({network.name}, {new_k} classes) '
        f'in layer(s) '
        f'{", ".join(bad_layers)}: ' + '; '.join(details[:12]) + (' ...' if len(details) > 12 else '')
        + '. Use the same --config.model (name, width) and the same input size as the earlier run '
        f'(--config.data.image_size and --config.data.crop_size giving {about["input_size"]} inputs: '
        'fc6 takes what the convolutions leave of the input).')

  logging.info('init_from %s (%s, step %s): copied %d of %d parameters', about['path'], about['kind'],
               about['step'], len(copied), len(new))
  if reinitialized:
    logging.warning('init_from %s: the earlier model has %d classes, this dataset %d: re-initialized '
                    '%s (the class-count dependent layers)', about['path'], old_k, new_k,
                    ', '.join(sorted(reinitialized)))

  def pick(path, leaf):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    return copied.get(name, leaf)

  return jax.tree_util.tree_map_with_path(pick, params)
