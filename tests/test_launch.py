"""The local launcher (launch.py): who failed first and how, the exit status, forwarded signals."""

import signal
import subprocess
import sys
import time

from alexnet_jax.runtime import launcher as launch
from alexnet_jax.runtime import cli
from tests.test_train import REPO


class Sink:
  def __init__(self):
    self.lines = []

  def write(self, text):
    self.lines.append(text)

  def flush(self):
    pass

  @property
  def text(self):
    return ''.join(self.lines)


def run(script, **kwargs):
  out = Sink()
  started = time.time()
  status = launch.launch([sys.executable, '-c', script], 2, 1, out=out, **kwargs)
  return status, out.text, time.time() - started


def test_describe_exit():
  assert launch.describe_exit(3) == ('exited with status 3', 3)
  assert launch.describe_exit(-9) == ('was killed by SIGKILL', 137)
  assert launch.describe_exit(-15) == ('was killed by SIGTERM', 143)


def test_a_process_that_exits_3_is_named_and_its_status_returned():
  script = ('import os, sys, time\n'
            'if os.environ["ALEXNET_PROCESS_ID"] == "1": sys.exit(3)\n'
            'time.sleep(120)\n')
  status, text, took = run(script, grace_seconds=5)
  assert status == 3
  assert '[launch] process 1 exited with status 3; stopping the others' in text, text
  assert '[launch] process 0 was killed by SIGTERM' in text, text
  assert took < 30


def test_a_process_killed_by_sigkill_is_named_and_gives_137():
  script = ('import os, signal, time\n'
            'if os.environ["ALEXNET_PROCESS_ID"] == "1": os.kill(os.getpid(), signal.SIGKILL)\n'
            'time.sleep(120)\n')
  status, text, took = run(script, grace_seconds=5)
  assert status == 128 + signal.SIGKILL
  assert '[launch] process 1 was killed by SIGKILL; stopping the others' in text, text
  assert took < 30


def test_the_first_failure_counts_not_a_survivor_that_fails_right_after(tmp_path):
  """As when a trainer is killed and the survivor's collective fails at once: the status and the
  message are the killed process's, not process 0's. Process 0 fails as soon as process 1 is dead and
  reaped by the launcher (its /proc entry gone), not after a guessed delay: on a busy host process 1
  could be held up between announcing its death and dying for longer than any such delay."""
  marker = tmp_path / 'dying'
  script = ('import os, signal, sys, time\n'
            f'marker = {str(marker)!r}\n'
            'if os.environ["ALEXNET_PROCESS_ID"] == "1":\n'
            '  open(marker + ".tmp", "w").write(str(os.getpid())); os.rename(marker + ".tmp", marker)\n'
            '  os.kill(os.getpid(), signal.SIGKILL)\n'
            'while not os.path.exists(marker): time.sleep(0.001)\n'
            'dead = "/proc/" + open(marker).read()\n'
            'while os.path.exists(dead): time.sleep(0.001)\n'
            'print("connection reset by peer", flush=True); sys.exit(1)\n')
  status, text, _ = run(script, grace_seconds=5)
  assert status == 137, text
  launcher_lines = [line for line in text.splitlines() if line.startswith('[launch]')]
  assert launcher_lines[0] == '[launch] process 1 was killed by SIGKILL; stopping the others', text
  assert launcher_lines[1].startswith('[launch] process 0 '), text  # exited 1, or by our SIGTERM


def test_stopped_on_a_signal_is_no_failure():
  """Status 75 (stopped after a snapshot) from one process leaves the other to finish its own."""
  assert launch.STOPPED_EXIT_STATUS == cli.STOPPED_EXIT_STATUS
  script = ('import os, sys, time\n'
            'if os.environ["ALEXNET_PROCESS_ID"] == "0": sys.exit(75)\n'
            'time.sleep(1.5); print("snapshot finished", flush=True); sys.exit(75)\n')
  status, text, _ = run(script, grace_seconds=5)
  assert status == 75
  assert '[p1] snapshot finished' in text and '[launch]' not in text, text


def test_sigterm_to_the_launcher_reaches_every_process(tmp_path):
  script = ('import os, signal, sys, time\n'
            f'out = {str(tmp_path)!r}\n'
            'me = os.environ["ALEXNET_PROCESS_ID"]\n'
            'def stop(signum, frame):\n'
            '  open(os.path.join(out, "got" + me), "w").write(signal.Signals(signum).name)\n'
            '  sys.exit(0)\n'
            'signal.signal(signal.SIGTERM, stop)\n'
            'open(os.path.join(out, "ready" + me), "w").close()\n'
            'time.sleep(120)\n')
  proc = subprocess.Popen([sys.executable, '-m', 'alexnet_jax.launch', '--num_processes=2', '--',
                           sys.executable, '-c', script], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 60
    while not all((tmp_path / f'ready{i}').exists() for i in range(2)):
      assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, output
  assert [(tmp_path / f'got{i}').read_text() for i in range(2)] == ['SIGTERM'] * 2
  assert '[launch] SIGTERM received: forwarding it to the processes' in output
