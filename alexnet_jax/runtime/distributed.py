"""Multi-host start-up on JAX's own multi-controller runtime (``jax.distributed``).

One Python process per host (or per group of devices); every process runs the same program. This module
decides, before any JAX computation, whether the run is distributed and how its processes find each
other, in this order (``resolve``):

1. explicit options: the command's ``--coordinator_address``, ``--num_processes`` and ``--process_id``
   flags, completed from the environment set by ``python -m alexnet_jax.launch``
   (``ALEXNET_COORDINATOR_ADDRESS``, ``ALEXNET_NUM_PROCESSES``, ``ALEXNET_PROCESS_ID``,
   ``ALEXNET_DEVICES_PER_PROCESS``); the address may also come from ``JAX_COORDINATOR_ADDRESS``,
   the variable ``jax.distributed.initialize`` itself reads;
2. else a launcher JAX detects by itself, with the same tests as the installed jax's
   ``jax._src.clusters``: Open MPI's ``mpirun`` (``OMPI_MCA_orte_hnp_uri``, ``OMPI_COMM_WORLD_SIZE``
   and ``_RANK``) and SLURM's ``srun`` (``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``,
   ``SLURM_PROCID``, ``SLURM_LOCALID``): then ``jax.distributed.initialize()`` gets no addresses and
   reads them itself (``JAX_COORDINATOR_ADDRESS`` or ``JAX_COORDINATOR_PORT`` still apply);
3. else an MPI launcher JAX 0.10 does not detect (Open MPI 5, whose ``mpirun`` no longer sets
   ``OMPI_MCA_orte_hnp_uri``; MPICH and Intel MPI, ``PMI_SIZE``/``PMI_RANK``): the process count and
   rank come from its variables, the address from ``JAX_COORDINATOR_ADDRESS`` (or mpi4py when
   installed); without either, an error, rather than N independent runs on one workdir;
4. else a single process. ``JAX_COORDINATOR_ADDRESS`` alone (no count, no rank) is an error.

``--distributed=on`` requires one of 1-3 (an error otherwise); ``--distributed=off`` runs a single
process whatever the environment says (each process that ``mpirun`` starts then trains on its own).

On CPU each process first gives itself its share of forced host devices. The heartbeat timeout bounds
how long survivors wait when a process dies: the coordination service then stops every process with an
error instead of letting collectives hang.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import sys
from typing import Any, Mapping

from absl import flags, logging

from alexnet_jax.runtime import process

# jax (and devices.py, which imports it) load only when ``initialize`` runs: the commands define these
# flags before parsing them, and ``--help`` should not wait for jax to import.

ENV_PREFIX = 'ALEXNET_'
MODES = ('auto', 'on', 'off')

# What each launcher sets (the names jax._src.clusters tests in jax 0.10.2).
OMPI_URI = 'OMPI_MCA_orte_hnp_uri'                 # Open MPI < 5 mpirun / mpiexec
OMPI_SIZE, OMPI_RANK = 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK'
SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')
PMI_SIZE, PMI_RANK = 'PMI_SIZE', 'PMI_RANK'        # MPICH / Intel MPI (hydra)
JAX_ADDRESS = 'JAX_COORDINATOR_ADDRESS'

# Every variable ``resolve`` reads (tests clear them to start from a bare environment).
ENV_VARS = (ENV_PREFIX + 'COORDINATOR_ADDRESS', ENV_PREFIX + 'NUM_PROCESSES',
            ENV_PREFIX + 'PROCESS_ID', ENV_PREFIX + 'DEVICES_PER_PROCESS',
            ENV_PREFIX + 'HEARTBEAT_TIMEOUT_SECONDS', JAX_ADDRESS, 'JAX_COORDINATOR_PORT', OMPI_URI,
            OMPI_SIZE, OMPI_RANK, 'OMPI_COMM_WORLD_LOCAL_RANK', *SLURM_VARS, PMI_SIZE, PMI_RANK)


@dataclasses.dataclass(frozen=True)
class DistributedOptions:
  """What the command line and the launcher's environment say; None means unset."""
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


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process starts: ``resolve``'s answer, before anything starts.

  Attributes:
    distributed: whether ``jax.distributed.initialize`` is called.
    source: where the set-up came from: ``'options'`` (flags / launch environment), ``'ompi'``,
      ``'slurm'``, ``'ompi5'``, ``'pmi'``, or ``'none'`` (a single process).
    num_processes: processes in the run.
    process_id: this process's index, where known before start-up (None: JAX reads it itself).
    init_kwargs: the address, count and rank arguments for ``jax.distributed.initialize`` (empty when
      JAX detects the cluster itself).
  """
  distributed: bool
  source: str
  num_processes: int = 1
  process_id: int | None = 0
  init_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
  raw = environ.get(name)
  if raw in (None, ''):
    return None
  try:
    return int(raw)
  except ValueError:
    raise ValueError(f'{name}={raw!r} is not an integer') from None


def detect_cluster(environ: Mapping[str, str] | None = None) -> tuple[str, int, int] | None:
  """The launcher that started this process, if any: ``(name, num_processes, process_id)``.

  ``'ompi'`` and ``'slurm'`` are detected exactly as jax 0.10.2's ``OmpiCluster`` and
  ``SlurmCluster`` detect them (first Open MPI, then SLURM, as JAX does), so ``initialize`` can leave
  the rest to ``jax.distributed.initialize()``. ``'ompi5'`` (Open MPI 5's ``mpirun``, which JAX does
  not detect) and ``'pmi'`` (MPICH, Intel MPI) follow. The cheap environment tests only: JAX's
  cloud TPU and Kubernetes detections query network services and are not tried.
  """
  environ = os.environ if environ is None else environ
  if OMPI_URI in environ:
    return 'ompi', _int_env(environ, OMPI_SIZE) or 1, _int_env(environ, OMPI_RANK) or 0
  if all(name in environ for name in SLURM_VARS):
    return 'slurm', _int_env(environ, 'SLURM_NTASKS') or 1, _int_env(environ, 'SLURM_PROCID') or 0
  if OMPI_SIZE in environ:
    return 'ompi5', _int_env(environ, OMPI_SIZE) or 1, _int_env(environ, OMPI_RANK) or 0
  if PMI_SIZE in environ:
    return 'pmi', _int_env(environ, PMI_SIZE) or 1, _int_env(environ, PMI_RANK) or 0
  return None


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f'--distributed={mode}: use one of {", ".join(MODES)}')


def resolve(options: DistributedOptions | None = None, mode: str = 'auto',
            environ: Mapping[str, str] | None = None) -> Plan:
  """Decides how this process starts (see the module docstring); starts nothing.

  Args:
    options: flags and launcher environment (default: ``DistributedOptions.from_env()``).
    mode: ``'auto'``, ``'on'`` (must be distributed) or ``'off'`` (a single process, always).
    environ: the environment to read (default: ``os.environ``).

  Returns:
    The ``Plan``.

  Raises:
    ValueError: the set-up is incomplete (e.g. an address but no process count), or ``mode='on'``
      found nothing to start from; the message names the missing piece.
  """
  _check_mode(mode)
  environ = os.environ if environ is None else environ
  options = options or DistributedOptions.from_env()
  cluster = detect_cluster(environ)
  if mode == 'off':
    if cluster and cluster[1] > 1:
      logging.warning('--distributed=off: this is process %d of %d started by %s; it trains on its '
                      'own (give each process its own --workdir)', cluster[2], cluster[1],
                      cluster[0])
    return Plan(False, 'none')

  address = options.coordinator_address or environ.get(JAX_ADDRESS) or None
  num, pid = options.num_processes, options.process_id
  if num is not None and (num > 1 or mode == 'on'):
    missing = [what for what, value in (('--coordinator_address (or ALEXNET_COORDINATOR_ADDRESS or '
                                         'JAX_COORDINATOR_ADDRESS)', address),
                                        ('--process_id (or ALEXNET_PROCESS_ID)', pid))
               if value is None]
    if missing:
      raise ValueError(f'--num_processes={num} also needs {" and ".join(missing)}')
    return Plan(True, 'options', num, pid,
                dict(coordinator_address=address, num_processes=num, process_id=pid))
  if num is None and cluster and (cluster[1] > 1 or mode == 'on'):
    name, count, rank = cluster
    kwargs = {} if options.coordinator_address is None else dict(
        coordinator_address=options.coordinator_address)
    if name in ('ompi', 'slurm'):  # JAX reads the rest itself
      return Plan(True, name, count, rank, kwargs)
    kwargs.update(num_processes=count, process_id=rank)
    if address is not None:
      kwargs['coordinator_address'] = address
    elif importlib.util.find_spec('mpi4py') is not None:
      kwargs['cluster_detection_method'] = 'mpi4py'  # rank 0 broadcasts its host name
    else:
      raise ValueError(
          f'this is process {rank} of {count} started by an MPI launcher that JAX does not read '
          f'({name}): set JAX_COORDINATOR_ADDRESS=<first host>:<free port> for every process (or '
          f'install mpi4py), or pass --distributed=off to run each process on its own')
    return Plan(True, name, count, rank, kwargs)
  if address is not None and num is None:
    source = '--coordinator_address' if options.coordinator_address else JAX_ADDRESS
    raise ValueError(f'{source} is set, but not how many processes there are nor which one this '
                     f'is: also pass --num_processes and --process_id (or set ALEXNET_NUM_PROCESSES '
                     f'and ALEXNET_PROCESS_ID), or unset it for a single process')
  if mode == 'on':
    raise ValueError('--distributed=on, but nothing says how the processes meet: start them with '
                     'python -m alexnet_jax.launch, mpirun or srun, or pass --coordinator_address, '
                     '--num_processes and --process_id')
  return Plan(False, 'none')


def initialize(total_devices: int, options: DistributedOptions | None = None, *,
               mode: str = 'auto') -> int:
  """Starts ``jax.distributed`` when the run is multi-process; returns the global device count.

  Args:
    total_devices: what the layout's mesh needs over all processes; on CPU each process forces its
      share (``devices_per_process``, or ``ceil(total / num_processes)``) before the backends start.
    options: flags and launcher environment (default: ``DistributedOptions.from_env()``).
    mode: ``'auto'``, ``'on'`` or ``'off'`` (the ``--distributed`` flag; see ``resolve``).

  Returns:
    The number of devices over all processes.

  Raises:
    ValueError: an incomplete set-up (see ``resolve``), or fewer devices than the layout needs.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import devices as devices_lib  # pylint: disable=g-import-not-at-top
  options = options or DistributedOptions.from_env()
  plan = resolve(options, mode)
  if not plan.distributed:
    return devices_lib.ensure_devices(total_devices)
  local = options.devices_per_process or math.ceil(total_devices / plan.num_processes)
  devices_lib.force_cpu_devices(local)
  logging.info('jax.distributed: process %s of %d (%s); waiting for the others to connect',
               plan.process_id, plan.num_processes, plan.source)
  try:
    jax.distributed.initialize(heartbeat_timeout_seconds=options.heartbeat_timeout_seconds,
                               shutdown_timeout_seconds=options.heartbeat_timeout_seconds,
                               **plan.init_kwargs)
  except (ValueError, TypeError, KeyError) as e:   # a launcher environment JAX cannot read
    raise ValueError(
        f'this process looks like process {plan.process_id} of {plan.num_processes} under '
        f'{plan.source}, but jax.distributed cannot start from that environment ({e}); start it '
        f'with the launcher itself, pass --coordinator_address/--num_processes/--process_id, or '
        f'--distributed=off for a single process') from None
  count = jax.device_count()
  if count < total_devices:
    raise ValueError(f'the layout needs {total_devices} devices but the {jax.process_count()} '
                     f'processes have {count} in all; start more processes or set '
                     f'--devices_per_process')
  return count


# ---- Command line ---------------------------------------------------------------------------------

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines ``--distributed`` and the four multi-host flags, for the commands that train.

  Unset flags mean: from the launcher's environment, else from a detected cluster, else one process.
  """
  flags.DEFINE_enum('distributed', 'auto', MODES,
                    'auto: multi-process when a launcher (alexnet_jax.launch, mpirun, srun) or the '
                    'flags below say so; on: must be multi-process (an error otherwise); off: a '
                    'single process even under mpirun or srun.', flag_values=flag_values)
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (jax.distributed).',
                      flag_values=flag_values)
  flags.DEFINE_integer('num_processes', None, 'Processes in the run.', flag_values=flag_values)
  flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes-1.',
                       flag_values=flag_values)
  flags.DEFINE_integer('devices_per_process', None, 'CPU host devices to force in each process.',
                       flag_values=flag_values)


def initialize_from_flags(total_devices: int, flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """``initialize`` with the flags of ``define_flags`` (parsed); returns the global device count."""
  options = DistributedOptions.from_env(
      coordinator_address=flag_values.coordinator_address, num_processes=flag_values.num_processes,
      process_id=flag_values.process_id, devices_per_process=flag_values.devices_per_process)
  return initialize(total_devices, options, mode=flag_values.distributed)


def relaunch_argv(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
  """The command line that restarts this run, for its ``status.json``: ``argv`` itself, or, in a
  process started by ``python -m alexnet_jax.launch``, the launcher's command around it (so that the
  resume command ``runs`` prints starts all the processes again, not one)."""
  argv = list(sys.argv if argv is None else argv)
  env = os.environ if environ is None else environ
  count = _int_env(env, ENV_PREFIX + 'NUM_PROCESSES')
  if not count or count <= 1:
    return argv
  launcher = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'launch.py'),
              f'--num_processes={count}']
  per_process = _int_env(env, ENV_PREFIX + 'DEVICES_PER_PROCESS')
  if per_process:
    launcher.append(f'--devices_per_process={per_process}')
  return launcher + ['--'] + process.command_argv(argv)
