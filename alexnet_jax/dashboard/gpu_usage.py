"""DIGITS' **GPU Usage** panel: per GPU its name, memory used / total, utilization and temperature.

DIGITS showed it on a model's page while the job ran (``digits/device_query.py`` read NVML through
ctypes). Here NVML is read through ``nvidia-ml-py`` (``import pynvml``, in the ``cuda`` extra) when it is
installed and a driver answers; otherwise the panel is omitted and the page shows the job process's CPU
and resident memory only (``app._hardware``), as on a CPU host. JAX's own device memory statistics are
not an option: they live in the training process, and the web process never imports JAX (DASHBOARD.md);
the trainer does not write them to its status file.

NVML indices follow the PCI bus order, as the jobs' ``gpu<N>`` device slots (``jobs.detect_devices``,
from ``/proc/driver/nvidia/gpus``) do, so a job that holds ``gpu1`` is shown GPU 1.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Optional

_lock = threading.Lock()
_nvml: Any = None          # the initialized pynvml module; False once it proved unavailable


def _load() -> Any:
  """pynvml, initialized once; None when it is not installed or no NVIDIA driver answers."""
  global _nvml
  with _lock:
    if _nvml is None:
      try:
        import pynvml  # pylint: disable=g-import-not-at-top  (optional: the cuda extra)
        pynvml.nvmlInit()
        _nvml = pynvml
      except Exception:  # pylint: disable=broad-except  (ImportError, NVMLError_LibraryNotFound, ...)
        _nvml = False
    return _nvml or None


def reset() -> None:
  """Forget the NVML state (tests swap in a fake ``pynvml``; a driver installed later is found)."""
  global _nvml
  with _lock:
    _nvml = None


def job_gpu_indices(devices: Iterable[str]) -> Optional[set[int]]:
  """The NVML indices of a job's device slots (``gpu0``, ``gpu2``); None (every GPU) when it names none."""
  out = {int(d[3:]) for d in devices or () if isinstance(d, str) and d.startswith('gpu') and d[3:].isdigit()}
  return out or None


def read(indices: Optional[set[int]] = None) -> list[dict[str, Any]]:
  """``[{index, name, memory_used, memory_total, utilization, memory_utilization, temperature}]``.

  Bytes for memory, percent for utilization (NVML's sampled "GPU busy" and memory-controller busy over
  the last sample period), degrees Celsius. An empty list without NVML; a GPU whose query fails is left out.
  """
  nvml = _load()
  if nvml is None:
    return []
  try:
    count = nvml.nvmlDeviceGetCount()
  except nvml.NVMLError:
    return []
  out = []
  for i in range(count):
    if indices is not None and i not in indices:
      continue
    try:
      handle = nvml.nvmlDeviceGetHandleByIndex(i)
      name = nvml.nvmlDeviceGetName(handle)
      memory = nvml.nvmlDeviceGetMemoryInfo(handle)
      rates = nvml.nvmlDeviceGetUtilizationRates(handle)
      # nvidia-ml-py 13 marks this call deprecated for nvmlDeviceGetTemperatureV, which older drivers
      # lack; this one answers on every driver of the CUDA 12 and 13 wheels.
      temperature = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
    except nvml.NVMLError:
      continue
    out.append({'index': i, 'name': name.decode('utf-8', 'replace') if isinstance(name, bytes) else str(name),
                'memory_used': int(memory.used), 'memory_total': int(memory.total),
                'utilization': int(rates.gpu), 'memory_utilization': int(rates.memory),
                'temperature': int(temperature)})
  return out
