"""How a process learns it is part of a multi-process run (distributed.py): flags, launchers, --distributed.

Detection is checked on fake environments (no mpirun, no SLURM); two real two-process runs check the
start-ups that used to fall back to independent single processes: an Open MPI-like environment that
``jax.distributed.initialize()`` reads by itself, and ``JAX_COORDINATOR_ADDRESS`` with a count and rank.
"""

import json
import os
import subprocess
import sys

import pytest
from absl import flags

from alexnet_jax.runtime import launcher as launch
from alexnet_jax.runtime import distributed
from tests.test_train import REPO

OMPI = {'OMPI_MCA_orte_hnp_uri': '1531576320.0;tcp://10.96.0.1,10.148.0.1:34911',
        'OMPI_COMM_WORLD_SIZE': '2', 'OMPI_COMM_WORLD_RANK': '1', 'OMPI_COMM_WORLD_LOCAL_RANK': '1'}
SLURM = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_NODELIST': 'node[001-002]', 'SLURM_NTASKS': '2',
         'SLURM_PROCID': '1', 'SLURM_LOCALID': '0'}
LAUNCH = {'ALEXNET_COORDINATOR_ADDRESS': 'localhost:1234', 'ALEXNET_NUM_PROCESSES': '2',
          'ALEXNET_PROCESS_ID': '1'}


@pytest.fixture
def env(monkeypatch):
  """A bare environment (no launcher variables at all); returns a setter for fake ones."""
  for name in distributed.ENV_VARS:
    monkeypatch.delenv(name, raising=False)

  def set_env(**variables):
    for name, value in variables.items():
      monkeypatch.setenv(name, value)
  return set_env


def plan(mode='auto', **options):
  return distributed.resolve(distributed.DistributedOptions.from_env(**options), mode)


def test_nothing_set_is_one_process(env):
  assert plan() == distributed.Plan(False, 'none')
  assert distributed.detect_cluster() is None


def test_the_launchers_environment(env):
  env(**LAUNCH)
  p = plan()
  assert (p.distributed, p.source, p.num_processes, p.process_id) == (True, 'options', 2, 1)
  assert dict(p.init_kwargs) == dict(coordinator_address='localhost:1234', num_processes=2,
                                     process_id=1)


def test_flags_win_over_the_environment(env):
  env(**LAUNCH)
  p = plan(coordinator_address='host0:99', process_id=0)
  assert p.init_kwargs['coordinator_address'] == 'host0:99' and p.process_id == 0


def test_mpirun_is_one_run_that_jax_starts_by_itself(env):
  env(**OMPI)
  p = plan()
  assert (p.distributed, p.source, p.num_processes, p.process_id) == (True, 'ompi', 2, 1)
  assert dict(p.init_kwargs) == {}  # jax.distributed.initialize() reads the rest


def test_srun_is_one_run(env):
  env(**SLURM)
  p = plan()
  assert (p.distributed, p.source, p.num_processes, p.process_id) == (True, 'slurm', 2, 1)
  assert dict(p.init_kwargs) == {}


def test_detection_agrees_with_jax(env, monkeypatch):
  """The environments called clusters here are the ones jax's own detection accepts."""
  from jax._src import clusters
  env(**OMPI)
  assert clusters.OmpiCluster.is_env_present()
  assert (clusters.OmpiCluster.get_process_count(), clusters.OmpiCluster.get_process_id()) == (2, 1)
  assert clusters.OmpiCluster.get_coordinator_address(None, None).startswith('10.96.0.1:')
  for name in OMPI:
    monkeypatch.delenv(name)
  env(**SLURM)
  assert not clusters.OmpiCluster.is_env_present() and clusters.SlurmCluster.is_env_present()
  assert clusters.SlurmCluster.get_coordinator_address(None, '5555') == 'node001:5555'
  monkeypatch.delenv('SLURM_STEP_NODELIST')
  assert not clusters.SlurmCluster.is_env_present()
  assert distributed.detect_cluster() is None


def test_one_task_stays_one_process(env):
  env(**dict(SLURM, SLURM_NTASKS='1', SLURM_PROCID='0'))
  assert not plan().distributed
  assert plan('on').distributed  # on: jax.distributed even for one process


def test_sbatch_without_srun_is_not_a_cluster(env):
  """SLURM_NTASKS alone (a batch script, no job step) is what jax does not take for a cluster."""
  env(SLURM_JOB_ID='4242', SLURM_NTASKS='4')
  assert not plan().distributed


def test_open_mpi_5_needs_an_address(env):
  """Open MPI 5's mpirun sets no OMPI_MCA_orte_hnp_uri, so jax does not detect it."""
  env(OMPI_COMM_WORLD_SIZE='2', OMPI_COMM_WORLD_RANK='0')
  with pytest.raises(ValueError, match='JAX_COORDINATOR_ADDRESS'):
    plan()
  env(JAX_COORDINATOR_ADDRESS='node001:5555')
  p = plan()
  assert (p.source, p.num_processes, p.process_id) == ('ompi5', 2, 0)
  assert dict(p.init_kwargs) == dict(coordinator_address='node001:5555', num_processes=2,
                                     process_id=0)


def test_mpich_with_an_address(env):
  env(PMI_SIZE='4', PMI_RANK='3', JAX_COORDINATOR_ADDRESS='node001:5555')
  p = plan()
  assert (p.source, p.num_processes, p.process_id) == ('pmi', 4, 3)


def test_jax_coordinator_address_alone_is_an_error(env):
  env(JAX_COORDINATOR_ADDRESS='localhost:1234')
  with pytest.raises(ValueError, match='JAX_COORDINATOR_ADDRESS is set, but not how many'):
    plan()


def test_jax_coordinator_address_with_count_and_rank(env):
  env(JAX_COORDINATOR_ADDRESS='localhost:1234', ALEXNET_NUM_PROCESSES='2', ALEXNET_PROCESS_ID='0')
  p = plan()
  assert p.source == 'options' and p.init_kwargs['coordinator_address'] == 'localhost:1234'


def test_a_count_without_a_rank_is_an_error(env):
  with pytest.raises(ValueError, match='--process_id'):
    plan(coordinator_address='localhost:1234', num_processes=2)
  with pytest.raises(ValueError, match='--coordinator_address'):
    plan(num_processes=2, process_id=0)


def test_off_is_one_process_even_under_mpirun(env):
  env(**OMPI)
  assert plan('off') == distributed.Plan(False, 'none')
  env(**LAUNCH)
  assert not plan('off').distributed


def test_on_requires_a_set_up(env):
  with pytest.raises(ValueError, match='--distributed=on'):
    plan('on')
  env(**OMPI)
  assert plan('on').distributed


def test_an_unknown_mode_names_the_choices(env):
  with pytest.raises(ValueError, match='auto, on, off'):
    plan('yes')


def test_define_flags_and_initialize_from_flags(env):
  env(**OMPI)  # under mpirun, but --distributed=off: nothing starts, this process keeps its devices
  values = flags.FlagValues()
  distributed.define_flags(values)
  values(['prog', '--distributed=off', '--devices_per_process=2'])
  assert values.distributed == 'off' and values.coordinator_address is None
  assert values.num_processes is None and values.process_id is None
  assert distributed.initialize_from_flags(4, values) == 4
  with pytest.raises(flags.IllegalFlagValueError):
    values(['prog', '--distributed=maybe'])


def test_importing_it_does_not_import_jax():
  """The commands define these flags before parsing them; --help must not wait for jax."""
  out = subprocess.run([sys.executable, '-c', 'import sys; import alexnet_jax.runtime.distributed; '
                        'print("jax" in sys.modules)'], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == 'False'


# ---- Real two-process start-ups ---------------------------------------------------------------------

SCRIPT = ('import json, jax\n'
          'from alexnet_jax.runtime import distributed\n'
          'count = distributed.initialize(2)\n'
          'print(json.dumps([jax.process_count(), jax.process_index(), count]), flush=True)\n')


def run_two(per_process_env):
  """Runs SCRIPT as two processes with the given environments; returns what each printed."""
  base = {k: v for k, v in os.environ.items()
          if k not in distributed.ENV_VARS and k != 'XLA_FLAGS'}
  base.update(JAX_PLATFORMS='cpu', ALEXNET_HEARTBEAT_TIMEOUT_SECONDS='20')
  procs = [subprocess.Popen([sys.executable, '-c', SCRIPT], cwd=REPO, env=dict(base, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for extra in per_process_env]
  outputs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=120)
      assert p.returncode == 0, err[-3000:]
      outputs.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outputs


def test_a_fake_mpirun_environment_starts_one_run_of_two_processes():
  """What ``mpirun -np 2`` (Open MPI 4) sets; the port through JAX_COORDINATOR_PORT, which JAX reads."""
  port = str(launch.free_port())
  common = {'OMPI_MCA_orte_hnp_uri': '1531576320.0;tcp://127.0.0.1:1', 'OMPI_COMM_WORLD_SIZE': '2',
            'JAX_COORDINATOR_PORT': port}
  outputs = run_two([dict(common, OMPI_COMM_WORLD_RANK=str(i), OMPI_COMM_WORLD_LOCAL_RANK=str(i))
                     for i in range(2)])
  assert outputs == [[2, 0, 2], [2, 1, 2]]


def test_jax_coordinator_address_with_a_count_and_a_rank_starts_one_run():
  """jax 0.10.2 reads JAX_COORDINATOR_ADDRESS but no count or rank variables (no JAX_NUM_PROCESSES or
  JAX_PROCESS_ID in its source): those come from ALEXNET_NUM_PROCESSES / ALEXNET_PROCESS_ID."""
  address = f'localhost:{launch.free_port()}'
  outputs = run_two([{'JAX_COORDINATOR_ADDRESS': address, 'ALEXNET_NUM_PROCESSES': '2',
                      'ALEXNET_PROCESS_ID': str(i)} for i in range(2)])
  assert outputs == [[2, 0, 2], [2, 1, 2]]
