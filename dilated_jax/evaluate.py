"""Full-image evaluation with the paper's tiling (paper.md 1.6).

  python -m dilated_jax.evaluate --config=experiments/synthetic.py:stage=context --workdir=DIR [--split=test]

Prints the per-class IoU table in the paper's column order and writes it as JSON in DIR/eval/.
"""

import functools
import json
import math
import os

from absl import app, flags, logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import numpy as np

from dilated_jax import checkpoint, cli, metrics, sharding
from dilated_jax import data as datasets
from dilated_jax.data import pipeline
from dilated_jax.data.info import IGNORE_LABEL
from dilated_jax.models import build_model, upsample_probabilities


class Predictor:
  """Tiled inference for one network: image batches in, full-resolution class probabilities out (paper.md 1.6).

  The image, BGR minus the mean, is reflect-padded by the margin and cut into tiles whose outputs are `tile` pixels
  and do not overlap; short tiles at the bottom and right are reflect-padded. Scores are stitched, turned into
  probabilities, upsampled (zoom: softmax of the stitched map, then x8; deconv: per tile, as in-network), cropped.
  """

  def __init__(self, model_cfg: ml_collections.ConfigDict, info, tile, mesh, with_context: bool = True):
    self.model = build_model(model_cfg, with_context=with_context)
    self.upsample = model_cfg.upsample
    self.mean_bgr, self.mesh = info.mean_bgr, mesh
    fe = self.model.front_end
    self.margin, self.stride = fe.margin, fe.stride
    self.tile = tuple(int(t) for t in tile)
    if any(t % self.stride for t in self.tile):
      raise ValueError(f'eval.tile: expected multiples of the output stride {self.stride}, got {self.tile}')

  def grid(self, hw) -> tuple[int, int]:
    return math.ceil(hw[0] / self.tile[0]), math.ceil(hw[1] / self.tile[1])

  def tiles(self, image_rgb, grid) -> np.ndarray:
    """(nh * nw, tile_h + 2 margin, tile_w + 2 margin, 3) network inputs of one image."""
    (th, tw), m = self.tile, self.margin
    x = pipeline.to_network_input(image_rgb, self.mean_bgr)
    # As the authors' predict.py / test.py: reflect by the margin, cut, and reflect a short tile about its own
    # bottom and right edges. One np.pad to the grid's size would reflect about the image's edge instead: other
    # pixels beyond the margin, which the last cells and (through the context module) the whole tile see.
    x = np.pad(x, ((m, m), (m, m), (0, 0)), mode='reflect')
    size = (th + 2 * m, tw + 2 * m)
    tiles = []
    for i in range(grid[0]):
      for j in range(grid[1]):
        t = x[i * th:i * th + size[0], j * tw:j * tw + size[1]]
        if t.shape[0] < 2 or t.shape[1] < 2:  # past this image, in a batch's larger grid: cropped away
          t = np.zeros(size + (3,), x.dtype)
        tiles.append(np.pad(t, ((0, size[0] - t.shape[0]), (0, size[1] - t.shape[1]), (0, 0)), mode='reflect'))
    return np.stack(tiles)

  @functools.lru_cache(maxsize=None)
  def _probabilities_fn(self, grid):
    nh, nw = grid
    th, tw = self.tile

    def stitch(maps):  # (B * nh * nw, h, w, C) -> (B, nh * h, nw * w, C)
      _, h, w, c = maps.shape
      return maps.reshape(-1, nh, nw, h, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, nh * h, nw * w, c)

    def probabilities(params, tiles):
      scores = self.model.apply({'params': params}, tiles)
      if self.upsample == 'zoom':
        return upsample_probabilities(stitch(scores), 'zoom', self.stride, (nh * th, nw * tw))
      return stitch(upsample_probabilities(scores, 'deconv', self.stride, (th, tw)))

    def evaluate(params, tiles, labels, num_classes):
      preds = jnp.argmax(probabilities(params, tiles), axis=-1)
      return metrics.confusion_matrix(labels, preds, num_classes)

    repl, rows = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    return (jax.jit(probabilities, in_shardings=(repl, rows), out_shardings=rows),
            jax.jit(evaluate, in_shardings=(repl, rows, rows), out_shardings=repl, static_argnums=3))

  def _batch(self, images, labels=None):
    """Global arrays for a batch of images: tiles, and labels padded to the tile grid with IGNORE_LABEL."""
    grid = tuple(max(g) for g in zip(*(self.grid(im.shape[:2]) for im in images)))
    rows = sharding.process_rows(len(images))
    out = {'tiles': np.concatenate([self.tiles(im, grid) for im in images[rows]])}
    if labels is not None:
      shape = (grid[0] * self.tile[0], grid[1] * self.tile[1])
      padded = np.full((len(labels),) + shape, IGNORE_LABEL, np.int32)
      for p, lab in zip(padded, labels):
        p[:lab.shape[0], :lab.shape[1]] = lab
      out['labels'] = padded[rows]
    return grid, sharding.global_batch(self.mesh, out)

  def probabilities(self, params, images) -> list[np.ndarray]:
    """Full-resolution (H, W, C) float32 class probabilities of each image."""
    grid, batch = self._batch(images)
    probs = self._probabilities_fn(grid)[0](params, batch['tiles'])
    probs = np.asarray(multihost_utils.process_allgather(probs, tiled=True))
    return [p[:im.shape[0], :im.shape[1]] for p, im in zip(probs, images)]

  def confusion(self, params, images, labels, num_classes: int):
    """(C, C) confusion matrix of a batch of images against their full-resolution labels (on device)."""
    grid, batch = self._batch(images, labels)
    return self._probabilities_fn(grid)[1](params, batch['tiles'], batch['labels'], num_classes)


def padded_batches(source, batch_size: int):
  """Lists of (images, labels) in dataset order; the last is filled up with blank images whose labels are all void."""
  for start in range(0, len(source), batch_size):
    pairs = [source[i] for i in range(start, min(start + batch_size, len(source)))]
    blank = (np.zeros_like(pairs[0][0]), np.full_like(pairs[0][1], IGNORE_LABEL))
    pairs += [blank] * (batch_size - len(pairs))
    yield [p[0] for p in pairs], [p[1] for p in pairs]


def evaluate(predictor: Predictor, params, source, info, batch_size: int) -> dict:
  """Confusion matrix, per-class IoU, mIoU and pixel accuracy of `params` on every image of `source`."""
  batch_size = math.ceil(batch_size / predictor.mesh.size) * predictor.mesh.size
  confusion = jnp.zeros((info.num_classes, info.num_classes), jnp.int32)
  for images, labels in padded_batches(source, batch_size):
    confusion = confusion + predictor.confusion(params, images, labels, info.num_classes)
  confusion = np.asarray(jax.device_get(confusion))
  result = metrics.scores(confusion)
  return {'miou': result['miou'], 'pixel_accuracy': result['pixel_accuracy'],
          'iou': dict(zip(info.class_names, [None if np.isnan(v) else float(v) for v in result['iou']])),
          'confusion': confusion.tolist(), 'num_images': len(source)}


def report(result: dict, info, title: str) -> str:
  """The IoU table of an evaluation result, as Markdown."""
  iou = np.array([np.nan if result['iou'][n] is None else result['iou'][n] for n in info.class_names])
  return metrics.iou_table(info.class_names, iou, title)


FLAGS = flags.FLAGS


def main(argv):
  del argv
  cfg = FLAGS.config
  info = datasets.dataset_info(cfg.data)
  source = datasets.get_source(cfg.data, FLAGS.split)
  params = checkpoint.load_params(FLAGS.workdir, FLAGS.checkpoint)
  mesh = sharding.make_mesh()
  predictor = Predictor(cfg.model, info, cfg.eval.tile, mesh, with_context='context_module' in params)
  params = jax.device_put(params, sharding.replicated(mesh))
  result = evaluate(predictor, params, source, info, cfg.eval.batch_size)
  result.update(split=FLAGS.split, checkpoint=FLAGS.checkpoint, workdir=os.path.abspath(FLAGS.workdir),
                dataset=cfg.data.name, protocol='full images, tiled as paper.md 1.6, mIoU over classes present')
  print(report(result, info, f'{cfg.data.name} {FLAGS.split}'))
  print(f'mIoU {100 * result["miou"]:.2f}  pixel accuracy {100 * result["pixel_accuracy"]:.2f}  '
        f'({len(source)} images)')
  if jax.process_index() == 0:
    out = os.path.join(FLAGS.workdir, 'eval', f'{FLAGS.split}_{FLAGS.checkpoint}.json')
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + '.tmp', 'w') as f:
      json.dump(result, f, indent=1)
    os.replace(out + '.tmp', out)
    logging.info('wrote %s', out)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'experiment config file', lock_config=True)
  flags.DEFINE_string('workdir', None, 'workdir of the training run to evaluate')
  flags.DEFINE_string('split', 'test', 'dataset split')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'which checkpoint of the workdir')
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
