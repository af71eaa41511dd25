"""Confusion matrix and IoU against a direct numpy count, the ignore label included."""

import jax.numpy as jnp
import numpy as np
import pytest

from dilated_jax import metrics
from dilated_jax.data.info import IGNORE_LABEL


def reference_iou(labels, preds, num_classes):
  """IoU by counting pixels class by class; void pixels are skipped; classes absent from both are NaN."""
  keep = labels != IGNORE_LABEL
  labels, preds = labels[keep], preds[keep]
  iou = []
  for c in range(num_classes):
    inter = np.sum((labels == c) & (preds == c))
    union = np.sum((labels == c) | (preds == c))
    iou.append(inter / union if union else np.nan)
  return np.array(iou)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_confusion_and_iou_match_numpy(seed):
  rng = np.random.default_rng(seed)
  c = 6
  labels = rng.integers(0, c, size=(3, 17, 23))
  labels[rng.random(labels.shape) < 0.2] = IGNORE_LABEL
  labels[labels == 4] = IGNORE_LABEL  # a class that never occurs in the labels
  preds = rng.integers(0, c - 1, size=labels.shape)  # and class 5 is never predicted
  confusion = np.asarray(metrics.confusion_matrix(labels, preds, c))
  keep = labels != IGNORE_LABEL
  assert confusion.sum() == keep.sum()
  for i in range(c):
    for j in range(c):
      assert confusion[i, j] == np.sum((labels == i) & (preds == j) & keep)
  got = metrics.scores(confusion)
  want = reference_iou(labels, preds, c)
  np.testing.assert_allclose(got['iou'], want, equal_nan=True)
  assert got['miou'] == pytest.approx(np.nanmean(want))
  assert got['pixel_accuracy'] == pytest.approx(np.mean(labels[keep] == preds[keep]))


def test_void_pixels_change_nothing():
  labels = np.array([[0, 1, IGNORE_LABEL, 2]])
  preds = np.array([[0, 1, 2, 2]])
  a = np.asarray(metrics.confusion_matrix(labels, preds, 3))
  b = np.asarray(metrics.confusion_matrix(labels[:, [0, 1, 3]], preds[:, [0, 1, 3]], 3))
  np.testing.assert_array_equal(a, b)
  assert metrics.scores(a)['miou'] == 1.0


def test_iou_table_lists_classes_in_order():
  table = metrics.iou_table(('road', 'sky'), np.array([0.5, np.nan]), 'run')
  assert table.splitlines()[0] == '| model | road | sky | mIoU |'
  assert table.splitlines()[2] == '| run | 50.0 | - | 50.0 |'


def test_cityscapes_category_iou_maps_labels_and_predictions_to_their_categories():
  """Table 8: IoU of the 7 categories, from labels and predictions each mapped to its category (void left out),
  computed here straight from the pixels and compared with the one derived from the class confusion."""
  from dilated_jax.data.info import DATASETS
  info = DATASETS['cityscapes']
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 19, (4, 64, 64))
  labels[:, :5] = 255
  preds = np.where(rng.random(labels.shape) < 0.6, labels % 19, rng.integers(0, 19, labels.shape))
  category_of = np.zeros(256, int)
  for k, (_, names) in enumerate(info.categories):
    for name in names:
      category_of[info.class_names.index(name)] = k
  valid = labels != 255
  want = []
  for k in range(len(info.categories)):
    truth, guess = (category_of[labels] == k) & valid, (category_of[preds] == k) & valid
    want.append((truth & guess).sum() / (truth | guess).sum())
  confusion = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), 19)
  got = metrics.scores(metrics.category_confusion(confusion, info.class_names, info.categories))
  np.testing.assert_allclose(got['iou'], want, rtol=1e-12)
  assert sorted(n for _, names in info.categories for n in names) == sorted(info.class_names)  # each class once
