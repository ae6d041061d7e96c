"""The XLA CPU levers of the benchmarks (``benchmarks.common.XLA_LEVERS``) and the flag guard: an option
reaches XLA only when this jaxlib knows its name and its enum value, so no start-up and no compile fails on
an option another jaxlib renamed or lacks. Fast: tiny programs, no timing."""

import os

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax.runtime import devices
from benchmarks import common

LEVER_SETS = ['tuned+' + lever for lever in common.XLA_LEVERS] + ['tuned+' + '+'.join(common.XLA_LEVERS)]


@pytest.mark.parametrize('name', LEVER_SETS)
def test_every_lever_set_compiles_with_what_this_jaxlib_knows(name):
  options = common.xla_options(name, 'cpu')
  requested = common.xla_options_requested(name)
  assert set(options) | set(common.xla_options_dropped(name)) == set(requested)
  for key, value in requested.items():
    assert (key in options) == devices.xla_knows_option(key, value)
  # What is passed is accepted: a compile with an unknown option or enum value would raise.
  compiled = jax.jit(lambda x: jnp.sum(jnp.sin(x) ** 2, axis=0)).lower(
      jnp.ones((8, 16))).compile(compiler_options=options)
  assert compiled(jnp.ones((8, 16))).shape == (16,)


def test_a_lever_whose_flag_this_jaxlib_lacks_is_left_out(monkeypatch):
  known = devices.xla_knows_flag
  monkeypatch.setattr(devices, 'xla_knows_flag',
                      lambda name: 'scheduler_type' not in name and known(name))
  options = common.xla_options('tuned+sched_memory', 'cpu')
  assert 'xla_cpu_scheduler_type' not in options
  assert options == common.xla_options('tuned', 'cpu')
  assert common.xla_options_dropped('tuned+sched_memory') == ['xla_cpu_scheduler_type']
  # A process whose jaxlib knows no flag at all compiles every set with no options, rather than failing.
  monkeypatch.setattr(devices, 'xla_knows_flag', lambda name: False)
  # JAX's own build options remain: JAX's config, not the library, says whether it knows them.
  assert common.xla_options('tuned+' + '+'.join(common.XLA_LEVERS), 'cpu') == common.XLA_LEVERS['effort_o3']


def test_an_unknown_enum_value_counts_as_an_unknown_flag(monkeypatch):
  monkeypatch.setitem(common.XLA_LEVERS, 'sched_renamed',
                      {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_RENAMED_IN_SOME_OTHER_JAXLIB'})
  assert 'xla_cpu_scheduler_type' not in common.xla_options('tuned+sched_renamed', 'cpu')
  assert not devices.xla_knows_option('--xla_cpu_experimental_ynn_fusion_type='
                                      'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_NO_SUCH')
  # Lower-case signed edits (the command-line form) are checked by the flag's name only.
  assert devices.xla_knows_option('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution') == \
      devices.xla_knows_flag('xla_cpu_experimental_ynn_fusion_type')


def test_build_options_are_known_by_jax_config(monkeypatch):
  assert devices.xla_knows_option('optimization_level', 39) == hasattr(jax.config, 'jax_optimization_level')
  monkeypatch.setitem(devices.BUILD_OPTIONS, 'optimization_level', 'jax_setting_this_jax_lacks')
  kept, dropped = devices.known_options({'optimization_level': 39})
  assert kept == {} and dropped == ['optimization_level']


def test_startup_flags_skip_an_unknown_enum_value(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setattr(devices, 'CPU_XLA_FLAGS', devices.CPU_XLA_FLAGS + (
      '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_RENAMED_IN_SOME_OTHER_JAXLIB',))
  devices.add_cpu_xla_flags()
  assert 'xla_cpu_scheduler_type' not in os.environ['XLA_FLAGS']


def test_lever_names_are_checked_and_other_platforms_get_none():
  with pytest.raises(ValueError, match='lever'):
    common.xla_options('tuned+no_such_lever', 'cpu')
  with pytest.raises(ValueError, match='--xla'):
    common.xla_options('no_such_set+sched_memory', 'cpu')
  assert common.xla_options('tuned+sched_memory+ynn_no_reduce', 'gpu') == {}
  assert common.xla_options_dropped('tuned+sched_memory', 'gpu') == []
  combined = common.xla_options_requested('tuned+sched_memory+ynn_no_reduce')
  assert combined['xla_cpu_experimental_ynn_fusion_type'] == 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'
  assert combined['xla_cpu_scheduler_type'] == 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'
