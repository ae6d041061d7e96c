"""Reading a growing ``metrics.jsonl`` by the bytes appended to it, for the live curves.

The trainer appends one JSON line per record (``run/metrics_writer.py``) and, when it starts again on
the same workdir (Resume), rewrites the file atomically without the records after its snapshot -- a new
file, so a new inode. ``MetricsTail.poll()`` therefore

* stats the file (one system call when nothing changed);
* reads only the bytes past its offset, keeping a torn last line for the next poll;
* answers ``reset=True`` with the whole new file when the inode changed or the file shrank, so the page
  drops its curves and draws them again (the SSE ``reset`` event).

It never reads the file twice, whatever its size: the stream of a 100,000-record run costs one ``stat``
per poll once it has caught up (``benchmarks/dashboard.py`` measures it).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from alexnet_jax.runtime import fileio


class MetricsTail:
  def __init__(self, path: str, max_read: int = 16 * 2**20):
    self.path = path
    self.max_read = max_read
    self.offset = 0
    self.inode: Optional[tuple[int, int]] = None
    self._partial = b''
    self.bytes_read = 0                 # for benchmarks and tests

  def poll(self) -> tuple[bool, list[dict[str, Any]]]:
    """(reset, new records) since the last poll."""
    try:
      st = os.stat(self.path)
    except OSError:
      if self.inode is not None:        # removed: start over when it comes back
        self.inode, self.offset, self._partial = None, 0, b''
        return True, []
      return False, []
    inode = (st.st_dev, st.st_ino)
    reset = False
    if self.inode is not None and (inode != self.inode or st.st_size < self.offset):
      reset = True
      self.offset, self._partial = 0, b''
    self.inode = inode
    if st.st_size <= self.offset:
      return reset, []
    try:
      with open(self.path, 'rb') as f:
        f.seek(self.offset)
        data = f.read(min(st.st_size - self.offset, self.max_read))
    except OSError:
      return reset, []
    self.offset += len(data)
    self.bytes_read += len(data)
    data = self._partial + data
    lines = data.split(b'\n')
    self._partial = lines.pop()         # b'' after a complete line, else a line still being written
    records = []
    for line in lines:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict):
        records.append(fileio.plain(record))   # NaN/Infinity as None: JSON.parse refuses them
    return reset, records
