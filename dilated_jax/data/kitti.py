"""KITTI semantic labels of Ros et al. (2015): 100 train / 46 test images of KITTI visual odometry, 1226x370,
the 11 CamVid classes (arXiv 1511.07122 appendix A, Table 6).

As released: `Training_00/` (train) and `Validation_07/` (the 46 test images), each with `RGB/*.png` images and
`GT/*.png` labels coloured with CamVid's colours, which are also the released model's palette (info.DATASETS);
every other colour (black: void) is ignored.
"""

import functools
import glob
import os

from dilated_jax.data import builder
from dilated_jax.data.info import DATASETS

FOLDERS = {'train': 'Training_00', 'test': 'Validation_07'}
COLOURS = {rgb: i for i, rgb in enumerate(DATASETS['kitti'].palette)}

read_label = functools.partial(builder.read_colour_png, colours=COLOURS)


class Builder(builder.Builder, skip_registration=True):
  name = 'kitti'
  INFO = DATASETS['kitti']
  SPLITS = ('train', 'test')
  MANUAL_DIR_NAME = 'KITTI_SEMANTIC'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Training_00/RGB/*.png with Training_00/GT/*.png (train), Validation_07/RGB/*.png with Validation_07/GT/*.png (test)
  """

  @staticmethod
  def examples(manual_dir):
    out = {}
    for split, folder in FOLDERS.items():
      images = os.path.join(manual_dir, folder, 'RGB')
      builder.require([images, os.path.join(manual_dir, folder, 'GT')], f'kitti {split}')
      names = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(images, '*.png')))
      if not names:
        raise FileNotFoundError(f'kitti {split}: no *.png in {images}')
      out[split] = [builder.example(n, os.path.join(images, f'{n}.png'),
                                    os.path.join(manual_dir, folder, 'GT', f'{n}.png'), read_label) for n in names]
      builder.require([ex.label for ex in out[split]], f'kitti {split} (the labels of the images in {images})')
    return out
