r"""Per-layer activation and gradient scales over a network's first SGD steps (issue 20's diagnosis).

    PYTHONPATH=. python -m benchmarks.init_scales --init=paper --size=224 --steps=5
    PYTHONPATH=. python -m benchmarks.init_scales --init=digits --size=224 --steps=5

It builds a network from a ``config.model`` (full width by default), draws a small batch of generated
three-class images (``data/synthetic.class_image``, mean-subtracted on the 0..255 scale as the input
pipeline hands them over), and runs plain SGD with momentum -- the solver of DIGITS' defaults -- for a
few steps on one device with both towers local (``parallel/forward.run_local_towers``: the same
numbers as every layout). Before each update it records, per layer, the std of the layer's output
(before its ReLU), the fraction of outputs above zero (the ReLUs that pass a gradient), the norm of
the layer's weight gradient and the ratio of update to weight norm (``lr * |grad| / |w|``, before
momentum). ``tests/test_digits_init.py`` uses ``first_steps`` to catch the collapse on a size CI can
afford; numbers at full size are in the closing note of issue 20 and the module docstring of
``models/alexnet.py``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax import metrics as metrics_lib
from alexnet_jax import models
from alexnet_jax.data import synthetic
from alexnet_jax.parallel import forward as forward_lib


def generated_batch(batch: int, size: int, num_classes: int = 3, seed: int = 0,
                    channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """(images float32 [batch, size, size, channels] minus their mean image, labels int32 [batch])."""
  rng = np.random.default_rng(seed)
  labels = np.arange(batch, dtype=np.int32) % num_classes
  images = np.stack([synthetic.class_image(rng, int(y), num_classes, size, size) for y in labels])
  images = images.astype(np.float32)
  if channels == 1:
    images = images.mean(axis=-1, keepdims=True)
  return images - images.mean(axis=0, keepdims=True), labels


def _layer_tree(tree) -> dict[str, dict[str, Any]]:
  """{layer: {'kernel': ..., 'bias': ...}} of a parameter-shaped tree (towers stacked), head as 'head'."""
  out = dict(tree['towers'])
  out['head'] = tree['head']
  return out


def _norm(a) -> float:
  return float(jnp.sqrt(jnp.sum(jnp.square(a))))


def first_steps(model_config: ml_collections.ConfigDict, *, num_classes: int = 3, size: int = 64,
                batch: int = 16, steps: int = 3, learning_rate: float = 0.01, momentum: float = 0.9,
                seed: int = 0, channels: int = 3) -> list[dict[str, Any]]:
  """Runs ``steps`` SGD steps and returns one record per step, taken before its update.

  Each record: ``{'step', 'loss', 'logit_std', 'layers': {layer: {'mean', 'std', 'alive', 'grad_norm',
  'update_ratio'}}}``. ``alive`` is the fraction of the layer's outputs above zero (for the last layer,
  the logits, it is reported too but means nothing). Dropout is on in the loss, as in training; the
  activations are those of the same batch without dropout.
  """
  network = models.build(model_config, num_classes)
  images, labels = generated_batch(batch, size, num_classes, seed, channels)
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  params = network.init(jax.random.key(seed), images.shape[1:])
  tx = optax.chain(optax.scale_by_learning_rate(learning_rate), optax.trace(decay=momentum))
  opt_state = tx.init(params)
  rng = jax.random.key(seed + 1)

  def loss_fn(p, key, images, labels):
    logits = forward_lib.run_local_towers(network, p, images, key, train=True)
    heads = network.split_heads(logits)
    loss = jnp.mean(metrics_lib.cross_entropy(heads[0], labels))
    for weight, aux in zip(network.aux_loss_weights, heads[1:]):
      loss = loss + weight * jnp.mean(metrics_lib.cross_entropy(aux, labels))
    return loss

  @jax.jit   # one program for both, compiled once
  def measure(p, key, images, labels):
    loss, grads = jax.value_and_grad(loss_fn)(p, key, images, labels)
    return loss, grads, *forward_lib.layer_activations(network, p, images)

  records = []
  for step in range(steps):
    loss, grads, logits, acts = measure(params, jax.random.fold_in(rng, step), images, labels)
    layers = {}
    g_layers, p_layers = _layer_tree(grads), _layer_tree(params)
    for name, outs in acts.items():
      y = jnp.concatenate([o.astype(jnp.float32) for o in outs], axis=-1)
      g, w = g_layers.get(name, {}), p_layers.get(name, {})
      kernel_g, kernel_w = g.get('kernel'), w.get('kernel')
      layers[name] = {
          'mean': float(jnp.mean(y)), 'std': float(jnp.std(y)), 'alive': float(jnp.mean(y > 0)),
          'grad_norm': _norm(kernel_g) if kernel_g is not None else float('nan'),
          'update_ratio': (learning_rate * _norm(kernel_g) / max(_norm(kernel_w), 1e-30)
                           if kernel_g is not None else float('nan')),
      }
    records.append({'step': step, 'loss': float(loss), 'logit_std': float(jnp.std(logits)),
                    'layers': layers})
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  return records


def format_records(records: list[dict[str, Any]]) -> str:
  """A table per step: layer, output mean and std, alive fraction, weight-gradient norm, lr*|g|/|w|."""
  lines = []
  for r in records:
    lines.append(f"step {r['step']}: loss {r['loss']:.4g}, logit std {r['logit_std']:.4g}")
    for name, s in r['layers'].items():
      lines.append(f"  {name:>24}  mean {s['mean']:9.3g}  std {s['std']:9.3g}  alive {s['alive']:6.3f}  "
                   f"|grad| {s['grad_norm']:10.4g}  lr|g|/|w| {s['update_ratio']:10.4g}")
  return '\n'.join(lines)


# The two starts issue 20 compares (config.model fields); --set changes single fields.
PRESETS = {'paper': {'weight_init': 'paper', 'bias_init': 'paper', 'lrn': 'paper'},
           'digits': {'weight_init': 'digits', 'bias_init': 'digits', 'lrn': 'caffe'}}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--model', default='alexnet')
  p.add_argument('--init', default='digits', choices=sorted(PRESETS),
                 help='paper: section 5 of the 2012 paper; digits: DIGITS\' alexnet.prototxt')
  p.add_argument('--set', default='', help='more config.model fields, e.g. bias_init=paper,lrn=caffe')
  p.add_argument('--width', type=float, default=1.0)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--lr', type=float, default=0.01)
  p.add_argument('--channels', type=int, default=3)
  args = p.parse_args(argv)
  from alexnet_jax import configs  # pylint: disable=g-import-not-at-top
  c = configs.default_config().model
  c.name, c.width = args.model, args.width
  c.update(PRESETS[args.init])
  for item in filter(None, args.set.split(',')):
    key, _, value = item.partition('=')
    if key not in c:
      p.error(f'--set: {key!r} is not a config.model field ({", ".join(c.keys())})')
    c[key] = value
  start = time.perf_counter()
  records = first_steps(c, size=args.size, batch=args.batch, steps=args.steps, learning_rate=args.lr,
                        channels=args.channels)
  print(f'{args.model} width {args.width} weight_init={c.weight_init} bias_init={c.bias_init} '
        f'lrn={c.lrn}, input {args.size}x{args.size}, batch {args.batch}, SGD lr {args.lr} momentum 0.9, '
        f'{jax.devices()[0].device_kind}')
  print(format_records(records))
  print(f'{time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
  main()
