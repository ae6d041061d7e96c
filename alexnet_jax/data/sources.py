"""Where labelled images come from: a folder, a DIGITS list file, a tfds dataset or a prepared dataset.

`open_source(spec)` returns a `Listing` -- class names, one key and one label per example, and a `Store`
that reads the bytes (or pixels) behind a key -- without decoding any image, so that listing ImageNet's
1.28M files costs seconds. Which kind a spec is, and the module that lists it (one source kind per module,
as big_vision's ``datasets/core.py`` dispatches to ``datasets/tfds.py`` and ``datasets/jsonl.py``):

* ``tfds:NAME[:SPLIT]`` -- a dataset prepared by tensorflow-datasets in ArrayRecord format
  (`tfds_source.py`);
* a directory holding ``stats.json`` and ``*.array_record`` -- the output of ``python -m alexnet_jax.prepare``,
  which brings its own splits and mean image (`prepared_source.py`, returns a `Prepared`);
* another directory -- a **folder** source, ``root/<class>/**/<image>`` (`folders.py`, with the rules for
  symbolic links);
* a file -- a **DIGITS list**: one ``path label`` line per image, its class names in ``labels.txt``
  (`list_source.py`; the lines are read by the one DIGITS list parser, `lists.py`).

What they share -- `Listing`, `Prepared`, the `Store`s and the listing cache that folder and tfds listings
keep in the run's workdir -- is in `listing.py`; its names are re-exported here, the interface of a source.
"""

from __future__ import annotations

import os

from alexnet_jax.data import errors
from alexnet_jax.data import folders
from alexnet_jax.data import list_source
from alexnet_jax.data import prepared_source
from alexnet_jax.data import tfds_source
from alexnet_jax.data.listing import FileStore
from alexnet_jax.data.listing import Listing
from alexnet_jax.data.listing import Prepared
from alexnet_jax.data.listing import Store
from alexnet_jax.data.tfds_source import TFDS_PREFIX

__all__ = ['FileStore', 'Listing', 'Prepared', 'Store', 'TFDS_PREFIX', 'display_name', 'open_source',
           'source_kind']


def display_name(label: str) -> str:
  """DIGITS' way of showing a class folder name: underscores as spaces."""
  return label.replace('_', ' ')


def source_kind(spec: str) -> str:
  """'tfds', 'prepared', 'folder' or 'list' (see the module docstring); 'missing' if nothing is there."""
  if spec.startswith(TFDS_PREFIX):
    return 'tfds'
  if os.path.isdir(spec):
    return 'prepared' if prepared_source.is_prepared(spec) else 'folder'
  if os.path.isfile(spec):
    return 'list'
  return 'missing'


def open_source(spec: str, *, what: str = 'source', image_root: str = '', labels_file: str = '',
                tfds_data_dir: str = '', cache_dir: str | None = None) -> Listing | Prepared:
  """Lists a source (module docstring).

  Args:
    spec: a folder, a DIGITS list file, ``tfds:NAME[:SPLIT]`` or a prepared dataset.
    what: the flag or config field that named it, for error messages.
    image_root: the base of a list file's relative paths ('' for the list's folder).
    labels_file: a list file's labels ('' for labels.txt beside it).
    tfds_data_dir: tfds' data_dir ('' for its default).
    cache_dir: where folder and tfds listings are cached (the run's workdir; None: no cache).
  """
  if not spec:
    raise errors.DataError(f'{what} is empty: give a folder, a list file, tfds:NAME[:SPLIT] or a prepared dir')
  kind = source_kind(spec)
  if kind == 'missing':
    raise errors.DataError(f'{what}={spec!r}: no such file or directory')
  if kind == 'tfds':
    return tfds_source.list_tfds(spec, data_dir=tfds_data_dir, what=what, cache_dir=cache_dir)
  if kind == 'prepared':
    return prepared_source.open_prepared(spec, what=what)
  if kind == 'folder':
    return folders.scan_folder(spec, what=what, cache_dir=cache_dir)
  return list_source.parse_list(spec, image_root=image_root, labels_file=labels_file, what=what)
