"""MetricsWriter: JSON lines + TensorBoard events, truncation on resume, torn lines."""

import glob
import json
import os
import struct

import numpy as np
import jax.numpy as jnp
from tensorboardX.proto import event_pb2

from alexnet_jax.run import metrics_writer
from alexnet_jax.run.metrics_writer import MetricsWriter, read_metrics


def _events(workdir):
  """Every Event in the TensorBoard files (TFRecord framing: u64 length, crc, payload, crc)."""
  out = []
  for path in sorted(glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))):
    data = open(path, 'rb').read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack('<Q', data[pos:pos + 8])
      ev = event_pb2.Event()
      ev.ParseFromString(data[pos + 12:pos + 12 + n])
      out.append((os.path.basename(path), ev))
      pos += 12 + n + 4
  return out


def _scalars(workdir):
  return [(ev.step, v.tag, v.simple_value)
          for _, ev in _events(workdir) for v in ev.summary.value]


def _run(workdir, steps, writer=None):
  w = writer or MetricsWriter(workdir)
  for step in steps:
    w.write('train', step, step / 10, loss=np.float32(1.0 / step), top1=jnp.float32(step / 100),
            lr=0.01, images_per_sec=123.4)
    if step % 20 == 0:
      w.write('val', step, step / 10, loss=0.5, top1=0.25 + step / 1000, top5=0.9)
  return w


def test_records_and_tensorboard_scalars(tmp_path):
  w = _run(tmp_path, [10, 20])
  # Written and flushed before close: readable by another process while training runs.
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 3
  first = json.loads(lines[0])
  assert list(first)[:3] == ['step', 'epoch', 'split']
  assert first == {'step': 10, 'epoch': 1.0, 'split': 'train', 'loss': float(np.float32(0.1)),
                   'top1': float(np.float32(0.1)), 'lr': 0.01, 'images_per_sec': 123.4}
  assert read_metrics(tmp_path, split='val') == [
      {'step': 20, 'epoch': 2.0, 'split': 'val', 'loss': 0.5, 'top1': 0.27, 'top5': 0.9}]
  scalars = _scalars(tmp_path)
  assert (20, 'val/top1', np.float32(0.27)) in scalars
  assert (10, 'train/lr', np.float32(0.01)) in scalars
  assert not any(tag.endswith('/epoch') for _, tag, _ in scalars)
  w.close()


def test_truncate_after_makes_resumed_file_identical(tmp_path):
  full, resumed = tmp_path / 'full', tmp_path / 'resumed'
  _run(full, range(10, 90, 10)).close()
  # Interrupted after writing step 60, last snapshot at step 40; the resumed run redoes 50.. .
  _run(resumed, range(10, 70, 10)).close()
  w = MetricsWriter(resumed)
  assert w.truncate_after(40) == 3  # train 50, train 60 and val 60
  assert max(r['step'] for r in read_metrics(resumed)) == 40
  _run(resumed, range(50, 90, 10), writer=w).close()
  assert (resumed / 'metrics.jsonl').read_bytes() == (full / 'metrics.jsonl').read_bytes()
  # TensorBoard: the new event file starts with a purge marker at step 41.
  files = sorted({name for name, _ in _events(resumed)})
  assert len(files) >= 2
  purge = [ev for name, ev in _events(resumed) if ev.HasField('session_log')]
  assert purge and purge[-1].step == 41 and purge[-1].session_log.status == event_pb2.SessionLog.START


def test_torn_last_line_is_dropped(tmp_path):
  _run(tmp_path, [10, 20]).close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 30, "epoch": 3.0, "spl')  # killed mid-write
  assert len(read_metrics(tmp_path)) == 3  # the reader skips it
  w = MetricsWriter(tmp_path)  # the writer cuts it before appending
  w.write('train', 30, 3.0, loss=0.1)
  w.close()
  records = read_metrics(tmp_path)
  assert [r['step'] for r in records] == [10, 20, 20, 30]
  assert (tmp_path / 'metrics.jsonl').read_text().count('\n') == 4


def test_disabled_writer_writes_nothing(tmp_path):
  w = MetricsWriter(tmp_path / 'x', enabled=False)
  rec = w.write('train', 1, 0.1, loss=1.0)
  assert rec['loss'] == 1.0
  assert w.truncate_after(0) == 0
  w.close()
  assert not os.path.exists(tmp_path / 'x')
  assert read_metrics(tmp_path / 'x') == []


def test_non_scalar_values_stay_in_json_only(tmp_path):
  with MetricsWriter(tmp_path) as w:
    w.write('test', 5, 1.0, top1=0.5, per_class=np.array([0.25, 0.75]), note='best',
            loss=float('nan'))
  (rec,) = read_metrics(tmp_path)
  assert rec['per_class'] == [0.25, 0.75] and rec['note'] == 'best' and np.isnan(rec['loss'])
  tags = {tag for _, tag, _ in _scalars(tmp_path)}
  assert tags == {'test/top1', 'test/loss'}
  assert metrics_writer.METRICS_FILE == 'metrics.jsonl'
