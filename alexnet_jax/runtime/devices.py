"""Device set-up for entry points: forced CPU host devices when no accelerator is present.

Every layout runs on a laptop: with only a CPU, JAX can split it into N "host devices"
(``jax_num_cpu_devices``). That must happen before JAX initializes its backends, so entry points call
``ensure_devices(n)`` first thing. On a machine with GPUs the setting only affects the CPU backend, which
is not the default one, so it is harmless there.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import mmap
import os
import re

import jax


def _forced_by_xla_flags() -> int:
  m = re.search(r'--xla_force_host_platform_device_count=(\d+)', os.environ.get('XLA_FLAGS', ''))
  return int(m[1]) if m else 0


# XLA CPU options our entry points want (benchmarks/RESULTS.md): convolutions on XLA's own kernels rather
# than YNNPACK, whose convolution gradients are slower on 2 cores; dots and reductions stay on YNNPACK.
# Only read when JAX starts its CPU backend; a flag the user already set in XLA_FLAGS wins. The flag is
# experimental: XLA aborts the process at start-up on a flag it does not know, so each is added only when
# the installed jaxlib is seen to define it (``xla_knows_flag``).
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)


@functools.lru_cache(maxsize=None)
def xla_knows_flag(name: str) -> bool:
  """Whether the installed jaxlib's XLA defines the flag ``name`` (``--xla_...`` or ``xla_...``).

  XLA registers its flags by name in its shared library, so the name appears there verbatim when the
  flag exists; a renamed or removed flag does not. A memory-mapped search of the library (~10 ms when
  cached, once per process). Unknown or unreadable: False, so an unverified flag is never passed.
  """
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  libraries = sorted(glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), '**', '*.so'),
                           recursive=True), key=os.path.getsize, reverse=True)
  needle = name.lstrip('-').split('=')[0].encode()
  for library in libraries[:3]:   # the XLA core is the largest library
    try:
      with open(library, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m.find(needle) != -1:
          return True
    except (OSError, ValueError):
      continue
  return False


# Per-compilation options that JAX puts on XLA's ExecutableBuildOptions, not in DebugOptions, so they
# are not named in jaxlib as XLA flags are: whether JAX knows one is whether its config has the setting.
BUILD_OPTIONS = {'optimization_level': 'jax_optimization_level',
                 'exec_time_optimization_effort': 'jax_exec_time_optimization_effort',
                 'memory_fitting_level': 'jax_memory_fitting_level',
                 'memory_fitting_effort': 'jax_memory_fitting_effort'}
_ENUM_VALUE = re.compile(r'[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+')


def xla_knows_option(name: str, value=None) -> bool:
  """Whether this jaxlib accepts option ``name`` set to ``value`` (``--name=value`` also works).

  An XLA flag: ``xla_knows_flag(name)``, and every enum spelling in the value (``CPU_SCHEDULER_TYPE_...``,
  comma-separated lists too) must be in the library as well -- XLA rejects a renamed enum value just as
  it does a renamed flag. A build option (``BUILD_OPTIONS``): JAX's config defines its setting.
  """
  flag = name.lstrip('-')
  if value is None and '=' in flag:
    flag, value = flag.split('=', 1)
  if flag in BUILD_OPTIONS:
    return hasattr(jax.config, BUILD_OPTIONS[flag])
  if not xla_knows_flag(flag):
    return False
  tokens = [t.strip().lstrip('+-') for t in str(value).split(',')] if isinstance(value, str) else []
  return all(xla_knows_flag(t) for t in tokens if _ENUM_VALUE.fullmatch(t))


def known_options(options: dict) -> tuple[dict, list[str]]:
  """(the options of ``options`` this jaxlib accepts, the names of those it does not): per-compilation
  options for ``compile(compiler_options=...)``, filtered so that an unknown one is dropped, not passed."""
  kept = {k: v for k, v in options.items() if xla_knows_option(k, v)}
  return kept, [k for k in options if k not in kept]


ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                       'jax_rocm7_plugin', 'libtpu')


def accelerator_host() -> bool:
  """True when JAX will run on an accelerator: ``JAX_PLATFORMS`` names one, or a GPU/TPU plugin is
  installed. Its XLA (the CUDA plugin is a build of its own) parses ``XLA_FLAGS`` too, and the CPU
  options buy nothing there, so they are left out. Found without starting a backend."""
  platforms = os.environ.get('JAX_PLATFORMS', '').lower()
  if platforms:
    return any(p.strip() not in ('', 'cpu') for p in platforms.split(','))
  return any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def add_cpu_xla_flags() -> None:
  """Appends ``CPU_XLA_FLAGS`` to ``XLA_FLAGS`` (each unless the user already set that flag, and only
  if this jaxlib knows it), on CPU hosts only."""
  if accelerator_host():
    return
  current = os.environ.get('XLA_FLAGS', '')
  extra = [f for f in CPU_XLA_FLAGS
           if f.split('=')[0] + '=' not in current and xla_knows_option(f)]
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
        f'alexnet_jax.runtime.devices.ensure_devices({n}) before any other JAX call')
  return count
