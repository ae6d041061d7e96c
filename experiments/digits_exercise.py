r"""The DIGITS classroom exercise: AlexNet on a small folder of three categories.

    python -m alexnet_jax.train --config=experiments/digits_exercise.py --workdir=runs/digits \
        --config.data.source=/path/to/folder      # root/<category>/<image>.jpg, three categories

As in NVIDIA's DIGITS getting-started lab: "New Image Classification Dataset" with the images squashed
to 256x256 colour and 25% held out for validation; "New Image Classification Model" with the standard
AlexNet, SGD at base learning rate 0.01 (DIGITS' step-down policy: x0.1 every 33% of training), 30
epochs, a snapshot and a validation every epoch. DIGITS trained it on one GPU; here it runs in the
paper's two-tower layout (two forced CPU host devices on a machine without accelerators).

Expected: with a few hundred photos per category the lab reports validation accuracy in the 80-95%
range after 30 epochs; at full width on 2 CPU cores expect roughly 10-15 images/s of training.
"""

from alexnet_jax import configs


def get_config():
  c = configs.default_config()
  c.layout = 'model'
  # DIGITS' standard AlexNet starts as its alexnet.prototxt says (models/alexnet.py), not as the paper.
  c.model.name = 'alexnet'
  c.model.weight_init = 'digits'  # gaussian 0.01; fc6/fc7 0.005
  c.model.bias_init = 'digits'    # 0.1 in conv2/4/5, fc6/fc7; 0 elsewhere
  c.model.lrn = 'caffe'           # Caffe's LRN: k=1, alpha/n
  c.data.source = ''
  c.data.image_size = 256
  c.data.crop_size = 224
  c.data.resize_mode = 'squash'
  c.data.val_percent = 25.0
  c.num_epochs = 30
  c.batch_size = 128              # alexnet.prototxt's training batch (DIGITS' "network defaults")
  c.optimizer = 'sgd'
  c.learning_rate = 0.01
  c.lr.policy = 'step'
  c.lr.step_percent = 33.0
  c.lr.gamma = 0.1
  c.val_interval = 1.0
  c.snapshot_interval = 1.0
  return c
