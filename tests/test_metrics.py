"""metrics: Caffe's top-k rule, masks, confusion matrices, the JSON summary."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import metrics


def _reference_topk(logits, labels, k):
  """Caffe AccuracyLayer: correct unless k classes score strictly above the label."""
  return sum(int(np.sum(row > row[y]) < k) for row, y in zip(logits, labels))


def test_topk_matches_caffe_rule_including_ties():
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 4, size=(64, 10)).astype(np.float32)  # many ties
  labels = rng.integers(0, 10, size=64)
  got = metrics.topk_correct(logits, labels, ks=(1, 3, 5, 10))
  for k in (1, 3, 5, 10):
    assert float(got[k]) == _reference_topk(logits, labels, k)
  assert float(got[10]) == 64


def test_accuracy_with_mask_and_under_jit():
  logits = jnp.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 5.0], [9.0, 0.0, 0.0]])
  labels = jnp.array([0, 2, 2, 1])
  assert float(metrics.accuracy(logits, labels)) == pytest.approx(0.5)
  mask = jnp.array([1, 1, 1, 0])  # the last row is padding
  assert float(jax.jit(metrics.accuracy)(logits, labels, mask)) == pytest.approx(2 / 3)
  assert float(metrics.accuracy(logits, labels, mask, k=2)) == pytest.approx(1.0)
  assert float(metrics.accuracy(logits, labels, jnp.zeros(4))) == 0.0


def test_batch_stats_sums_add_up_across_padded_batches():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((10, 7)).astype(np.float32)
  labels = rng.integers(0, 7, size=10)
  whole = jax.jit(metrics.batch_stats)(logits, labels)
  # The same 10 examples as batches of 4, the last padded to 4 with a mask.
  acc = metrics.EvalAccumulator(7)
  for start in (0, 4, 8):
    lg, lb = logits[start:start + 4], labels[start:start + 4]
    mask = np.ones(4)
    if len(lb) < 4:
      mask[len(lb):] = 0
      lg = np.concatenate([lg, np.zeros((4 - len(lb), 7), np.float32)])
      lb = np.concatenate([lb, np.zeros(4 - len(lb), lb.dtype)])
    acc.update(jax.jit(metrics.batch_stats)(lg, lb, mask), lb, mask)
  assert acc.count == 10
  assert acc.loss_sum == pytest.approx(float(whole['loss_sum']), rel=1e-6)
  assert acc.correct[1] == float(whole['correct_top1'])
  assert acc.correct[5] == float(whole['correct_top5'])
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  assert acc.loss_sum / 10 == pytest.approx(-np.mean(logp[np.arange(10), labels]), rel=1e-5)
  np.testing.assert_array_equal(acc.confusion, metrics.confusion_matrix(labels, logits.argmax(-1), 7))


def test_confusion_matrix_and_per_class_accuracy():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
  preds = np.array([0, 1, 0, 1, 1, 0, 2, 1])
  cm = metrics.confusion_matrix(labels, preds, 4)
  assert cm.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
  acc = metrics.per_class_accuracy(cm)
  np.testing.assert_allclose(acc[:3], [2 / 3, 1.0, 1 / 3])
  assert np.isnan(acc[3])
  masked = metrics.confusion_matrix(labels, preds, 4, mask=np.array([1, 1, 1, 1, 1, 0, 0, 0]))
  assert masked.sum() == 5
  with pytest.raises(ValueError, match='outside'):
    metrics.confusion_matrix(np.array([5]), np.array([0]), 4)


def test_summary_is_json_able():
  acc = metrics.EvalAccumulator(3, ['cat', 'dog', 'fish'])
  logits = np.array([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]], np.float32)
  acc.update_from_logits(logits, np.array([0, 1, 1, 2]))
  s = json.loads(json.dumps(acc.summary(), allow_nan=False))
  assert s['count'] == 4 and s['top1'] == 0.75 and s['top5'] == 1.0
  assert s['per_class'] == {'cat': 1.0, 'dog': 0.5, 'fish': 1.0}
  assert s['mean_class_accuracy'] == pytest.approx(2.5 / 3)
  assert s['confusion'] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
  assert s['class_names'] == ['cat', 'dog', 'fish'] and s['loss'] > 0
  # A class with no examples is null, not NaN.
  empty = metrics.EvalAccumulator(2)
  empty.update_from_logits(np.array([[1.0, 0.0]]), np.array([0]))
  assert json.loads(json.dumps(empty.summary(), allow_nan=False))['per_class'] == {'0': 1.0, '1': None}


def test_top_n():
  p = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
  assert metrics.top_n(p, 2, ['a', 'b', 'c']) == [[('b', 0.7), ('c', 0.2)], [('a', 0.5), ('c', 0.3)]]
  assert metrics.top_n(p, 9)[0][2] == (0, 0.1)


def test_nan_logits_never_count_as_correct():
  import jax.numpy as jnp
  from alexnet_jax import metrics as m
  correct = m.topk_correct(jnp.full((2, 5), jnp.nan), jnp.array([0, 1]), (1, 5))
  assert float(correct[1]) == 0.0 and float(correct[5]) == 0.0
