"""Layers of the 2012 network that Flax does not ship, written to read like the paper.

- `local_response_norm`: section 3.3 of the paper, over the channels a tower holds.
- `dropout`: section 4.2, with one random key *per example* so that a mask never depends on how the
  batch was split across devices (the layouts' equivalence rests on this).
- `max_pool`: overlapping pooling (section 3.4), z=3, s=2, with the usual first-maximum gradient;
  ``ceil_mode=True`` sizes it as cuda-convnet and Caffe do (the last window may run past the edge).
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
# Caffe's LRN layer: k defaults to 1 (caffe.proto's LRNParameter), and no DIGITS network sets it.
CAFFE_LRN_K = 1.0


def local_response_norm(x: jax.Array, *, convention: str = 'paper', k: float | None = None,
                        n: int = LRN_N, alpha: float = LRN_ALPHA, beta: float = LRN_BETA) -> jax.Array:
  """Local response normalization across channels (the last axis of NHWC).

  The paper (section 3.3) divides each activity by ``(k + alpha * sum(a_j^2)) ** beta``, the sum running
  over the ``n`` adjacent maps centred on this one, clipped at the first and last map (zero padding).
  Only the maps present in ``x`` take part: applied inside a tower, it normalizes over that tower's own
  maps, as each GPU did in cuda-convnet.

  ``convention='caffe'`` divides ``alpha`` by ``n`` first: ``k + (alpha / n) * sum(a_j^2)``, with Caffe's
  default ``k = 1`` unless ``k`` is given. That is the formula of Caffe's LRN layer and of PyTorch's
  ``nn.LocalResponseNorm``, so DIGITS' and Caffe's AlexNet (which write local_size 5, alpha 1e-4, beta
  0.75 and leave k at 1) normalize five times more weakly than the paper and do not shrink small
  activities (the paper's k = 2 divides them by 2^0.75 = 1.68 at every LRN). To reproduce the paper with
  Caffe or PyTorch, set their alpha to ``n * 1e-4 = 5e-4`` and k to 2; to reproduce Caffe here, pass
  ``convention='caffe'``. ``convention='none'`` returns ``x`` unchanged (an ablation).
  """
  if convention == 'none':
    return x
  if convention not in ('paper', 'caffe'):
    raise ValueError(f"LRN convention must be 'paper', 'caffe' or 'none', got {convention!r}")
  if k is None:
    k = CAFFE_LRN_K if convention == 'caffe' else LRN_K
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


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, *, ceil_mode: bool = False) -> jax.Array:
  """Overlapping max pooling (section 3.4: z = 3, s = 2), no padding, on NHWC maps.

  Output size per spatial axis of size ``n``: ``floor((n - window) / stride) + 1`` (Flax, PyTorch,
  torchvision's AlexNet) by default; with ``ceil_mode=True``, ``ceil((n - window) / stride) + 1``,
  the size of cuda-convnet's pooling layer and of Caffe's ``PoolingLayer::Reshape`` (pad 0). With pad 0
  a window can start at or past the edge only when ``stride > window``; Caffe clips that last output
  only for padded pools (at pad 0 it would pool an empty window to -FLT_MAX), here it is always
  dropped. No network here pools so. The last window then runs past the bottom/right edge and
  takes the maximum of the rows and columns that remain: the input is padded there with -inf, only
  when the division is not exact, so the two modes agree whenever ``n - window`` is a multiple of
  ``stride`` (55, 27, 13 in AlexNet at 224/227). Where they differ, e.g. a 24-row map: 11 rows round
  down, 12 up. An axis that Caffe would pool to 0 outputs (``n <= window - stride``) gives an empty
  array here too, which ``config_checks`` reports.

  The forward pass is the maximum of ``window**2`` strided slices; the backward pass hands each output's
  gradient to the first maximal element of its window (row-major order), as cuda-convnet, Caffe,
  PyTorch and XLA's ``select_and_scatter`` do. A -inf pad never wins (the comparison is strict and
  every window starts inside the input), and the pad's own transpose drops whatever lands on it, so
  padded positions never receive gradient. Both passes are written out (a custom VJP) rather than taken
  from ``nn.max_pool``: on XLA's CPU backend ``reduce_window``'s gradient is slow, and so is autodiff
  through the chain of maxima (``slice_max_pool``), which also splits the gradient between exact ties
  instead of giving it to one element. The values are the same as both; away from ties, the gradients
  too. Speeds in benchmarks/RESULTS.md.
  """
  if ceil_mode:
    pads = [(0, ceil_pool_padding(n, window, stride)) for n in x.shape[1:3]]
    if any(p for _, p in pads):
      x = jnp.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-jnp.inf)
  return _max_pool(x, window, stride)


def pooled_size(n: int, window: int = 3, stride: int = 2, *, ceil_mode: bool = False) -> int:
  """The output size of ``max_pool`` on an axis of ``n`` (Caffe's arithmetic with ``ceil_mode``)."""
  if not ceil_mode:
    return (n - window) // stride + 1
  out = -(-(n - window) // stride) + 1     # ceil((n - window) / stride) + 1, in integers
  if (out - 1) * stride >= n:              # Caffe: the last window must start inside the input
    out -= 1
  return out


def ceil_pool_padding(n: int, window: int = 3, stride: int = 2) -> int:
  """Rows (or columns) of -inf that ``max_pool(..., ceil_mode=True)`` adds at the bottom (right)."""
  out = pooled_size(n, window, stride, ceil_mode=True)
  return max(0, (out - 1) * stride + window - n)


def _pool_taps(x: jax.Array, window: int, stride: int) -> list[jax.Array]:
  """The ``window**2`` strided slices of ``x``, one per position in the window, in row-major order."""
  _, h, w, _ = x.shape
  ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
  return [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
          for i in range(window) for j in range(window)]


def slice_max_pool(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
  """The maximum of the strided slices, differentiated by autodiff (the benchmarks' what-if)."""
  taps = _pool_taps(x, window, stride)
  out = taps[0]
  for tap in taps[1:]:
    out = jnp.maximum(out, tap)
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, window, stride):
  return slice_max_pool(x, window, stride)


def _max_pool_forward(x, window, stride):
  taps = _pool_taps(x, window, stride)
  index = jnp.int8 if len(taps) <= 127 else jnp.int32   # the window position of each output's maximum
  out, argmax = taps[0], jnp.zeros(taps[0].shape, index)
  for k, tap in enumerate(taps[1:], start=1):
    better = tap > out          # strictly: the first maximum keeps the gradient
    out = jnp.where(better, tap, out)
    argmax = jnp.where(better, index(k), argmax)
  return out, (argmax, x.shape)


def _max_pool_backward(window, stride, residuals, g):
  """Scatters each window's gradient onto its argmax, written as a gather so that XLA makes it one pass.

  Input row ``h = stride * a + p`` lies under window row ``i = p + stride * m`` of output row ``a - m``
  (every ``m`` with ``i < window``), and likewise for columns. So the input positions of one phase
  ``(p, q)`` receive a sum of shifted copies of the masked gradient ``where(argmax == (i, j), g, 0)``,
  and the phases interleave into ``dx`` by a reshape. (The transpose of the forward slices would be
  ``window**2`` interior-padded copies of ``dx``'s size, summed: XLA's CPU backend makes each its own
  pass, recomputing the argmax in each.)
  """
  argmax, (n, h, w, c) = residuals
  ho, wo = g.shape[1:3]
  rows, cols = -(-h // stride), -(-w // stride)     # phase planes of ceil(h / stride) x ceil(w / stride)
  zero = jnp.zeros((), g.dtype)

  def shifted(v, m_rows, m_cols):
    """v[a - m_rows, b - m_cols] on the rows x cols phase grid, zero outside ``v``."""
    return jax.lax.pad(v, zero, [(0, 0, 0), (m_rows, rows - m_rows - ho, 0),
                                 (m_cols, cols - m_cols - wo, 0), (0, 0, 0)])

  phase_rows = []
  for p in range(stride):
    phase_cols = []
    for q in range(stride):
      plane = jnp.zeros((n, rows, cols, c), g.dtype)
      for i in range(p, window, stride):
        for j in range(q, window, stride):
          mine = jnp.where(argmax == i * window + j, g, zero)
          plane = plane + shifted(mine, (i - p) // stride, (j - q) // stride)
      phase_cols.append(plane)
    phase_rows.append(jnp.stack(phase_cols, axis=3))           # [n, rows, cols, q, c]
  dx = jnp.stack(phase_rows, axis=2)                           # [n, rows, p, cols, q, c]
  return (dx.reshape(n, rows * stride, cols * stride, c)[:, :h, :w, :],)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def convnet_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """Padding that gives cuda-convnet's output size ``1 + ceil((size - kernel) / stride)``.

  cuda-convnet lets the last window run past the image (zeros beyond the bottom/right edge), which is
  how 224x224 inputs give the paper's 55x55 conv1 maps. For 227x227 inputs (Caffe) the division is
  exact and the padding is zero, so both sizes give the same shapes from conv1 on.

  On other sizes this departs from Caffe, whose convolution rounds *down* (conv1 has pad 0 in
  bvlc_alexnet and DIGITS' alexnet.prototxt: ``floor((n - 11) / 4) + 1``): wherever ``(n - 11) / 4`` is
  not whole, conv1 here has one more row or column than Caffe's. At 300x200 with no crop, conv1 is
  74 wide x 49 high here, 73 x 48 in Caffe; at 256x256, 63 here, 62 in Caffe. The two-tower network
  keeps cuda-convnet's rounding (it is what gives the paper's 55 at 224) and rounds its pools up as
  cuda-convnet and Caffe do (``max_pool(..., ceil_mode=True)``), after which the maps meet again in
  these cases: 300x200 gives 37x24 (Caffe 36x24) after pool1, then 18x12 and 9x6 in both, so fc6's
  fan-in is Caffe's 6 x 9 x 256; 256x256 gives 31, 15, 7 in both.
  """
  out = 1 + math.ceil(max(size - kernel, 0) / stride)
  return (0, (out - 1) * stride + kernel - size)
