r"""The 2012 recipe: AlexNet on ImageNet, the two towers on two devices (the ``model`` layout).

    python -m alexnet_jax.train --config=experiments/paper.py --workdir=runs/paper \
        --config.data.source=tfds:imagenet2012        # or /path/to/ILSVRC2012/train (class folders)

Krizhevsky, Sutskever & Hinton (NIPS 2012), section 5: batch 128, SGD with momentum 0.9 and weight
decay 5e-4, learning rate 0.01 divided by 10 when the validation error stops improving (three times over
the run), about 90 epochs; images resized to 256x256 (shorter side, centre crop), random 224x224 crops
with horizontal flips and PCA colour augmentation (section 4.1); test-time prediction averaged over
10 crops (4 corners, centre, and their mirrors). The network starts as section 5 says (weights
N(0, 0.01^2), biases 1 in conv2/4/5 and fc6/7, the paper's LRN), not as DIGITS' AlexNet: on a three-class
folder with SGD 0.01 that start blows up in its first steps (loss 1.6 -> 36; ``models/alexnet.py``,
``experiments/digits_exercise.py``), which is why the DIGITS experiments start as DIGITS does.

Expected: top-1 / top-5 error 40.7% / 18.2% on ILSVRC-2012 validation for one network, as published
(the paper's GTX 580 pair took five to six days). Not reproduced on this project's CPU machines; run it
on two GPUs. For the tfds source, prepare ``imagenet2012`` with ``file_format='array_record'`` first.
"""

from alexnet_jax import configs


def get_config():
  c = configs.default_config()
  c.layout = 'model'
  c.model.name = 'alexnet'
  c.model.width = 1.0
  c.model.weight_init = 'paper'   # section 5: N(0, 0.01^2) in every layer
  c.model.bias_init = 'paper'     # section 5: 1 in conv2, conv4, conv5, fc6, fc7
  c.model.lrn = 'paper'           # section 3.3: k=2, alpha=1e-4 on the sum of squares
  c.data.source = 'tfds:imagenet2012'
  c.data.val_source = ''          # tfds: the 'validation' split is used when val_percent is 0
  c.data.val_percent = 0.0
  c.data.image_size = 256
  c.data.crop_size = 224
  c.data.resize_mode = 'crop'
  c.data.mean = 'image'
  c.data.pca_lighting = True
  c.data.ten_crop_eval = True
  c.num_epochs = 90
  c.batch_size = 128
  c.optimizer = 'sgd'
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.learning_rate = 0.01
  c.lr.policy = 'plateau'
  c.lr.gamma = 0.1
  c.lr.plateau_patience = 1
  c.lr.plateau_max_drops = 3
  c.val_interval = 1.0
  c.snapshot_interval = 1.0
  c.keep_snapshots = 3
  c.log_every_steps = 100
  return c
