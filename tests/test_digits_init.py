"""DIGITS' standard AlexNet starts without the collapse that the paper's start shows under DIGITS' solver.

Issue 20: the full-width network with the paper's initialization (biases 1 in conv2/4/5, fc6/7) and
SGD at 0.01 went from loss 1.4 to 36 in its first epoch and stayed at chance. The cause is measured by
``benchmarks/init_scales.py``: with biases of 1, fc7's 4096 outputs are all ~1 and alike, so fc8's first
update moves every logit by ~lr * 4096 * (p - y) -- a third of fc8's weight norm in one step. DIGITS'
alexnet.prototxt start (fc6/fc7 weights 0.005, biases 0.1, Caffe's LRN) keeps that step ~20x smaller.

The test runs the first SGD steps of the full-width two-tower network at DIGITS' defaults (lr 0.01,
momentum 0.9) on 64x64 generated images, a size CI can afford: fc7 is still 4096 wide, which is what
the collapse needs. It fails for the paper's start (shown by the second case).
"""

import math

import jax
import numpy as np

from alexnet_jax import configs
from alexnet_jax import models
from benchmarks import init_scales

NUM_CLASSES = 3


def _model(weight_init, bias_init, lrn):
  c = configs.default_config().model
  c.name, c.width = 'alexnet', 1.0
  c.weight_init, c.bias_init, c.lrn = weight_init, bias_init, lrn
  return c


def _start_is_sound(records) -> list[str]:
  """What goes wrong in the first steps (empty: nothing)."""
  chance = math.log(NUM_CLASSES)
  wrong = []
  losses = [r['loss'] for r in records]
  if not all(math.isfinite(v) for v in losses):
    wrong.append(f'non-finite loss {losses}')
  elif max(losses) > chance + 0.1:
    wrong.append(f'loss rose above chance (ln {NUM_CLASSES} = {chance:.3f}): {losses}')
  for r in records:
    if r['logit_std'] > 1.0:
      wrong.append(f"step {r['step']}: logits spread to std {r['logit_std']:.3g}")
    for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7'):
      alive = r['layers'][name]['alive']
      if alive < 0.2:
        wrong.append(f"step {r['step']}: {name} has {alive:.0%} of its ReLUs alive")
  return wrong


def test_digits_start_survives_the_first_sgd_steps():
  records = init_scales.first_steps(_model('digits', 'digits', 'caffe'), num_classes=NUM_CLASSES,
                                    size=64, batch=8, steps=3)
  assert _start_is_sound(records) == []
  # fc8's first step is a small fraction of its weights (the paper's start: ~0.3, see below).
  assert records[0]['layers']['fc8']['update_ratio'] < 0.05


def test_paper_start_collapses_under_the_same_steps():
  """The check above fails for the paper's start: the test can tell the two apart."""
  records = init_scales.first_steps(_model('paper', 'paper', 'paper'), num_classes=NUM_CLASSES,
                                    size=64, batch=8, steps=3)
  wrong = _start_is_sound(records)
  assert any('loss rose' in w for w in wrong), wrong
  assert records[0]['layers']['fc8']['update_ratio'] > 0.1


def test_digits_fillers_follow_alexnet_prototxt():
  """The parameters at init have the prototxt's spreads and constants, layer by layer."""
  net = models.build(_model('digits', 'digits', 'caffe'), NUM_CLASSES)
  params = net.init(jax.random.key(0), (64, 64, 3))['towers']
  want_std = {'conv1': 0.01, 'conv2': 0.01, 'conv3': 0.01, 'conv4': 0.01, 'conv5': 0.01,
              'fc6': 0.005, 'fc7': 0.005, 'fc8': 0.01}
  want_bias = {'conv1': 0.0, 'conv2': 0.1, 'conv3': 0.0, 'conv4': 0.1, 'conv5': 0.1, 'fc6': 0.1, 'fc7': 0.1}
  for name, std in want_std.items():
    np.testing.assert_allclose(np.std(np.asarray(params[name]['kernel'])), std, rtol=0.1, err_msg=name)
  for name, value in want_bias.items():
    np.testing.assert_array_equal(np.asarray(params[name]['bias']), np.float32(value), err_msg=name)


def test_a_narrow_digits_copy_keeps_the_full_networks_signal_scale():
  """At width w every layer after conv1 has w times the fan-in, so its spread is DIGITS' / sqrt(w): the
  pre-activations start as large as the full network's (a width-1/16 copy otherwise stays at chance)."""
  model = _model('digits', 'digits', 'caffe')
  model.width = 0.25
  params = models.build(model, NUM_CLASSES).init(jax.random.key(0), (64, 64, 3))['towers']
  want_std = {'conv1': 0.01, 'conv2': 0.02, 'conv5': 0.02, 'fc6': 0.01, 'fc7': 0.01, 'fc8': 0.02}
  for name, std in want_std.items():
    np.testing.assert_allclose(np.std(np.asarray(params[name]['kernel'])), std, rtol=0.1, err_msg=name)


def test_digits_experiments_start_as_digits_and_paper_as_the_paper():
  from experiments import digits_exercise, paper, paper_single
  c = digits_exercise.get_config()
  assert (c.model.weight_init, c.model.bias_init, c.model.lrn) == ('digits', 'digits', 'caffe')
  assert c.batch_size == 128   # alexnet.prototxt's training batch
  for module in (paper, paper_single):
    c = module.get_config()
    assert (c.model.weight_init, c.model.bias_init, c.model.lrn) == ('paper', 'paper', 'paper')


def test_dashboard_network_defaults_batch_is_the_prototxts_training_batch():
  """A blank batch size on New Model means DIGITS' "network defaults": each prototxt's training batch."""
  from alexnet_jax.dashboard import model_form
  dataset = {'state': 'done', 'image_size': [28, 28], 'channels': 1, 'resize_mode': 'squash',
             'output': '/data/ds', 'num_classes': 3}
  for network, batch in (('alexnet', 128), ('googlenet', 32), ('lenet', 64)):
    parsed = model_form.parse_model_form({'model_name': 'm', 'dataset': 'ds1', 'standard_networks': network,
                                     'batch_size': ''}, datasets={'ds1': dataset}, previous={},
                                    experiments=['digits_exercise'])
    assert f'--config.batch_size={batch}' in parsed['points'][0], network
