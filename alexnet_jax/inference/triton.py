"""The Triton Inference Server model configuration of an exported ONNX model (``export --triton``).

A Triton model repository holds one folder per model::

  <repository>/<name>/config.pbtxt      this file: backend, input/output names, dims, batching
  <repository>/<name>/labels.txt        class names, for Triton's classification extension
  <repository>/<name>/1/model.onnx      version 1 of the model (``onnx_export.py``)

``dims`` leave out the batch dimension, which ``max_batch_size`` > 0 makes Triton add (the ONNX input's
first dimension is dynamic). The names are ``onnx_export``'s: ``image`` in, ``logits`` and
``probabilities`` out.
"""

from __future__ import annotations

import re

LABELS_FILE = 'labels.txt'
_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')


def valid_name(name: str) -> bool:
  """A model name that is one plain folder name."""
  return bool(_NAME.match(name)) and name not in ('.', '..')


def config_pbtxt(name: str, input_shape: tuple[int, int, int], num_classes: int,
                 max_batch_size: int) -> str:
  """config.pbtxt for the ONNX model: input ``image`` [H, W, C] float32, outputs [num_classes]."""
  h, w, c = input_shape
  return (f'name: "{name}"\n'
          f'platform: "onnxruntime_onnx"\n'
          f'max_batch_size: {int(max_batch_size)}\n'
          f'input [\n'
          f'  {{ name: "image" data_type: TYPE_FP32 dims: [ {h}, {w}, {c} ] }}\n'
          f']\n'
          f'output [\n'
          f'  {{ name: "logits" data_type: TYPE_FP32 dims: [ {num_classes} ] }},\n'
          f'  {{ name: "probabilities" data_type: TYPE_FP32 dims: [ {num_classes} ] '
          f'label_filename: "{LABELS_FILE}" }}\n'
          f']\n')
