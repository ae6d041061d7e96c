"""The default experiment configuration that every `experiments/*.py` file starts from.

An experiment is a file with one `get_config()` (see STYLE.md): it calls `default_config()` and changes
only what differs. Every field that a script relies on lives here with a comment, so that
`--config.FIELD=VALUE` overrides have one place to be looked up. Defaults follow DIGITS' "New Image
Classification Model" page where DIGITS has a field, and the 2012 paper elsewhere.
"""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """Returns the base configuration (unlocked; `config_flags` locks it after loading)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Start from an earlier model (DIGITS' "Pretrained model"): a workdir or a bundle, optionally
  # ':STEP' (see alexnet_jax/training/finetune.py). Ignored when the workdir already holds a snapshot (resume).
  c.init_from = ''
  # Fine-tuning controls (alexnet_jax/training/finetune_controls.py); parameters are named by their
  # '/'-joined path (towers/conv1/kernel, head/bias) and a pattern is a regex searched in that name.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.freeze = ''          # REGEX: the matching parameters stay fixed (no update, decay, momentum)
  c.finetune.lr_mult = ''         # REGEX:MULT,REGEX:MULT: per-layer rate multipliers (Caffe's lr_mult)
  c.finetune.preset = ''          # head: train only the last classifier (and the head bias)

  # ---- Devices ------------------------------------------------------------------------------------
  # single | model (the paper: towers on the 'model' axis) | data | hybrid | weird_trick | auto
  c.layout = 'model'
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1     # -1: derived from the layout and the devices present
  c.mesh.model = -1    # -1: derived from the layout (2 for the two-tower layouts)

  # ---- Model ----------------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = 'alexnet'        # alexnet | alexnet_owt (registry in alexnet_jax/models)
  c.model.width = 1.0             # channel multiplier; 1.0 is the paper's network
  c.model.dropout = 0.5
  # How the two-tower AlexNet ('alexnet') starts. The 2012 paper's start is the default;
  # DIGITS' standard AlexNet (experiments/digits_exercise.py) is weight_init='digits', bias_init='digits',
  # lrn='caffe'. With SGD at 0.01 the paper's biases of 1 blow up full-width training in its first steps
  # (loss 1.1 -> 36 and stuck at chance; models/alexnet.py says why); DIGITS' start trains. LeNet and
  # GoogLeNet always start from their DIGITS prototxt's fillers and ignore weight_init/bias_init;
  # alexnet_owt (not a DIGITS network) starts as torchvision's and has no LRN.
  c.model.lrn = 'paper'           # paper: k=2 + alpha*sum(a^2); caffe: k=1 + alpha/n*sum(a^2); none
  #                                 caffe_across: caffe's, over both towers' maps (bvlc_alexnet imports)
  c.model.bias_init = 'paper'     # paper: 1 in conv2/4/5, fc6/7, 0 elsewhere; digits (or small): 0.1
  c.model.weight_init = 'paper'   # paper: N(0, 0.01^2); digits: fc6/fc7 0.005; he: Kaiming (narrow copies)
  c.model.dtype = 'float32'       # compute dtype: float32 | bfloat16 (parameters stay float32)

  # ---- Data (DIGITS' "New Image Classification Dataset") ---------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.source = ''              # a folder, a DIGITS list file, tfds:NAME[:split] or a prepared dir
  c.data.image_root = ''          # base folder for relative paths in list files
  c.data.val_source = ''          # a separate validation folder/list (else val_percent of source)
  c.data.test_source = ''
  c.data.val_percent = 25.0
  c.data.test_percent = 0.0
  c.data.min_per_class = 2
  c.data.max_per_class = 0        # 0: no limit
  # The resized size, before cropping: WIDTH,HEIGHT as DIGITS and `prepare` write it
  # (--config.data.image_size=300,200), or one number for a square. A FieldReference of type object, so
  # that the flag takes either form (data/sizes.py parses it).
  c.data.image_size = ml_collections.FieldReference(256, field_type=object)
  c.data.crop_size = 224          # the network input: a square crop's side; 0: none (the whole image)
  c.data.resize_mode = 'squash'   # squash | crop | fill | half_crop
  c.data.channels = 3             # 3 (color) or 1 (grayscale)
  c.data.mean = 'image'           # image | pixel | none
  c.data.random_crop = True
  c.data.flip = True
  c.data.pca_lighting = True      # the paper's PCA colour augmentation (alpha ~ N(0, 0.1))
  c.data.pca_std = 0.1
  # Where crops, mirror, PCA lighting and the mean happen: device (the jitted step, from uint8 batches
  # at image_size: 3x fewer bytes to the device, no float work on the host) | host (float32 crops).
  c.data.augment_on = 'device'
  c.data.num_threads = 2          # grain read threads
  c.data.worker_count = 0         # grain worker processes (0: threads only)
  c.data.prefetch = 8
  # Batches read and placed on the devices ahead of the step, in a background thread (bounded memory;
  # exact resume). 0: the loop of before -- read and copy each batch when it is needed and read every
  # step's metrics at once (a per-step host sync; kept to measure the difference and for debugging).
  c.data.device_prefetch = 2
  c.data.ten_crop_eval = False
  c.data.labels_file = ''         # list sources: labels.txt (default: beside the list file)
  c.data.tfds_data_dir = ''       # tfds: sources: data_dir of the ArrayRecord-prepared dataset
  c.data.pca_eigen = 'imagenet'   # PCA lighting basis: imagenet (published values) | train (this split's)
  c.data.mean_max_images = 10000  # folder/list/tfds: mean image over a seeded sample of this many; 0: all
  c.data.draft = True             # Pillow reduced-size JPEG decoding when the stored image is >= 2x needed

  # ---- Solver (DIGITS' "Solver Options") --------------------------------------------------------------
  c.num_epochs = 90
  c.batch_size = 128
  c.batch_accumulation = 1
  c.optimizer = 'sgd'             # sgd | nesterov | adagrad | rmsprop | adadelta | adam | adamw
  c.momentum = 0.9                # sgd/nesterov momentum; adam/adamw beta1; adadelta rho (as Caffe)
  c.rms_decay = 0.99              # rmsprop (Caffe's rms_decay default)
  c.weight_decay = 5e-4
  c.decay_biases = True           # False: no weight decay on biases (Caffe's decay_mult: 0, DIGITS' nets)
  c.bias_lr_mult = 1.0            # biases learn this many times faster (Caffe's lr_mult: 2 in DIGITS' nets)
  c.learning_rate = 0.01
  c.lr = ml_collections.ConfigDict()
  c.lr.policy = 'step'            # fixed | step | multistep | exp | inv | poly | sigmoid | plateau | cosine
  c.lr.gamma = 0.1                # step: factor at each drop; plateau: factor at each drop (paper: /10)
  c.lr.step_percent = 33.0        # step: drop every step_percent % of training
  c.lr.multistep_percents = '50,75'
  c.lr.multistep_gamma = 0.5      # DIGITS' per-policy defaults from here on (percent-of-training units)
  c.lr.exp_gamma = 0.95           # exp: lr = base * exp_gamma ** (percent of training done)
  c.lr.inv_gamma = 0.1
  c.lr.inv_power = 0.5
  c.lr.poly_power = 3.0
  c.lr.sigmoid_step_percent = 50.0
  c.lr.sigmoid_gamma = 0.1
  c.lr.warmup_epochs = 0.0        # cosine
  c.lr.plateau_patience = 1       # plateau: validations without improvement before dividing
  c.lr.plateau_max_drops = 3

  # ---- Schedule of side jobs --------------------------------------------------------------------------
  c.val_interval = 1.0            # epochs
  c.snapshot_interval = 1.0       # epochs
  c.keep_snapshots = 3
  c.early_stopping_patience = 0   # validations without improvement; 0 disables
  c.log_every_steps = 20
  # 'START,STOP': a jax.profiler trace of steps START..STOP-1 under WORKDIR/profile (TensorBoard's
  # profile plugin or Perfetto); '' = off. See alexnet_jax/training/profiling.py.
  c.profile_steps = ''
  return c
