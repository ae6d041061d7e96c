"""The networks: exact shapes and parameter counts of the paper, LRN, init, dropout, registry."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alexnet_jax import models
from alexnet_jax.models import layers
from alexnet_jax.models.alexnet import AlexNetTower
from alexnet_jax.parallel import forward

PAPER_SHAPES = {  # per tower, Figure 2
    'conv1': (11, 11, 3, 48), 'conv2': (5, 5, 48, 128), 'conv3': (3, 3, 256, 192),
    'conv4': (3, 3, 192, 192), 'conv5': (3, 3, 192, 128), 'fc6': (9216, 2048),
    'fc7': (4096, 2048), 'fc8': (2048, 1000)}


def abstract_params(network, image_shape=(224, 224, 3)):
  return jax.eval_shape(lambda k: network.init(k, image_shape), jax.random.key(0))


@pytest.mark.parametrize('size', [224, 227])
def test_alexnet_has_the_papers_parameter_count_and_shapes(size):
  network = models.alexnet(1000)
  params = abstract_params(network, (size, size, 3))
  assert network.param_count(params) == 60_965_224
  towers = params['towers']
  for layer, shape in PAPER_SHAPES.items():
    assert towers[layer]['kernel'].shape == (2, *shape), layer
  assert 'bias' not in towers['fc8']
  assert params['head']['bias'].shape == (1000,)


def layer_outputs(image_size):
  """Every conv/dense layer's output shape in one tower, via Flax's intermediates (no compute)."""
  tower = AlexNetTower(num_classes=1000)
  network = models.alexnet(1000)
  params = abstract_params(network, (image_size, image_size, 3))
  one_tower = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), params['towers'])

  def run(p):
    _, state = tower.apply({'params': p}, jnp.zeros((1, image_size, image_size, 3)),
                           method='trace_all_stages', capture_intermediates=True,
                           mutable=['intermediates'])
    return state['intermediates']

  inter = jax.eval_shape(run, one_tower)
  return {name: inter[name]['__call__'][0].shape[1:] for name in inter
          if name.startswith(('conv', 'fc'))}


@pytest.mark.parametrize('size', [224, 227])
def test_neurons_per_layer_match_the_paper_except_its_conv1_erratum(size):
  shapes = layer_outputs(size)
  neurons = {name: 2 * int(np.prod(shape)) for name, shape in shapes.items()}  # both towers
  assert shapes['conv1'] == (55, 55, 48)
  # Section 3.5 lists 253,440-186,624-64,896-64,896-43,264-4096-4096-1000; the first is an erratum.
  assert neurons['conv1'] == 290_400 != 253_440
  assert [neurons[k] for k in ('conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')] == [
      186_624, 64_896, 64_896, 43_264, 4096, 4096]
  assert shapes['fc8'] == (1000,)  # each tower's partial logits, summed across towers


def test_one_weird_trick_network_matches_torchvision():
  network = models.alexnet_owt(1000)
  params = abstract_params(network)
  assert network.param_count(params) == 61_100_840
  assert network.num_towers == 1
  assert params['towers']['conv2']['kernel'].shape == (1, 5, 5, 64, 192)


def test_width_scales_channels_and_keeps_structure():
  network = models.alexnet(10, width=0.25)
  towers = abstract_params(network, (64, 64, 3))['towers']
  assert towers['conv1']['kernel'].shape == (2, 11, 11, 3, 12)
  assert towers['conv3']['kernel'].shape == (2, 3, 3, 64, 48)
  assert towers['fc8']['kernel'].shape == (2, 512, 10)


def reference_lrn(x, k, n, alpha, beta):
  out = np.empty_like(x)
  channels = x.shape[-1]
  for c in range(channels):
    lo, hi = max(0, c - n // 2), min(channels - 1, c + n // 2)
    out[..., c] = x[..., c] / (k + alpha * np.sum(x[..., lo:hi + 1] ** 2, axis=-1)) ** beta
  return out


def test_lrn_follows_the_papers_formula_and_the_caffe_convention():
  x = np.random.RandomState(0).normal(0, 30, (2, 3, 3, 7)).astype(np.float32)
  paper = np.asarray(layers.local_response_norm(jnp.asarray(x)))
  np.testing.assert_allclose(paper, reference_lrn(x, 2.0, 5, 1e-4, 0.75), rtol=1e-5)
  caffe = np.asarray(layers.local_response_norm(jnp.asarray(x), convention='caffe'))
  np.testing.assert_allclose(caffe, reference_lrn(x, 1.0, 5, 1e-4 / 5, 0.75), rtol=1e-5)  # Caffe's k=1
  assert not np.allclose(paper, caffe)
  np.testing.assert_array_equal(layers.local_response_norm(jnp.asarray(x), convention='none'), x)
  with pytest.raises(ValueError, match='convention'):
    layers.local_response_norm(jnp.asarray(x), convention='pytorch')


def _plain_lrn(x, k, n, alpha, beta):
  """The formula written the obvious way, for autodiff to differentiate (the window may be even)."""
  lo_pad, channels = n // 2, x.shape[-1]
  padded = jnp.pad(jnp.square(x), [(0, 0)] * (x.ndim - 1) + [(lo_pad, n - 1 - lo_pad)])
  window = sum(padded[..., i:i + channels] for i in range(n))
  return x / (k + alpha * window) ** beta


@pytest.mark.parametrize('n,k,beta', [(5, 2.0, 0.75), (4, 1.0, 0.75), (3, 2.0, 0.6)])
def test_lrn_gradient_is_the_analytic_one(n, k, beta):
  """The hand-written backward pass (one window sum instead of autodiff's pad per tap) is exact."""
  x = jnp.asarray(np.random.RandomState(1).normal(0, 40, (2, 5, 4, 9)).astype(np.float32))
  g = jnp.asarray(np.random.RandomState(2).normal(0, 1, x.shape).astype(np.float32))
  ours = layers.local_response_norm(x, k=k, n=n, alpha=1e-4, beta=beta)
  np.testing.assert_allclose(ours, _plain_lrn(x, k, n, 1e-4, beta), rtol=2e-6)
  grad = jax.grad(lambda x: jnp.vdot(layers.local_response_norm(x, k=k, n=n, alpha=1e-4, beta=beta), g))(x)
  want = jax.grad(lambda x: jnp.vdot(_plain_lrn(x, k, n, 1e-4, beta), g))(x)
  np.testing.assert_allclose(grad, want, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(want))))
  # The gradient through the denominator matters at this scale: dropping it would fail the check above.
  denominator_held_fixed = g * _plain_lrn(x, k, n, 1e-4, beta) / x
  assert float(jnp.max(jnp.abs(want - denominator_held_fixed))) > 100 * 2e-6 * float(jnp.max(jnp.abs(want)))


@pytest.mark.parametrize('shape,window,stride', [((2, 13, 13, 5), 3, 2), ((1, 8, 9, 3), 2, 2),
                                                  ((1, 7, 7, 2), 3, 1)])
def test_max_pool_matches_reduce_window_values_and_gradients(shape, window, stride):
  """Forward: the values of XLA's reduce_window. Backward: its select_and_scatter, i.e. each window's
  gradient goes to its first maximum, also where a window holds ties (rounded inputs make many)."""
  x = jnp.asarray(np.round(np.random.RandomState(3).normal(0, 2, shape)).astype(np.float32))
  reduce_window = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                                  (1, stride, stride, 1), 'VALID')
  ours, ours_vjp = jax.vjp(lambda x: layers.max_pool(x, window, stride), x)
  want, want_vjp = jax.vjp(reduce_window, x)
  np.testing.assert_array_equal(ours, want)
  g = jnp.asarray(np.random.RandomState(4).normal(0, 1, want.shape).astype(np.float32))
  np.testing.assert_allclose(ours_vjp(g)[0], want_vjp(g)[0], rtol=0, atol=1e-5)
  # Autodiff through the chain of maxima splits tied gradients instead, so it differs here.
  split = jax.vjp(lambda x: layers.slice_max_pool(x, window, stride), x)[1](g)[0]
  assert float(jnp.max(jnp.abs(split - want_vjp(g)[0]))) > 0.1


def caffe_max_pool(x, window, stride):
  """Caffe's PoolingLayer (pad 0), loop for loop: Reshape's ``ceil((n - k) / s) + 1`` in floats, then
  Forward_cpu's strict ``>`` scan from -FLT_MAX over each window clipped to the input, recording the
  index of the first maximum, and Backward_cpu's scatter of each output's gradient onto that index."""
  n, h, w, c = x.shape
  ho, wo = (int(np.ceil(np.float32(size - window) / stride)) + 1 for size in (h, w))
  out = np.full((n, ho, wo, c), -np.finfo(np.float32).max, np.float32)
  argmax = np.full((n, ho, wo, c, 2), -1)
  for b, ph, pw, ch in np.ndindex(n, ho, wo, c):
    for r in range(ph * stride, min(ph * stride + window, h)):
      for q in range(pw * stride, min(pw * stride + window, w)):
        if x[b, r, q, ch] > out[b, ph, pw, ch]:
          out[b, ph, pw, ch] = x[b, r, q, ch]
          argmax[b, ph, pw, ch] = (r, q)

  def backward(g):
    dx = np.zeros_like(x)
    for b, ph, pw, ch in np.ndindex(n, ho, wo, c):
      r, q = argmax[b, ph, pw, ch]
      dx[b, r, q, ch] += g[b, ph, pw, ch]
    return dx

  return out, backward


@pytest.mark.parametrize('hw,window,stride', [((8, 9), 3, 2), ((13, 24), 3, 2), ((2, 5), 3, 2),
                                              ((7, 6), 2, 2)])
def test_ceil_mode_max_pool_is_caffes_pooling(hw, window, stride):
  """``ceil_mode=True``: Caffe's output size on odd and even maps (a last, partial window where the
  stride does not divide), its values, and its gradient (the first maximum of each window, ties
  included; nothing for the -inf padding)."""
  x = np.round(np.random.RandomState(5).normal(0, 1.5, (2, *hw, 3))).astype(np.float32)  # many ties
  want, want_backward = caffe_max_pool(x, window, stride)
  ours, ours_vjp = jax.vjp(lambda x: layers.max_pool(x, window, stride, ceil_mode=True), jnp.asarray(x))
  assert ours.shape == want.shape
  assert [layers.pooled_size(n, window, stride, ceil_mode=True) for n in hw] == list(want.shape[1:3])
  np.testing.assert_array_equal(ours, want)
  g = np.random.RandomState(6).normal(0, 1, want.shape).astype(np.float32)
  np.testing.assert_allclose(ours_vjp(jnp.asarray(g))[0], want_backward(g), rtol=0, atol=1e-6)
  floor = layers.max_pool(jnp.asarray(x), window, stride)
  if (hw[0] - window) % stride or (hw[1] - window) % stride:
    assert floor.shape != ours.shape   # these sizes tell the two roundings apart
  else:
    np.testing.assert_array_equal(floor, ours)


def test_paper_init_weights_and_biases():
  # The rules do not depend on the width; at 1/8 of it the smallest kernel (conv1's) still holds 4,356
  # weights, so the standard error of its std is 1.1e-4, a fifth of the tolerance, while a fan-in scaled
  # or a truncated normal is off by 10x that. (Eager, one small compilation per layer shape: shared
  # with the tests below, which use these shapes; at full size they would be a set of their own.)
  params = models.alexnet(10, width=0.125).init(jax.random.key(0), (64, 64, 3))['towers']
  for layer in PAPER_SHAPES:
    assert params[layer]['kernel'].size >= 4_000, layer
    assert abs(float(jnp.std(params[layer]['kernel'])) - 0.01) < 5e-4, layer
  for layer in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7'):
    np.testing.assert_array_equal(params[layer]['bias'], 1.0)
  for layer in ('conv1', 'conv3'):
    np.testing.assert_array_equal(params[layer]['bias'], 0.0)
  small = models.alexnet(10, width=0.125, bias_init='small').init(jax.random.key(0), (64, 64, 3))
  np.testing.assert_array_equal(small['towers']['fc6']['bias'], np.float32(0.1))


def test_towers_are_initialized_independently():
  params = models.alexnet(10, width=0.125).init(jax.random.key(0), (64, 64, 3))['towers']
  kernel = params['conv1']['kernel']
  assert not np.allclose(kernel[0], kernel[1])


def test_dropout_masks_are_per_example_and_independent_of_batch_split():
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(8))
  x = jnp.ones((8, 1000))
  whole = layers.dropout(x, 0.5, keys, layer=6)
  halves = jnp.concatenate([layers.dropout(x[:4], 0.5, keys[:4], layer=6),
                            layers.dropout(x[4:], 0.5, keys[4:], layer=6)])
  np.testing.assert_array_equal(whole, halves)
  assert set(np.unique(np.asarray(whole))) == {0.0, 2.0}
  assert 0.45 < float(jnp.mean(whole == 0)) < 0.55
  assert not np.array_equal(whole[0], whole[1])
  assert not np.array_equal(whole, layers.dropout(x, 0.5, keys, layer=7))
  np.testing.assert_array_equal(layers.dropout(x, 0.5, None, layer=6), x)


def test_convnet_padding_gives_55_on_224_and_none_on_227():
  assert layers.convnet_padding(224, 11, 4) == (0, 3)
  assert layers.convnet_padding(227, 11, 4) == (0, 0)


# ---- Rectangular inputs (DIGITS' W x H datasets with crop "none") -------------------------------------

def _floor_pool(n):   # 3/2 max pooling, no padding, rounding down (torchvision)
  return (n - 3) // 2 + 1


def _ceil_pool(n):    # 3/2 max pooling, no padding, rounding up (cuda-convnet, Caffe)
  return -(-(n - 3) // 2) + 1


CONV1 = {'alexnet': lambda n: 1 + -(-(n - 11) // 4),    # cuda-convnet: the last window runs past the edge
         'alexnet_owt': lambda n: (n + 2 * 2 - 11) // 4 + 1}   # torchvision: padding 2
POOL = {'alexnet': _ceil_pool, 'alexnet_owt': _floor_pool}


@pytest.mark.parametrize('hw', [(200, 300), (256, 256), (67, 120)], ids=lambda hw: f'{hw[1]}x{hw[0]}')
@pytest.mark.parametrize('name', ['alexnet', 'alexnet_owt'])
def test_fc6_fan_in_follows_each_axis_of_the_input(name, hw):
  """conv1's padding and the three pools act on each axis on its own; fc6 takes what they leave
  (H' x W' x all of conv5's maps), as Caffe's InnerProduct infers its fan-in from its input."""
  network = models.REGISTRY[name](10, width=0.25)
  towers = abstract_params(network, (*hw, 3))['towers']
  conv5 = towers['conv5']['kernel'].shape   # [tower, 3, 3, in, out]
  maps = conv5[0] * conv5[-1]               # fc6 sees both towers' conv5 maps
  pool = POOL[name]
  rows, cols = (pool(pool(pool(CONV1[name](n)))) for n in hw)
  assert rows > 0 and cols > 0
  assert towers['fc6']['kernel'].shape[1] == rows * cols * maps
  if hw[0] != hw[1]:   # a rectangle is not its transpose: the axes are not mixed up
    transposed = abstract_params(network, (hw[1], hw[0], 3))['towers']['fc6']['kernel'].shape[1]
    assert transposed == towers['fc6']['kernel'].shape[1]   # (same count, swapped factors)
  logits = jax.eval_shape(lambda p, x: forward.run_local_towers(network, p, x, None, train=False),
                          abstract_params(network, (*hw, 3)), jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32))
  assert logits.shape == (2, 10)


@pytest.mark.parametrize('hw', [(200, 300), (224, 224), (227, 227), (256, 256)],
                         ids=lambda hw: f'{hw[1]}x{hw[0]}')
def test_fc6_fan_in_is_caffes(hw):
  """The full two-tower network's fc6 fan-in is what Caffe's AlexNet (conv1 rounding down with pad 0,
  pools rounding up) gives on the same input: 6 x 9 x 256 at 300x200 with no crop (DIGITS' lab), where
  rounding the pools down would give 5 x 8; and the standard 6 x 6 and 7 x 7 at 224/227 and 256."""
  caffe_rows, caffe_cols = (_ceil_pool(_ceil_pool(_ceil_pool((n - 11) // 4 + 1))) for n in hw)
  towers = abstract_params(models.alexnet(1000), (*hw, 3))['towers']
  assert towers['fc6']['kernel'].shape == (2, caffe_rows * caffe_cols * 256, 2048)
  assert {(200, 300): (6, 9), (256, 256): (7, 7)}.get(hw, (6, 6)) == (caffe_rows, caffe_cols)


def test_lenet_and_googlenet_take_rectangles():
  """LeNet: ip1's fan-in follows both axes (two VALID 5x5 convs and 2/2 pools); GoogLeNet: the global
  average pool makes the classifier's fan-in independent of the input's shape."""
  lenet = models.lenet(10)
  for h, w in ((28, 28), (28, 40)):
    ip1 = abstract_params(lenet, (h, w, 1))['towers']['ip1']['kernel'].shape
    assert ip1[1] == ((h - 4) // 2 - 4) // 2 * (((w - 4) // 2 - 4) // 2) * 50
  googlenet = models.googlenet(10, width=0.125)
  square = abstract_params(googlenet, (224, 224, 3))
  wide = abstract_params(googlenet, (200, 300, 3))
  assert (jax.tree.map(lambda a: a.shape, wide['towers']['loss3_classifier'])
          == jax.tree.map(lambda a: a.shape, square['towers']['loss3_classifier']))


def test_registry_builds_by_name_and_rejects_unknown_names():
  config = ml_collections.ConfigDict(dict(name='alexnet_owt', width=0.5, dropout=0.5, lrn='paper',
                                          bias_init='paper', dtype='bfloat16'))
  network = models.build(config, 7)
  assert network.name == 'alexnet_owt' and network.num_classes == 7
  config.name = 'vgg16'
  with pytest.raises(ValueError, match='model.name'):
    models.build(config, 7)


def test_model_code_never_mentions_devices():
  import inspect
  for module in (models.alexnet, models.alexnet_owt):
    source = inspect.getsource(inspect.getmodule(module))
    code = source.split('"""', 2)[2]  # after the module docstring
    for word in ('shard_map', 'Mesh', 'jax.devices', 'PartitionSpec', 'device_put'):
      assert word not in code, (module, word)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  network = models.alexnet(10, width=0.125, dtype=jnp.bfloat16)
  params = network.init(jax.random.key(0), (64, 64, 3))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
  from alexnet_jax.parallel.forward import run_local_towers
  logits = run_local_towers(network, params, jnp.ones((2, 64, 64, 3)), None, train=False)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
