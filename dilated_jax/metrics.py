"""Confusion matrices (summed on device) and IoU (on host), as the paper's tables: mean over all classes."""

import jax.numpy as jnp
import numpy as np

from dilated_jax.data.info import IGNORE_LABEL


def confusion_matrix(labels, preds, num_classes: int):
  """(C, C) int32 counts, rows = ground truth, columns = prediction; IGNORE_LABEL pixels are left out. numpy arrays
  are counted by numpy (int64): on the host, an image of a new size compiles nothing."""
  if isinstance(labels, np.ndarray) and isinstance(preds, np.ndarray):
    labels, preds = labels.reshape(-1).astype(np.int64), preds.reshape(-1).astype(np.int64)
    valid = labels != IGNORE_LABEL
    return np.bincount(labels[valid] * num_classes + preds[valid], minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)
  labels, preds = labels.reshape(-1).astype(jnp.int32), preds.reshape(-1).astype(jnp.int32)
  valid = labels != IGNORE_LABEL
  index = jnp.where(valid, labels * num_classes + preds, 0)
  return jnp.bincount(index, weights=valid.astype(jnp.int32), length=num_classes * num_classes).reshape(
      num_classes, num_classes).astype(jnp.int32)


def scores(confusion) -> dict:
  """Per-class IoU = TP / (TP + FP + FN), its mean over classes that occur (in labels or predictions), pixel
  accuracy."""
  c = np.asarray(confusion, np.float64)
  tp = np.diag(c)
  union = c.sum(0) + c.sum(1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, tp / union, np.nan)
  total = c.sum()
  return {'iou': iou, 'miou': float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan'),
          'pixel_accuracy': float(tp.sum() / total) if total else float('nan')}


def category_confusion(confusion, class_names, categories) -> np.ndarray:
  """The (K, K) confusion of K categories from a class confusion: both the label and the prediction mapped to
  their category, as the Cityscapes scripts' category IoU (Table 8)."""
  index = {name: i for i, name in enumerate(class_names)}
  member = np.zeros((len(categories), len(class_names)))
  for k, (_, names) in enumerate(categories):
    member[k, [index[n] for n in names]] = 1
  return member @ np.asarray(confusion, np.float64) @ member.T


def iou_table(class_names, iou, title: str = 'IoU (%)') -> str:
  """A Markdown table: one column per class in the dataset's (the paper's) order, then mIoU."""
  head = '| ' + ' | '.join(('model',) + tuple(class_names) + ('mIoU',)) + ' |'
  rule = '|' + '---|' * (len(class_names) + 2)
  cells = ['-' if np.isnan(v) else f'{100 * v:.1f}' for v in iou]
  row = '| ' + ' | '.join([title] + cells + [f'{100 * np.nanmean(iou):.1f}']) + ' |'
  return '\n'.join([head, rule, row])
