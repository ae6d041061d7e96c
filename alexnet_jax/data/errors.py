"""Exceptions of the data package.

Two kinds of failure are kept apart on purpose:

* `DataError` is a problem with the *request*: a missing source, a malformed list file, fewer than two usable
  classes, a flag value that cannot work. It stops the program, and its message names the file, the line or
  the flag so the user can fix it.
* `DecodeError` is a problem with *one record*: an empty, truncated, non-image or decompression-bomb file.
  It never stops a run: the prepare tool lists the file in `stats.json` with `reason`, and the training
  pipeline replaces the record by a deterministic other one and counts it (`batch['replaced']`).
"""

from __future__ import annotations


class DataError(ValueError):
  """A data source, list file or option that cannot be used; the message says which and why."""


class DecodeError(Exception):
  """One record could not be turned into an image.

  Attributes:
    reason: a short, stable category used in `stats.json` and in summaries (see `REASONS`).
    detail: the underlying message (Pillow's, the OS's).
  """

  def __init__(self, reason: str, detail: str = ''):
    super().__init__(f'{reason}: {detail}' if detail else reason)
    self.reason = reason
    self.detail = detail


# The reasons a record can be skipped, as they appear in stats.json["skipped"][i]["reason"].
EMPTY = 'empty file'
TRUNCATED = 'truncated or corrupt image'
NOT_AN_IMAGE = 'not an image'
BOMB = 'decompression bomb'
UNREADABLE = 'unreadable file'
MISSING = 'missing file'
DANGLING = 'dangling symlink'
UNSUPPORTED = 'unsupported image mode'
REASONS = (EMPTY, TRUNCATED, NOT_AN_IMAGE, BOMB, UNREADABLE, MISSING, DANGLING, UNSUPPORTED)
