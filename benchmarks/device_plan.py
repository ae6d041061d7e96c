"""What the device check runs: its parts, the sizes and time limits of each, and the files it returns.

``FULL`` is the GPU run (one call of the device tool, at most 8 minutes); ``SMOKE`` the same parts at
tiny sizes on any CPU in about a minute (what ``tests/test_device_check.py`` runs). Nothing here runs
anything: ``benchmarks.device_check`` starts the parts in ``PARTS`` order within these budgets.
"""

from __future__ import annotations

import dataclasses

PARTS = ('wheels', 'model', 'xla_flags', 'train', 'input', 'layouts')
DEFAULT_SCRATCH = '/tmp/device_check'
# What comes back from the device: at most 8 files, 16 MiB each (keep a margin), so only these.
JSON_NAME, MD_NAME = 'device_check.json', 'device_check.md'
TRACE_NAME, DEMO_METRICS_NAME = 'train_step_trace.tar.gz', 'demo_metrics.jsonl'
MAX_RETURN_BYTES = 15 * 2**20


@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes and time limits of every part: ``FULL`` on the device, ``SMOKE`` on a CPU in about a minute.

  ``model_configs`` are (model, dtype, batch, mode) in the order they run, most valuable first: when the
  model part's time runs out, the rest are skipped and reported as such.
  """
  name: str
  model_configs: tuple[tuple[str, str, int, str], ...]
  width: float
  image_size: int
  num_classes: int
  warmup: int            # untimed calls after compiling
  rounds: int            # timed rounds; the step time is the median over rounds
  steps_per_round: int   # back-to-back calls per round, blocked once at its end
  blocked_calls: int     # calls timed one by one, each blocked (the trainer syncs every step)
  profile: tuple[str, str, int] | None   # (model, dtype, batch) of the traced train step
  profile_steps: int
  layouts: dict
  input: dict
  train_args: tuple[str, ...]
  budgets: dict
  total_budget_s: float

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def config_key(model: str, dtype: str, batch: int, mode: str) -> str:
  """The name of one model configuration in the results (``alexnet/bfloat16/b256/train``)."""
  return f'{model}/{dtype}/b{batch}/{mode}'


def _model_order(models, dtype_modes, batches):
  return tuple((m, d, b, mode) for b in batches for mode, d in dtype_modes for m in models)


FULL = Plan(
    name='full',
    # Batch 256 in every mode and dtype first, then 512, then 128: each (batch, mode, dtype) runs both
    # networks back to back, so that a stop at any point leaves them comparable. Within a batch: bf16
    # training (what a GPU user runs), fp32 training (the paper's), then inference.
    model_configs=_model_order(('alexnet', 'alexnet_owt'),
                               (('train', 'bfloat16'), ('train', 'float32'), ('infer', 'bfloat16'),
                                ('infer', 'float32')), (256, 512, 128)),
    width=1.0, image_size=224, num_classes=1000,
    warmup=3, rounds=5, steps_per_round=5, blocked_calls=3,
    profile=('alexnet', 'bfloat16', 256), profile_steps=3,
    layouts=dict(model='alexnet', width=1.0, batch=256, image_size=224, num_classes=1000,
                 dtype='bfloat16', steps=10, warmup=2),
    input=dict(num_images=2048, batch=256, threads=(8, 16), window_s=3.0, glibc_threads=(16,)),
    train_args=('--config=experiments/demo.py', '--config.layout=single', '--config.num_epochs=2'),
    # Seconds per part; what a part leaves unused goes to the next ones. Sum <= total <= 8 minutes.
    budgets=dict(wheels=20, model=230, xla_flags=20, train=75, input=60, layouts=45),
    total_budget_s=450,
)

SMOKE = Plan(
    name='smoke',
    # On a 2-core CPU each AlexNet's init and train step take 10-30 s to compile: one network, one
    # train program (the two-tower network runs in the layouts tests and on the device).
    model_configs=(('alexnet_owt', 'float32', 8, 'train'), ('alexnet_owt', 'bfloat16', 8, 'infer')),
    width=0.0625, image_size=67, num_classes=10,
    warmup=1, rounds=2, steps_per_round=1, blocked_calls=1,
    profile=('alexnet_owt', 'float32', 8), profile_steps=3,
    layouts=dict(model='lenet', width=0.5, batch=8, image_size=28, num_classes=10, dtype='float32',
                 steps=2, warmup=1),
    input=dict(num_images=32, batch=8, threads=(1, 2), window_s=0.3, glibc_threads=(2,)),
    train_args=('--config=experiments/demo.py', '--config.layout=single', '--config.num_epochs=1',
                '--config.lr.warmup_epochs=0.2', '--config.model.name=lenet'),
    budgets=dict(wheels=60, model=240, xla_flags=60, train=240, input=120, layouts=120),
    total_budget_s=900,
)


def plan_for(smoke: bool) -> Plan:
  return SMOKE if smoke else FULL
