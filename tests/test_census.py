"""The communication census: what each layout's compiled train step sends, checked against the paper."""

import json
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import models
from alexnet_jax.parallel import census, layouts, step as step_lib

# Floats per image that each tower contributes at each exchange, full width, 224x224 (issue #2).
ANALYTIC_FLOATS = {'conv3': 13 * 13 * 128, 'fc6': 6 * 6 * 128, 'fc7': 2048}


def compiled_census(network, name, batch, image_size):
  """Census of the train step, compiled from abstract inputs (nothing of full size is allocated)."""
  layout = layouts.resolve(name, network, batch_size=batch)
  mesh = layout.make_mesh()
  tx = optax.sgd(0.01, momentum=0.9)
  state = step_lib.abstract_train_state(network, layout, mesh, tx,
                                        image_shape=(image_size, image_size, 3))
  sharding = layout.batch_sharding(mesh)
  batch_spec = {'image': jax.ShapeDtypeStruct((batch, image_size, image_size, 3), np.float32,
                                              sharding=sharding),
                'label': jax.ShapeDtypeStruct((batch,), np.int32, sharding=sharding)}
  train_step = step_lib.make_train_step(network, layout, mesh, tx)
  with jax.set_mesh(mesh):
    compiled = train_step.jitted.lower(state, batch_spec).compile()
  return census.census(compiled.as_text(), mesh), state


@pytest.fixture(scope='module')
def full_model_census():
  return compiled_census(models.alexnet(1000), 'model', batch=2, image_size=224)[0]


def test_model_layout_talks_only_at_the_papers_layers(full_model_census):
  forward = [c for c in full_model_census if c.pass_ == 'forward']
  backward = [c for c in full_model_census if c.pass_ == 'backward']
  update = [c for c in full_model_census if c.pass_ == 'update']
  assert sorted((c.layer, c.op) for c in forward) == [
      ('conv3', 'all-gather'), ('fc6', 'all-gather'), ('fc7', 'all-gather'), ('fc8', 'all-reduce')]
  # Autodiff turns each all-gather into a reduce-scatter of the activation gradient; the psum's
  # transpose needs no communication.
  assert sorted((c.layer, c.op) for c in backward) == [
      ('conv3', 'reduce-scatter'), ('fc6', 'reduce-scatter'), ('fc7', 'reduce-scatter')]
  # No parameter (or parameter gradient) ever crosses devices; only the step's scalar metrics do.
  assert {c.layer for c in update} <= {'metrics'}
  assert all(c.bytes == 4 for c in update)
  assert {c.axis for c in full_model_census} == {'model'}


def test_model_layout_bytes_equal_the_analytic_activation_sizes(full_model_census):
  batch = 2
  for c in full_model_census:
    if c.layer in ANALYTIC_FLOATS:
      assert c.bytes == batch * ANALYTIC_FLOATS[c.layer] * 4, c
    elif c.layer == 'fc8':
      # cuda-convnet's W_a x_a + W_b x_b: the towers add their partial logits (1000 per image).
      assert c.bytes == batch * 1000 * 4, c


def test_data_layout_all_reduces_every_gradient_once():
  network = models.alexnet(10, width=0.125)
  collectives, state = compiled_census(network, 'data', batch=8, image_size=67)
  update = [c for c in collectives if c.pass_ == 'update' and c.layer != 'metrics']
  param_bytes = sum(a.size * 4 for a in jax.tree.leaves(state.params))
  assert sum(c.bytes for c in update) == param_bytes
  assert {c.axis for c in update} == {'data'}
  assert {c.layer for c in update} == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7',
                                       'fc8'}
  assert [c.layer for c in collectives if c.pass_ == 'forward'] == ['loss']
  assert not [c for c in collectives if c.pass_ == 'backward']


def test_replica_group_formats():
  assert census.parse_replica_groups('replica_groups={{0,1},{2,3}}, x', 4) == [(0, 1), (2, 3)]
  assert census.parse_replica_groups('replica_groups=[2,2]<=[4], x', 4) == [(0, 1), (2, 3)]
  assert census.parse_replica_groups('replica_groups=[2,2]<=[2,2]T(1,0), x', 4) == [(0, 2), (1, 3)]
  assert census.parse_replica_groups(
      "replica_groups=mesh['axis_0'=2,'axis_1'=1,'axis_3'=2], device_ids=([2,2]T(1,0)) "
      "{'axis_0'}, x", 4) == [(0, 1), (2, 3)]
  assert census.parse_replica_groups("replica_groups=mesh['a'=2,'b'=2] {'a'}, x", 4) == [
      (0, 2), (1, 3)]


def test_census_command_writes_its_json(tmp_path):
  """The command end to end: ``single`` (asked for after another layout, as the reference is run first
  anyway) and one layout that communicates. Every layout's own numbers are test_layouts.py's; each more
  layout here would only cost its compilations again."""
  out = tmp_path / 'census.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.census', '--layouts=model,single', '--devices=4',
       '--width=0.125', '--batch=4', '--image_size=67', '--num_classes=10', f'--json={out}'],
      capture_output=True, text=True, timeout=600,
      env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu', 'HOME': str(tmp_path)})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '== model' in proc.stdout and 'all-gather' in proc.stdout
  report = json.loads(out.read_text())
  assert set(report['layouts']) == {'single', 'model'}
  model = report['layouts']['model']
  assert {'collectives', 'param_bytes_per_device', 'param_count', 'max_abs_diff_logits',
          'max_rel_diff_grads'} <= set(model)
  assert model['max_abs_diff_logits'] < 1e-5 and model['max_rel_diff_grads'] < 1e-5
  assert {c['pass'] for c in model['collectives']} == {'forward', 'backward', 'update'}
  assert set(model['collectives'][0]) >= {'op', 'bytes', 'layer', 'axis', 'pass'}
  assert report['layouts']['single']['collectives'] == []
