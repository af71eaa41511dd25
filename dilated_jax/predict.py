"""Segments image files: a palette PNG per image, an overlay, optionally the probabilities.

The network comes from a training run (its workdir's config.json gives the network, dataset and tiles; `--config`
gives another), or from released weights for one of the paper's presets:

  python -m dilated_jax.predict --workdir=DIR --output_dir=OUT a.png
  python -m dilated_jax.predict --preset=camvid --weights=dilation8_camvid.caffemodel --output_dir=OUT a.png

--weights is a .caffemodel (the authors' dilation8_pascal_voc, dilation8_camvid, dilation7_kitti,
dilation10_cityscapes) or a workdir written by this library (train, or dilated_jax.weights.convert); --preset
gives the network, dataset mean, palette and test tile (fyu/dilation predict.py and datasets/*.json). Writes
OUT/<stem>.png (class colours in the dataset's palette, as the authors' predict.py), OUT/<stem>_overlay.png (the
colours over the image) and, with --save_probs, OUT/<stem>.npy: (H, W, C) float32 full-resolution probabilities:
BGR minus the mean, reflection padding 186, the preset's tiles, softmax, x8 zoom (or Cityscapes' bilinear
deconvolution). --crf (or --crf_params=FILE from crf_search) refines them with the dense CRF first: the PNGs are its
labels and the .npy its marginals. --ms and --flip (or the config's eval.scales / eval.flip) test at several scales
and mirrored, as `evaluate` (fyu/drn segment.py --ms): the PNGs are the argmax of the summed log-probabilities and
the .npy the softmax of their mean over the passes (the passes' normalised geometric mean).
"""

import math
import os
import warnings

from absl import flags, logging
import jax
from ml_collections import config_flags
import numpy as np
from PIL import Image

from dilated_jax import InputError, checkpoint, cli, dense_crf, images, sharding, weights
from dilated_jax import data as datasets
from dilated_jax.data.info import DATASETS, IMAGE_MODES
from dilated_jax.inference import Predictor, is_multiscale
from dilated_jax.models import model_config

# Pixels of an image counted on its tile grid (each side rounded up to whole tiles): what predict's memory grows
# with. 2^25 is 8192 x 4096, 16 Cityscapes images; --max_pixels raises it (docs/decisions.md).
MAX_PIXELS = 2 ** 25


def grid_pixels(hw, tile) -> int:
  """Pixels of an (h, w) image once each side is rounded up to whole tiles."""
  return math.prod(-(-int(n) // int(t)) * int(t) for n, t in zip(hw, tile))


def read_image(path: str, tile=(1, 1), max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """RGB uint8 (H, W, 3); an unreadable, truncated or non-image file, one of other channels, or one of more than
  `max_pixels` on the `tile` grid (checked from its header, before decoding) raises ValueError naming it."""
  try:
    with warnings.catch_warnings():
      # PIL only warns up to twice its pixel limit (Image.MAX_IMAGE_PIXELS): a file that big is refused here.
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(path) as im:
        mode, channels, (w, h) = im.mode, len(im.getbands()), im.size
        size = grid_pixels((h, w), tile)
        decode = mode in IMAGE_MODES and size <= max_pixels
        rgb = np.asarray(im.convert('RGB')) if decode else None
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such image file') from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,  # SyntaxError: some broken headers
          Image.DecompressionBombWarning) as e:
    raise InputError(f'{path}: not a readable image ({e})') from None
  if size > max_pixels:
    raise InputError(f'{path}: {h} x {w} pixels, {size} on the network\'s {tile[0]} x {tile[1]} tiles: more than '
                     f'--max_pixels={max_pixels} (memory grows with it)')
  if rgb is None:
    raise InputError(f'{path}: expected an 8-bit grey, palette, RGB, RGBA or CMYK image, got {channels} channels of '
                     f'mode {mode}')
  return rgb


def output_stems(paths, output_dir: str, suffixes=('.png', '_overlay.png', '.npy')) -> list[str]:
  """OUT/<stem> of each input; ValueError naming the files when two inputs would write the same outputs or an
  output would overwrite an input."""
  stems, inputs = {}, {os.path.realpath(p): p for p in paths}
  for path in paths:
    stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
    if stem in stems:
      raise InputError(f'{stems[stem]} and {path} would both be written to {stem}.png: give them different names '
                       'or predict them into different folders')
    stems[stem] = path
    for suffix in suffixes:
      if os.path.realpath(stem + suffix) in inputs:
        raise InputError(f'--output_dir: {stem + suffix} would overwrite the input image '
                         f'{inputs[os.path.realpath(stem + suffix)]}; choose another output folder')
  return list(stems)


FLAGS = flags.FLAGS


def network():
  """(model config, dataset info, tile, params, with_context, tiles per device) from --workdir (and --config) or
  --preset and --weights."""
  run = FLAGS.config is not None or FLAGS.workdir is not None
  released = FLAGS.preset is not None or FLAGS.weights is not None
  if run == released:
    raise InputError('expected either --workdir (a training run; --config to give another config than its own) or '
                     '--preset and --weights (released weights), ' + ('not both' if run else 'got neither'))
  if run:
    if FLAGS.workdir is None:
      raise InputError('--config: give the --workdir of the training run too')
    if FLAGS['width'].present:
      raise InputError('--width: only with --preset (a config sets model.front_end.width)')
    cfg = FLAGS.config
    variables = checkpoint.load_variables(FLAGS.workdir, FLAGS.checkpoint)  # a DRN's with its batch_stats
    params = variables['params']
    weights.check_params(params, cfg.model, FLAGS.workdir)  # a layer of another shape: one line naming it
    return (cfg.model, datasets.dataset_info(cfg.data), cfg.eval.tile, checkpoint.eval_variables(variables),
            'context_module' in params, cfg.eval.tiles_per_device)
  if FLAGS.preset is None or FLAGS.weights is None:
    raise InputError('--preset and --weights: released weights need both')
  model_cfg = model_config(FLAGS.preset)
  model_cfg.front_end.width = FLAGS.width
  info = DATASETS[FLAGS.preset]
  params, with_context = weights.network_params(FLAGS.weights, model_cfg, info.mean_bgr, FLAGS.checkpoint)
  return model_cfg, info, info.tile, params, with_context, FLAGS.tiles_per_device


def main(argv):
  paths = argv[1:]
  if not paths:
    raise InputError('no images given: expected image files after the flags')
  stems = output_stems(paths, FLAGS.output_dir, ('.png', '_overlay.png') + (('.npy',) if FLAGS.save_probs else ()))
  crf = cli.crf_from_flags()
  model_cfg, info, tile, params, with_context, tiles_per_device = network()  # first: --workdir or --weights
  scales, flip = cli.test_time_from_flags(FLAGS.config.eval if FLAGS.workdir is not None else None)
  multiscale = is_multiscale(scales, flip)
  if multiscale and crf:
    raise InputError('--crf: multi-scale or flip testing with the dense CRF is not supported; use one or the other')
  pictures = [read_image(p, tile, FLAGS.max_pixels) for p in paths]  # every file is checked before anything is written
  cli.check_writable(FLAGS.output_dir, '--output_dir')
  mesh = sharding.make_mesh()
  predictor = Predictor(model_cfg, info, tile, mesh, with_context=with_context, tiles_per_device=tiles_per_device,
                        crf='crf' in params.get('params', params))  # trained with the CRF-RNN layer
  params = jax.device_put(params, sharding.replicated(mesh))

  def probabilities():
    for image in pictures:
      fill = [np.zeros_like(image)] * (mesh.size - 1)  # one image per call, the batch filled up per device
      if not multiscale:
        yield predictor.probabilities(params, [image] + fill)[0]
        continue
      summed = predictor.multiscale_log_probabilities(params, [image] + fill, scales, flip)[0]
      yield np.asarray(jax.nn.softmax(summed / (len(scales) * (2 if flip else 1)), axis=-1))

  # With --crf the marginals of the dense CRF, in worker processes while the network runs the next images.
  refined = dense_crf.refine_all(zip(probabilities(), pictures), crf) if crf else probabilities()
  for path, image, stem, probs in zip(paths, pictures, stems, refined):
    labels = probs.argmax(-1)
    colours = images.colourise(labels, info.palette)
    images.write_png(stem + '.png', colours)
    images.write_png(stem + '_overlay.png', images.overlay(image, colours))
    if FLAGS.save_probs:
      np.save(stem + '.npy', probs.astype(np.float32))
    logging.info('%s -> %s.png', path, stem)
  print(f'wrote {len(paths)} predictions to {FLAGS.output_dir}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'with --workdir: experiment config file (default: '
                                  'WORKDIR/config.json)', lock_config=True)
  flags.DEFINE_string('workdir', None, 'workdir of a training run')
  flags.DEFINE_enum('preset', None, sorted(DATASETS), 'with --weights: the paper network the weights are for')
  flags.DEFINE_string('weights', None, 'with --preset: a .caffemodel, or a workdir of this library')
  flags.DEFINE_float('width', 1.0, "with --preset: front_end.width of the weights' network (1: the paper's)")
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'which checkpoint of the workdir')
  flags.DEFINE_string('output_dir', None, 'where the PNGs go')
  flags.DEFINE_integer('max_pixels', MAX_PIXELS, 'refuse images of more pixels, each side rounded up to whole '
                       'tiles (memory grows with it)', lower_bound=1)
  flags.DEFINE_integer('tiles_per_device', 8, 'with --preset: tiles a device runs at once (memory bound); with '
                       '--config: its eval.tiles_per_device', lower_bound=1)
  flags.DEFINE_bool('save_probs', False, 'also write <stem>.npy: full-resolution class probabilities')
  cli.define_crf_flags()
  cli.define_test_time_flags()
  flags.mark_flags_as_required(['output_dir'])
  cli.run(main, config_from='workdir')
