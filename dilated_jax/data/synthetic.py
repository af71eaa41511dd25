"""A built-in dataset where context decides the class: identical discs whose class is set by far-away markers.

Every scene is of one of K types. Scene k scatters `num_markers` small squares of colour k (classes 1..K, easy to
see locally) and `num_objects` grey discs, all identical, of class K + k. Markers keep at least `marker_distance`
pixels from every disc, so no window of that radius around a disc tells its class; the whole image always does.
Classes: 0 background, 1..K markers, K+1..2K discs. Everything follows from (seed, split, index): no files.
"""

import functools
import os

import ml_collections
import numpy as np

from dilated_jax.data.info import DatasetInfo

SPLITS = {'train': 0, 'val': 1, 'test': 2}
MARKER_COLOURS = ((220, 40, 40), (40, 200, 40), (40, 80, 230), (230, 200, 30), (200, 40, 200), (30, 200, 210))
DISC_COLOUR = (235, 235, 235)
MEAN_BGR = (110.0, 110.0, 110.0)


def default_config() -> ml_collections.ConfigDict:
  """The data.synthetic fields of a config."""
  return ml_collections.ConfigDict(dict(
      image_size=128, num_scenes=2, num_objects=4, disc_radius=7, num_markers=3, marker_size=6,
      marker_distance=24, noise=25.0, train_size=1000, val_size=100, test_size=100))


def info(cfg: ml_collections.ConfigDict) -> DatasetInfo:
  """Class names, palette and mean of the synthetic dataset with cfg.num_scenes scene types."""
  k = cfg.num_scenes
  if not 1 <= k <= len(MARKER_COLOURS):
    raise ValueError(f'data.synthetic.num_scenes: expected 1..{len(MARKER_COLOURS)}, got {k}')
  names = ('background',) + tuple(f'marker{i}' for i in range(1, k + 1)) + tuple(f'disc{i}' for i in range(1, k + 1))
  palette = ((0, 0, 0),) + MARKER_COLOURS[:k] + tuple((c // 2 + 60, c // 2 + 60, 255 - c // 2) for c, _, _ in
                                                       MARKER_COLOURS[:k])
  return DatasetInfo('synthetic', names, palette, MEAN_BGR, (cfg.image_size, cfg.image_size))


class SyntheticScenes:
  """Split `split` of the dataset: `len()` images, `[i]` -> (RGB uint8 image (S, S, 3), label uint8 (S, S))."""

  def __init__(self, cfg: ml_collections.ConfigDict, split: str, seed: int = 0):
    if split not in SPLITS:
      raise ValueError(f'split: expected one of {tuple(SPLITS)}, got {split!r}')
    self.cfg, self.split, self.seed = cfg, split, seed
    self.info = info(cfg)
    self.size = cfg[f'{split}_size']

  def __len__(self):
    return self.size

  @functools.lru_cache(maxsize=None)
  def __getitem__(self, i: int):
    if not 0 <= i < self.size:
      raise IndexError(i)
    return render(self.cfg, np.random.default_rng([self.seed, SPLITS[self.split], i]))


def render(cfg, rng: np.random.Generator):
  """One scene: noisy background, discs of class K + k, markers of class k for a random scene type k."""
  s, k, r = cfg.image_size, cfg.num_scenes, cfg.disc_radius
  scene = int(rng.integers(k))
  image = np.clip(110 + cfg.noise * rng.standard_normal((s, s, 3)), 0, 255)
  label = np.zeros((s, s), np.uint8)
  yy, xx = np.mgrid[:s, :s]
  centres = []
  for _ in range(100 * cfg.num_objects):  # rejection sampling; discs do not overlap
    if len(centres) == cfg.num_objects:
      break
    c = rng.integers(r, s - r, size=2)
    if all(np.hypot(*(c - p)) > 2 * r + 2 for p in centres):
      centres.append(c)
  disc_distance = np.full((s, s), np.inf)
  for cy, cx in centres:
    d = np.hypot(yy - cy, xx - cx)
    image[d <= r] = DISC_COLOUR
    label[d <= r] = 1 + k + scene
    disc_distance = np.minimum(disc_distance, d - r)
  m, placed = cfg.marker_size, 0
  for _ in range(200 * cfg.num_markers):
    if placed == cfg.num_markers:
      break
    y, x = rng.integers(0, s - m, size=2)
    if disc_distance[y:y + m, x:x + m].min() >= cfg.marker_distance and (label[y:y + m, x:x + m] == 0).all():
      image[y:y + m, x:x + m] = MARKER_COLOURS[scene]
      label[y:y + m, x:x + m] = 1 + scene
      placed += 1
  return image.astype(np.uint8), label


def main(argv):
  """Writes scenes of a split as PNG files (for trying predict): --output_dir, --split, --count."""
  from absl import flags
  from PIL import Image

  f = flags.FLAGS
  os.makedirs(f.output_dir, exist_ok=True)
  scenes = SyntheticScenes(default_config(), f.split, f.seed)
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
