r"""DIGITS' GoogLeNet: Inception v1 with its two auxiliary classifiers, on 224x224 crops of 256x256 images.

    python -m alexnet_jax.train --config=experiments/googlenet_digits.py --workdir=runs/googlenet \
        --config.data.source=/data/images        # root/<category>/<image>.jpg

    # on several devices, batch split over them:
    python -m alexnet_jax.train --config=experiments/googlenet_digits.py --workdir=runs/googlenet \
        --config.data.source=/data/images --config.layout=data

As DIGITS sets it up: images squashed to 256x256 colour, mean image subtracted, random 224x224 crops and
flips in training (centre crop for validation), 25% held out for validation; GoogLeNet
(``alexnet_jax/models/googlenet.py``: 6,998,552 parameters for 1000 classes, 13,378,280 with the
auxiliary classifiers), whose two auxiliary losses are added with weight 0.3 in training and which are
dropped for validation and inference; the train log reports top-1/top-5 of each head (``aux1_top1`` ...).
Solver: DIGITS' defaults (SGD with momentum 0.9, base learning rate 0.01, step-down x0.1 every 33% of
training, 30 epochs) with batches of 32 (the training batch of DIGITS' googlenet.prototxt, its "network
defaults"; it validates in 16s) and weight decay
2e-4 (bvlc_googlenet's solver); main-classifier dropout 0.4 (the paper). No PCA lighting (the paper
used other photometric distortions; DIGITS uses none).

Expected: **not measured** with this codebase on a real dataset. For orientation: on ImageNet the
paper reports 10.07% top-5 error for one model and one crop (Table 3); Caffe's bvlc_googlenet
reaches 68.7% top-1 / 88.9% top-5 with a single centre crop after ~60 epochs. On a small folder (a few
hundred images per class) consider fine-tuning from an earlier model (``--config.init_from``) rather
than training from scratch. The tests train it at 1/8 width on 64x64 images only
(``tests/test_networks.py``); on a loaded 2-core CPU most of that test's ~45 s is compilation.
"""

from alexnet_jax import configs


def get_config():
  c = configs.default_config()
  c.layout = 'single'
  c.model.name = 'googlenet'
  c.model.dropout = 0.4           # the main classifier's; the auxiliary ones use 0.7 (fixed)
  c.model.lrn = 'caffe'           # GoogLeNet always uses Caffe's LRN; 'none' removes it
  c.data.source = ''
  c.data.image_size = 256
  c.data.crop_size = 224
  c.data.resize_mode = 'squash'
  c.data.pca_lighting = False
  c.data.val_percent = 25.0
  c.num_epochs = 30
  c.batch_size = 32
  c.optimizer = 'sgd'
  c.momentum = 0.9
  c.weight_decay = 2e-4
  c.learning_rate = 0.01
  c.bias_lr_mult = 2.0            # googlenet.prototxt: biases lr_mult 2, decay_mult 0
  c.decay_biases = False
  c.lr.policy = 'step'
  c.lr.step_percent = 33.0
  c.lr.gamma = 0.1
  c.val_interval = 1.0
  c.snapshot_interval = 1.0
  return c
