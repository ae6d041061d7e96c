"""The library behind ``python -m alexnet_jax.classify`` (``classify.py``, whose docstring shows the
outputs): classification of many images with accuracy and top-N per category, and the JSON/CSV/table
writers. The lists themselves are read by ``data/lists.py``; the dashboard's Classify Many runs the
command as a job (``--status_dir`` keeps its progress).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np
import PIL.Image

from alexnet_jax import inference, metrics
from alexnet_jax.data import reports
from alexnet_jax.inference import visualization
from alexnet_jax.run import plots
from alexnet_jax.runtime import fileio
from alexnet_jax.data.lists import Entry

FORMATS = ('table', 'json', 'csv')
MAX_SHEET_CLASSES = 100                              # rows of the top-N contact sheet


# ---- Classification ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Results:
  """Everything ``classify_entries`` found; the writers below turn it into JSON, CSV or a table.

  ``probabilities`` is float32 [N, num_classes], a row of NaN where ``errors`` has the entry's index.
  """
  entries: list[Entry]
  classes: list[str]
  probabilities: np.ndarray
  errors: dict[int, str]
  top_k: int
  model: dict[str, Any]
  accuracy: Optional[dict[str, Any]] = None
  top_n_per_category: Optional[dict[str, list[tuple[str, float]]]] = None

  def ranked(self, i: int) -> list[tuple[str, float]]:
    return metrics.top_n(self.probabilities[i][None], self.top_k, self.classes)[0]


def classify_entries(model: inference.Model, entries: Sequence[Entry], *, top_k: int = 5,
                     ten_crop: Optional[bool] = None, top_n_per_category: int = 0,
                     progress: bool = True, status: Optional[Any] = None) -> Results:
  """Classifies ``entries`` in batches; accuracy when they carry labels; the top-N per class if asked.

  ``status``: a ``run.status.StatusWriter`` that gets ``done``/``total``/``progress``/``eta_seconds``
  (throttled by the writer), for a dashboard job's progress bar.
  """
  if top_k < 1:
    raise ValueError(f'--top_k={top_k} must be at least 1')
  probs = np.full((len(entries), model.num_classes), np.nan, np.float32)
  errors: dict[int, str] = {}
  total, start = len(entries), time.monotonic()
  for done, p in enumerate(model.classify([e.path for e in entries], ten_crop=ten_crop,
                                          progress=progress), 1):
    if p.error:
      errors[p.index] = p.error
    else:
      probs[p.index] = p.probabilities
    if status is not None:
      rate = done / max(1e-9, time.monotonic() - start)
      status.update(force=done == total, done=done, total=total, failed=len(errors),
                    progress=done / total, eta_seconds=(total - done) / rate, images_per_sec=rate)
  used_ten_crop = model.ten_crop if ten_crop is None else bool(ten_crop)
  results = Results(list(entries), model.classes, probs, errors, top_k, {
      'source': model.path, 'kind': model.kind, 'network': model.network.name, 'step': model.step,
      'layout': model.layout.name, 'ten_crop': used_ten_crop, 'classes': model.num_classes})
  if entries and all(e.label is not None for e in entries):
    results.accuracy = accuracy_report(probs, [e.label for e in entries], model.classes, errors)
  if top_n_per_category > 0:
    results.top_n_per_category = top_n_per_category_of(probs, [e.name for e in entries],
                                                       model.classes, top_n_per_category)
  return results


def accuracy_report(probs: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                    errors: dict[int, str]) -> dict[str, Any]:
  """top1, top5, per_class, confusion (and loss, count) over the images that could be read.

  The same ``metrics.EvalAccumulator`` as ``evaluate``; log-probabilities serve as logits (a softmax
  of log p is p), so the loss is the cross-entropy of the probabilities shown.
  """
  ok = np.array([i not in errors for i in range(len(labels))], bool)
  acc = metrics.EvalAccumulator(len(classes), list(classes))
  if ok.any():
    logp = np.log(np.maximum(probs[ok].astype(np.float64), 1e-30))
    acc.update_from_logits(logp, np.asarray(labels)[ok])
  summary = acc.summary()
  summary['failed'] = int((~ok).sum())
  return summary


def top_n_per_category_of(probs: np.ndarray, names: Sequence[str], classes: Sequence[str],
                          n: int) -> dict[str, list[tuple[str, float]]]:
  """For each class, the ``n`` images (name, probability of that class) scoring highest for it."""
  scores = np.where(np.isnan(probs), -np.inf, probs)
  out: dict[str, list[tuple[str, float]]] = {}
  for c, cls in enumerate(classes):
    order = np.argsort(-scores[:, c], kind='stable')
    out[cls] = [(names[i], float(probs[i, c])) for i in order[:n] if np.isfinite(scores[i, c])]
  return out


# ---- Writers -------------------------------------------------------------------------------------------

def to_json(results: Results) -> dict[str, Any]:
  doc: dict[str, Any] = {
      'model': results.model,
      'predictions': {e.name: [[label, p] for label, p in results.ranked(i)]
                      for i, e in enumerate(results.entries) if i not in results.errors},
      'errors': [{'path': results.entries[i].name, 'line': results.entries[i].line, 'reason': msg}
                 for i, msg in sorted(results.errors.items())]}
  if results.accuracy is not None:
    doc['accuracy'] = results.accuracy
  if results.top_n_per_category is not None:
    doc['top_n_per_category'] = {c: [[name, p] for name, p in rows]
                                 for c, rows in results.top_n_per_category.items()}
  return doc


def to_csv(results: Results) -> str:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(['path', 'line', 'rank', 'label', 'probability', 'true_label', 'error'])
  for i, e in enumerate(results.entries):
    line = '' if e.line is None else e.line
    truth = '' if e.label is None else results.classes[e.label]
    if i in results.errors:
      writer.writerow([e.name, line, '', '', '', truth, results.errors[i]])
      continue
    for rank, (label, p) in enumerate(results.ranked(i), 1):
      writer.writerow([e.name, line, rank, label, f'{p:.6f}', truth, ''])
  return buf.getvalue()


def to_table(results: Results) -> str:
  width = max([len(c) for c in results.classes] + [5])
  out: list[str] = []
  for i, e in enumerate(results.entries):
    where = f'  (line {e.line})' if e.line is not None else ''
    truth = f'  true: {results.classes[e.label]}' if e.label is not None else ''
    out.append(f'{e.name}{where}{truth}')
    if i in results.errors:
      out.append(f'   error: {results.errors[i]}')
    else:
      out.append(f'   #  {"label":<{width}}  confidence')
      for rank, (label, p) in enumerate(results.ranked(i), 1):
        out.append(f'  {rank:>2}  {label:<{width}}  {100 * p:9.2f}%')
    out.append('')
  if results.accuracy is not None:
    out.append(accuracy_text(results.accuracy))
  if results.top_n_per_category is not None:
    out.append('top predictions per category:')
    for cls, rows in results.top_n_per_category.items():
      out.append(f'  {cls}: ' + ', '.join(f'{name} ({100 * p:.2f}%)' for name, p in rows))
  return '\n'.join(out).rstrip('\n') + '\n'


def accuracy_text(acc: dict[str, Any]) -> str:
  lines = [f'accuracy: top-1 {100 * acc["top1"]:.2f}%  top-5 {100 * acc["top5"]:.2f}%  '
           f'({acc["count"]} images' + (f', {acc["failed"]} unreadable)' if acc['failed'] else ')')]
  for cls, a in acc['per_class'].items():
    lines.append(f'  {cls}: ' + ('no images' if a is None else f'{100 * a:.2f}%'))
  return '\n'.join(lines)


def write_text_atomic(text: str, path: str) -> str:
  """Writes ``text`` (UTF-8) to a temp file beside ``path`` and renames it into place."""
  return fileio.write_bytes(path, text.encode('utf-8', errors='surrogateescape'))


def report_paths(output: str, report_dir: str) -> Optional[dict[str, str]]:
  """Where the side files go: ``report_dir/<name>``, else ``<output stem>-<name>``; None for neither."""
  names = {'confusion': 'confusion.png', 'accuracy': 'accuracy.json',
           'top_n_json': 'top_n_per_category.json', 'top_n_png': 'top_n_per_category.png'}
  if report_dir:
    return {k: os.path.join(report_dir, v) for k, v in names.items()}
  if output:
    stem = os.path.splitext(output)[0]
    return {k: f'{stem}-{v}' for k, v in names.items()}
  return None


def _sheet_cell(path: str, size: int) -> PIL.Image.Image:
  """The image's thumbnail, letterboxed on white; a grey square if it cannot be read (the sheet is still
  useful with one grey cell)."""
  try:
    with PIL.Image.open(path) as image:
      return reports.thumbnail(image, size, fit='pad')
  except Exception:  # noqa: BLE001
    return PIL.Image.new('RGB', (size, size), (200, 200, 200))


def top_n_sheet(results: Results, path: str) -> str:
  """The top-N-per-category contact sheet (a row per class, at most ``MAX_SHEET_CLASSES`` rows)."""
  by_name = {e.name: e.path for e in results.entries}
  rows = []
  for cls, picks in list(results.top_n_per_category.items())[:MAX_SHEET_CLASSES]:
    rows.append((cls, [(_sheet_cell(by_name[name], 96),
                        f'{100 * p:.1f}% {os.path.basename(name)}'[:16]) for name, p in picks]))
  more = len(results.top_n_per_category) - len(rows)
  title = 'top predictions per category' + (f' (first {len(rows)} classes; {more} more in the JSON)'
                                            if more > 0 else '')
  return visualization.save_png(visualization.image_grid(rows, title=title), path)


def write_results(results: Results, fmt: str, output: str = '', report_dir: str = '',
                  stdout=None, csv_output: str = '') -> list[str]:
  """Writes the predictions (``output`` or ``stdout``) and the report files; returns the paths written.

  ``csv_output``: also the CSV there (the dashboard keeps JSON for its pages and CSV to download).
  The report files are written first and the predictions last, each atomically: if drawing a PNG
  fails, no predictions file claims a finished run.
  """
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r}: choose one of {", ".join(FORMATS)}')
  written: list[str] = []
  paths = report_paths(output, report_dir)
  if paths is not None:
    if results.accuracy is not None:
      written.append(plots.plot_confusion_matrix(np.asarray(results.accuracy['confusion']),
                                                 results.classes, paths['confusion']))
      if fmt != 'json':
        written.append(fileio.write_json(paths['accuracy'], results.accuracy, indent=1))
    if results.top_n_per_category is not None:
      written.append(top_n_sheet(results, paths['top_n_png']))
      if fmt != 'json':
        doc = {c: [[n, p] for n, p in rows] for c, rows in results.top_n_per_category.items()}
        written.append(fileio.write_json(paths['top_n_json'], doc, indent=1))
  if csv_output:
    written.append(write_text_atomic(to_csv(results), csv_output))
  if fmt == 'json':
    text = json.dumps(to_json(results), indent=1) + '\n'
  elif fmt == 'csv':
    text = to_csv(results)
  else:
    text = to_table(results)
  if output:
    written.append(write_text_atomic(text, output))
  else:
    (stdout or sys.stdout).write(text)
  return written
