"""Small bundles of random, untrained networks for the ONNX export tests: written in a second, without
training (the export reads only a bundle's parameters, config, labels and contract)."""

import json
import os

import jax
import numpy as np

from alexnet_jax import configs, data, models
from alexnet_jax.inference import bundle as bundle_lib
from alexnet_jax.runtime import fileio


def make_bundle(folder, name: str, *, width: float, image_size, crop_size: int, channels: int = 3,
                mean_mode: str = 'image', num_classes: int = 3, seed: int = 0, **model) -> str:
  """A bundle folder ``folder/bundle`` of network ``name`` with random weights *and* random biases
  (init biases are constants, which would hide a bias put in the wrong place)."""
  config = configs.default_config()
  config.model.name = name
  config.model.width = width
  for key, value in model.items():
    config.model[key] = value
  config.data.image_size = image_size
  config.data.crop_size = crop_size
  run = os.path.join(folder, 'run')
  os.makedirs(run, exist_ok=True)
  fileio.write_json(os.path.join(run, 'config.json'), json.loads(config.to_json_best_effort()))
  classes = [f'class {i}' for i in range(num_classes)]
  with open(os.path.join(run, 'labels.txt'), 'w') as f:
    f.write(''.join(c + '\n' for c in classes))
  rng = np.random.default_rng(seed)
  w, h = (image_size, image_size) if isinstance(image_size, int) else image_size
  mean = rng.uniform(60, 180, (h, w, channels)).astype(np.float32)
  contract = data.PreprocessContract((w, h), crop_size, 'squash', channels, mean_mode, mean)
  contract.save(run)
  network = models.build(config.model, num_classes)
  # Only the shapes come from the network (eval_shape: nothing is compiled); every value is drawn here.
  shapes = jax.eval_shape(lambda key: network.init(key, contract.input_shape), jax.random.key(seed))
  params = jax.tree_util.tree_map_with_path(lambda path, a: _randomize(rng, jax.tree_util.keystr(path), a),
                                            shapes)
  out = os.path.join(folder, 'bundle')
  bundle_lib.write_bundle_dir(out, workdir=run, host_params=params, network=network, config=config,
                              classes=classes, step=7, step_metrics=None, ten_crop=False)
  return out


def _randomize(rng, path: str, a: np.ndarray) -> np.ndarray:
  """Biases N(0, 0.5); kernels N(0, 2 / fan_in) (He), so that activations on the 0..255 scale stay large
  through the ReLUs (~100 after conv1) for LRN to matter and the logits to depend on the image, not on the
  biases."""
  if 'bias' in path:
    return rng.normal(0, 0.5, a.shape).astype(np.float32)
  fan_in = int(np.prod(a.shape[1:-1]))   # [tower, ..., in, out]
  return rng.normal(0, (2 / fan_in) ** 0.5, a.shape).astype(np.float32)
