"""Segments image files with a trained workdir: a palette PNG per image, an overlay, optionally the probabilities.

  python -m dilated_jax.predict --config=experiments/synthetic.py:stage=context --workdir=DIR --output_dir=OUT a.png

Writes OUT/<stem>.png (class colours in the dataset's palette), OUT/<stem>_overlay.png (the colours over the image)
and, with --save_probs, OUT/<stem>.npy: (H, W, C) float32 full-resolution probabilities (paper.md 1.6).
"""

import os

from absl import app, flags, logging
import jax
from ml_collections import config_flags
import numpy as np
from PIL import Image

from dilated_jax import checkpoint, cli, sharding
from dilated_jax import data as datasets
from dilated_jax.evaluate import Predictor


def read_image(path: str) -> np.ndarray:
  """RGB uint8 (H, W, 3); an unreadable or non-image file raises ValueError naming it."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert('RGB'))
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such image file') from None
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: not a readable image ({e})') from None


def colourise(labels: np.ndarray, palette) -> np.ndarray:
  """(H, W) class ids -> (H, W, 3) uint8 colours."""
  return np.asarray(palette, np.uint8)[labels]


def write_png(path: str, array: np.ndarray):
  """Writes through a temporary file, so an interrupted run never leaves a half-written PNG."""
  tmp = path + '.tmp'
  Image.fromarray(array).save(tmp, format='PNG')
  os.replace(tmp, path)


FLAGS = flags.FLAGS


def main(argv):
  paths = argv[1:]
  if not paths:
    raise ValueError('no images given: expected image files after the flags')
  images = [read_image(p) for p in paths]  # every file is checked before anything is written
  cfg = FLAGS.config
  info = datasets.dataset_info(cfg.data)
  params = checkpoint.load_params(FLAGS.workdir, FLAGS.checkpoint)
  mesh = sharding.make_mesh()
  predictor = Predictor(cfg.model, info, cfg.eval.tile, mesh, with_context='context_module' in params)
  params = jax.device_put(params, sharding.replicated(mesh))
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  for path, image in zip(paths, images):
    fill = [np.zeros_like(image)] * (mesh.size - 1)  # one image per call, the batch filled up per device
    probs = predictor.probabilities(params, [image] + fill)[0]
    labels = probs.argmax(-1)
    stem = os.path.join(FLAGS.output_dir, os.path.splitext(os.path.basename(path))[0])
    colours = colourise(labels, info.palette)
    write_png(stem + '.png', colours)
    write_png(stem + '_overlay.png', (0.5 * image + 0.5 * colours).astype(np.uint8))
    if FLAGS.save_probs:
      np.save(stem + '.npy', probs.astype(np.float32))
    logging.info('%s -> %s.png', path, stem)
  print(f'wrote {len(paths)} predictions to {FLAGS.output_dir}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'experiment config file', lock_config=True)
  flags.DEFINE_string('workdir', None, 'workdir of a training run')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'which checkpoint of the workdir')
  flags.DEFINE_string('output_dir', None, 'where the PNGs go')
  flags.DEFINE_bool('save_probs', False, 'also write <stem>.npy: full-resolution class probabilities')
  flags.mark_flags_as_required(['config', 'workdir', 'output_dir'])
  cli.run(main)
