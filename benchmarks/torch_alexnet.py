"""The PyTorch twin of our ``alexnet_owt`` for ``benchmarks.compare_torch``: the network, our weights in it,
and its train step and inference, in this process or in a process of its own.

The network is torchvision's AlexNet layer for layer (without its adaptive pool, as ours), built from
the same channel table (``alexnet_owt.OWT_CHANNELS``) and loaded with *our* initial weights, converted
(HWIO -> OIHW kernels, fc6's rows reordered from our NHWC flatten to PyTorch's NCHW flatten). PyTorch is
optional: every function imports it when called, and ``torch_available`` says whether it is installed.
"""

from __future__ import annotations

import atexit
import os


def torch_available() -> bool:
  try:
    import torch  # noqa: F401
    return True
  except ImportError:
    return False


def torch_alexnet_owt(num_classes: int, width: float, image_size: int, dropout: float = 0.5):
  """torchvision's AlexNet layer for layer (without its adaptive pool, as ours), at ``width``."""
  import torch.nn as nn
  from alexnet_jax.models.alexnet_owt import OWT_CHANNELS
  ch = {k: max(1, round(v * width)) for k, v in OWT_CHANNELS.items()}
  side = image_size
  side = (side + 4 - 11) // 4 + 1      # conv1 11x11/4 pad 2
  for _ in range(3):                    # three 3/2 pools (the 3x3 and 5x5 convs keep the size)
    side = (side - 3) // 2 + 1
  return nn.Sequential(
      nn.Conv2d(3, ch['conv1'], 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Conv2d(ch['conv1'], ch['conv2'], 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Conv2d(ch['conv2'], ch['conv3'], 3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(ch['conv3'], ch['conv4'], 3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(ch['conv4'], ch['conv5'], 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Flatten(), nn.Dropout(dropout), nn.Linear(ch['conv5'] * side * side, ch['fc6']),
      nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ch['fc6'], ch['fc7']),
      nn.ReLU(inplace=True), nn.Linear(ch['fc7'], num_classes))


def load_our_weights(net, params) -> None:
  """Copies our (stacked, one-tower) parameters into the PyTorch network."""
  import numpy as np
  import torch
  towers = {k: {n: np.array(a[0]) for n, a in v.items()} for k, v in params['towers'].items()}
  convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
  linears = [m for m in net if isinstance(m, torch.nn.Linear)]
  with torch.no_grad():
    for name, m in zip(['conv1', 'conv2', 'conv3', 'conv4', 'conv5'], convs):
      m.weight.copy_(torch.from_numpy(towers[name]['kernel'].transpose(3, 2, 0, 1).copy()))
      m.bias.copy_(torch.from_numpy(towers[name]['bias']))
    fc6 = towers['fc6']['kernel']             # rows in (h, w, c) order: ours flattens NHWC
    c = convs[-1].out_channels
    side = int(round((fc6.shape[0] // c) ** 0.5))
    fc6 = fc6.reshape(side, side, c, -1).transpose(2, 0, 1, 3).reshape(fc6.shape[0], -1)
    linears[0].weight.copy_(torch.from_numpy(fc6.T.copy()))
    linears[0].bias.copy_(torch.from_numpy(towers['fc6']['bias']))
    linears[1].weight.copy_(torch.from_numpy(towers['fc7']['kernel'].T.copy()))
    linears[1].bias.copy_(torch.from_numpy(towers['fc7']['bias']))
    linears[2].weight.copy_(torch.from_numpy(towers['fc8']['kernel'].T.copy()))
    linears[2].bias.copy_(torch.from_numpy(np.array(params['head']['bias'])))


class TorchPrograms:
  """PyTorch's side: the network with our initial weights, and one train step or inference per call."""

  def __init__(self, *, num_classes, width, image_size, dtype, threads, params, images, labels):
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.net = torch_alexnet_owt(num_classes, width, image_size)
    load_our_weights(self.net, params)
    self.net = self.net.to(memory_format=torch.channels_last)
    self.x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=torch.channels_last)
    self.y = torch.from_numpy(labels.astype(np.int64))
    self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
    self.bfloat16 = dtype == 'bfloat16'

  def _autocast(self):
    import torch
    return torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.bfloat16)

  def logits(self):
    import torch
    self.net.eval()
    with torch.no_grad(), self._autocast():
      out = self.net(self.x).float().numpy()
    self.net.train()
    return out

  def call(self, mode: str) -> None:
    import torch
    if mode == 'train':
      self.opt.zero_grad(set_to_none=True)
      with self._autocast():
        loss = torch.nn.functional.cross_entropy(self.net(self.x).float(), self.y)
      loss.backward()
      self.opt.step()
    else:
      self.net.eval()
      with torch.inference_mode(), self._autocast():
        self.net(self.x)
      self.net.train()

  def info(self) -> dict:
    import torch
    return {'version': torch.__version__, 'threads': torch.get_num_threads(),
            'memory_format': 'channels_last', 'autocast': self.bfloat16,
            'glibc_tunables': os.environ.get('GLIBC_TUNABLES', '')}


def _serve_torch(conn, spec) -> None:
  """The child process of ``TorchServer``: builds the programs, then runs what the parent asks for and
  answers (True, result), or (False, the error's traceback)."""
  import traceback
  try:
    programs = TorchPrograms(**spec)
    while True:
      request, arg = conn.recv()
      if request == 'stop':
        return
      conn.send((True, getattr(programs, request)(*arg)))
  except Exception:  # pylint: disable=broad-except
    conn.send((False, traceback.format_exc()))


class TorchServer:
  """``TorchPrograms`` in a process of its own, started fresh (``spawn``): PyTorch as its users run it,
  with glibc's default malloc settings rather than the ones our process made (alexnet_jax/runtime/host_memory.py).
  Each call is one request over a pipe (well under a millisecond against a step of hundreds)."""

  def __init__(self, spec: dict):
    import multiprocessing
    context = multiprocessing.get_context('spawn')
    self._conn, child = context.Pipe()
    self._process = context.Process(target=_serve_torch, args=(child, spec), daemon=True)
    self._process.start()
    child.close()   # so that recv() raises EOFError, not hangs, if the child dies
    atexit.register(self.close)

  def _ask(self, request: str, *arg):
    self._conn.send((request, arg))
    ok, answer = self._conn.recv()
    if not ok:
      raise RuntimeError(f'PyTorch process failed on {request!r}:\n{answer}')
    return answer

  def logits(self):
    return self._ask('logits')

  def call(self, mode: str) -> None:
    self._ask('call', mode)

  def info(self) -> dict:
    return self._ask('info')

  def close(self) -> None:
    if self._process.is_alive():
      try:
        self._conn.send(('stop', ()))
      except OSError:
        pass
      self._process.join(timeout=10)
