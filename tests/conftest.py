"""Test set-up: four forced CPU host devices, so every layout runs on a laptop or in CI.

The flag must be set before JAX initializes its backends, hence at import time of this file, which pytest
loads before any test module.
"""

import os

import pytest

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
# The XLA CPU options the entry points use (alexnet_jax/runtime/devices.py), so tests run what users run.
from alexnet_jax.runtime import devices  # noqa: E402  (imports jax, but starts no backend)
devices.add_cpu_xla_flags()
from alexnet_jax.runtime import host_memory  # noqa: E402
host_memory.retain_freed_memory()   # as cli.run does for the entry points
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after the flag, on purpose)

NUM_DEVICES = 4
assert jax.device_count() == NUM_DEVICES, jax.devices()


@pytest.fixture(scope='module')
def compilation_cache(tmp_path_factory):
  """Opt-in, per module (``pytestmark = pytest.mark.usefixtures('compilation_cache')``): an XLA program
  compiled once in this process is read back from JAX's persistent compilation cache when it is compiled
  again, instead of going through XLA a second time.

  Tests create the same train state (same network, layout and shapes) many times over, and on a 2-core
  CPU the initializer's dozens of random draws cost XLA 5-25 s to compile each time, more than the train
  step. The cache is keyed by the program, its compile options and XLA flags, so only an identical
  program hits it: whatever a test compiles differently still compiles, and jit's own caches
  (``_cache_size()``, what recompilation checks read) are untouched. The directory is per test process
  (each xdist worker has its own base temp), so no two processes ever write one entry; the previous
  settings come back after the module.
  """
  from jax.experimental.compilation_cache import compilation_cache as cache
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.getbasetemp() / 'xla_cache'))
  cache.reset_cache()   # the cache is set up once per process, at its first compilation: set it up anew
  yield
  jax.config.update('jax_compilation_cache_dir', previous)
  cache.reset_cache()


@pytest.fixture
def children():
  """A list to append child processes to; whatever is still running is killed after the test."""
  procs = []
  yield procs
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()
