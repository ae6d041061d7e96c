"""Early refusals of bad input, each naming what to fix: config values (``config_checks.validate``),
networks that cannot run on the configured crop (``config_checks.check_network``), classify's image
arguments (URLs, folders) and atomic writes that fail (``fileio``: the message names the target).
"""

from __future__ import annotations

import errno
import functools
import glob
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import pytest

from alexnet_jax import classify, configs, models
from alexnet_jax.runtime import fileio
from alexnet_jax.training import config_checks
from tests import tiny_experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_with(**overrides):
  """The default config as a plain dict (so that any type can be set), dotted fields overridden."""
  return tiny_experiment.override(configs.default_config().to_dict(), **overrides)


# ---- A. validate(config) ------------------------------------------------------------------------------

EXPERIMENTS = sorted(f for f in glob.glob(os.path.join(REPO, 'experiments', '*.py'))
                     if not f.endswith('__init__.py'))


@pytest.mark.parametrize('path', EXPERIMENTS, ids=os.path.basename)
def test_every_experiment_is_valid(path):
  module = importlib.import_module('experiments.' + os.path.basename(path)[:-3])
  config_checks.validate(module.get_config())


def test_default_and_test_configs_are_valid():
  config_checks.validate(configs.default_config())
  config_checks.validate(tiny_experiment.get_config())
  assert config_checks.problems(configs.default_config()) == []


# (field, bad value, what the line must say after "--config.FIELD=VALUE: ")
BAD_VALUES = [
    ('learning_rate', -1.0, 'must be a finite number > 0, e.g. --config.learning_rate=0.01'),
    ('learning_rate', 0.0, 'must be a finite number > 0'),
    ('learning_rate', float('nan'), 'must be a finite number > 0'),
    ('learning_rate', float('inf'), 'must be a finite number > 0'),
    ('batch_size', 0, 'must be an integer >= 1, e.g. --config.batch_size=128'),
    ('batch_size', 2.5, 'must be an integer >= 1 (got float)'),
    ('batch_size', True, 'must be an integer >= 1 (got bool)'),
    ('batch_accumulation', 0, 'must be an integer >= 1'),
    ('num_epochs', 0, 'must be an integer >= 1'),
    ('momentum', 1.0, 'must be a finite number in [0, 1)'),
    ('momentum', -0.1, 'must be a finite number in [0, 1)'),
    ('rms_decay', 1.5, 'must be a finite number in [0, 1)'),
    ('weight_decay', -5e-4, 'must be a finite number >= 0'),
    ('optimizer', 'sgdd', 'must be one of sgd | nesterov | adagrad'),
    ('layout', 'towers', 'must be one of single | model | data | hybrid | weird_trick | auto'),
    ('mesh.data', 0, 'must be an integer >= 1 or -1'),
    ('mesh.model', -2, 'must be an integer >= 1 or -1'),
    ('seed', 'zero', 'must be an integer (got str)'),
    ('model.name', 'vgg', 'must be one of alexnet | alexnet_owt | googlenet | lenet, or a Flax'),
    ('model.width', 0.0, 'must be a finite number > 0'),
    ('model.dropout', 1.0, 'must be a finite number in [0, 1)'),
    ('model.lrn', 'local', 'must be one of paper | caffe | caffe_across | none'),
    ('model.bias_init', 'zero', 'must be one of digits | paper | small'),
    ('model.weight_init', 'xavier', 'must be one of digits | he | paper'),
    ('model.dtype', 'float16', 'must be one of bfloat16 | float32'),
    ('data.val_percent', 101.0, 'must be a finite number in [0, 100]'),
    ('data.test_percent', -1.0, 'must be a finite number in [0, 100]'),
    ('data.min_per_class', -1, 'must be an integer >= 0'),
    ('data.max_per_class', -1, 'must be an integer >= 0 (0: no limit)'),
    ('data.image_size', 0, 'must be WIDTH,HEIGHT with positive whole numbers'),
    ('data.image_size', '300,0', 'must be WIDTH,HEIGHT with positive whole numbers'),
    ('data.image_size', 'wide', 'e.g. --config.data.image_size=300,200'),
    ('data.image_size', (300, 200, 3), 'one number for a square'),
    ('data.crop_size', -1, 'must be an integer >= 0 (0: none, the whole resized image is the input)'),
    ('data.channels', 2, 'must be one of 1 | 3 (1: grayscale, 3: color)'),
    ('data.resize_mode', 'stretch', 'must be one of squash | crop | fill | half_crop'),
    ('data.mean', 'dataset', 'must be one of image | pixel | none'),
    ('data.pca_eigen', 'own', 'must be one of imagenet | train'),
    ('data.flip', 'yes', 'must be True or False (got str)'),
    ('data.pca_std', -0.1, 'must be a finite number >= 0'),
    ('data.num_threads', 0, 'must be an integer >= 1'),
    ('data.worker_count', -1, 'must be an integer >= 0'),
    ('data.prefetch', 0, 'must be an integer >= 1'),
    ('data.mean_max_images', -1, 'must be an integer >= 0'),
    ('data.source', 3, 'must be a string (got int)'),
    ('lr.policy', 'linear', 'must be one of fixed | step | multistep'),
    ('lr.gamma', 0.0, 'must be a finite number > 0'),
    ('lr.step_percent', 0.0, 'must be a finite number in (0, 100]'),
    ('lr.step_percent', 150.0, 'must be a finite number in (0, 100]'),
    ('lr.multistep_percents', '75,50', 'must be strictly increasing percentages'),
    ('lr.multistep_percents', '50,100', 'each in (0, 100)'),
    ('lr.multistep_percents', '', 'must be strictly increasing percentages'),
    ('lr.multistep_percents', 'half', 'must be comma-separated numbers'),
    ('lr.multistep_gamma', -0.5, 'must be a finite number > 0'),
    ('lr.exp_gamma', 0.0, 'must be a finite number > 0'),
    ('lr.inv_gamma', -0.1, 'must be a finite number >= 0'),
    ('lr.inv_power', -0.5, 'must be a finite number >= 0'),
    ('lr.poly_power', -3.0, 'must be a finite number >= 0'),
    ('lr.sigmoid_step_percent', 120.0, 'must be a finite number in [0, 100]'),
    ('lr.sigmoid_gamma', 0.0, 'must not be 0'),
    ('lr.warmup_epochs', -1.0, 'must be a finite number >= 0'),
    ('lr.plateau_patience', 0, 'must be an integer >= 1'),
    ('lr.plateau_max_drops', -1, 'must be an integer >= 0'),
    ('val_interval', 0.0, 'must be a finite number > 0 (epochs)'),
    ('snapshot_interval', -1.0, 'must be a finite number > 0 (epochs)'),
    ('keep_snapshots', 2.5, 'must be an integer (got float) (<= 0 keeps every snapshot)'),
    ('early_stopping_patience', -1, 'must be an integer >= 0'),
    ('log_every_steps', 0, 'must be an integer >= 1'),
    ('learning_rate', '0.01', 'must be a finite number > 0 (got str)'),
]


@pytest.mark.parametrize('field,value,expected', BAD_VALUES,
                         ids=[f'{f}={v!r}' for f, v, _ in BAD_VALUES])
def test_a_bad_value_is_named_with_its_flag(field, value, expected):
  found = config_checks.problems(config_with(**{field: value}))
  shown = repr(value) if isinstance(value, str) else str(value)
  assert found == [f'--config.{field}={shown}: {expected}'] or (
      len(found) == 1 and found[0].startswith(f'--config.{field}={shown}: ')
      and expected in found[0]), found
  with pytest.raises(ValueError, match=re.escape(f'--config.{field}=')):
    config_checks.validate(config_with(**{field: value}))


def test_negative_learning_rate_from_the_command_line_is_refused():
  # The report: --config.learning_rate=-1 trained to a loss of 4e13. ml_collections stores it as -1.0.
  c = tiny_experiment.get_config()
  c.learning_rate = -1.0
  with pytest.raises(ValueError) as e:
    config_checks.validate(c)
  assert str(e.value) == ('--config.learning_rate=-1.0: must be a finite number > 0, e.g. '
                          '--config.learning_rate=0.01 (the default)')


def test_every_problem_is_reported_at_once_one_per_line():
  c = config_with(learning_rate=-1.0, batch_size=0, **{'model.lrn': 'x', 'lr.policy': 'linear'})
  with pytest.raises(ValueError) as e:
    config_checks.validate(c)
  lines = str(e.value).splitlines()
  assert lines[0] == '4 config values are invalid:'
  assert [line.split('=')[0] for line in lines[1:]] == [
      '--config.model.lrn', '--config.batch_size', '--config.learning_rate', '--config.lr.policy']


def test_relations_between_fields():
  def one(**overrides):
    found = config_checks.problems(config_with(**overrides))
    assert len(found) == 1, found
    return found[0]

  assert one(**{'data.val_percent': 60.0, 'data.test_percent': 40.0}) == (
      '--config.data.val_percent=60 + --config.data.test_percent=40 = 100: leaves no images for '
      'training; they must add up to less than 100')
  # A separate validation source replaces val_percent, which then does not count.
  assert not config_checks.problems(config_with(**{
      'data.val_percent': 60.0, 'data.test_percent': 40.0, 'data.val_source': '/some/folder'}))
  assert one(**{'data.crop_size': 300}).startswith(
      '--config.data.crop_size=300: must be 0 (none) or <= 256, the shorter side of '
      '--config.data.image_size=256,256')
  # A rectangle: the square crop must fit the shorter side (the height of 300 x 200).
  assert one(**{'data.image_size': (300, 200), 'data.crop_size': 227}).startswith(
      '--config.data.crop_size=227: must be 0 (none) or <= 200, the shorter side of '
      '--config.data.image_size=300,200')
  assert one(**{'data.min_per_class': 10, 'data.max_per_class': 5}).startswith(
      '--config.data.min_per_class=10: is more than --config.data.max_per_class=5')
  assert not config_checks.problems(config_with(**{'data.min_per_class': 10,
                                                   'data.max_per_class': 0}))   # 0: no limit
  # A warmup not shorter than the run is clipped by optim.warmup_updates (and logged), not refused.
  assert not config_checks.problems(config_with(**{'lr.policy': 'cosine', 'lr.warmup_epochs': 3.0,
                                                   'num_epochs': 3}))
  assert not config_checks.problems(config_with(**{'lr.warmup_epochs': 3.0, 'num_epochs': 3}))
  # plateau divides by gamma's inverse: a factor >= 1 would never lower the rate.
  assert one(**{'lr.policy': 'plateau', 'lr.gamma': 2.0}).startswith(
      '--config.lr.gamma=2.0: must be a finite number in (0, 1) for --config.lr.policy=plateau')
  assert not config_checks.problems(config_with(**{'lr.gamma': 2.0}))


def test_accepted_edge_values():
  ok = {'keep_snapshots': 0, 'mesh.data': -1, 'mesh.model': 1, 'data.min_per_class': 0,
        'momentum': 0.0, 'model.dropout': 0.0, 'weight_decay': 0.0, 'early_stopping_patience': 0,
        'lr.step_percent': 100.0, 'data.val_percent': 0.0, 'lr.sigmoid_gamma': -0.1,
        'model.name': 'my_models.small:SmallCNN', 'lr.multistep_percents': '10, 20.5,99',
        'data.crop_size': 256, 'learning_rate': 1}   # an int where a float is expected is fine
  assert config_checks.problems(config_with(**ok)) == []
  # DIGITS' sizes: W,H in any of the forms a flag or a config file gives, and crop 0 = none.
  for size in ((300, 200), [300, 200], '300,200', '300x200', 256, '256'):
    assert config_checks.problems(config_with(**{'data.image_size': size, 'data.crop_size': 0})) == []
  assert config_checks.problems(config_with(**{'data.image_size': '300,200',
                                               'data.crop_size': 200})) == []


def test_missing_fields_are_skipped_and_extra_fields_ignored():
  c = config_with()
  del c['data']['draft'], c['lr']
  c['my_field'] = 'anything'
  c['data']['my_option'] = -1
  config_checks.validate(c)


# ---- B. check_network(config, num_classes) ------------------------------------------------------------

# The smallest crop of each standard network at full width (the search must find these). alexnet and
# googlenet round their pools up as cuda-convnet and Caffe do, so a 2-row map still pools to 1 row and a
# 1-row map to none; alexnet_owt rounds down (torchvision).
EXPECTED_MINIMUM = {'alexnet': 36, 'alexnet_owt': 63, 'lenet': 16, 'googlenet': 31}


def network_config(name, crop, *, channels=3, width=1.0, image_size=None):
  c = configs.default_config()
  c.model.name = name
  c.model.width = width
  c.data.channels = channels
  c.data.crop_size = crop
  c.data.image_size = image_size or max(crop, 256)
  return c


def eval_shape_of_init(name, size, channels):
  """The whole network's init (both towers, head) as shapes: an independent check of the verdicts."""
  network = models.build(network_config(name, size).model, 10)
  return jax.eval_shape(functools.partial(network.init, image_shape=(size, size, channels)),
                        jax.random.key(0))


@pytest.mark.parametrize('name', sorted(models.REGISTRY))
def test_each_network_states_a_minimum_that_works(name):
  assert sorted(models.REGISTRY) == sorted(EXPECTED_MINIMUM)   # a new network needs its entry
  channels = 1 if name == 'lenet' else 3
  minimum = config_checks.minimum_crop_size(network_config(name, 1).model, channels, 10)
  assert minimum == EXPECTED_MINIMUM[name]
  config_checks.check_network(network_config(name, minimum, channels=channels), 10)
  params = eval_shape_of_init(name, minimum, channels)
  assert all(min(a.shape, default=1) > 0 for a in jax.tree.leaves(params))
  with pytest.raises(ValueError) as e:
    config_checks.check_network(network_config(name, minimum - 1, channels=channels), 10)
  assert re.fullmatch(
      rf'--config\.data\.crop_size={minimum - 1}: {name} needs inputs of at least '
      rf'{minimum}x{minimum} \(\S+ would [^)]+\); use --config\.data\.crop_size>={minimum}',
      str(e.value)), str(e.value)
  if name == 'googlenet':   # its global average keeps every parameter's shape: the empty map named above
    return
  try:   # one below: an empty parameter, or an initializer dividing by a fan-in of 0
    params = eval_shape_of_init(name, minimum - 1, channels)
  except ZeroDivisionError:
    return
  assert any(0 in a.shape for a in jax.tree.leaves(params))


def test_the_reported_alexnet_case():
  # crop 40: fc6 used to get a 0 x 2048 kernel, train an epoch and die at the first snapshot. With the
  # pools rounding up (as in cuda-convnet and Caffe: conv1's 9 rows pool to 4 -> 2 -> 1) it now has 1x1
  # maps; 32 is too small (7 -> 3 -> 1 -> 0).
  config_checks.check_network(network_config('alexnet', 40, image_size=48), 3)
  with pytest.raises(ValueError) as e:
    config_checks.check_network(network_config('alexnet', 32, image_size=32), 3)
  assert str(e.value) == (
      '--config.data.crop_size=32: alexnet needs inputs of at least 36x36 (fc6 would have 0 inputs); '
      'use --config.data.crop_size>=36 and --config.data.image_size with both sides >= 36 (crops are '
      'cut from the 32x32 resized images)')
  with pytest.raises(ValueError, match=r'lenet needs inputs of at least 16x16 \(conv2 would '
                                       r'output 0x0 maps\)'):
    config_checks.check_network(network_config('lenet', 8, channels=1), 10)


def test_no_crop_checks_the_whole_rectangle():
  """crop_size=0 (DIGITS' "none"): the network takes the whole W x H image, and too small a side is
  refused naming image_size, not a crop."""
  config_checks.check_network(network_config('alexnet', 0, image_size=(300, 200)), 3)
  config_checks.check_network(network_config('alexnet', 0, image_size='64,300'), 3)
  with pytest.raises(ValueError) as e:
    config_checks.check_network(network_config('alexnet', 0, image_size=(300, 30)), 3)
  assert str(e.value).startswith(
      '--config.data.image_size=300,30 with --config.data.crop_size=0 (none: the whole image is the '
      'input): alexnet needs inputs of at least 36x36 (')
  assert str(e.value).endswith('use --config.data.image_size with both sides >= 36')


def test_image_size_flags_take_width_height_or_one_number():
  """The command line's forms: WIDTH,HEIGHT (DIGITS' and prepare's order), one number, crop 0."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from alexnet_jax import data  # pylint: disable=g-import-not-at-top
  from alexnet_jax.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  parsed = {}
  for argv, want_size, want_input in (
      (['--config.data.image_size=300,200', '--config.data.crop_size=0'], (300, 200), (200, 300, 3)),
      (['--config.data.image_size=300x200', '--config.data.crop_size=150'], (300, 200), (150, 150, 3)),
      (['--config.data.image_size=256'], (256, 256), (64, 64, 3)),
      ([], (72, 72), (64, 64, 3))):
    values = flags.FlagValues()
    argv = ['prog', f'--config={os.path.join(REPO, "tests", "tiny_experiment.py")}', *argv]
    config_flags.DEFINE_config_file('config', flag_values=values, sys_argv=argv)   # (finds the overrides)
    values(argv)
    argv = argv[2:]
    config = values.config
    config_checks.validate(config)
    assert data.parse_image_size(config.data.image_size) == want_size, argv
    assert workdir_lib.image_shape_of(config) == want_input, argv
    parsed[tuple(argv)] = config.data.image_size
  assert parsed[('--config.data.image_size=300,200', '--config.data.crop_size=0')] == (300, 200)


def test_narrow_copies_and_the_test_experiment_pass():
  config_checks.check_network(tiny_experiment.get_config(), 3)
  config_checks.check_network(network_config('alexnet', 36, width=0.125), 3)
  with pytest.raises(ValueError, match='at least 36x36'):
    config_checks.check_network(network_config('alexnet', 35, width=0.125), 3)


def test_full_size_alexnet_is_checked_quickly():
  config = configs.default_config()
  config_checks.check_network(config, 1000)    # the first call traces jax's own helpers
  start = time.perf_counter()
  config_checks.check_network(config, 1000)
  assert time.perf_counter() - start < 2.0


class ValidConv(nn.Module):
  """A custom network that needs 5x5 inputs (a VALID 5x5 convolution before the classifier)."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (5, 5), padding='VALID')(x)
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def test_custom_networks_are_checked_too():
  name = 'tests.test_config_checks:ValidConv'
  config_checks.check_network(network_config(name, 5), 10)
  with pytest.raises(ValueError, match=re.escape(
      f'--config.data.crop_size=4: {name} needs inputs of at least 5x5')):
    config_checks.check_network(network_config(name, 4), 10)


class WrongOutput(nn.Module):
  """A custom network that fails at every size (its logits are not [batch, num_classes])."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(x)


def test_a_custom_network_failing_at_every_size_keeps_its_own_message():
  name = 'tests.test_config_checks:WrongOutput'
  with pytest.raises(ValueError, match=re.escape(f'--config.model.name={name}: the module must '
                                                 'return logits of shape')):
    config_checks.check_network(network_config(name, 8), 10)


def test_checks_touch_no_device():
  # With no usable platform, any array or compile would fail: the checks need shapes only.
  code = ('from alexnet_jax import configs; from alexnet_jax.training import config_checks\n'
          'c = configs.default_config()\n'
          'config_checks.validate(c)\n'
          'config_checks.check_network(c, 1000)\n'
          'c.data.crop_size = 32\n'
          'try:\n'
          '  config_checks.check_network(c, 1000)\n'
          'except ValueError as e:\n'
          '  print(e)\n')
  env = dict(os.environ, JAX_PLATFORMS='no_such_platform')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert 'alexnet needs inputs of at least 36x36' in proc.stdout


# ---- C. classify: URLs and directories ----------------------------------------------------------------

def test_classify_says_urls_are_not_fetched_and_folders_are_not_images(tmp_path):
  folder = tmp_path / 'some_folder'
  folder.mkdir()
  image = tmp_path / 'cat.jpg'
  image.write_bytes(b'')
  classify.check_image_arguments([str(image)])   # an existing file passes (decoding comes later)

  with pytest.raises(ValueError) as e:
    classify.check_image_arguments(['http://x/cat.jpg'])
  assert str(e.value) == ('http://x/cat.jpg: is a URL, and classify works offline (it fetches '
                          'nothing); download the file first and pass its path')
  with pytest.raises(ValueError) as e:
    classify.check_image_arguments([str(folder) + '/'])
  assert str(e.value) == (f'{folder}/ is a directory, not an image: pass its images (e.g. '
                          f'{folder}/*.jpg) or list them in a file for --image_list=FILE')
  with pytest.raises(FileNotFoundError, match='^no such image file: nope.jpg$'):
    classify.check_image_arguments(['nope.jpg'])
  with pytest.raises(ValueError) as e:
    classify.check_image_arguments(['https://a/b.png', str(folder), 'nope.jpg', str(image)])
  message = str(e.value)
  assert '\n' not in message
  assert all(part in message for part in ('https://a/b.png: is a URL', f'{folder} is a directory',
                                          'no such image file: nope.jpg'))


def test_classify_cli_refuses_a_url_before_loading_a_model(tmp_path):
  folder = tmp_path / 'some_folder'
  folder.mkdir()
  # The workdir does not exist: the image arguments are checked before the model is looked for.
  proc = subprocess.run([sys.executable, '-m', 'alexnet_jax.classify',
                         f'--workdir={tmp_path / "no_run"}', 'http://x/cat.jpg', f'{folder}/'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  last = proc.stderr.splitlines()[-1]
  assert last.startswith('error: http://x/cat.jpg: is a URL, and classify works offline')
  assert f'{folder}/ is a directory, not an image' in last


# ---- D. fileio: errors that name the path, permissions kept -------------------------------------------

def leftovers(folder):
  return sorted(n for n in os.listdir(folder) if n.endswith('.tmp'))


def test_a_full_disk_names_the_target_and_removes_the_temp_file(tmp_path, monkeypatch):
  target = tmp_path / 'demo.json'
  target.write_text('old')
  real_mkstemp = tempfile.mkstemp

  def mkstemp_on_a_full_disk(*args, **kwargs):
    fd, tmp = real_mkstemp(*args, **kwargs)   # the temp file exists, as on a real disk
    os.close(fd)
    return os.open('/dev/full', os.O_WRONLY), tmp   # every write: ENOSPC

  monkeypatch.setattr(tempfile, 'mkstemp', mkstemp_on_a_full_disk)
  with pytest.raises(OSError) as e:
    fileio.write_json(target, {'a': 1})
  assert str(e.value) == f'cannot write {target}: no space left on device'
  assert e.value.errno == errno.ENOSPC
  assert leftovers(tmp_path) == [] and target.read_text() == 'old'


@pytest.mark.parametrize('code,kind,words', [
    (errno.EROFS, OSError, 'read-only file system'),
    (errno.EACCES, PermissionError, 'permission denied'),
    (errno.EDQUOT, OSError, 'disk quota exceeded'),
])
def test_a_failing_rename_names_the_target(tmp_path, monkeypatch, code, kind, words):
  target = tmp_path / 'metrics.jsonl'

  def refuse(src, dst):
    raise OSError(code, os.strerror(code), src, dst)

  monkeypatch.setattr(os, 'replace', refuse)
  with pytest.raises(kind) as e:
    fileio.write_bytes(str(target), b'x')
  assert str(e.value) == f'cannot write {target}: {words}'
  assert '.tmp' not in str(e.value) and leftovers(tmp_path) == [] and not target.exists()


def test_unwritable_places_are_named(tmp_path):
  # /proc takes no new files, even for root (chmod 0o500 would not stop root).
  with pytest.raises(OSError, match=r'^cannot write /proc/alexnet_jax_test\.json: cannot create a '
                                    r'file in /proc: '):
    fileio.write_json('/proc/alexnet_jax_test.json', {})
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('')
  for target in (a_file / 'x.json', a_file / 'sub' / 'x.json'):
    with pytest.raises(NotADirectoryError) as e:
      fileio.write_json(target, {})
    assert str(e.value) == f'cannot write {target}: {a_file} is a file, not a folder'
  folder = tmp_path / 'plots'
  folder.mkdir()
  with pytest.raises(IsADirectoryError) as e:
    fileio.write_bytes(folder, b'png')
  assert str(e.value) == f'cannot write {folder}: is a directory'
  assert sorted(os.listdir(tmp_path)) == ['notes.txt', 'plots']


def test_errors_about_other_files_pass_through(tmp_path):
  target = tmp_path / 'out.json'
  with pytest.raises(FileNotFoundError) as e:
    with fileio.atomic_write(target, 'w') as f:
      f.write('{')
      open(tmp_path / 'missing.txt', encoding='utf-8').close()
  assert e.value.filename == str(tmp_path / 'missing.txt')
  inner = tmp_path / 'notes.txt'
  inner.write_text('')
  with pytest.raises(NotADirectoryError) as e:   # an inner write's message is not wrapped again
    with fileio.atomic_write(target, 'w'):
      fileio.write_json(inner / 'x.json', {})
  assert str(e.value).startswith(f'cannot write {inner / "x.json"}: ')
  assert sorted(os.listdir(tmp_path)) == ['notes.txt']


def test_a_replaced_file_keeps_its_permissions(tmp_path):
  target = tmp_path / 'metrics.jsonl'
  target.write_text('{"step": 1}\n')
  for mode in (0o640, 0o644, 0o600, 0o444):
    os.chmod(target, mode)
    with fileio.atomic_write(target, 'w') as f:
      f.write('{"step": 1}\n')
    assert os.stat(target).st_mode & 0o777 == mode


def test_a_new_file_gets_0666_less_the_umask(tmp_path):
  old = os.umask(0o027)
  try:
    assert fileio.umask() == 0o027 and fileio.umask() == 0o027   # reading it leaves it as it was
    fileio.write_json(tmp_path / 'new.json', {})
  finally:
    os.umask(old)
  assert os.stat(tmp_path / 'new.json').st_mode & 0o777 == 0o640


def test_text_mode_is_utf8(tmp_path):
  with fileio.atomic_write(tmp_path / 'labels.txt', 'w') as f:
    f.write('café\n')
  assert (tmp_path / 'labels.txt').read_bytes() == 'café\n'.encode('utf-8')
