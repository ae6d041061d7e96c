"""Multi-host start-up on JAX's own multi-controller runtime (``jax.distributed``).

One Python process per host (or per group of devices); every process runs the same program. This module
decides, before any JAX computation, whether the run is distributed and with which coordinator:

1. explicit options (the train command's ``--coordinator_address``, ``--num_processes``,
   ``--process_id`` flags),
2. else the environment set by ``python -m alexnet_jax.launch`` (``ALEXNET_COORDINATOR_ADDRESS``,
   ``ALEXNET_NUM_PROCESSES``, ``ALEXNET_PROCESS_ID``, ``ALEXNET_DEVICES_PER_PROCESS``),
3. else a cluster JAX detects by itself (e.g. SLURM with more than one task: ``srun`` sets
   ``SLURM_NTASKS``; ``jax.distributed.initialize()`` reads the rest),
4. else a single process.

On CPU it first gives each process its share of forced host devices. The heartbeat timeout bounds how
long survivors wait when a process dies: the coordination service then stops every process with an error
instead of letting collectives hang.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax

from alexnet_jax import devices as devices_lib

ENV_PREFIX = 'ALEXNET_'


@dataclasses.dataclass(frozen=True)
class DistributedOptions:
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  devices_per_process: int | None = None
  heartbeat_timeout_seconds: int = 30

  @classmethod
  def from_env(cls, **explicit) -> 'DistributedOptions':
    """Explicit values (None = unset) completed from ``ALEXNET_*`` environment variables."""
    def pick(name, cast):
      value = explicit.get(name)
      if value is None:
        raw = os.environ.get(ENV_PREFIX + name.upper())
        value = cast(raw) if raw not in (None, '') else None
      return value
    timeout = explicit.get('heartbeat_timeout_seconds') or int(
        os.environ.get(ENV_PREFIX + 'HEARTBEAT_TIMEOUT_SECONDS', '30'))
    return cls(coordinator_address=pick('coordinator_address', str),
               num_processes=pick('num_processes', int), process_id=pick('process_id', int),
               devices_per_process=pick('devices_per_process', int),
               heartbeat_timeout_seconds=timeout)

  @property
  def explicit(self) -> bool:
    return self.coordinator_address is not None and (self.num_processes or 1) > 1

  @property
  def cluster(self) -> bool:
    return int(os.environ.get('SLURM_NTASKS', '1')) > 1


def initialize(total_devices: int, options: DistributedOptions | None = None) -> int:
  """Starts ``jax.distributed`` when the run is multi-process; returns the global device count.

  ``total_devices`` is what the layout's mesh needs over all processes; on CPU each process forces its
  share (``devices_per_process``, or ``ceil(total / num_processes)``) before the backends start.
  """
  options = options or DistributedOptions.from_env()
  if not (options.explicit or options.cluster):
    return devices_lib.ensure_devices(total_devices)
  if options.explicit and options.process_id is None:
    raise ValueError('--process_id (or ALEXNET_PROCESS_ID) is required with --coordinator_address')
  num = options.num_processes or int(os.environ.get('SLURM_NTASKS', '1'))
  local = options.devices_per_process or math.ceil(total_devices / num)
  devices_lib.force_cpu_devices(local)
  kwargs = dict(heartbeat_timeout_seconds=options.heartbeat_timeout_seconds,
                shutdown_timeout_seconds=options.heartbeat_timeout_seconds)
  if options.explicit:
    kwargs.update(coordinator_address=options.coordinator_address,
                  num_processes=options.num_processes, process_id=options.process_id)
  jax.distributed.initialize(**kwargs)
  count = jax.device_count()
  if count < total_devices:
    raise ValueError(f'the layout needs {total_devices} devices but the {jax.process_count()} '
                     f'processes have {count} in all; start more processes or set '
                     f'--devices_per_process')
  return count
