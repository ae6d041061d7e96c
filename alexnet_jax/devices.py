"""Device set-up for entry points: forced CPU host devices when no accelerator is present.

Every layout runs on a laptop: with only a CPU, JAX can split it into N "host devices"
(``jax_num_cpu_devices``). That must happen before JAX initializes its backends, so entry points call
``ensure_devices(n)`` first thing. On a machine with GPUs the setting only affects the CPU backend, which
is not the default one, so it is harmless there.
"""

from __future__ import annotations

import os
import re

import jax


def _forced_by_xla_flags() -> int:
  m = re.search(r'--xla_force_host_platform_device_count=(\d+)', os.environ.get('XLA_FLAGS', ''))
  return int(m[1]) if m else 0


def force_cpu_devices(n: int) -> None:
  """Asks for ``n`` CPU host devices (unless XLA_FLAGS already forces at least as many).

  Must run before JAX starts its backends; a later call is ignored (``ensure_devices`` checks).
  """
  try:
    if max(jax.config.jax_num_cpu_devices or 0, _forced_by_xla_flags()) < n:
      jax.config.update('jax_num_cpu_devices', n)
  except RuntimeError:
    pass  # backends already initialized


def ensure_devices(n: int) -> int:
  """Makes at least ``n`` devices available if still possible; returns the device count.

  Raises ``RuntimeError`` naming the fix when the backends are already up with fewer devices.
  """
  force_cpu_devices(n)
  count = jax.device_count()
  if count < n:
    raise RuntimeError(
        f'{n} devices are needed but JAX already started with {count}; set '
        f'XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting Python, or call '
        f'alexnet_jax.devices.ensure_devices({n}) before any other JAX call')
  return count
