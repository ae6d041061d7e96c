"""Keeps freed host memory in the process, so that a training step does not page-fault its buffers in anew.

With glibc's default malloc settings, every buffer larger than 32 MiB -- and every large buffer a worker
thread allocates, whatever its size limit -- is a fresh ``mmap`` that ``free`` hands straight back to the
kernel. XLA's CPU runtime allocates such buffers on every step (convolution workspaces, the fc kernels'
gradients, the temporaries of a 61M-parameter update), so each step touches them for the first time
again: on the 2-core CPU of benchmarks/RESULTS.md that was 100,000 page faults (400 MB zeroed by the
kernel) and 0.16 s of system time per ``alexnet_owt`` step, and 230,000 per two-tower ``alexnet`` step.

``retain_freed_memory()`` sets three ``mallopt`` parameters: one malloc arena for all threads (large
allocations of worker threads otherwise always go to ``mmap``), no ``mmap`` for allocations, and a 2 GiB
trim threshold, so freed memory stays in the heap for the next step. The page faults go to zero and the
train step gets 17% (alexnet_owt) to 34% (alexnet) faster there. The price: the process keeps its peak
heap for its lifetime instead of shrinking after a spike -- what a training or inference process wants.

It changes nothing but speed and resident memory. It is a no-op where the C library is not glibc, and
it must run before the XLA backend starts its threads (entry points call it first thing, through
``cli.run``); later, threads that already hold their own arena keep it. ``--noretain_host_memory``
leaves glibc's defaults (``ALEXNET_JAX_SYSTEM_MALLOC=1`` does the same for processes without flags).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))

_applied = False


def is_retaining() -> bool:
  """Whether ``retain_freed_memory`` took effect in this process."""
  return _applied


def retain_freed_memory() -> bool:
  """Applies ``SETTINGS`` once per process; True when glibc accepted all of them."""
  global _applied
  if _applied:
    return True
  if os.environ.get('ALEXNET_JAX_SYSTEM_MALLOC') == '1' or not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  (only glibc has it)
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS)
  return _applied
