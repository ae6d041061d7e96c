"""Test set-up: four forced CPU host devices, so every layout runs on a laptop or in CI.

The flag must be set before JAX initializes its backends, hence at import time of this file, which pytest
loads before any test module.
"""

import os

import pytest

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
# The XLA CPU options the entry points use (alexnet_jax/devices.py), so tests run what users run.
from alexnet_jax import devices  # noqa: E402  (imports jax, but starts no backend)
devices.add_cpu_xla_flags()
from alexnet_jax import host_memory  # noqa: E402
host_memory.retain_freed_memory()   # as cli.run does for the entry points
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after the flag, on purpose)

NUM_DEVICES = 4
assert jax.device_count() == NUM_DEVICES, jax.devices()


@pytest.fixture
def children():
  """A list to append child processes to; whatever is still running is killed after the test."""
  procs = []
  yield procs
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()
