"""Parameter trees as plain data: nested dicts walked leaf by leaf, flattened by path and back, counted.

One walk for every flattening in the package: the names of a bundle's ``params.npz``
(``towers/conv1/kernel``, inference/bundle.py), the ``--config.`` names of a run's config
(``data.source``, run/workdir.py) and a custom network's two-level layers (custom.py). A tree is nested
``dict``s; anything else is a leaf.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax


def leaves_by_path(tree: dict[str, Any], prefix: tuple[str, ...] = ()
                   ) -> Iterator[tuple[tuple[str, ...], Any]]:
  """(the keys leading to a leaf, the leaf) for every leaf, in the dicts' order."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from leaves_by_path(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def flatten(tree: dict[str, Any], separator: str = '/') -> dict[str, Any]:
  """``{'towers': {'conv1': {'kernel': a}}}`` -> ``{'towers/conv1/kernel': a}``."""
  return {separator.join(str(k) for k in path): leaf for path, leaf in leaves_by_path(tree)}


def unflatten(flat: dict[str, Any], separator: str = '/') -> dict[str, Any]:
  """The inverse of ``flatten``."""
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *path, leaf = name.split(separator)
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def param_count(params: Any) -> int:
  """The number of parameters (scalars) of a tree of arrays: jax, numpy, on devices or on the host."""
  return sum(int(a.size) for a in jax.tree.leaves(params))
