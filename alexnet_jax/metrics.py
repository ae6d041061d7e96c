"""Classification metrics: top-k counts, masked accuracy, confusion matrices, an eval summary.

What it is for: the jitted train/eval steps call `batch_stats` (pure jnp, sums over the examples the
mask keeps, so a padded last batch counts right), the host adds the results into an `EvalAccumulator`,
and `EvalAccumulator.summary()` gives the JSON-able dict that `evaluate.py` writes to
`WORKDIR/eval/<split>-<step>.json` (loss, top1, top5, per-class accuracy, confusion matrix).

Conventions:
* Accuracies are fractions in [0, 1]; plots multiply by 100 for DIGITS' percent axis.
* Top-k follows Caffe's `AccuracyLayer` (which DIGITS reports): an example is correct at k when fewer
  than k classes score *strictly higher* than its label. Ties therefore count in the label's favour, and
  it needs no sort (a compare and a sum, cheap on any device). With k >= the number of classes every
  example is correct (DIGITS then hides its top-5 layer; we still report it, as 1.0).
* The confusion matrix is `[true class, predicted class]` counts; per-class accuracy is its diagonal over
  its row sums (recall), None in JSON for a class with no examples.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = Any  # jax.Array or np.ndarray


def _mask(labels: Array, mask: Optional[Array]) -> jax.Array:
  if mask is None:
    return jnp.ones(jnp.shape(labels), jnp.float32)
  return jnp.asarray(mask).astype(jnp.float32)


def cross_entropy(logits: Array, labels: Array) -> jax.Array:
  """Per-example softmax cross-entropy in float32 (`[B, K]`, int `[B]` -> `[B]`)."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, jnp.asarray(labels)[:, None].astype(jnp.int32), axis=-1)[:, 0]


def topk_correct(logits: Array, labels: Array, ks: Sequence[int] = (1, 5),
                 mask: Optional[Array] = None) -> dict[int, jax.Array]:
  """Number of (masked-in) examples whose label is within the top k, for each k (Caffe's rule)."""
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels).astype(jnp.int32)
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  better = jnp.sum(logits > label_logit, axis=-1)  # classes scoring strictly above the label
  # A NaN logit compares False with everything: never let it count as correct.
  finite = jnp.isfinite(label_logit[:, 0])
  m = _mask(labels, mask)
  return {int(k): jnp.sum(((better < k) & finite).astype(jnp.float32) * m) for k in ks}


def accuracy(logits: Array, labels: Array, mask: Optional[Array] = None, k: int = 1) -> jax.Array:
  """Top-k accuracy over the masked-in examples (0 when the mask is empty)."""
  correct = topk_correct(logits, labels, (k,), mask)[k]
  return correct / jnp.maximum(jnp.sum(_mask(labels, mask)), 1.0)


def batch_stats(logits: Array, labels: Array, mask: Optional[Array] = None,
                ks: Sequence[int] = (1, 5)) -> dict[str, jax.Array]:
  """Sums for one batch, jit-friendly: `loss_sum`, `count`, `correct_top{k}` and `pred` (argmax).

  Sums (not means) so batches of any size and padded batches add up exactly on the host.
  """
  m = _mask(labels, mask)
  stats = {'loss_sum': jnp.sum(cross_entropy(logits, labels) * m), 'count': jnp.sum(m),
           'pred': jnp.argmax(jnp.asarray(logits), axis=-1).astype(jnp.int32)}
  for k, v in topk_correct(logits, labels, ks, mask).items():
    stats[f'correct_top{k}'] = v
  return stats


def confusion_matrix(labels: Array, preds: Array, num_classes: int,
                     mask: Optional[Array] = None) -> np.ndarray:
  """`[true, predicted]` counts (int64) of the masked-in examples."""
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  preds = np.asarray(preds).astype(np.int64).reshape(-1)
  if mask is not None:
    keep = np.asarray(mask).reshape(-1).astype(bool)
    labels, preds = labels[keep], preds[keep]
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes
                      or preds.min() < 0 or preds.max() >= num_classes):
    raise ValueError(f'labels/predictions outside [0, {num_classes})')
  counts = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)


def per_class_accuracy(confusion: Array) -> np.ndarray:
  """Diagonal over row sums (recall per true class); NaN for classes without examples."""
  confusion = np.asarray(confusion, np.float64)
  totals = confusion.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


def _json_float(x: float) -> Optional[float]:
  x = float(x)
  return x if math.isfinite(x) else None


class EvalAccumulator:
  """Adds up `batch_stats` over an evaluation and summarizes it.

  Example:
    acc = EvalAccumulator(num_classes, class_names)
    for batch in data:
      stats = eval_step(state, batch)            # returns metrics.batch_stats(logits, labels, mask)
      acc.update(stats, batch['label'], batch.get('mask'))
    summary = acc.summary()                      # JSON-able
  """

  def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None,
               ks: Sequence[int] = (1, 5)):
    if class_names is not None and len(class_names) != num_classes:
      raise ValueError(f'{len(class_names)} class names for {num_classes} classes')
    self.num_classes = int(num_classes)
    self.class_names = list(class_names) if class_names is not None else [
        str(i) for i in range(num_classes)]
    self.ks = tuple(int(k) for k in ks)
    self.loss_sum = 0.0
    self.count = 0.0
    self.correct = {k: 0.0 for k in self.ks}
    self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

  def update(self, stats: dict[str, Array], labels: Array, mask: Optional[Array] = None) -> None:
    """Adds one batch: `stats` from `batch_stats` (device or host arrays) and the batch's labels."""
    stats = jax.device_get(stats)
    self.loss_sum += float(stats['loss_sum'])
    self.count += float(stats['count'])
    for k in self.ks:
      self.correct[k] += float(stats[f'correct_top{k}'])
    self.confusion += confusion_matrix(labels, stats['pred'], self.num_classes, mask)

  def update_from_logits(self, logits: Array, labels: Array, mask: Optional[Array] = None) -> None:
    """Convenience for host-side logits (classify/evaluate on small sets, tests)."""
    self.update(batch_stats(logits, labels, mask, self.ks), labels, mask)

  def summary(self) -> dict[str, Any]:
    return summarize_eval(self.loss_sum, self.count, self.correct, self.confusion,
                          self.class_names)


def summarize_eval(loss_sum: float, count: float, correct: dict[int, float],
                   confusion: Array, class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """The JSON-able summary of an evaluation.

  Returns:
    {'count', 'loss', 'top1', 'top5' (one 'top{k}' per k), 'mean_class_accuracy',
     'per_class': {name: accuracy or None}, 'class_names': [...], 'confusion': [[int]]}
  """
  confusion = np.asarray(confusion)
  names = list(class_names) if class_names is not None else [
      str(i) for i in range(confusion.shape[0])]
  n = max(float(count), 1.0)
  per_class = per_class_accuracy(confusion)
  present = per_class[~np.isnan(per_class)]
  out: dict[str, Any] = {'count': int(round(count)), 'loss': _json_float(loss_sum / n)}
  for k in sorted(correct):
    out[f'top{k}'] = float(correct[k]) / n
  out['mean_class_accuracy'] = float(present.mean()) if present.size else None
  out['per_class'] = {name: _json_float(a) for name, a in zip(names, per_class)}
  out['class_names'] = names
  out['confusion'] = confusion.astype(np.int64).tolist()
  return out


def top_n(probabilities: Array, n: int = 5,
          class_names: Optional[Sequence[str]] = None) -> list[list[tuple[Any, float]]]:
  """Top-n (class, probability) per row, highest first (DIGITS' classify-one output)."""
  p = np.asarray(probabilities)
  n = min(n, p.shape[-1])
  idx = np.argsort(-p, axis=-1, kind='stable')[..., :n]
  out = []
  for row, ids in zip(p.reshape(-1, p.shape[-1]), idx.reshape(-1, n)):
    out.append([(class_names[i] if class_names is not None else int(i), float(row[i])) for i in ids])
  return out

