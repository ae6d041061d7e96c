"""DIGITS' image lists and labels files: the one parser, for every user of a list.

Its users: the training sources and prepared datasets (`list_source.py`, `prepared_source.py`), ``classify
--image_list`` and the dashboard's Classify Many, the New Dataset form's check of a list, and the dataset
page's view of a prepared split. All of them read a line the same way:

* **Lines** end at ``\\n``, ``\\r\\n`` or ``\\r`` (Python's universal newlines: a list written on Windows
  reads as one written on Linux). The text is UTF-8; bytes that are not are kept (surrogate escapes), and a
  byte-order mark at the start of the file is dropped.
* Leading and trailing whitespace is not part of an entry (trailing spaces, a stray ``\\r``). Blank lines
  are skipped, and so is a line whose first other character is ``#`` (a comment). A ``#`` later in the line
  is part of the path (``a#1.jpg 0``); a path that starts with ``#`` is written ``./#a.jpg``.
* **Labelled lines** are ``<path><whitespace><label>``: the label is the last whitespace-separated word
  when it is a decimal integer (ASCII digits), and the path is everything before it -- so a path may hold
  spaces and tabs (``my photo 1.jpg 3`` is ``my photo 1.jpg``, label 3). Whitespace is ASCII whitespace;
  spaces and tabs separate alike. A line whose last word is not an integer has no label: it is the path.
* A **labelled list** (a training, validation or test list; a prepared split) needs a label on every
  entry: a line without one is an error naming ``file:line``, and so is a label outside ``0..N-1`` of the
  labels file's N classes (the error gives the range).
* A **classify list** is paths, one per line (spaces allowed), or ``path label`` lines whose labels give
  the accuracy; its first entry decides which, and every other entry must agree (a label out of the model's
  range is an error too). ``parse_image_list`` (the command line) stops at the first bad line, naming
  ``file:line``, before any work; ``parse_lines`` (the dashboard's Classify Many) keeps going and returns
  the bad lines as ``Problem``s, so a list of thousands is not refused for one typo.

Relative paths are taken against ``image_root``, else against the list's own folder (an uploaded list has
none: the dashboard asks for the folder).

Where we follow and depart from DIGITS: ``tools/create_db.py`` matches ``(.+)\\s+(\\d+)\\s*$`` on the
stripped line, and Classify Many ``(.*\\S)\\s+(\\d+)$``, else takes the whole line as the path; we match
Classify Many's pattern (the path never ends in whitespace), with ASCII whitespace and digits as DIGITS'
Python 2 byte strings had them. DIGITS skipped a malformed line of a training list silently (and read
``# x 3`` as the path ``# x``) and never checked a label against the labels file; we skip comments and
stop at a malformed line or an out-of-range label, naming the file and line, since a silently shorter
dataset or a label past the last class only fails later and further away. The New Dataset form checks
every line's syntax and where its path leads; the label range is checked when the dataset is prepared
(the form does not read the labels file). The dataset page's split view leaves out a line it cannot read
(prepare never writes one): record i is the split list's i-th entry, as for training.

A labels file (``labels.txt``) names one class per line, line i naming label i; blank lines are skipped.

Imports no JAX (nor numpy): the web process parses and checks lists before it starts the job that uses one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
from typing import Iterable, Iterator, Optional, Union

from alexnet_jax.data import errors

_WHITESPACE = string.whitespace                         # ASCII: space, tab, \n, \r, \v, \f
_LABELLED = re.compile(r'(.*\S)\s+([0-9]+)', re.ASCII)  # fullmatch on the stripped line (greedy: fast)
_BOM = '\ufeff'
EXPECTED_LABELLED = 'expected "<image path> <integer label>"'


@dataclasses.dataclass(frozen=True)
class Entry:
  """One image of a list: ``name`` as the user wrote it, ``path`` to read, its list line and label."""
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


def split_line(text: str) -> Optional[tuple[str, Optional[int]]]:
  """(path, label or None) of one line; None for a blank line or a comment (module docstring)."""
  text = text.strip(_WHITESPACE)
  if not text or text.startswith('#'):
    return None
  m = _LABELLED.fullmatch(text)
  if m is None:
    return text, None
  return m.group(1), int(m.group(2))


def split_lines(text: str) -> list[str]:
  """The lines of a list's text, split at ``\\n``, ``\\r\\n`` or ``\\r`` (as ``open`` reads a file)."""
  return text.replace('\r\n', '\n').replace('\r', '\n').split('\n')


def iter_lines(lines: Iterable[str], *, num_classes: Optional[int], base: str,
               labelled: Optional[bool] = None, classes_of: str = 'the model'
               ) -> Iterator[Union[Entry, Problem]]:
  """An `Entry` or a `Problem` for every line that is neither blank nor a comment, in order.

  Args:
    lines: the list's lines (with or without their line ends: an open text file will do).
    num_classes: labels must be below it (None: not checked).
    base: relative paths are joined to it ('' keeps them as written).
    labelled: True: every entry needs a label; None: the first entry decides (a classify list).
    classes_of: whose classes ``num_classes`` counts, for the out-of-range message.
  """
  by_first = labelled is None
  for lineno, raw in enumerate(lines, 1):
    if lineno == 1 and raw.startswith(_BOM):
      raw = raw[1:]
    parsed = split_line(raw)
    if parsed is None:
      continue
    name, label = parsed
    if labelled is None:
      labelled = label is not None
    if labelled != (label is not None):
      text = raw.strip(_WHITESPACE)
      if not by_first:
        reason = f'{EXPECTED_LABELLED}: the line has no label (its last word must be an integer)'
      elif labelled:
        reason = f'{EXPECTED_LABELLED} like the first entry (a label)'
      else:
        reason = 'expected "<image path>" like the first entry (no label)'
      yield Problem(lineno, text, reason)
      continue
    if label is not None and num_classes is not None and label >= num_classes:
      yield Problem(lineno, raw.strip(_WHITESPACE), f'label {label} is out of range 0..{num_classes - 1} '
                                                    f'({classes_of} has {num_classes} classes)')
      continue
    yield Entry(name, name if not base or os.path.isabs(name) else os.path.join(base, name), lineno, label)


def parse_lines(lines: Iterable[str], *, num_classes: Optional[int], base: str, limit: int = 0,
                labelled: Optional[bool] = None, classes_of: str = 'the model'
                ) -> tuple[list[Entry], list[Problem]]:
  """Entries and bad lines of a list's ``lines`` (`iter_lines`'s arguments).

  ``limit`` > 0 keeps the first ``limit`` entries (bad lines after that are not looked at).
  """
  entries: list[Entry] = []
  problems: list[Problem] = []
  found_all = iter_lines(lines, num_classes=num_classes, base=base, labelled=labelled, classes_of=classes_of)
  for found in found_all:
    if isinstance(found, Problem):
      problems.append(found)
      continue
    entries.append(found)
    if limit and len(entries) >= limit:
      break
  return entries, problems


def read_lines(list_path: str, *, what: str = '--image_list') -> list[str]:
  """The lines of a list file; FileNotFoundError naming it when it cannot be read."""
  try:
    with open(list_path, encoding='utf-8', errors='surrogateescape') as f:
      return split_lines(f.read())
  except OSError as e:
    raise FileNotFoundError(f'{what}={list_path}: cannot read it ({e.strerror or e})') from None


def _first_problem(list_path: str, problems: list[Problem]) -> None:
  if problems:
    p = problems[0]
    raise errors.DataError(f'{list_path}:{p.line}: {p.reason}, got {p.text!r}')


def parse_image_list(list_path: str, *, num_classes: int, image_root: str = '',
                     limit: int = 0) -> list[Entry]:
  """Reads a classify list; raises ``data.DataError`` naming ``file:line`` at its first bad line."""
  base = image_root or os.path.dirname(os.path.abspath(list_path))
  entries, problems = parse_lines(read_lines(list_path), num_classes=num_classes, base=base, limit=limit)
  _first_problem(list_path, problems[:1])
  if not entries:
    raise errors.DataError(f'--image_list={list_path} lists no images')
  return entries


def read_labelled_list(list_path: str, *, num_classes: Optional[int], base: str = '',
                       what: str = 'source') -> tuple[list[str], list[int]]:
  """(paths, labels) of a labelled list (a training list, a prepared split's); raises ``data.DataError``
  naming ``file:line`` at its first bad line, and naming ``what`` when the file cannot be read."""
  paths: list[str] = []
  labels: list[int] = []
  try:
    f = open(list_path, encoding='utf-8', errors='surrogateescape')  # pylint: disable=consider-using-with
  except OSError as e:
    raise errors.DataError(f'{what}={list_path!r}: cannot read the list file: {e}') from None
  with f:
    for found in iter_lines(f, num_classes=num_classes, base=base, labelled=True,
                            classes_of='the labels file'):
      if isinstance(found, Problem):
        _first_problem(list_path, [found])
      paths.append(found.path)
      labels.append(found.label)
  return paths, labels


def read_labels_file(path: str, *, what: str = 'labels_file') -> list[str]:
  """DIGITS' labels.txt: one class name per line (line i names label i), blank lines skipped."""
  try:
    with open(path, encoding='utf-8', errors='surrogateescape') as f:
      names = [line.strip() for line in f if line.strip()]
  except OSError as e:
    raise errors.DataError(f'{what}: cannot read labels file {path!r}: {e}') from None
  if not names:
    raise errors.DataError(f'{what}: labels file {path!r} is empty')
  return names
