"""``python -m alexnet_jax.launch``: run one command as several JAX processes on this machine.

    python -m alexnet_jax.launch --num_processes=2 --devices_per_process=2 -- \\
        python -m alexnet_jax.train --config=experiments/demo.py --workdir=runs/demo2x2 \\
            --config.layout=hybrid --config.mesh.data=2

For development and tests of multi-host code without a cluster: it picks a free local port for the
coordinator, starts ``--num_processes`` copies of the command with ``ALEXNET_COORDINATOR_ADDRESS``,
``ALEXNET_NUM_PROCESSES``, ``ALEXNET_PROCESS_ID`` and ``ALEXNET_DEVICES_PER_PROCESS`` set (read by
``alexnet_jax.runtime.distributed``) and streams their output prefixed ``[p<i>]``. CPU collectives between
the processes go through gloo.

If one of them fails, the launcher says which one and how (``[launch] process 1 was killed by SIGKILL;
stopping the others``), stops the others and exits with that first failure's status (128 + the signal's
number for a signal, as a shell does). The trainer's status 75, "stopped by a signal after a snapshot",
is no failure. SIGTERM and SIGINT sent to the launcher are forwarded to every process: a scheduler's
preemption of the launcher reaches the trainers, which then stop together (``runtime/stopping.py``).

On a real cluster the launcher is not needed: start one process per host (e.g. ``srun`` under SLURM,
which JAX detects), or pass ``--coordinator_address/--num_processes/--process_id`` to the command.
"""

from __future__ import annotations

from absl import flags

from alexnet_jax.runtime import cli
from alexnet_jax.runtime import launcher

FLAGS = flags.FLAGS


def main(argv):
  command = argv[1:]
  if not command:
    raise ValueError('give the command after --, e.g. -- python -m alexnet_jax.train ...')
  return launcher.launch(command, FLAGS.num_processes, FLAGS.devices_per_process,
                         heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds)


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  flags.DEFINE_integer('num_processes', 2, 'Processes to start.')
  flags.DEFINE_integer('devices_per_process', 1, 'CPU host devices each process forces.')
  flags.DEFINE_integer('heartbeat_timeout_seconds', 30,
                       'How long survivors wait for a dead process before failing.')
  # The launcher runs no XLA: glibc's malloc defaults (its processes choose their own).
  flags.FLAGS.set_default('retain_host_memory', False)


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
