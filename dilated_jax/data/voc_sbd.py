"""Pascal VOC 2012 with the SBD annotations of Hariharan et al. (arXiv 1511.07122 section 4), 21 classes.

train: VOC 2012 train plus every SBD image, less every VOC 2012 val image (the paper never trains on val; with the
full SBD this is the common 10,582-image "train_aug" set). val: VOC 2012 val (1,449). A train image's label is VOC's
own `SegmentationClass` PNG where VOC 2012 train has one (the official annotation, with its 255 boundaries), SBD's
otherwise. SBD is read as released (`cls/*.mat`) or as most users hold it, converted to `SegmentationClassAug/*.png`
with a `train_aug.txt` list. VOC label PNGs are palette images whose indices are the classes: the indices are read,
never the colours; 255 stays void.
"""

import os

import numpy as np
import scipy.io

from dilated_jax.data import builder
from dilated_jax.data.info import DATASETS


def read_sbd_mat(path: str) -> np.ndarray:
  """The class map of an SBD `cls/*.mat` file: the struct GTcls, field Segmentation (0 background .. 20)."""
  gt = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)['GTcls']
  return np.asarray(gt.Segmentation, np.uint8)


def voc_root(manual_dir: str) -> str:
  """The VOC2012 folder: `VOCdevkit/VOC2012` (as the tar unpacks), `VOC2012`, or manual_dir itself."""
  for root in (os.path.join(manual_dir, 'VOCdevkit', 'VOC2012'), os.path.join(manual_dir, 'VOC2012'), manual_dir):
    if os.path.isdir(os.path.join(root, 'JPEGImages')):
      return root
  missing = os.path.join(manual_dir, 'VOCdevkit', 'VOC2012', 'JPEGImages')
  raise FileNotFoundError(f'pascal_voc: no VOC 2012 under {manual_dir} ({missing} is missing); expected '
                          f'{builder.layout_line(Builder)}')


def sbd_labels(manual_dir: str, voc: str) -> dict[str, tuple[str, object]]:
  """name -> (label file, reader) of the SBD annotations: SBD's cls/*.mat, else SegmentationClassAug + train_aug.txt."""
  sbd = os.path.join(manual_dir, 'benchmark_RELEASE', 'dataset')
  if os.path.isdir(os.path.join(sbd, 'cls')):
    lists = [os.path.join(sbd, f'{s}.txt') for s in ('train', 'val')]
    builder.require(lists, 'pascal_voc (SBD)')
    names = sorted({n for lst in lists for n in builder.list_names(lst)})
    return {n: (os.path.join(sbd, 'cls', f'{n}.mat'), read_sbd_mat) for n in names}
  for root in (manual_dir, voc):
    for lst in (os.path.join(root, 'train_aug.txt'), os.path.join(root, 'ImageSets', 'Segmentation', 'train_aug.txt')):
      if os.path.isdir(os.path.join(root, 'SegmentationClassAug')) and os.path.isfile(lst):
        return {n: (os.path.join(root, 'SegmentationClassAug', f'{n}.png'), builder.read_index_png)
                for n in builder.list_names(lst)}
  raise FileNotFoundError(f'pascal_voc: no SBD annotations ({os.path.join(sbd, "cls")} is missing, and no '
                          f'SegmentationClassAug/ with train_aug.txt in {manual_dir} or {voc}); expected '
                          f'{builder.layout_line(Builder)}')


class Builder(builder.Builder, skip_registration=True):
  name = 'pascal_voc'
  INFO = DATASETS['pascal_voc']
  SPLITS = ('train', 'val')
  MANUAL_DIR_NAME = 'VOC'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  VOCdevkit/VOC2012/ (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/train.txt and val.txt) and SBD, as
  released: benchmark_RELEASE/dataset/ (cls/*.mat, train.txt, val.txt), or converted: SegmentationClassAug/*.png
  with train_aug.txt (next to VOCdevkit or inside VOC2012)
  """

  @staticmethod
  def examples(manual_dir):
    voc = voc_root(manual_dir)
    lists = {s: os.path.join(voc, 'ImageSets', 'Segmentation', f'{s}.txt') for s in Builder.SPLITS}
    builder.require(list(lists.values()), 'pascal_voc (VOC 2012)')
    voc_names = {s: builder.list_names(lst) for s, lst in lists.items()}
    voc_label = lambda n: (os.path.join(voc, 'SegmentationClass', f'{n}.png'), builder.read_index_png)
    labels = {'val': {n: voc_label(n) for n in voc_names['val']}}
    val = set(voc_names['val'])
    labels['train'] = {n: lab for n, lab in sbd_labels(manual_dir, voc).items() if n not in val}
    labels['train'].update({n: voc_label(n) for n in voc_names['train']})  # VOC's own labels win
    sbd_images = os.path.join(manual_dir, 'benchmark_RELEASE', 'dataset', 'img')
    out = {}
    for split in Builder.SPLITS:
      out[split] = []
      for n in sorted(labels[split]):
        image = os.path.join(voc, 'JPEGImages', f'{n}.jpg')
        if not os.path.exists(image) and os.path.exists(os.path.join(sbd_images, f'{n}.jpg')):
          image = os.path.join(sbd_images, f'{n}.jpg')  # SBD ships its images too
        label, read = labels[split][n]
        out[split].append(builder.example(n, image, label, read))
      builder.require([p for ex in out[split] for p in (ex.image, ex.label)], f'pascal_voc {split}')
    return out
