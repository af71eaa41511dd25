"""Tiny copies of the paper's datasets in their released on-disk layouts, and what each loader must read from them.

Every writer puts a few 40x30 images under `root` as the dataset's own release does and returns
{split: {name: (RGB image, label in the paper's class ids, 255 = void)}}: what the prepared dataset must hold.
The expected labels are written here from each release's documented meaning, independently of the loaders.
"""

import json
import os

import numpy as np
from PIL import Image
import scipy.io

from dilated_jax.data.info import DATASETS

H, W = 30, 40
VOID = 255


def rgb_image(seed, h=H, w=W):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def blocks(seed, values, h=H, w=W, block=5):
  """A label map of block x block squares, each holding one of `values` (so every value appears, mostly)."""
  rng = np.random.default_rng(seed)
  grid = rng.choice(np.asarray(values), size=(-(-h // block), -(-w // block)))
  grid.flat[:len(values)] = values  # every value at least once
  return np.kron(grid, np.ones((block, block), grid.dtype))[:h, :w]


def save(path, array, mode=None, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array, mode) if mode != 'P' else None
  if mode == 'P':
    image = Image.fromarray(array.astype(np.uint8), 'P')
    image.putpalette(kwargs.pop('palette'))
  image.save(path, **kwargs)


def decoded(path):
  """The RGB pixels of an image file, as any reader decodes it."""
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


def write_list(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(f'{line}\n' for line in lines))


# ------------------------------------------------------------------ Pascal VOC 2012 + SBD

VOC_PALETTE = [c for rgb in DATASETS['pascal_voc'].palette for c in rgb] + [224, 224, 192] * 235  # 255: border


def write_voc_sbd(root, sbd='mat'):
  """VOCdevkit/VOC2012 with 2 train and 2 val images, and SBD as `cls/*.mat` (sbd='mat') or SegmentationClassAug.

  SBD annotates 2007_000003, a VOC val image, which must stay out of training, and 2007_000001, a VOC train image,
  whose VOC label must win.
  """
  voc = os.path.join(root, 'VOCdevkit', 'VOC2012')
  voc_train, voc_val, sbd_only = ['2007_000001', '2007_000002'], ['2007_000003', '2007_000004'], ['2008_000005',
                                                                                                    '2008_000006']
  expected = {'train': {}, 'val': {}}
  for i, name in enumerate(voc_train + voc_val + sbd_only):
    path = os.path.join(voc, 'JPEGImages', f'{name}.jpg')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rgb_image(i)).save(path, quality=90)
    image = decoded(path)
    if name in voc_train + voc_val:  # VOC: a palette PNG whose indices are the classes, 255 on the borders
      label = blocks(i, [0, 15, 7, VOID, 20]).astype(np.uint8)
      save(os.path.join(voc, 'SegmentationClass', f'{name}.png'), label, 'P', palette=VOC_PALETTE)
      expected['train' if name in voc_train else 'val'][name] = (image, label)
  write_list(os.path.join(voc, 'ImageSets', 'Segmentation', 'train.txt'), voc_train)
  write_list(os.path.join(voc, 'ImageSets', 'Segmentation', 'val.txt'), voc_val)
  sbd_names = sbd_only + ['2007_000003', '2007_000001']
  for i, name in enumerate(sbd_names):
    label = blocks(100 + i, [0, 3, 12, 19]).astype(np.uint8)  # SBD has no void borders
    if name in sbd_only:
      expected['train'][name] = (decoded(os.path.join(voc, 'JPEGImages', f'{name}.jpg')), label)
    if sbd == 'mat':
      path = os.path.join(root, 'benchmark_RELEASE', 'dataset', 'cls', f'{name}.mat')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      scipy.io.savemat(path, {'GTcls': {'Segmentation': label, 'Boundaries': np.zeros((21, 1), object),
                                        'CategoriesPresent': np.unique(label[label > 0]).astype(np.uint8)}})
    else:
      save(os.path.join(voc, 'SegmentationClassAug', f'{name}.png'), label, 'L')
  if sbd == 'mat':
    write_list(os.path.join(root, 'benchmark_RELEASE', 'dataset', 'train.txt'), sbd_names[:2])
    write_list(os.path.join(root, 'benchmark_RELEASE', 'dataset', 'val.txt'), sbd_names[2:])
  else:  # DeepLab's list format; it names the VOC train images too
    for i, name in enumerate(voc_train):
      save(os.path.join(voc, 'SegmentationClassAug', f'{name}.png'), np.zeros((H, W), np.uint8), 'L')
    write_list(os.path.join(voc, 'ImageSets', 'Segmentation', 'train_aug.txt'),
               [f'/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png' for n in voc_train + sbd_names])
  return expected


# ------------------------------------------------------------------ COCO (VOC classes)

# A few of COCO's categories with their real ids: the 20 VOC ones and two others.
COCO_CATEGORIES = {1: 'person', 2: 'bicycle', 3: 'car', 4: 'motorcycle', 5: 'airplane', 6: 'bus', 7: 'train',
                   9: 'boat', 16: 'bird', 17: 'cat', 18: 'dog', 19: 'horse', 20: 'sheep', 21: 'cow', 44: 'bottle',
                   62: 'chair', 63: 'couch', 64: 'potted plant', 67: 'dining table', 72: 'tv', 25: 'giraffe',
                   73: 'laptop'}


def rectangle(x0, y0, x1, y1):
  return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_coco(root):
  """annotations/instances_train2014.json and train2014/: image 1 (person, giraffe, a crowd of cars, a dog lying
  on a couch), image 2 (only a giraffe: left out), image 3 (greyscale JPEG, a tv).

  The expected labels hold only the pixels at least 1 px inside or outside every polygon edge (`known` masks them),
  since which boundary pixels a polygon covers is COCO's rasteriser's business.
  """
  images = [(1, 'COCO_train2014_000000000001.jpg'), (2, 'COCO_train2014_000000000002.jpg'),
            (3, 'COCO_train2014_000000000003.jpg')]
  anns = [  # (image, category, polygon or RLE, crowd)
      (1, 1, rectangle(2, 2, 12, 20), 0),
      (1, 25, rectangle(14, 2, 20, 8), 0),  # giraffe: background
      (1, 3, None, 1),  # crowd of cars, RLE over rows 22..27, columns 24..33
      (1, 63, rectangle(20, 12, 38, 20), 0),  # couch (144 px) ...
      (1, 18, rectangle(26, 14, 32, 18), 0),  # ... and a dog lying on it (24 px): drawn over the couch
      (2, 25, rectangle(5, 5, 10, 10), 0),
      (3, 72, rectangle(4, 4, 30, 24), 0),
  ]
  voc = DATASETS['pascal_voc'].class_names
  os.makedirs(os.path.join(root, 'train2014'), exist_ok=True)
  expected, known = {}, {}
  for image_id, file_name in images:
    path = os.path.join(root, 'train2014', file_name)
    pixels = rgb_image(200 + image_id)
    Image.fromarray(pixels.mean(-1).astype(np.uint8) if image_id == 3 else pixels).save(path)
    expected[image_id] = np.zeros((H, W), np.uint8)
    known[image_id] = np.ones((H, W), bool)
  crowd = np.zeros((H, W), np.uint8)
  crowd[22:28, 24:34] = 1
  annotations = []
  for k, (image_id, cat, polygon, is_crowd) in enumerate(anns):
    if is_crowd:
      counts, flat, value, run = [], crowd.T.ravel(), 0, 0  # column-major runs, starting with zeros
      for v in flat:
        if v == value:
          run += 1
        else:
          counts.append(run)
          value, run = v, 1
      counts.append(run)
      segmentation, area = {'counts': counts, 'size': [H, W]}, int(crowd.sum())
      expected[image_id][crowd.astype(bool)] = VOID
    else:
      x0, y0, x1, _, _, y1 = polygon[0][:6]
      segmentation, area = polygon, (x1 - x0) * (y1 - y0)
      voc_name = {'dining table': 'table', 'motorcycle': 'mbike', 'airplane': 'aero', 'bicycle': 'bike',
                  'potted plant': 'plant', 'couch': 'sofa'}.get(COCO_CATEGORIES[cat], COCO_CATEGORIES[cat])
      expected[image_id][y0:y1, x0:x1] = voc.index(voc_name) if voc_name in voc else 0
      edge = np.zeros((H, W), bool)
      edge[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = True
      edge[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = False
      known[image_id] &= ~edge
    annotations.append({'id': k + 1, 'image_id': image_id, 'category_id': cat, 'segmentation': segmentation,
                        'area': area, 'iscrowd': is_crowd, 'bbox': [0, 0, 1, 1]})
  coco = {'images': [{'id': i, 'file_name': f, 'height': H, 'width': W} for i, f in images],
          'annotations': annotations,
          'categories': [{'id': i, 'name': n, 'supercategory': ''} for i, n in COCO_CATEGORIES.items()]}
  write_list(os.path.join(root, 'annotations', 'instances_train2014.json'), [json.dumps(coco)])
  names = {i: os.path.splitext(f)[0] for i, f in images}
  return {'train': {names[i]: (decoded(os.path.join(root, 'train2014', f)), expected[i], known[i])
                    for i, f in images if i != 2}}


# ------------------------------------------------------------------ CamVid

# SegNet's class order -> the paper's, from SegNet's README (Sky, Building, Pole, Road, Pavement, Tree, SignSymbol,
# Fence, Car, Pedestrian, Bicyclist, Unlabelled) and the paper's Table 5 columns.
SEGNET_NAMES = ('Sky', 'Building', 'Pole', 'Road', 'Sidewalk', 'Tree', 'Sign', 'Fence', 'Car', 'Pedestrian',
                'Bicyclist')
SEGNET_LUT = np.array([DATASETS['camvid'].class_names.index(n) for n in SEGNET_NAMES] + [VOID] * 244, np.uint8)

CAMVID_SPLITS = {'train': ['0001TP_006690', '0001TP_006720'], 'val': ['0016E5_07959'], 'test': ['0001TP_008550']}


def write_camvid_segnet(root):
  """SegNet's release: lists with another machine's absolute paths, RGB PNGs, index PNGs with 11 = void."""
  expected = {}
  for s, (split, names) in enumerate(CAMVID_SPLITS.items()):
    expected[split] = {}
    for i, name in enumerate(names):
      image, annot = rgb_image(300 + 10 * s + i), blocks(300 + 10 * s + i, list(range(12))).astype(np.uint8)
      save(os.path.join(root, split, f'{name}.png'), image)
      save(os.path.join(root, f'{split}annot', f'{name}.png'), annot, 'L')
      expected[split][name] = (image, SEGNET_LUT[annot])
    write_list(os.path.join(root, f'{split}.txt'),
               [f'/SegNet/CamVid/{split}/{n}.png /SegNet/CamVid/{split}annot/{n}.png' for n in names])
  return expected


# Every colour of the original release's 32 classes with the paper class it belongs to (SegNet's grouping).
CAMVID_COLOURS = {
    (64, 128, 64): 'Pedestrian', (192, 0, 128): 'Building', (0, 128, 192): 'Bicyclist', (0, 128, 64): 'Building',
    (128, 0, 0): 'Building', (64, 0, 128): 'Car', (64, 0, 192): 'Pedestrian', (192, 128, 64): 'Pedestrian',
    (192, 192, 128): 'Pole', (64, 64, 128): 'Fence', (128, 0, 192): 'Road', (192, 0, 64): 'Road',
    (128, 128, 64): 'Sign', (192, 0, 192): 'Bicyclist', (128, 64, 64): 'Car', (64, 192, 128): 'Sidewalk',
    (64, 64, 0): 'Pedestrian', (128, 64, 128): 'Road', (128, 128, 192): 'Sidewalk', (0, 0, 192): 'Sidewalk',
    (192, 128, 128): 'Sign', (128, 128, 128): 'Sky', (64, 128, 192): 'Car', (0, 0, 64): 'Pole',
    (0, 64, 64): 'Sign', (192, 64, 128): 'Car', (128, 128, 0): 'Tree', (192, 128, 192): 'Car',
    (64, 0, 64): 'Building', (192, 192, 0): 'Tree', (0, 0, 0): None, (64, 192, 0): 'Building',
    (1, 2, 3): None,  # not a CamVid colour
}


def colour_label(seed, colours: dict, h=H, w=W):
  """A colour-coded label PNG's pixels (every colour of `colours` present) and its class ids (None -> void)."""
  keys = list(colours)
  index = blocks(seed, list(range(len(keys))), h, w, block=4)
  rgb = np.array(keys, np.uint8)[index]
  names = DATASETS['camvid'].class_names
  ids = np.array([VOID if colours[k] is None else names.index(colours[k]) for k in keys], np.uint8)[index]
  return rgb, ids


def write_camvid_original(root, h=36, w=48):
  """The original release (images and `_L.png` colour labels), scaled down, with SegNet's split lists."""
  expected = {}
  for s, (split, names) in enumerate(CAMVID_SPLITS.items()):
    expected[split] = {}
    for i, name in enumerate(names):
      image = rgb_image(400 + 10 * s + i, h, w)
      rgb, ids = colour_label(400 + 10 * s + i, CAMVID_COLOURS, h, w)
      save(os.path.join(root, '701_StillsRaw_full', f'{name}.png'), image)
      save(os.path.join(root, 'LabeledApproved_full', f'{name}_L.png'), rgb)
      expected[split][name] = (image, ids)  # at the original size: the loader resizes both to 640x480
    write_list(os.path.join(root, f'{split}.txt'),
               [f'/SegNet/CamVid/{split}/{n}.png /SegNet/CamVid/{split}annot/{n}.png' for n in names])
  return expected


# ------------------------------------------------------------------ KITTI (Ros et al.)

# The 11 CamVid classes' colours as published with the dataset (Brostow et al., label_colors.txt; SegNet's 11-class
# set), written here independently of the code's palette, so that swapped colours there fail the KITTI tests.
PUBLISHED_CAMVID_COLOURS = {'Sky': (128, 128, 128), 'Building': (128, 0, 0), 'Pole': (192, 192, 128),
                  'Road': (128, 64, 128),
                  'Sidewalk': (0, 0, 192), 'Tree': (128, 128, 0), 'Sign': (192, 128, 128), 'Fence': (64, 64, 128),
                  'Car': (64, 0, 128), 'Pedestrian': (64, 64, 0), 'Bicyclist': (0, 128, 192)}


def write_kitti(root):
  """Training_00 (2 images) and Validation_07 (1 image): RGB/*.png and GT/*.png coloured as CamVid's 11 classes."""
  colours = {rgb: name for name, rgb in PUBLISHED_CAMVID_COLOURS.items()} | {(0, 0, 0): None, (255, 255, 255): None}
  expected = {}
  for s, (split, folder, names) in enumerate([('train', 'Training_00', ['000000', '000010']),
                                               ('test', 'Validation_07', ['000003'])]):
    expected[split] = {}
    for i, name in enumerate(names):
      image = rgb_image(500 + 10 * s + i)
      rgb, ids = colour_label(500 + 10 * s + i, colours)
      save(os.path.join(root, folder, 'RGB', f'{name}.png'), image)
      save(os.path.join(root, folder, 'GT', f'{name}.png'), rgb)
      expected[split][name] = (image, ids)
  return expected


# ------------------------------------------------------------------ Cityscapes

# labelId -> the 19 train ids, from Cityscapes' label definitions (name, id, trainId); the rest are void.
CITYSCAPES_IDS = {'road': 7, 'sidewalk': 8, 'building': 11, 'wall': 12, 'fence': 13, 'pole': 17, 'light': 19,
                  'sign': 20, 'vegetation': 21, 'terrain': 22, 'sky': 23, 'person': 24, 'rider': 25, 'car': 26,
                  'truck': 27, 'bus': 28, 'train': 31, 'motorcycle': 32, 'bicycle': 33}
CITYSCAPES_VOID_IDS = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]


def write_cityscapes(root):
  """leftImg8bit/ + gtFine/ for train, val, test (one image each, cities as released); the val image has only a
  labelTrainIds PNG, the others labelIds PNGs holding every id."""
  names = DATASETS['cityscapes'].class_names
  lut = np.full(256, VOID, np.uint8)
  for name, label_id in CITYSCAPES_IDS.items():
    lut[label_id] = names.index(name)
  expected = {}
  for s, (split, city) in enumerate([('train', 'aachen'), ('val', 'frankfurt'), ('test', 'berlin')]):
    stem = f'{city}_000000_0000{19 + s}'
    image = rgb_image(600 + s)
    save(os.path.join(root, 'leftImg8bit', split, city, f'{stem}_leftImg8bit.png'), image)
    gt = os.path.join(root, 'gtFine', split, city, f'{stem}_gtFine_')
    label_ids = blocks(600 + s, list(CITYSCAPES_IDS.values()) + CITYSCAPES_VOID_IDS, block=3).astype(np.uint8)
    if split == 'val':
      save(gt + 'labelTrainIds.png', lut[label_ids], 'L')
    else:
      save(gt + 'labelIds.png', label_ids, 'L')
      save(gt + 'color.png', rgb_image(0))  # also in gtFine: never read
    expected[split] = {stem: (image, lut[label_ids])}
  return expected


WRITERS = {'pascal_voc': write_voc_sbd, 'coco': write_coco, 'camvid': write_camvid_segnet, 'kitti': write_kitti,
           'cityscapes': write_cityscapes}
