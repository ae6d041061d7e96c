"""Caffe's weight blobs in our layouts: what every Caffe network mapping (``caffe_alexnet.py``,
``caffe_googlenet.py``) shares.

Layouts. A Caffe convolution weight is ``[out, in / group, kh, kw]`` and ours ``[kh, kw, in, out]``; an
InnerProduct weight is ``[out, in]`` (V1 files: ``[1, 1, out, in]``) and ours ``[in, out]``; a bias is
``[out]`` (V1: ``[1, 1, 1, out]``). An InnerProduct after a convolution reads the map flattened in Caffe's
``C, H, W`` order, ours in ``H, W, C`` (NHWC), so its input rows are permuted (``dense_kernel``).

Colour. Caffe's ImageNet models read **BGR** (OpenCV's order; Caffe's ``classify.py`` and DIGITS swap the
channels of an RGB image before the network), our pipeline hands the network **RGB**: the first
convolution's input channels are reversed (``rgb_first_conv``), and a BGR mean image likewise
(``mean_to_rgb``). A grayscale network (LeNet on MNIST) is left as it is.

Blobs are matched to the deploy.prototxt's layers by name, as Caffe's ``Net::CopyTrainedLayersFrom`` does;
a layer without weights in the caffemodel, or with another shape, is a ``WeightsError`` naming the layer
and both shapes.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.inference.importers.caffe_proto import CaffeLayer
from alexnet_jax.inference.importers.torch_files import WeightsError


class Weights:
  """The caffemodel's blobs by layer name, with shape checks that name the file and the layer."""

  def __init__(self, layers: list[CaffeLayer], source: str):
    self.source = source
    self.by_name: dict[str, CaffeLayer] = {}
    for layer in layers:
      if layer.blobs:
        self.by_name[layer.name] = layer
    self.used: set[str] = set()

  def fail(self, layer: str, what: str):
    raise WeightsError(f'{self.source}: layer {layer!r}: {what}')

  def blobs(self, layer: str, want: tuple, bias: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(weight, bias) of ``layer``, the weight reshaped to ``want``'s rank and checked against it."""
    found = self.by_name.get(layer)
    if found is None:
      raise WeightsError(f'{self.source} has no weights for layer {layer!r} of the prototxt (the caffemodel '
                         f'holds {sorted(self.by_name)[:8]}); the prototxt does not match the weights')
    self.used.add(layer)
    if len(found.blobs) != (2 if bias else 1):
      self.fail(layer, f'{len(found.blobs)} blobs, the prototxt\'s layer has {2 if bias else 1} (weight'
                       f'{" and bias" if bias else ""})')
    weight = _squeeze_to(found.blobs[0], len(want))
    if weight is None or tuple(weight.shape) != tuple(want):
      self.fail(layer, f'the weights have shape {tuple(found.blobs[0].shape)}, the prototxt and the network '
                       f'need {tuple(want)}')
    b = None
    if bias:
      b = _squeeze_to(found.blobs[1], 1)
      if b is None or b.shape != (want[0],):
        self.fail(layer, f'the bias has shape {tuple(found.blobs[1].shape)}, the network needs ({want[0]},)')
      b = np.asarray(b, np.float32)
    return np.asarray(weight, np.float32), b

  def unused(self) -> list[str]:
    return sorted(set(self.by_name) - self.used)


def _squeeze_to(blob: np.ndarray, rank: int) -> np.ndarray | None:
  """``blob`` with leading axes of 1 removed down to ``rank`` axes (V1's 4-D shapes), or None."""
  shape = list(blob.shape)
  while len(shape) > rank and shape[0] == 1:
    shape.pop(0)
  return blob.reshape(shape) if len(shape) == rank else None


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """Caffe's ``[out, in, kh, kw]`` -> ours ``[kh, kw, in, out]``."""
  return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def rgb_first_conv(weight: np.ndarray) -> np.ndarray:
  """A first convolution ``[out, 3, kh, kw]`` that read BGR, made to read RGB."""
  return weight[:, ::-1] if weight.shape[1] == 3 else weight


def dense_kernel(weight: np.ndarray, chw: tuple[int, int, int] | None = None) -> np.ndarray:
  """Caffe's ``[out, in]`` -> ours ``[in, out]``; ``chw``: the map it reads, flattened C, H, W in Caffe and
  H, W, C here. A transposed *view* (the caller's one copy makes it contiguous: a 4096 x 9216 transpose is
  the slowest step of an AlexNet import)."""
  out = weight.shape[0]
  if chw is not None and chw[1] * chw[2] > 1:
    weight = weight.reshape(out, *chw).transpose(0, 2, 3, 1).reshape(out, -1)
  return weight.T


def tower_dense_kernel(weight: np.ndarray, towers: int,
                       chw: tuple[int, int, int] | None = None) -> np.ndarray:
  """``dense_kernel`` with its outputs cut in ``towers`` equal blocks, ``[tower, in, out / towers]``,
  written in one copy: reordering fc6's rows and transposing it (4096 x 9216 floats) as two steps held an
  extra 151 MB copy at the import's peak."""
  out, fan_in = weight.shape
  c, h, w = chw if chw is not None else (fan_in, 1, 1)
  kernel = np.empty((towers, fan_in, out // towers), np.float32)
  kernel.reshape(towers, h, w, c, out // towers)[...] = (
      weight.reshape(towers, out // towers, c, h, w).transpose(0, 3, 4, 2, 1))
  return kernel


def mean_to_rgb(mean_chw: np.ndarray) -> np.ndarray:
  """A Caffe mean image [C, H, W] (BGR when C is 3) -> ours, [H, W, C] RGB."""
  mean = np.asarray(mean_chw, np.float32).transpose(1, 2, 0)
  return np.ascontiguousarray(mean[..., ::-1] if mean.shape[-1] == 3 else mean)


__all__ = ['Weights', 'conv_kernel', 'dense_kernel', 'mean_to_rgb', 'rgb_first_conv', 'tower_dense_kernel']
