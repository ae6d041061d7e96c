"""``python -m alexnet_jax.launch``: run one command as several JAX processes on this machine.

    python -m alexnet_jax.launch --num_processes=2 --devices_per_process=2 -- \\
        python -m alexnet_jax.train --config=experiments/demo.py --workdir=runs/demo2x2 \\
            --config.layout=hybrid --config.mesh.data=2

For development and tests of multi-host code without a cluster: it picks a free local port for the
coordinator, starts ``--num_processes`` copies of the command with ``ALEXNET_COORDINATOR_ADDRESS``,
``ALEXNET_NUM_PROCESSES``, ``ALEXNET_PROCESS_ID`` and ``ALEXNET_DEVICES_PER_PROCESS`` set (read by
``alexnet_jax.distributed``), streams their output prefixed ``[p<i>]``, and, if one of them fails, stops
the others and exits with the failing status. CPU collectives between the processes go through gloo.

On a real cluster the launcher is not needed: start one process per host (e.g. ``srun`` under SLURM,
which JAX detects), or pass ``--coordinator_address/--num_processes/--process_id`` to the command.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

FLAGS = flags.FLAGS


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _stream(proc: subprocess.Popen, prefix: str, out) -> None:
  for line in iter(proc.stdout.readline, b''):
    out.write(prefix + line.decode(errors='replace'))
    out.flush()


def launch(command: list[str], num_processes: int, devices_per_process: int, *,
           heartbeat_timeout_seconds: int = 30, grace_seconds: float = 10.0, out=None) -> int:
  """Runs ``command`` as ``num_processes`` processes; returns 0 or the first failing exit status."""
  out = out or sys.stdout
  address = f'localhost:{free_port()}'
  procs = []
  for i in range(num_processes):
    env = dict(os.environ,
               ALEXNET_COORDINATOR_ADDRESS=address, ALEXNET_NUM_PROCESSES=str(num_processes),
               ALEXNET_PROCESS_ID=str(i), ALEXNET_DEVICES_PER_PROCESS=str(devices_per_process),
               ALEXNET_HEARTBEAT_TIMEOUT_SECONDS=str(heartbeat_timeout_seconds),
               JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'), PYTHONUNBUFFERED='1')
    env.pop('XLA_FLAGS', None)  # each process forces its own share of host devices
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    threading.Thread(target=_stream, args=(proc, f'[p{i}] ', out), daemon=True).start()
    procs.append(proc)

  def stop_all(sig=signal.SIGTERM):
    for p in procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, sig)
        except ProcessLookupError:
          pass

  previous = signal.signal(signal.SIGTERM, lambda *_: stop_all())
  status = 0
  try:
    while [p.poll() for p in procs].count(None):  # polls every process (any() would stop early)
      failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
      if failed:
        i, status = failed[0]
        out.write(f'[launch] process {i} exited with status {status}; stopping the others\n')
        stop_all()
        deadline = time.time() + grace_seconds
        while any(p.poll() is None for p in procs) and time.time() < deadline:
          time.sleep(0.1)
        stop_all(signal.SIGKILL)
        break
      time.sleep(0.1)
  except KeyboardInterrupt:
    stop_all(signal.SIGINT)
    status = 130
  finally:
    signal.signal(signal.SIGTERM, previous)
  for p in procs:
    p.wait()
  if status == 0:
    status = next((p.returncode for p in procs if p.returncode), 0)
  time.sleep(0.2)  # let the streaming threads drain
  return status


def main(argv):
  command = argv[1:]
  if not command:
    raise app.UsageError('give the command after --, e.g. -- python -m alexnet_jax.train ...')
  sys.exit(launch(command, FLAGS.num_processes, FLAGS.devices_per_process,
                  heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds))


def run():
  flags.DEFINE_integer('num_processes', 2, 'Processes to start.')
  flags.DEFINE_integer('devices_per_process', 1, 'CPU host devices each process forces.')
  flags.DEFINE_integer('heartbeat_timeout_seconds', 30,
                       'How long survivors wait for a dead process before failing.')
  app.run(main)


if __name__ == '__main__':
  run()
