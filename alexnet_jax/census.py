"""``python -m alexnet_jax.census``: what each device layout communicates, holds and computes.

    python -m alexnet_jax.census --layouts=single,model,data,hybrid --devices=4 --width=0.25 \\
        --batch=8 --image_size=224 [--json=census.json]     # or --image_size=300,200 (W,H)

For each layout: the collectives of the compiled train step (layer, op, axis, pass, bytes), the parameter
bytes held per device, the parameter count, and the largest difference of logits and gradients from the
``single`` layout on the same batch and dropout key. With no accelerator it forces ``--devices`` CPU host
devices first.
"""

from __future__ import annotations

from absl import flags

from alexnet_jax.runtime import cli, fileio

FLAGS = flags.FLAGS


def main(argv):
  del argv
  from alexnet_jax.data import sizes
  try:
    width, height = sizes.parse_image_size(FLAGS.image_size)   # a user error before JAX starts
  except ValueError as e:
    raise ValueError(f'--image_size={FLAGS.image_size}: {e}') from None
  from alexnet_jax.runtime.devices import ensure_devices
  ensure_devices(FLAGS.devices)
  import ml_collections
  from alexnet_jax import models
  from alexnet_jax.parallel import compare, layouts

  model_config = ml_collections.ConfigDict(dict(
      name=FLAGS.model, width=FLAGS.width, dropout=0.5, lrn='paper', bias_init='paper',
      dtype='float32'))
  network = models.build(model_config, FLAGS.num_classes)
  # Validate every layout before compiling any.
  for name in FLAGS.layouts:
    layouts.resolve(name, network, num_devices=FLAGS.devices, batch_size=FLAGS.batch)
  names = ['single'] + [n for n in FLAGS.layouts if n != 'single']
  runs = {name: compare.run_layout(network, name, batch=FLAGS.batch, image_size=(height, width))
          for name in names}
  reference = runs['single']
  report = {'model': FLAGS.model, 'width': FLAGS.width, 'batch': FLAGS.batch,
            'image_size': [width, height], 'num_classes': FLAGS.num_classes,
            'layouts': {name: runs[name].to_json(reference) for name in FLAGS.layouts}}
  for name in FLAGS.layouts:
    print(compare.format_table(name, report['layouts'][name]))
  if FLAGS.json:
    fileio.write_json(FLAGS.json, report, indent=2)
    print(f'wrote {FLAGS.json}')


def define_flags() -> None:
  """Flags of the command (defined only when it runs, so that importing this module defines none)."""
  flags.DEFINE_list('layouts', ['single', 'model', 'data', 'hybrid'], 'Layouts to compare.')
  flags.DEFINE_integer('devices', 4, 'Devices to use (forced CPU host devices when no accelerator).')
  flags.DEFINE_string('model', 'alexnet', 'alexnet | alexnet_owt')
  flags.DEFINE_float('width', 0.25, 'Channel multiplier (1.0 = the paper).')
  flags.DEFINE_integer('batch', 8, 'Global batch size.')
  flags.DEFINE_string('image_size', '224', "The network input: WIDTH,HEIGHT (DIGITS' order) or one "
                      'number for a square.')
  flags.DEFINE_integer('num_classes', 1000, 'Classes of the classifier.')
  flags.DEFINE_string('json', None, 'Also write the report as JSON to this path.')


def run():
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
