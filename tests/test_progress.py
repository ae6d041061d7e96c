"""Progress: bar on a TTY, periodic log lines otherwise, rate and ETA from a fake clock."""

import io

import numpy as np

from alexnet_jax.runtime.progress import Progress, format_seconds, print_to


class FakeClock:

  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


class FakeTTY(io.StringIO):

  def isatty(self):
    return True


def test_format_seconds():
  assert format_seconds(0) == '00:00'
  assert format_seconds(62) == '01:02'
  assert format_seconds(3723) == '1:02:03'
  assert format_seconds(float('inf')) == '?' and format_seconds(None) == '?'


def test_log_lines_every_n_seconds_with_eta():
  clock, lines = FakeClock(), []
  stream = io.StringIO()  # not a TTY
  with Progress(100, 'train', log_every_secs=10, stream=stream, clock=clock,
                log_fn=lambda fmt, *a: lines.append(fmt % a)) as p:
    assert not p.tty
    for _ in range(50):
      clock.t += 0.5  # 2 steps/s
      p.update(1, loss=np.float32(0.123456), step=np.int32(7), lr=0.01)
  assert stream.getvalue() == ''  # nothing on the stream, only log lines
  # 25 s of updates: lines at 10 s and 20 s, then the closing line.
  assert len(lines) == 3
  assert lines[0] == ('train: 20/100 (20.0%), 2 step/s, elapsed 00:10, ETA 00:40, '
                      'loss=0.1235 step=7 lr=0.01')
  assert lines[-1].startswith('train: 50/100 (50.0%), 2 step/s, elapsed 00:25, ETA 00:25')


def test_lines_printed_to_a_given_stream():
  """Dataset preparation's form: lines (never a bar) on the stream it was given, as the log's text."""
  clock, stream = FakeClock(), FakeTTY()
  with Progress(10, 'prepare train', unit='img', tty=False, log_every_secs=2.0, clock=clock,
                log_fn=print_to(stream)) as p:
    for _ in range(7):
      clock.t += 0.5
      p.update()
  lines = stream.getvalue().splitlines()
  assert lines == ['prepare train: 4/10 (40.0%), 2 img/s, elapsed 00:02, ETA 00:03',
                   'prepare train: 7/10 (70.0%), 2 img/s, elapsed 00:04, ETA 00:02']
  assert p.start == 1000.0 and p.n == 7


def test_log_every_steps_and_resume_initial():
  clock, lines = FakeClock(), []
  with Progress(1000, 'train', initial=600, log_every_secs=None, log_every_steps=100,
                stream=io.StringIO(), clock=clock, log_fn=lambda fmt, *a: lines.append(fmt % a)) as p:
    clock.t += 30  # restoring + compiling before the first step
    p.update(1)
    for _ in range(399):
      clock.t += 0.1
      p.update(1)
  assert [l.split(' (')[0] for l in lines] == ['train: 700/1000', 'train: 800/1000',
                                               'train: 900/1000', 'train: 1000/1000']
  assert ', 10 step/s,' in lines[-1]  # the slow first step has left the rate window
  assert 'ETA 00:00' in lines[-1]


def test_bar_on_tty_redraws_in_place():
  clock, stream = FakeClock(), FakeTTY()
  with Progress(10, 'eval', stream=stream, clock=clock, redraw_secs=0.0) as p:
    assert p.tty
    for i in range(10):
      clock.t += 1.0
      p.update(1, top1=0.5 + i / 100)
  out = stream.getvalue()
  assert out.endswith('\n') and out.count('\n') == 1  # one line, redrawn with \r
  frames = out.rstrip('\n').split('\r')[1:]
  assert len(frames) == 11  # 10 updates + the final draw
  assert frames[4].startswith('eval  50%|') and '5/10 [00:05<00:05, 1 step/s] top1=0.54' in frames[4]
  assert '#' in frames[-1] and ' ' not in frames[-1].split('|')[1].strip('#')  # full bar at the end
  assert '10/10' in frames[-1]


def test_redraw_throttled_and_unknown_total():
  clock, stream = FakeClock(), FakeTTY()
  with Progress(None, 'prepare', unit='img', stream=stream, clock=clock, redraw_secs=1.0) as p:
    for _ in range(100):
      clock.t += 0.05  # 5 s in total: about 5 redraws, not 100
      p.update(1)
  frames = stream.getvalue().rstrip('\n').split('\r')[1:]
  assert 4 <= len(frames) <= 7
  assert frames[-1].startswith('prepare: 100 [00:05, 20 img/s]')


def test_write_keeps_bar_intact():
  clock, stream = FakeClock(), FakeTTY()
  p = Progress(4, 'train', stream=stream, clock=clock, redraw_secs=0.0)
  clock.t += 1
  p.update(1)
  p.write('validation: top1=0.9')
  p.close()
  p.close()  # idempotent
  out = stream.getvalue()
  assert '\rvalidation: top1=0.9\n' in out and out.count('validation') == 1
  assert out.endswith('1/4 [00:01<00:03, 1 step/s]\n')  # the bar is redrawn below the message
