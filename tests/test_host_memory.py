"""The malloc settings of host_memory.py, seen from a fresh process: freed buffers are reused."""

import subprocess
import sys
import textwrap

import pytest

# A fresh process mallocs, touches and frees 64 MiB buffers from a worker thread (as XLA's threads do;
# not numpy, which asks for huge pages) and prints the page faults the last 10 rounds cost.
PROBE = textwrap.dedent('''
    import ctypes, resource, sys, threading
    from alexnet_jax.runtime import host_memory
    print(host_memory.retain_freed_memory() if sys.argv[1] == "retain" else False)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def rounds(n):
        for _ in range(n):
            buffer = libc.malloc(64 * 2**20)
            ctypes.memset(buffer, 1, 64 * 2**20)
            libc.free(buffer)
    worker = threading.Thread(target=rounds, args=(3,)); worker.start(); worker.join()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    worker = threading.Thread(target=rounds, args=(10,)); worker.start(); worker.join()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
''')


def _faults(mode: str) -> tuple[str, int]:
  out = subprocess.run([sys.executable, '-c', PROBE, mode], capture_output=True, text=True, check=True,
                       env={'PATH': '/usr/bin:/bin'})
  applied, faults = out.stdout.split()
  return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
  applied, retained = _faults('retain')
  assert applied == 'True'
  _, system = _faults('system')
  pages_per_round = 64 * 2**20 // 4096
  assert system > 5 * pages_per_round          # glibc's default: each round maps and faults anew
  assert retained < pages_per_round // 10      # retained: the heap is reused
