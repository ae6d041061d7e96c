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


# XLA CPU options our entry points want (benchmarks/RESULTS.md): convolutions on XLA's own kernels rather
# than YNNPACK, whose convolution gradients are slower on 2 cores; dots and reductions stay on YNNPACK.
# Only read when JAX starts its CPU backend; a flag the user already set in XLA_FLAGS wins.
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)


def add_cpu_xla_flags() -> None:
  """Appends ``CPU_XLA_FLAGS`` to ``XLA_FLAGS`` (each unless the user already set that flag)."""
  current = os.environ.get('XLA_FLAGS', '')
  extra = [f for f in CPU_XLA_FLAGS if f.split('=')[0] + '=' not in current]
  if extra:
    # Never leave XLA_FLAGS blank-but-set: XLA then takes it for a file name and aborts.
    os.environ['XLA_FLAGS'] = ' '.join([current.strip(), *extra]).strip()


def force_cpu_devices(n: int) -> None:
  """Asks for ``n`` CPU host devices (unless XLA_FLAGS already forces at least as many).

  Must run before JAX starts its backends; a later call is ignored (``ensure_devices`` checks).
  Also adds ``CPU_XLA_FLAGS``, which XLA reads at the same moment.
  """
  add_cpu_xla_flags()
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
