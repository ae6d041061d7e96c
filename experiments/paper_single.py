r"""The 2012 recipe on one device: the same network and numbers as ``paper.py``, towers run in turn.

    python -m alexnet_jax.train --config=experiments/paper_single.py --workdir=runs/paper_single \
        --config.data.source=tfds:imagenet2012

Only the layout differs from ``experiments/paper.py``: both towers' halves of every layer live on one
device, and the exchanges at conv3, fc6, fc7 and fc8 are concatenates and sums in one program. The
parameters, dropout masks and updates are the same as in the two-device run (tests/test_layouts.py),
so a checkpoint of either resumes or evaluates in the other. Expected result: as ``paper.py``.
"""

from experiments import paper


def get_config():
  c = paper.get_config()
  c.layout = 'single'
  return c
