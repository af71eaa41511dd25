"""Datasets: each split is a sequence of (RGB uint8 image, uint8 label with IGNORE_LABEL = void) pairs."""

import os

import ml_collections

from dilated_jax.data.info import DATASETS, IGNORE_LABEL, DatasetInfo


def dataset_info(cfg: ml_collections.ConfigDict) -> DatasetInfo:
  """Classes, palette, mean and test tile of the dataset named by cfg.name."""
  if cfg.name == 'synthetic':
    from dilated_jax.data import synthetic  # here, so that `python -m dilated_jax.data.synthetic` runs cleanly
    return synthetic.info(cfg.synthetic)
  if cfg.name not in DATASETS:
    raise ValueError(f"data.name: expected 'synthetic' or one of {sorted(DATASETS)}, got {cfg.name!r}")
  return DATASETS[cfg.name]


def get_source(cfg: ml_collections.ConfigDict, split: str, seed: int = 0):
  """The split of the dataset named by cfg.name; the paper's datasets are read from cfg.dir."""
  info = dataset_info(cfg)
  if cfg.name == 'synthetic':
    from dilated_jax.data import synthetic
    return synthetic.SyntheticScenes(cfg.synthetic, split)
  if not cfg.dir or not os.path.isdir(cfg.dir):
    raise FileNotFoundError(
        f'data.dir: {info.name} needs its prepared dataset, but {cfg.dir or "(unset)"!s} is not a folder; '
        f'the paper datasets cannot be downloaded here and their loaders are not in this release yet '
        f'(see README.md, "Paper experiments")')
  raise ValueError(f'data.name: the {info.name} loader is not in this release yet; only synthetic runs now')
