"""MS-COCO for the 21 VOC classes (arXiv 1511.07122 section 5): every COCO image with at least one VOC category,
for training.

Labels are rasterised from the instance annotations with pycocotools (COCO's own polygon and RLE decoding):
background 0, the 20 VOC categories as their VOC class, every other category background (as the paper says).
Crowd regions of VOC categories are void (255): their extent is not object-precise. Objects are painted largest
first, so an object lying on a bigger one stays visible. Both COCO releases are read (2014, as in 2015, and 2017);
an image in several annotation files is taken once.
"""

import functools
import json
import os

import numpy as np

from dilated_jax import InputError
from dilated_jax.data import builder
from dilated_jax.data.info import DATASETS, IGNORE_LABEL

# COCO category name -> VOC class (info.DATASETS['pascal_voc'].class_names order).
COCO_TO_VOC = {
    'airplane': 'aero', 'bicycle': 'bike', 'bird': 'bird', 'boat': 'boat', 'bottle': 'bottle', 'bus': 'bus',
    'car': 'car', 'cat': 'cat', 'chair': 'chair', 'cow': 'cow', 'dining table': 'table', 'dog': 'dog',
    'horse': 'horse', 'motorcycle': 'mbike', 'person': 'person', 'potted plant': 'plant', 'sheep': 'sheep',
    'couch': 'sofa', 'train': 'train', 'tv': 'tv',
}
RELEASES = ('train2014', 'val2014', 'train2017', 'val2017')  # image folder; annotations/instances_<folder>.json


def rasterise(annotations: list[dict], height: int, width: int, voc_class: dict[int, int]) -> np.ndarray:
  """The label map of one image from its instance annotations; voc_class maps COCO category ids to VOC ids."""
  from pycocotools import mask as coco_mask  # only preparing COCO needs it

  def mask(segmentation):
    if isinstance(segmentation, list):  # polygons
      rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation['counts'], list):  # uncompressed RLE (crowds)
      rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
      rle = segmentation
    return coco_mask.decode(rle).astype(bool)

  label = np.zeros((height, width), np.uint8)
  mine = [a for a in annotations if a['category_id'] in voc_class]
  for a in mine:
    if a.get('iscrowd'):
      label[mask(a['segmentation'])] = IGNORE_LABEL
  for a in sorted((a for a in mine if not a.get('iscrowd')), key=lambda a: -a['area']):
    label[mask(a['segmentation'])] = voc_class[a['category_id']]
  return label


class Builder(builder.Builder, skip_registration=True):
  name = 'coco'
  INFO = DATASETS['pascal_voc']
  SPLITS = ('train',)
  MANUAL_DIR_NAME = 'coco'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  annotations/instances_train2014.json with train2014/*.jpg, and/or instances_val2014.json with val2014/, and/or
  the 2017 release (instances_train2017.json with train2017/, instances_val2017.json with val2017/)
  """

  @staticmethod
  def examples(manual_dir):
    pairs = [(os.path.join(manual_dir, 'annotations', f'instances_{r}.json'), os.path.join(manual_dir, r))
             for r in RELEASES]
    pairs = [(a, d) for a, d in pairs if os.path.isfile(a)]
    if not pairs:
      raise FileNotFoundError(f'coco: {os.path.join(manual_dir, "annotations", "instances_train2014.json")} is '
                              f'missing (no instances_*.json at all); expected {builder.layout_line(Builder)}')
    voc_names = DATASETS['pascal_voc'].class_names
    found = {}
    for annotation_file, image_dir in pairs:
      builder.require([image_dir], f'coco (the images of {annotation_file})')
      with open(annotation_file) as f:
        coco = json.load(f)
      voc_class = {c['id']: voc_names.index(COCO_TO_VOC[c['name']]) for c in coco['categories']
                   if c['name'] in COCO_TO_VOC}
      if len(voc_class) != len(COCO_TO_VOC):
        raise InputError(f'{annotation_file}: expected the 20 VOC categories among its categories, found '
                         f'{sorted(c["name"] for c in coco["categories"] if c["name"] in COCO_TO_VOC)}')
      by_image = {}
      for a in coco['annotations']:
        by_image.setdefault(a['image_id'], []).append(a)
      for im in coco['images']:
        anns = by_image.get(im['id'], [])
        if im['id'] in found or not any(a['category_id'] in voc_class for a in anns):
          continue
        read = functools.partial(rasterise, anns, im['height'], im['width'], voc_class)
        found[im['id']] = builder.Example(os.path.splitext(im['file_name'])[0],
                                          os.path.join(image_dir, im['file_name']),
                                          f'{annotation_file} (image id {im["id"]})', read)
    examples = sorted(found.values(), key=lambda ex: ex.name)
    builder.require([ex.image for ex in examples], 'coco train (images named in the annotations)')
    return {'train': examples}
