"""A Caffe model (``.caffemodel`` + ``deploy.prototxt`` [+ mean ``.binaryproto``]) as our parameters and
preprocessing contract: the step between Caffe's files and a bundle (``importers/__init__.py``).

The deploy net says which of our networks it is (``identify``): bvlc_alexnet / a DIGITS alexnet
(``caffe_alexnet.map_alexnet``), DIGITS' LeNet (``map_lenet``) or bvlc_googlenet / a DIGITS googlenet
(``caffe_googlenet.map_googlenet``); anything else is refused, naming its layer types.

The preprocessing contract follows Caffe's data transformer at test time (and DIGITS' inference):

* **Mean.** A mean ``.binaryproto`` (``ilsvrc_2012_mean.binaryproto``: 3 x 256 x 256, BGR) is an image at the
  *resized* size: images are resized to the mean's width x height, the mean image is subtracted, and the
  network's input is the centre crop (the deploy net's input size), as Caffe's ``DataTransformer`` crops
  the mean at the same offsets as the image in TEST phase. So the bundle's ``image_size`` is the mean's
  size, ``crop_size`` the deploy input's side (0 when the two are the same size), the mean image is the
  whole BGR mean turned RGB, and the mean mode ``image``. (Caffe's ``classify.py`` subtracts the mean's
  per-channel average instead; use ``--mean`` with an image mean for the transformer's behaviour, which is
  how the weights were trained.) Without a mean file the input is the whole image resized to the deploy
  input's size and nothing is subtracted (mean mode ``none``).
* **Resize** ``squash`` (Caffe's ``caffe.io.resize_image`` and DIGITS' default), unless the caller (the
  DIGITS importer) knows the dataset's mode.
* **Colour**: RGB here, BGR in Caffe; handled in the weights (``caffe_weights``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from alexnet_jax import data as data_lib
from alexnet_jax.data import sizes
from alexnet_jax.inference.importers import caffe_alexnet, caffe_googlenet, caffe_net, caffe_proto
from alexnet_jax.inference.importers.caffe_alexnet import Mapped
from alexnet_jax.inference.importers.caffe_weights import Weights, mean_to_rgb
from alexnet_jax.inference.importers.torch_files import WeightsError

RESIZE_MODE = 'squash'


@dataclasses.dataclass
class CaffeImport:
  """What a bundle needs of a Caffe model."""
  mapped: Mapped
  contract: data_lib.PreprocessContract
  notes: list[str]


def identify(net: caffe_net.Net):
  """The mapping function for ``net`` (see the module docstring)."""
  kinds = caffe_alexnet.types_of(net)
  if kinds in (caffe_alexnet.ALEXNET, caffe_alexnet.CAFFENET):
    return caffe_alexnet.map_alexnet
  if kinds == caffe_alexnet.LENET:
    return caffe_alexnet.map_lenet
  if 'Concat' in kinds and any(layer.name.startswith('inception_') for layer in net.layers):
    return caffe_googlenet.map_googlenet
  shown = ' -> '.join(kinds[:24]) + (' ...' if len(kinds) > 24 else '')
  raise WeightsError(f'{net.source}: a network alexnet_jax does not have (its layers: {shown}); the Caffe '
                     f'networks imported are bvlc_alexnet / DIGITS\' alexnet, DIGITS\' lenet and '
                     f'bvlc_googlenet')


def contract_for(mapped: Mapped, mean_chw: Optional[np.ndarray], *, mean_source: str = '',
                 image_wh: Optional[tuple[int, int]] = None, resize_mode: str = RESIZE_MODE,
                 mean_mode: str = 'image') -> data_lib.PreprocessContract:
  """The preprocessing contract of a Caffe model (module docstring). ``image_wh``: the resized size when
  known (DIGITS' image dimensions), else the mean's, else the input's."""
  h, w = mapped.input_hw
  mean = None
  if mean_chw is not None:
    mean = mean_to_rgb(mean_chw)
    if mean.shape[-1] != mapped.channels:
      raise WeightsError(f'{mean_source}: the mean has {mean.shape[-1]} channels, the network reads '
                         f'{mapped.channels}')
    image_wh = image_wh or (mean.shape[1], mean.shape[0])
    if (mean.shape[1], mean.shape[0]) != tuple(image_wh):
      raise WeightsError(f'{mean_source}: the mean image is {mean.shape[1]}x{mean.shape[0]} (WxH), the '
                         f'images are resized to {image_wh[0]}x{image_wh[1]}')
  image_wh = tuple(image_wh or (w, h))
  if image_wh == (w, h):
    crop = sizes.NO_CROP
  elif h == w and h <= min(image_wh):
    crop = h
  else:
    raise WeightsError(f'the network\'s input is {w}x{h} (WxH) and the images {image_wh[0]}x{image_wh[1]}: '
                       f'neither the whole image nor a square centre crop of it')
  if mean is None:
    mean, mean_mode = np.zeros((image_wh[1], image_wh[0], mapped.channels), np.float32), 'none'
  try:
    return data_lib.PreprocessContract(image_wh, crop, resize_mode, mapped.channels, mean_mode, mean,
                                       draft=False)
  except data_lib.DataError as e:
    raise WeightsError(f'{mean_source or "the model"}: {e}') from None


def load(caffemodel: str, prototxt: str, mean: Optional[str] = None, *, prototxt_text: str | None = None,
         image_wh: Optional[tuple[int, int]] = None, resize_mode: str = RESIZE_MODE,
         mean_mode: str = 'image') -> CaffeImport:
  """Reads and maps a Caffe model (module docstring); every problem is a ``WeightsError``."""
  net = caffe_net.read_deploy(prototxt, text=prototxt_text)
  mapper = identify(net)
  weights = Weights(caffe_proto.read_caffemodel(caffemodel), caffemodel)
  mapped = mapper(net, weights)
  mean_chw = caffe_proto.read_binaryproto(mean) if mean else None
  contract = contract_for(mapped, mean_chw, mean_source=mean or '', image_wh=image_wh,
                          resize_mode=resize_mode, mean_mode=mean_mode)
  notes = [mapped.notes] if mapped.notes else []
  unused = [name for name in weights.unused() if name not in mapped.caffe_names.values()]
  if unused:
    notes.append(f'caffemodel layers not in the deploy net, not imported: {", ".join(unused[:10])}')
  if not mean:
    notes.append('no mean file: nothing is subtracted from the pixels')
  return CaffeImport(mapped, contract, notes)


__all__ = ['CaffeImport', 'contract_for', 'identify', 'load']
