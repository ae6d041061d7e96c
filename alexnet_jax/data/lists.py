"""DIGITS' image lists (``path [label]`` per line): one parser for ``classify`` and the dashboard.

A list names one image per line, optionally followed by its integer label (the path may hold spaces:
the label is the last whitespace-separated integer). Blank lines and ``#`` comments are skipped.
Relative paths are taken against ``image_root``, else against the list's own folder, as the data
sources do. Whether a list is labelled is decided by its first entry; every other entry must agree,
and a label must name one of the model's classes.

Two ways to meet a bad line:

* ``parse_image_list`` (the command line) stops at the first one, naming ``file:line``, before any work;
* ``parse_lines`` (the dashboard's Classify Many) keeps going and returns the bad lines as
  ``Problem``s with their numbers, so a list of thousands is not refused for one typo.

Imports no JAX: the web process parses and checks a list before it starts the job that classifies it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional, Sequence

from alexnet_jax.data import errors

_LABELLED_LINE = re.compile(r'(.+?)\s+(\d+)\s*$')


@dataclasses.dataclass(frozen=True)
class Entry:
  """One image to classify: ``name`` as the user wrote it, ``path`` to read, its list line and label."""
  name: str
  path: str
  line: Optional[int] = None
  label: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Problem:
  """A list line that names no usable entry: its number, its text and why."""
  line: int
  text: str
  reason: str


def parse_lines(lines: Sequence[str], *, num_classes: int, base: str, limit: int = 0
                ) -> tuple[list[Entry], list[Problem]]:
  """Entries and bad lines of a list's ``lines`` (relative paths joined to ``base``).

  ``limit`` > 0 keeps the first ``limit`` entries (bad lines after that are not looked at).
  """
  entries: list[Entry] = []
  problems: list[Problem] = []
  labelled: Optional[bool] = None
  for lineno, raw in enumerate(lines, 1):
    text = raw.strip()
    if not text or text.startswith('#'):
      continue
    m = _LABELLED_LINE.match(text)
    has_label = m is not None
    if labelled is None:
      labelled = has_label
    elif has_label != labelled:
      first = 'a label' if labelled else 'no label'
      problems.append(Problem(lineno, text, f'expected "<image path>{" <integer label>" if labelled else ""}" '
                                            f'like the first entry ({first})'))
      continue
    name, label = (m.group(1).strip(), int(m.group(2))) if m else (text, None)
    if label is not None and label >= num_classes:
      problems.append(Problem(lineno, text, f'label {label} is out of range: the model has {num_classes} '
                                            f'classes (0..{num_classes - 1})'))
      continue
    entries.append(Entry(name, name if os.path.isabs(name) else os.path.join(base, name), lineno, label))
    if limit and len(entries) >= limit:
      break
  return entries, problems


def read_lines(list_path: str) -> list[str]:
  """The lines of a list file; FileNotFoundError naming it when it cannot be read."""
  try:
    with open(list_path, encoding='utf-8', errors='surrogateescape') as f:
      return f.read().splitlines()
  except OSError as e:
    raise FileNotFoundError(f'--image_list={list_path}: cannot read it ({e.strerror or e})') from None


def parse_image_list(list_path: str, *, num_classes: int, image_root: str = '',
                     limit: int = 0) -> list[Entry]:
  """Reads a DIGITS list; raises ``data.DataError`` naming ``file:line`` at its first bad line."""
  base = image_root or os.path.dirname(os.path.abspath(list_path))
  entries, problems = parse_lines(read_lines(list_path), num_classes=num_classes, base=base, limit=limit)
  if problems:
    p = problems[0]
    raise errors.DataError(f'{list_path}:{p.line}: {p.reason}, got {p.text!r}')
  if not entries:
    raise errors.DataError(f'--image_list={list_path} lists no images')
  return entries
