r"""DIGITS' LeNet on MNIST-style digits: 28x28 grayscale, as DIGITS' getting-started example trains it.

    python -m alexnet_jax.train --config=experiments/lenet_digits.py --workdir=runs/lenet \
        --config.data.source=/data/mnist/train        # root/<digit>/<image>.png (DIGITS' MNIST folder)

Without ``--config.data.source`` it trains on the generated five-class shapes folder (``synthetic``:
3,000 80x80 JPEGs, squashed here to 28x28 grayscale), so the command runs anywhere without a download.

As DIGITS sets it up: "New Image Classification Dataset" with grayscale 28x28 images (squash) and the
mean image subtracted; "New Image Classification Model" with LeNet (``alexnet_jax/models/lenet.py``:
the mean-subtracted pixels scaled by 0.0125, conv 20 -> pool -> conv 50 -> pool -> fc 500 -> ReLU -> fc),
no crops or flips (LeNet's inputs are the whole 28x28 image), SGD with momentum 0.9 at base learning
rate 0.01, step-down x0.1 every 33% of training, 30 epochs of batches of 64 (the prototxt's training
batch, DIGITS' "network defaults"; its validation batch is 32), a snapshot and a validation every
epoch, in the one-device layout.

Expected: on MNIST, DIGITS' LeNet reaches ~99% validation accuracy in 30 epochs (the figure of
NVIDIA's DIGITS walkthrough); **not measured here** (no MNIST copy on this machine).

Measured on the generated shapes (the default source: 2,250 train / 750 val, five classes whose colour
is lost in grayscale and whose shapes are hard to tell apart at 28x28): validation top-1 82.4% after 30
epochs (62.8% after the first, 81% from epoch 12 on, when the learning rate first drops), 53 s of wall
time including drawing the images, the mean pass and compilation, on a 2-core KVM Xeon, CPU only, with
other jobs sharing the cores (seed 0: the run is deterministic).
"""

from alexnet_jax import configs


def get_config():
  c = configs.default_config()
  c.layout = 'single'
  c.model.name = 'lenet'
  c.model.dropout = 0.0           # LeNet has none (the field is ignored by the network anyway)
  c.data.source = 'synthetic'
  c.data.image_size = 28
  c.data.crop_size = 28
  c.data.channels = 1
  c.data.resize_mode = 'squash'
  c.data.mean = 'image'
  c.data.random_crop = False
  c.data.flip = False
  c.data.pca_lighting = False
  c.data.val_percent = 25.0
  c.num_epochs = 30
  c.batch_size = 64
  c.optimizer = 'sgd'
  c.momentum = 0.9
  c.learning_rate = 0.01
  c.bias_lr_mult = 2.0            # lenet.prototxt: biases lr_mult 2 (and decayed: no decay_mult)
  c.lr.policy = 'step'
  c.lr.step_percent = 33.0
  c.lr.gamma = 0.1
  c.val_interval = 1.0
  c.snapshot_interval = 1.0
  c.log_every_steps = 20
  return c
