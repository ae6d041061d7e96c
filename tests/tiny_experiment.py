"""The experiment the tests train: the paper's two-tower network at 1/8 width on 64x64 crops.

Used in-process (``get_config()``) and by subprocesses (``--config=tests/tiny_experiment.py``), so that
a test and the command it starts run the very same experiment; ``data.source`` is set by each test.
"""

from alexnet_jax import configs


def get_config():
  c = configs.default_config()
  c.layout = 'model'
  c.model.width = 0.125
  c.model.bias_init = 'small'
  c.data.source = ''
  c.data.image_size = 72
  c.data.crop_size = 64
  c.data.num_threads = 1
  c.batch_size = 4
  c.num_epochs = 3
  c.learning_rate = 0.01
  c.lr.policy = 'step'
  c.lr.step_percent = 50.0
  c.val_interval = 1.0
  c.snapshot_interval = 1.0
  c.log_every_steps = 2
  return c


def override(config, **overrides):
  """Sets dotted fields (``override(c, **{'model.width': 0.5})``) in place; returns ``config``."""
  for key, value in overrides.items():
    target = config
    *path, leaf = key.split('.')
    for part in path:
      target = target[part]
    target[leaf] = value
  return config
