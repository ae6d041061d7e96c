r"""The embedded default: a narrow AlexNet in the paper's two-tower layout, on generated shapes.

    python -m alexnet_jax.train --config=experiments/demo.py --workdir=runs/demo

Unless ``--config.data.source`` points elsewhere, it draws a five-class folder of shapes and textures
(``alexnet_jax/demo_data.py``, 800 JPEGs of 80x80) into ``runs/demo/synthetic`` the first time, splits
off 25% for validation as DIGITS does, and trains the paper's network at a quarter of its width -- the two
towers on two forced CPU devices, exchanging activations at conv3, fc6, fc7 and fc8 -- with the paper's
solver (SGD, momentum 0.9, weight decay 5e-4) and crops, flips and PCA lighting.

Expected (2-core KVM Xeon, CPU only): see the closing line of the run and README.md, about 3 minutes,
validation top-1 >= 90%.
"""

from alexnet_jax import configs


def get_config():
  c = configs.default_config()
  c.layout = 'model'
  c.model.width = 0.25
  c.model.bias_init = 'small'
  c.data.source = 'synthetic'
  c.data.image_size = 72
  c.data.crop_size = 64
  c.data.val_percent = 25.0
  c.num_epochs = 12
  c.batch_size = 32
  c.learning_rate = 0.01
  c.lr.policy = 'step'
  c.lr.step_percent = 50.0
  c.val_interval = 2.0
  c.snapshot_interval = 2.0
  c.log_every_steps = 10
  return c
