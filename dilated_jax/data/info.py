"""What each dataset of the paper is: classes in the tables' order, palette, BGR mean, test tile (fyu/dilation
datasets/*.json, models/*_deploy.prototxt)."""

import dataclasses

IGNORE_LABEL = 255  # void / unlabelled: no loss, not counted in any metric


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]  # RGB, index = class id
  mean_bgr: tuple[float, float, float]
  tile: tuple[int, int]  # output tile of test-time tiling: the deploy input minus the front end's shrinkage (372)
  categories: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (category, its classes): Cityscapes, Table 8

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


_URBAN = ('Building', 'Tree', 'Sky', 'Car', 'Sign', 'Road', 'Pedestrian', 'Fence', 'Pole', 'Sidewalk', 'Bicyclist')
_URBAN_PALETTE = ((128, 0, 0), (128, 128, 0), (128, 128, 128), (64, 0, 128), (192, 128, 128), (128, 64, 128),
                  (64, 64, 0), (64, 64, 128), (192, 192, 128), (0, 0, 192), (0, 128, 192))

DATASETS = {
    'pascal_voc': DatasetInfo(
        'pascal_voc',
        ('background', 'aero', 'bike', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'table', 'dog',
         'horse', 'mbike', 'person', 'plant', 'sheep', 'sofa', 'train', 'tv'),
        ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
         (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128),
         (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0), (0, 64, 128)),
        (102.93, 111.36, 116.52), (528, 528)),
    'camvid': DatasetInfo('camvid', _URBAN, _URBAN_PALETTE, (110.70313206, 108.77808759, 105.41212523), (528, 728)),
    # The deploy input 852x1640 gives 60x159 cells through Caffe's ceil-mode pooling: a tile of 480x1272 px.
    'kitti': DatasetInfo('kitti', _URBAN, _URBAN_PALETTE, (96.19429688, 95.55136972, 91.34692262), (480, 1272)),
    'cityscapes': DatasetInfo(
        'cityscapes',
        ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'light', 'sign', 'vegetation', 'terrain', 'sky',
         'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle'),
        ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
         (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
         (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
        (72.39, 82.91, 73.16), (1024, 1024),
        # The Cityscapes scripts' categories of the 19 classes (void excluded), in Table 8's column order.
        (('flat', ('road', 'sidewalk')), ('nature', ('vegetation', 'terrain')),
         ('object', ('pole', 'light', 'sign')), ('sky', ('sky',)), ('construction', ('building', 'wall', 'fence')),
         ('human', ('person', 'rider')), ('vehicle', ('car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle')))),
}

# PIL modes that convert to RGB faithfully: 8-bit grey, palette, colour (alpha dropped), CMYK. Others (grey with
# alpha, 16-bit, float) would be mangled by the conversion and are refused by the image readers.
IMAGE_MODES = ('1', 'L', 'P', 'RGB', 'RGBA', 'RGBX', 'CMYK', 'YCbCr')

# Images per split in the releases the paper used (arXiv 1511.07122 sections 4, 5, appendix A), shown by
# `python -m dilated_jax.data.check`.
# VOC train: VOC 2012 train + SBD less val, the common "train_aug" count (the paper gives none); CamVid val: SegNet's
# list (the paper says 100).
SPLIT_SIZES = {
    'pascal_voc': {'train': 10582, 'val': 1449},
    'camvid': {'train': 367, 'val': 101, 'test': 233},
    'kitti': {'train': 100, 'test': 46},
    'cityscapes': {'train': 2975, 'val': 500, 'test': 1525},
}
