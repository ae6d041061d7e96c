"""Layers of the 2012 network that Flax does not ship, written to read like the paper.

- `local_response_norm`: section 3.3 of the paper, over the channels a tower holds.
- `dropout`: section 4.2, with one random key *per example* so that a mask never depends on how the
  batch was split across devices (the layouts' equivalence rests on this).
- `max_pool`: overlapping pooling (section 3.4), z=3, s=2.
- `convnet_padding`: cuda-convnet's rounding of conv1's output size on 224x224 inputs.

Nothing here knows about devices or meshes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# Section 3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75.
LRN_K, LRN_N, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75


def local_response_norm(x: jax.Array, *, convention: str = 'paper', k: float = LRN_K,
                        n: int = LRN_N, alpha: float = LRN_ALPHA, beta: float = LRN_BETA) -> jax.Array:
  """Local response normalization across channels (the last axis of NHWC).

  The paper (section 3.3) divides each activity by ``(k + alpha * sum(a_j^2)) ** beta``, the sum running
  over the ``n`` adjacent maps centred on this one, clipped at the first and last map (zero padding).
  Only the maps present in ``x`` take part: applied inside a tower, it normalizes over that tower's own
  maps, as each GPU did in cuda-convnet.

  ``convention='caffe'`` divides ``alpha`` by ``n`` first: ``k + (alpha / n) * sum(a_j^2)``. That is the
  formula of Caffe's LRN layer and of PyTorch's ``nn.LocalResponseNorm``, so Caffe's bvlc_alexnet (which
  writes alpha=1e-4 with this convention) normalizes five times more weakly than the paper. To reproduce
  the paper with Caffe or PyTorch, set their alpha to ``n * 1e-4 = 5e-4``; to reproduce Caffe here, pass
  ``convention='caffe'``. ``convention='none'`` returns ``x`` unchanged (an ablation).
  """
  if convention == 'none':
    return x
  if convention not in ('paper', 'caffe'):
    raise ValueError(f"LRN convention must be 'paper', 'caffe' or 'none', got {convention!r}")
  scale = alpha / n if convention == 'caffe' else alpha
  # The sum of squares is taken in float32 even for a bfloat16 network: it is a small reduction
  # whose cancellation-free accuracy matters more than its cost.
  return _lrn(x.astype(jnp.float32), n, k, scale, beta).astype(x.dtype)


def _window_sum(v: jax.Array, n: int) -> jax.Array:
  """Sum over the ``n`` adjacent channels centred on each one, zero beyond the first and last."""
  half = n // 2
  channels = v.shape[-1]
  padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(half, n - 1 - half)])
  return sum(padded[..., i:i + channels] for i in range(n))


def _lrn_denominator(x, n, k, scale, beta):
  """(t, t ** -beta) with t = k + scale * window_sum(x^2)."""
  t = k + scale * _window_sum(jnp.square(x), n)
  # The paper's beta = 3/4 as t**-0.75 = rsqrt(t * sqrt(t)): the same function (within 2e-7 relative),
  # but sqrt and rsqrt are single vector instructions where pow is a log and an exp.
  return t, (jax.lax.rsqrt(t * jnp.sqrt(t)) if beta == 0.75 else t ** (-beta))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x: jax.Array, n: int, k: float, scale: float, beta: float) -> jax.Array:
  return x * _lrn_denominator(x, n, k, scale, beta)[1]


def _lrn_forward(x, n, k, scale, beta):
  t, inv = _lrn_denominator(x, n, k, scale, beta)
  return x * inv, (x, t, inv)


def _lrn_backward(n, k, scale, beta, residuals, g):
  """The analytic gradient: with y_j = x_j t_j^-beta and t_j = k + scale * sum_{i in W(j)} x_i^2,

      dL/dx_i = g_i t_i^-beta - 2 scale beta x_i * sum_{j in W(i)} g_j y_j / t_j,

  where W(i) is the window around i, which is symmetric, so the second sum is the same window sum as
  the forward's (for even ``n`` it is the mirrored window). Autodiff of the forward reaches the same
  numbers (within 1e-7 relative, tests/test_models.py) through a pad and an add per window tap, forward
  and backward: 5x slower on CPU (benchmarks/RESULTS.md).
  """
  del k
  x, t, inv = residuals
  u = g * x * inv / t
  if n % 2 == 0:   # an even window is lopsided: its transpose is its mirror image
    u_sum = _window_sum(u[..., ::-1], n)[..., ::-1]
  else:
    u_sum = _window_sum(u, n)
  return (g * inv - (2.0 * scale * beta) * x * u_sum,)


_lrn.defvjp(_lrn_forward, _lrn_backward)


def dropout(x: jax.Array, rate: float, example_keys: jax.Array | None, *, layer: int) -> jax.Array:
  """Inverted dropout (section 4.2) with one key per example.

  ``example_keys`` holds one typed PRNG key per row of ``x``; the layout derives it from the step's key,
  the tower and the example's *global* index in the batch, so a given example gets the same mask on one
  device or split across many. ``layer`` separates the masks of fc6 and fc7. The paper multiplies the
  outputs by 0.5 at test time instead of scaling by 1/(1-p) in training; the two give the same expected
  activations, and the inverted form keeps inference free of a rescale.
  """
  if example_keys is None or rate == 0.0:
    return x
  keep = 1.0 - rate

  def mask_for(key):
    return jax.random.bernoulli(jax.random.fold_in(key, layer), keep, x.shape[1:])

  mask = jax.vmap(mask_for)(example_keys)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def max_pool(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
  """Overlapping max pooling (section 3.4: z = 3, s = 2), no padding, on NHWC maps.

  Written as the maximum of ``window**2`` strided slices rather than ``nn.max_pool``: the same values,
  but XLA's CPU gradient of ``reduce_window`` (a ``select_and_scatter``) is slow (benchmarks/RESULTS.md).
  Gradients differ only where two window elements tie exactly: ``select_and_scatter`` gives the whole
  gradient to one of them, ``maximum`` splits it between them.
  """
  _, h, w, _ = x.shape
  ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
  out = None
  for i in range(window):
    for j in range(window):
      s = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      out = s if out is None else jnp.maximum(out, s)
  return out


def convnet_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """Padding that gives cuda-convnet's output size ``1 + ceil((size - kernel) / stride)``.

  cuda-convnet lets the last window run past the image (zeros beyond the bottom/right edge), which is
  how 224x224 inputs give the paper's 55x55 conv1 maps. For 227x227 inputs (Caffe) the division is
  exact and the padding is zero, so both sizes give the same shapes from conv1 on.
  """
  out = 1 + math.ceil(max(size - kernel, 0) / stride)
  return (0, (out - 1) * stride + kernel - size)
