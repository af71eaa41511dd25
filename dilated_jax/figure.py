"""A picture of predictions: for a few images of a split, the image, its ground truth and the prediction of each run.

  python -m dilated_jax.figure --config=experiments/camvid_scratch.py:stage=joint --split=test --indices=0,80,160 \
      --workdirs=runs/cv/frontend_more,runs/cv/joint --output=docs/results/camvid_scratch_predictions.png

Colours are the dataset's palette; void (255) is black. Each workdir's best checkpoint is drawn with the network its
parameters hold (front end alone, or with the context module).
"""

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np
from PIL import Image

from dilated_jax import InputError, checkpoint, cli, sharding, weights
from dilated_jax import data as datasets
from dilated_jax.evaluate import Predictor
from dilated_jax.predict import colourise


def draw(cfg, workdirs, split: str, indices) -> np.ndarray:
  """One row per image: image | ground truth | one prediction per workdir, 4 px apart."""
  info = datasets.dataset_info(cfg.data)
  source = datasets.get_source(cfg.data, split)
  for i in indices:
    if not 0 <= i < len(source):
      raise InputError(f'--indices: {split} has {len(source)} images, got index {i}')
  pairs = [source[i] for i in indices]
  images = [p[0] for p in pairs]
  columns = [images, [colourise(p[1], info.palette) for p in pairs]]
  mesh = sharding.make_mesh()
  for workdir in workdirs:
    params = checkpoint.load_params(workdir, 'best')
    weights.check_params(params, cfg.model, workdir)  # a layer of another shape: one line naming it
    predictor = Predictor(cfg.model, info, cfg.eval.tile, mesh, with_context='context_module' in params,
                        tiles_per_device=cfg.eval.tiles_per_device)
    params = jax.device_put(params, sharding.replicated(mesh))
    fill = [np.zeros_like(images[0])] * (mesh.size - 1)  # one image per call, the batch filled up per device
    probs = [predictor.probabilities(params, [im] + fill)[0] for im in images]
    columns.append([colourise(np.argmax(p, -1).astype(np.uint8), info.palette) for p in probs])
  gap = 4
  rows = [np.concatenate([np.pad(c[r], ((0, gap), (0, gap), (0, 0)), constant_values=255) for c in columns], 1)
          for r in range(len(images))]
  return np.concatenate(rows, 0)


FLAGS = flags.FLAGS


def main(argv):
  if argv[1:]:
    raise InputError(f'unexpected arguments {argv[1:]}: everything is given by flags')
  indices = [int(i) for i in FLAGS.indices.split(',')]
  picture = draw(FLAGS.config, FLAGS.workdirs.split(','), FLAGS.split, indices)
  Image.fromarray(picture).save(FLAGS.output)
  print(f'wrote {FLAGS.output}: {len(indices)} {FLAGS.split} images x (image, ground truth, '
        f'{FLAGS.workdirs.replace(",", ", ")})')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'experiment config file (dataset, model, tiles)', lock_config=True)
  flags.DEFINE_string('workdirs', None, 'comma-separated workdirs, one prediction column each')
  flags.DEFINE_string('split', 'test', 'which split')
  flags.DEFINE_string('indices', '0,1,2', 'comma-separated image indices of the split')
  flags.DEFINE_string('output', None, 'the PNG to write')
  flags.mark_flags_as_required(['config', 'workdirs', 'output'])
  cli.run(main)
