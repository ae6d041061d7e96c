"""Every layout computes the same numbers on other shapes: a one-tower network, a rectangular input.

test_layouts.py's companion (a file of its own, so that two test processes share the layouts' compiles;
``--dist loadfile`` keeps a file on one), on the same narrow networks (width 1/8), batch and sizes.
"""

import numpy as np
import pytest

from alexnet_jax import models
from alexnet_jax.parallel import compare
from tests import test_layouts
from tests.test_layouts import BATCH, SIZE

pytestmark = pytest.mark.usefixtures('compilation_cache')


@pytest.fixture(scope='module')
def owt_runs():
  network = models.alexnet_owt(8, width=0.125)
  return {name: compare.run_layout(network, name, batch=BATCH, image_size=SIZE)
          for name in ('single', 'data', 'weird_trick', 'auto')}


@pytest.mark.parametrize('name', ['data', 'weird_trick', 'auto'])
def test_one_tower_network_layouts_match_single(owt_runs, name):
  single, run = owt_runs['single'], owt_runs[name]
  np.testing.assert_allclose(run.logits, single.logits, atol=1e-5, rtol=1e-5)
  assert compare.max_rel_diff(run.grads, single.grads) < 1e-5


def test_weird_trick_reduces_conv_gradients_and_never_fc_weights(owt_runs):
  test_layouts.assert_weird_trick_census(owt_runs['weird_trick'])


# ---- A rectangular input (DIGITS' W x H dataset, crop "none") -------------------------------------------

RECT = (67, 99)   # (height, width): a narrow 99 x 67 image


@pytest.fixture(scope='module')
def rect_runs():
  """The two-tower network in the layouts that split its towers (model, and hybrid, which also splits
  the batch: what the data layout does to a rectangle is hybrid's data axis)."""
  network = models.alexnet(10, width=0.125)
  return {name: compare.run_layout(network, name, batch=BATCH, image_size=RECT)
          for name in ('single', 'model', 'hybrid')}


@pytest.mark.parametrize('name', ['model', 'hybrid'])
def test_a_rectangle_gives_the_same_logits_in_every_layout(rect_runs, name):
  ref, run = rect_runs['single'], rect_runs[name]
  np.testing.assert_allclose(run.logits, ref.logits, atol=1e-5, rtol=1e-5)
  assert abs(run.loss - ref.loss) < 1e-5
  assert compare.max_rel_diff(run.grads, ref.grads) < 1e-5


def test_the_census_of_a_rectangle_counts_its_maps(rect_runs):
  """The two towers exchange the rectangle's maps: H' x W' per map at conv3 and fc6, each axis sized on
  its own (cuda-convnet's conv1 rounding, then 3/2 pools), per example and tower."""
  run = rect_runs['model']
  towers = run.grads['towers']
  conv1 = [1 + -(-(n - 11) // 4) for n in RECT]
  pool = lambda n: (n - 3) // 2 + 1   # pylint: disable=unnecessary-lambda-assignment
  at_conv3 = [pool(pool(n)) for n in conv1]
  at_fc6 = [pool(n) for n in at_conv3]
  per_tower = {'conv3': at_conv3[0] * at_conv3[1] * towers['conv2']['kernel'].shape[-1],
               'fc6': at_fc6[0] * at_fc6[1] * towers['conv5']['kernel'].shape[-1]}
  assert at_conv3[0] != at_conv3[1] and at_fc6[0] != at_fc6[1]   # a real rectangle all the way
  forward = {c.layer: c.bytes for c in run.collectives if c.pass_ == 'forward' and c.op == 'all-gather'}
  assert forward['conv3'] == BATCH * per_tower['conv3'] * 4
  assert forward['fc6'] == BATCH * per_tower['fc6'] * 4
  assert towers['fc6']['kernel'].shape[1] == 2 * per_tower['fc6']   # fc6 sees both towers

