"""Cityscapes, fine annotations: 2975 train / 500 val / 1525 test, 2048x1024, 19 classes (arXiv 1511.07122
appendix A, Table 7).

Labels are read from `*_gtFine_labelIds.png` and mapped to the 19 train ids (the table of cityscapesScripts'
labels.py), every other id void; where only `*_gtFine_labelTrainIds.png` exists (cityscapesScripts'
createTrainIdLabelImgs), it is read as it is. The test labels are not public: gtFine's test files are all void.
"""

import glob
import os

from dilated_jax.data import builder
from dilated_jax.data.info import DATASETS

# labelId -> trainId for the 19 classes (info.DATASETS['cityscapes'].class_names order); every other id: void.
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SPLITS = ('train', 'val', 'test')


def read_label_ids(path: str):
  return builder.lookup(LABEL_TO_TRAIN_ID)[builder.read_index_png(path)]


def label_file(gt_dir: str, stem: str) -> tuple[str, object]:
  """The label of one image and its reader: labelIds (mapped) where present, else labelTrainIds."""
  ids = os.path.join(gt_dir, f'{stem}_gtFine_labelIds.png')
  train_ids = os.path.join(gt_dir, f'{stem}_gtFine_labelTrainIds.png')
  if not os.path.exists(ids) and os.path.exists(train_ids):
    return train_ids, builder.read_index_png
  return ids, read_label_ids


class Builder(builder.Builder, skip_registration=True):
  name = 'cityscapes'
  INFO = DATASETS['cityscapes']
  SPLITS = SPLITS
  MANUAL_DIR_NAME = 'cityscapes'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  leftImg8bit/{train,val,test}/CITY/*_leftImg8bit.png and gtFine/{train,val,test}/CITY/*_gtFine_labelIds.png
  (or *_gtFine_labelTrainIds.png)
  """

  @staticmethod
  def examples(manual_dir):
    out = {}
    for split in SPLITS:
      images = os.path.join(manual_dir, 'leftImg8bit', split)
      builder.require([images, os.path.join(manual_dir, 'gtFine', split)], f'cityscapes {split}')
      files = sorted(glob.glob(os.path.join(images, '*', '*_leftImg8bit.png')))
      if not files:
        raise FileNotFoundError(f'cityscapes {split}: no CITY/*_leftImg8bit.png in {images}')
      out[split] = []
      for path in files:
        city, stem = os.path.basename(os.path.dirname(path)), os.path.basename(path)[:-len('_leftImg8bit.png')]
        label, read = label_file(os.path.join(manual_dir, 'gtFine', split, city), stem)
        out[split].append(builder.example(stem, path, label, read))
      builder.require([ex.label for ex in out[split]], f'cityscapes {split} (the labels of the images in {images})')
    return out
