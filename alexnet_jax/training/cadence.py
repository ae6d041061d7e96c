"""When the training loop logs, validates and snapshots, and the train metrics between two log lines.

``Cadence`` is the one place that decides what happens after a step (big_vision's habit: intervals in
epochs, converted to steps once; the last step always counts). ``TrainWindow`` sums the train metrics
since the last log line and is saved in every snapshot, so a resumed run logs the same means as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class Cadence:
  """The one place that decides what happens after a step (intervals in epochs; the last step counts)."""
  steps_per_epoch: int
  total_steps: int
  log_every: int
  val_every: int
  snapshot_every: int

  @classmethod
  def from_config(cls, config, steps_per_epoch: int) -> 'Cadence':
    def in_steps(epochs: float) -> int:
      return max(1, int(round(epochs * steps_per_epoch)))
    return cls(steps_per_epoch, steps_per_epoch * config.num_epochs, max(1, config.log_every_steps),
               in_steps(config.val_interval), in_steps(config.snapshot_interval))

  def _due(self, step: int, every: int) -> bool:
    return step % every == 0 or step == self.total_steps

  def log(self, step: int) -> bool:
    return self._due(step, self.log_every) or self.validate(step)

  def validate(self, step: int) -> bool:
    return self._due(step, self.val_every)

  def snapshot(self, step: int) -> bool:
    return self._due(step, self.snapshot_every)

  def epoch(self, step: int) -> float:
    return step / self.steps_per_epoch


class TrainWindow:
  """Sums of the train metrics since the last log line; saved in snapshots so a resumed run logs the
  same means as an uninterrupted one."""

  def __init__(self, state: dict | None = None):
    state = state or {}
    self.sums = {k: float(v) for k, v in state.get('sums', {}).items()}
    self.count = int(state.get('count', 0))
    self.replaced = int(state.get('replaced', 0))
    self.started = time.monotonic()
    self.timed_steps = 0

  def add(self, values: dict[str, float], replaced: int) -> None:
    for k, v in values.items():  # loss, top1, top5, grad_norm (and aux heads' top-k)
      self.sums[k] = self.sums.get(k, 0.0) + v
    self.count += 1
    self.timed_steps += 1
    self.replaced += replaced

  def means(self) -> dict[str, float]:
    return {k: v / max(self.count, 1) for k, v in self.sums.items()}

  def images_per_sec(self, batch_size: int) -> float:
    return self.timed_steps * batch_size / max(time.monotonic() - self.started, 1e-9)

  def state_dict(self) -> dict:
    return {'sums': dict(self.sums), 'count': self.count, 'replaced': self.replaced}
