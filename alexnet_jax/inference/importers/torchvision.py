"""torchvision's ``alexnet`` state dict -> ``alexnet_owt`` parameters, with torchvision's preprocessing folded in.

torchvision's AlexNet (torchvision/models/alexnet.py) is the one-tower network of "One weird trick" that
``models/alexnet_owt.py`` builds, layer for layer, with the same padding and strides::

    features.0   Conv2d(3, 64, 11, stride 4, pad 2)   -> conv1     ReLU, MaxPool2d(3, 2)
    features.3   Conv2d(64, 192, 5, pad 2)            -> conv2     ReLU, MaxPool2d(3, 2)
    features.6   Conv2d(192, 384, 3, pad 1)           -> conv3     ReLU
    features.8   Conv2d(384, 256, 3, pad 1)           -> conv4     ReLU
    features.10  Conv2d(256, 256, 3, pad 1)           -> conv5     ReLU, MaxPool2d(3, 2)
    avgpool      AdaptiveAvgPool2d((6, 6))            -- the identity on the 6x6 map of a 224x224 input
    classifier.1 Linear(9216, 4096)                   -> fc6       (after Dropout) ReLU
    classifier.4 Linear(4096, 4096)                   -> fc7       (after Dropout) ReLU
    classifier.6 Linear(4096, K)                      -> fc8 (kernel) and head/bias (its bias)

Layouts: a torch convolution weight is ``[out, in, kh, kw]``, ours ``[kh, kw, in, out]``; a Linear weight is
``[out, in]``, ours ``[in, out]``. fc6's input is the pooled map flattened: torch flattens ``[C, H, W]``
(index ``c*36 + h*6 + w``), we flatten NHWC (``(h*6 + w)*256 + c``), so fc6's rows are permuted to match.
Every tower parameter gets the leading ``[tower]`` axis of length 1.

Preprocessing: torchvision feeds ``(pixel/255 - mean[c]) / std[c]`` (RGB, ImageNet's mean and std); our
contract feeds ``pixel - mean_image`` on the 0..255 scale. Since ``conv1(w, (p/255 - m)/s) = conv1(w / (255 s),
p - 255 m)`` channel by channel -- and conv1's zero padding is the same zero on both sides of that
equation -- conv1's weights are divided by ``255 * std[c]`` of their input channel and the bundle's mean
image is ``255 * mean`` everywhere (mean mode ``image``, a constant image: subtracted exactly, where the
``pixel`` mode would average it in float32). The logits are then torchvision's for the same crop, up
to float32 round-off. Geometry: torchvision's ``Resize(256)`` (shorter side) + ``CenterCrop(224)`` is
DIGITS' ``crop`` resize to 256x256 and the centre 224 crop; the resampling filters differ slightly
(torchvision's antialiased bilinear, ours DIGITS'), so logits of a resized photo agree closely, not to
round-off; on a 256x256 image both crops are the same pixels.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.inference.importers.torch_files import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # torchvision's transforms.Normalize for its ImageNet models (RGB)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE, CROP_SIZE, RESIZE_MODE = 256, 224, 'crop'
POOLED = (6, 6, 256)                    # conv5's pooled map at 224x224: fc6's input, [H, W, C]

CONVS = {'features.0': ('conv1', (64, 3, 11, 11)), 'features.3': ('conv2', (192, 64, 5, 5)),
         'features.6': ('conv3', (384, 192, 3, 3)), 'features.8': ('conv4', (256, 384, 3, 3)),
         'features.10': ('conv5', (256, 256, 3, 3))}
LINEARS = {'classifier.1': ('fc6', (4096, 9216)), 'classifier.4': ('fc7', (4096, 4096)),
           'classifier.6': ('fc8', (None, 4096))}   # None: the class count, whatever the file has


def looks_like(state: dict[str, np.ndarray]) -> bool:
  """Whether a state dict has torchvision AlexNet's names (what ``--format=auto`` recognizes)."""
  return 'features.0.weight' in state and 'classifier.6.weight' in state


def num_classes(state: dict[str, np.ndarray]) -> int:
  weight = state.get('classifier.6.weight')
  if weight is None or weight.ndim != 2:
    raise WeightsError('classifier.6.weight is missing or not a matrix: not a torchvision AlexNet')
  return int(weight.shape[0])


def _take(state: dict[str, np.ndarray], name: str, want: tuple, source: str) -> np.ndarray:
  key = name
  if key not in state:
    raise WeightsError(f'{source}: {key} is missing; not a torchvision AlexNet state dict')
  value = state[key]
  if len(value.shape) != len(want) or any(w is not None and w != h for w, h in zip(want, value.shape)):
    shown = tuple('K' if w is None else w for w in want)
    raise WeightsError(f'{source}: {key} has shape {tuple(value.shape)}, torchvision\'s AlexNet (and '
                       f'alexnet_owt) needs {shown}')
  if not np.issubdtype(value.dtype, np.floating):
    raise WeightsError(f'{source}: {key} is {value.dtype}, not floating point')
  return np.asarray(value)


def convert(state: dict[str, np.ndarray], *, source: str) -> dict[str, dict]:
  """The ``alexnet_owt`` parameter tree (numpy float32, ``[tower=1, ...]``) of a torchvision state dict."""
  known = {f'{layer}.{part}' for layer in (*CONVS, *LINEARS) for part in ('weight', 'bias')}
  extra = sorted(set(state) - known)
  if extra:
    raise WeightsError(f'{source}: unexpected entries {extra[:5]}{" ..." if len(extra) > 5 else ""}; not '
                       f'torchvision\'s alexnet (other networks are not imported)')
  k = num_classes(state)
  towers: dict[str, dict[str, np.ndarray]] = {}
  for key, (ours, shape) in CONVS.items():
    weight = _take(state, f'{key}.weight', shape, source)
    if ours == 'conv1':   # fold /255 and /std into conv1, per input channel (module docstring)
      weight = weight.astype(np.float64) / (255.0 * np.asarray(IMAGENET_STD, np.float64))[None, :, None, None]
    towers[ours] = {'kernel': weight.transpose(2, 3, 1, 0)[None],
                    'bias': _take(state, f'{key}.bias', shape[:1], source)[None]}
  for key, (ours, shape) in LINEARS.items():
    shape = (k, shape[1]) if shape[0] is None else shape
    weight = _take(state, f'{key}.weight', shape, source)
    if ours == 'fc6':     # rows in torch's CHW flattening -> ours, HWC, written straight into [1, in, out]
      c, h, w = POOLED[2], POOLED[0], POOLED[1]
      kernel = np.empty((1, shape[1], shape[0]), np.float32)
      kernel.reshape(h, w, c, shape[0])[...] = weight.reshape(shape[0], c, h, w).transpose(2, 3, 1, 0)
      towers[ours] = {'kernel': kernel}
    else:
      towers[ours] = {'kernel': weight.T[None]}
    bias = _take(state, f'{key}.bias', shape[:1], source)
    if ours != 'fc8':
      towers[ours]['bias'] = bias[None]
    else:
      head_bias = bias
  # One copy of each leaf (fc6's kernel is one already): no leaf stays a view that would keep the file's
  # buffer alive (a 240 MB file held by a bias), and none is copied twice.
  fresh = towers['fc6']['kernel']
  as_tower = {layer: {name: a if a is fresh else np.array(a, np.float32, order='C')
                      for name, a in leaves.items()} for layer, leaves in towers.items()}
  return {'towers': as_tower, 'head': {'bias': np.array(head_bias, np.float32)}}


def mean_image() -> np.ndarray:
  """float32 [256, 256, 3]: torchvision's mean on the 0..255 scale at every pixel."""
  mean = np.asarray(IMAGENET_MEAN, np.float64) * 255.0
  return np.broadcast_to(mean.astype(np.float32), (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
