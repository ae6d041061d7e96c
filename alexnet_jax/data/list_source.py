"""DIGITS list sources: a text file of ``path label`` lines, its labels in ``labels.txt``.

The lines are read by the one DIGITS list parser (`lists.py`: paths may hold spaces; blank lines and ``#``
comments are skipped; a line without a label or with a label outside the labels file's range is an error
naming the file and the line). Relative paths are taken against `image_root`, else against the list
file's folder. Label names come from `labels_file`, else from ``labels.txt`` beside the list (line i =
name of label i).
"""

from __future__ import annotations

import os

import numpy as np

from alexnet_jax.data import errors
from alexnet_jax.data import lists
from alexnet_jax.data.listing import FileStore
from alexnet_jax.data.listing import Listing


def parse_list(path: str, *, image_root: str = '', labels_file: str = '', what: str = 'source') -> Listing:
  """Lists a DIGITS list file (module docstring)."""
  path = os.path.abspath(path)
  labels_path = labels_file or os.path.join(os.path.dirname(path), 'labels.txt')
  if not os.path.isfile(labels_path):
    raise errors.DataError(
        f'{what}={path!r} is a list file, but its labels file {labels_path!r} does not exist '
        '(put labels.txt beside the list, or set the labels file)')
  classes = lists.read_labels_file(labels_path, what=what)
  base = image_root or os.path.dirname(path)
  paths, labels = lists.read_labelled_list(path, num_classes=len(classes), base=base, what=what)
  if not paths:
    raise errors.DataError(f'{what}={path!r}: the list file has no "<path> <label>" lines')
  return Listing(classes, paths, np.asarray(labels, np.int32), FileStore(), [], f'list {path}')
