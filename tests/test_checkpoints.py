"""Checkpointer: exact round trips, keep N + best, missing steps, and a crash in the middle of a save."""

import os
import subprocess
import sys
import textwrap

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.run import checkpoints
from alexnet_jax import configs
from alexnet_jax.training import optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dataset():
  return grain.MapDataset.range(60).seed(3).shuffle().map(lambda x: int(x) * 10).to_iter_dataset()


def _state():
  rng = np.random.default_rng(0)
  params = {'conv1': {'kernel': jnp.asarray(rng.standard_normal((2, 3, 3, 3, 4)), jnp.float32),
                      'bias': jnp.asarray(rng.standard_normal((2, 4)), jnp.float32)},
            'head': {'bias': jnp.zeros((5,), jnp.float32)}}
  c = configs.default_config()
  tx = optim.make_optimizer(c, None)
  opt_state = tx.init(params)
  opt_state = optim.set_learning_rate(opt_state, 0.001)
  return {'params': params, 'opt_state': opt_state, 'step': jnp.int32(17),
          'rng': jax.random.fold_in(jax.random.key(0), 5),
          'rng_rbg': jax.random.key(1, impl='rbg'),
          'half': jnp.asarray(rng.standard_normal((3, 2)), jnp.bfloat16)}


def _assert_trees_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      assert jax.random.key_impl(x) == jax.random.key_impl(y)
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact_with_typed_keys_optax_state_and_grain_position(tmp_path):
  state = _state()
  reference = list(_dataset())
  it = iter(_dataset())
  consumed = [next(it) for _ in range(7)]
  assert consumed == reference[:7]
  meta = {'epoch': 1.5, 'plateau': {'best': 0.5, 'bad_validations': 0, 'drops': 1}, 'note': 'x'}
  with checkpoints.Checkpointer(tmp_path, keep=3) as ck:
    assert ck.save(17, state, data_iterator=it, meta=meta, metrics={'top1': np.float32(0.25)})
    # The loop keeps consuming while the async save runs: the saved position must be the one at save().
    for _ in range(5):
      next(it)
    ck.wait()
    assert ck.save(17, state) is False  # the same step again is a no-op

  ck = checkpoints.Checkpointer(tmp_path, keep=3)
  assert ck.all_steps() == [17] and ck.latest_step() == 17 and ck.best_step() == 17
  assert ck.metrics(17) == {'top1': 0.25}
  abstract = jax.eval_shape(_state)
  it2 = iter(_dataset())
  restored, meta2 = ck.restore(17, abstract, data_iterator=it2)
  _assert_trees_identical(restored, state)
  assert float(optim.get_learning_rate(restored['opt_state'])) == pytest.approx(0.001)
  assert meta2 == meta
  assert [next(it2) for _ in range(10)] == reference[7:17]
  # Without an abstract tree: the saved structure, values identical too.
  restored_raw, _ = ck.restore(None)
  for x, y in zip(jax.tree.leaves(restored_raw['params']), jax.tree.leaves(state['params'])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert ck.item_metadata(17)['params']['conv1']['kernel'].shape == (2, 3, 3, 3, 4)
  ck.close()


def test_arrays_may_be_freed_as_soon_as_save_returns(tmp_path):
  # The train step donates its state: the async save must already hold its own copy.
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4 * 1024 * 1024,)), jnp.float32)
  expected = np.asarray(x)
  with checkpoints.Checkpointer(tmp_path) as ck:
    ck.save(1, {'x': x})
    x.delete()
    ck.wait()
    restored, _ = ck.restore(1)
  np.testing.assert_array_equal(np.asarray(restored['x']), expected)


def test_restore_onto_target_sharding(tmp_path):
  state = {'w': jnp.arange(8.0).reshape(2, 4)}
  with checkpoints.Checkpointer(tmp_path) as ck:
    ck.save(1, state)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('model',))
  target = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('model'))
  abstract = {'w': jax.ShapeDtypeStruct((2, 4), jnp.float32, sharding=target)}
  with checkpoints.Checkpointer(tmp_path) as ck:
    restored, meta = ck.restore(1, abstract)
  assert restored['w'].sharding == target and meta == {}
  np.testing.assert_array_equal(restored['w'], state['w'])


def test_keeps_latest_n_plus_best_and_survives_restart(tmp_path):
  top1 = {1: 0.1, 2: 0.9, 3: None, 4: 0.3, 5: 0.5, 6: 0.4}
  with checkpoints.Checkpointer(tmp_path, keep=2) as ck:
    assert ck.best_step() is None and ck.latest_step() is None
    for step, acc in top1.items():
      ck.save(step, {'w': jnp.full((3,), float(step))}, meta={'step': step},
              metrics=None if acc is None else {'top1': acc, 'loss': 1.0 - acc})
      ck.wait()
    assert ck.all_steps() == [2, 5, 6]
    assert ck.best_step() == 2
  with checkpoints.Checkpointer(tmp_path, keep=2) as ck:
    assert ck.all_steps() == [2, 5, 6] and ck.best_step() == 2 and ck.latest_step() == 6
    state, meta = ck.restore(ck.best_step(), {'w': jax.ShapeDtypeStruct((3,), jnp.float32)})
    assert meta == {'step': 2} and np.all(np.asarray(state['w']) == 2.0)
    # A missing step: the error lists what is there.
    with pytest.raises(FileNotFoundError, match=r'step 4 .*available steps: 2, 5, 6'):
      ck.restore(4)
    with pytest.raises(ValueError, match='without a data iterator'):
      ck.restore(6, data_iterator=iter(_dataset()))
  # best by loss (mode 'min') over the same directory.
  with checkpoints.Checkpointer(tmp_path, keep=2, best_metric='loss', best_mode='min') as ck:
    assert ck.best_step() == 2


def test_empty_directory_restore_raises(tmp_path):
  with checkpoints.Checkpointer(tmp_path) as ck:
    with pytest.raises(FileNotFoundError, match='no finished checkpoint'):
      ck.restore()


_CRASH = textwrap.dedent('''
    import os, sys
    import numpy as np, jax.numpy as jnp
    from alexnet_jax.run.checkpoints import Checkpointer
    ck = Checkpointer(sys.argv[1], keep=3)
    big = np.random.default_rng(0).standard_normal((8 * 1024 * 1024,)).astype(np.float32)  # 32 MB
    ck.save(1, {'w': jnp.full((4,), 1.0), 'big': jnp.asarray(big)}, meta={'step': 1})
    ck.wait()
    ck.save(2, {'w': jnp.full((4,), 2.0), 'big': jnp.asarray(big + 1)}, meta={'step': 2})
    os._exit(3)  # killed while the async save of step 2 is being written
''')


def test_crash_mid_save_never_restores_the_partial_step(tmp_path):
  script = tmp_path / 'crash.py'
  script.write_text(_CRASH)
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, str(script), str(tmp_path / 'run')], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 3, proc.stderr[-3000:]
  left = sorted(os.listdir(tmp_path / 'run' / 'checkpoints'))
  assert '1' in left and '2' not in left
  assert any(name.startswith('2.orbax-checkpoint-tmp') for name in left), left  # a real partial save

  abstract = {'w': jax.ShapeDtypeStruct((4,), jnp.float32),
              'big': jax.ShapeDtypeStruct((8 * 1024 * 1024,), jnp.float32)}
  with checkpoints.Checkpointer(tmp_path / 'run', keep=3) as ck:
    assert ck.all_steps() == [1] and ck.latest_step() == 1
    state, meta = ck.restore(None, abstract)
    assert meta == {'step': 1} and np.all(np.asarray(state['w']) == 1.0)
    with pytest.raises(FileNotFoundError, match='available steps: 1'):
      ck.restore(2, abstract)
    # The resumed run saves step 2 again over the leftover.
    assert ck.save(2, {'w': jnp.full((4,), 2.0), 'big': jnp.zeros((8 * 1024 * 1024,))},
                   meta={'step': 2})
    ck.wait()
    assert ck.all_steps() == [1, 2]
    _, meta = ck.restore(None, abstract)
    assert meta == {'step': 2}
