"""Datasets: each split is a sequence of (RGB uint8 image, uint8 label with IGNORE_LABEL = void) pairs."""

import ml_collections

from dilated_jax import InputError
from dilated_jax.data.info import DATASETS, IGNORE_LABEL, DatasetInfo


def dataset_info(cfg: ml_collections.ConfigDict) -> DatasetInfo:
  """Classes, palette, mean and test tile of the dataset named by cfg.name."""
  if cfg.name == 'synthetic':
    from dilated_jax.data import synthetic  # here, so that `python -m dilated_jax.data.synthetic` runs cleanly
    return synthetic.info(cfg.synthetic)
  if cfg.name not in DATASETS:
    raise InputError(f"data.name: expected 'synthetic' or one of {sorted(DATASETS)}, got {cfg.name!r}")
  return DATASETS[cfg.name]


def get_source(cfg: ml_collections.ConfigDict, split: str):
  """Split `split` of cfg.name: `len()`, `[i]` -> (RGB uint8 (H, W, 3), uint8 label (H, W), 255 = void).

  The paper's datasets are read from cfg.dir, where `python -m dilated_jax.data.prepare` wrote them.
  """
  info = dataset_info(cfg)
  if cfg.name == 'synthetic':
    from dilated_jax.data import synthetic
    return synthetic.SyntheticScenes(cfg.synthetic, split)
  from dilated_jax.data import builder  # here: tensorflow_datasets only for the paper's datasets

  train_sets = TRAIN_SETS.get(cfg.name, ('',))
  if cfg.train_set not in train_sets:
    raise InputError(f'data.train_set: {info.name} has the training sets {train_sets}, got {cfg.train_set!r}')
  if not cfg.dir:
    raise FileNotFoundError(f'data.dir: unset; {info.name} is read from the folder its preparation wrote (README.md, '
                            f'"Datasets")')
  source = builder.open_split(builder_class(cfg.name), cfg.dir, split)
  if cfg.train_set == 'coco' and split == 'train':  # VOC + SBD + COCO (arXiv 1511.07122, section 5)
    source = builder.Concat([source, builder.open_split(builder_class('coco'), cfg.dir, 'train')])
  return source


# Prepared datasets: data.name (or 'coco') -> its module; the values data.train_set may take besides ''.
MODULES = {'pascal_voc': 'voc_sbd', 'coco': 'coco', 'camvid': 'camvid', 'kitti': 'kitti', 'cityscapes': 'cityscapes'}
TRAIN_SETS = {'pascal_voc': ('sbd', 'coco')}


def builder_class(dataset: str):
  """The tfds builder of a prepared dataset (a key of MODULES)."""
  import importlib

  if dataset not in MODULES:
    raise InputError(f'dataset: expected one of {sorted(MODULES)}, got {dataset!r}')
  return importlib.import_module(f'dilated_jax.data.{MODULES[dataset]}').Builder
