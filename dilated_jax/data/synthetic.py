"""A built-in dataset where context decides the class: identical discs whose class is set by a far-away frame.

Every scene is of one of K types. Scene k has a frame of colour k along the image border (classes 1..K, easy to
see locally) and `num_objects` grey discs, all identical, of class K + k. Discs keep at least `frame_distance`
pixels from the frame, so no window of that radius around a disc tells its class; the whole image always does.
Classes: 0 background, 1..K frames, K+1..2K discs. Everything follows from (seed, split, index): no files.
"""

import functools
import os

import ml_collections
import numpy as np

from dilated_jax import InputError
from dilated_jax.data.info import DatasetInfo

SPLITS = {'train': 0, 'val': 1, 'test': 2}
FRAME_COLOURS = ((220, 40, 40), (40, 200, 40), (40, 80, 230), (230, 200, 30), (200, 40, 200), (30, 200, 210))
DISC_COLOUR = (235, 235, 235)
MEAN_BGR = (110.0, 110.0, 110.0)


def default_config() -> ml_collections.ConfigDict:
  """The data.synthetic fields of a config."""
  return ml_collections.ConfigDict(dict(
      image_size=128, num_scenes=2, num_objects=4, disc_radius=7, frame_width=8, frame_distance=24, noise=25.0,
      train_size=1000, val_size=100, test_size=100,
      seed=0,  # the scenes' seed, apart from the run's seed: runs of several seeds see the same dataset
  ))


def info(cfg: ml_collections.ConfigDict) -> DatasetInfo:
  """Class names, palette and mean of the synthetic dataset with cfg.num_scenes scene types."""
  k = cfg.num_scenes
  if not 1 <= k <= len(FRAME_COLOURS):
    raise InputError(f'data.synthetic.num_scenes: expected 1..{len(FRAME_COLOURS)}, got {k}')
  names = ('background',) + tuple(f'frame{i}' for i in range(1, k + 1)) + tuple(f'disc{i}' for i in range(1, k + 1))
  palette = ((0, 0, 0),) + FRAME_COLOURS[:k] + tuple((c // 2 + 60, c // 2 + 60, 255 - c // 2) for c, _, _ in
                                                       FRAME_COLOURS[:k])
  return DatasetInfo('synthetic', names, palette, MEAN_BGR, (cfg.image_size, cfg.image_size))


class SyntheticScenes:
  """Split `split` of the dataset: `len()` images, `[i]` -> (RGB uint8 image (S, S, 3), label uint8 (S, S))."""

  def __init__(self, cfg: ml_collections.ConfigDict, split: str):
    if split not in SPLITS:
      raise InputError(f'split: expected one of {tuple(SPLITS)}, got {split!r}')
    self.cfg, self.split = cfg, split
    self.info = info(cfg)
    self.size = cfg[f'{split}_size']

  def __len__(self):
    return self.size

  @functools.lru_cache(maxsize=None)
  def __getitem__(self, i: int):
    if not 0 <= i < self.size:
      raise IndexError(i)
    return render(self.cfg, np.random.default_rng([self.cfg.seed, SPLITS[self.split], i]))


def render(cfg, rng: np.random.Generator):
  """One scene: noisy background, a frame of colour k (class k), discs of class K + k, for a random scene type k."""
  s, k, r, f = cfg.image_size, cfg.num_scenes, cfg.disc_radius, cfg.frame_width
  scene = int(rng.integers(k))
  image = np.clip(110 + cfg.noise * rng.standard_normal((s, s, 3)), 0, 255)
  label = np.zeros((s, s), np.uint8)
  frame = np.ones((s, s), bool)
  frame[f:s - f, f:s - f] = False
  image[frame] = FRAME_COLOURS[scene]
  label[frame] = 1 + scene
  lo, hi = f + cfg.frame_distance + r, s - f - cfg.frame_distance - r  # disc centres keep the distance
  if hi <= lo:
    raise InputError(f'data.synthetic: no room for discs in {s} px with frame_width {f}, frame_distance '
                     f'{cfg.frame_distance} and disc_radius {r}')
  yy, xx = np.mgrid[:s, :s]
  centres = []
  for _ in range(100 * cfg.num_objects):  # rejection sampling; discs do not overlap
    if len(centres) == cfg.num_objects:
      break
    c = rng.integers(lo, hi, size=2)
    if all(np.hypot(*(c - p)) > 2 * r + 2 for p in centres):
      centres.append(c)
  for cy, cx in centres:
    disc = np.hypot(yy - cy, xx - cx) <= r
    image[disc] = DISC_COLOUR
    label[disc] = 1 + k + scene
  return image.astype(np.uint8), label


def main(argv):
  """Writes scenes of a split as PNG files (for trying predict): --output_dir, --split, --count."""
  from absl import flags
  from PIL import Image

  f = flags.FLAGS
  os.makedirs(f.output_dir, exist_ok=True)
  cfg = default_config()
  cfg.seed = f.seed
  scenes = SyntheticScenes(cfg, f.split)
  for i in range(min(f.count, len(scenes))):
    image, label = scenes[i]
    Image.fromarray(image).save(os.path.join(f.output_dir, f'{f.split}_{i:04d}.png'))
    Image.fromarray(np.asarray(scenes.info.palette, np.uint8)[label]).save(
        os.path.join(f.output_dir, f'{f.split}_{i:04d}_label.png'))
  print(f'wrote {min(f.count, len(scenes))} {f.split} scenes and their labels to {f.output_dir}')


if __name__ == '__main__':
  from absl import app, flags

  flags.DEFINE_string('output_dir', None, 'folder for the PNG files', required=True)
  flags.DEFINE_enum('split', 'test', list(SPLITS), 'split')
  flags.DEFINE_integer('count', 4, 'number of scenes')
  flags.DEFINE_integer('seed', 0, 'dataset seed')
  app.run(main)
