"""A picture of predictions: for a few images of a split, the image, its ground truth and the prediction of each run.

  python -m dilated_jax.figure --split=test --indices=0,80,160 --workdirs=runs/cv/frontend_more,runs/cv/joint \
      --output=docs/results/camvid_scratch_predictions.png

The dataset, network and tiles are the first workdir's config.json (`--config` gives another; `--config.FIELD=...`
overrides). Colours are the dataset's palette; void (255) is black. Each workdir's best checkpoint is drawn with the
network its parameters hold (front end alone, or with the context module); --crf adds each one's dense-CRF column.
"""

import os

from absl import flags
from ml_collections import config_flags
import numpy as np

from dilated_jax import InputError, cli, crf_search, dense_crf, images, inference, sharding
from dilated_jax import data as datasets


def draw(cfg, workdirs, split: str, indices, crf: bool = False) -> np.ndarray:
  """One row per image: image | ground truth | one prediction per workdir (with `crf`, each followed by its dense
  CRF's labels, with the parameters crf_search wrote in WORKDIR/crf/params.json; a network trained with the CRF-RNN
  layer is drawn refined by it, in one column), 4 px apart. Returns the picture and the column names."""
  info = datasets.dataset_info(cfg.data)
  source = datasets.get_source(cfg.data, split)
  for i in indices:
    if not 0 <= i < len(source):
      raise InputError(f'--indices: {split} has {len(source)} images, got index {i}')
  pairs = [source[i] for i in indices]
  pictures = [p[0] for p in pairs]
  columns, names = [pictures, [images.colourise(p[1], info.palette) for p in pairs]], []
  mesh = sharding.make_mesh()
  for workdir in workdirs:
    predictor, params = inference.restore(workdir, 'best', cfg, info, mesh)
    fill = [np.zeros_like(pictures[0])] * (mesh.size - 1)  # one image per call, the batch filled up per device
    probs = [predictor.probabilities(params, [im] + fill)[0] for im in pictures]
    columns.append([images.colourise(np.argmax(p, -1).astype(np.uint8), info.palette) for p in probs])
    names.append(workdir + (' (CRF-RNN)' if predictor.crf is not None else ''))
    if crf and predictor.crf is None:
      crf_params = crf_search.read_params(os.path.join(workdir, 'crf', 'params.json'))
      refined = dense_crf.refine_all(zip(probs, pictures), crf_params, workers=0, labels=True)
      columns.append([images.colourise(labels, info.palette) for labels in refined])
      names.append(f'{workdir} + CRF')
  return images.side_by_side(zip(*columns)), names


FLAGS = flags.FLAGS


def main(argv):
  if argv[1:]:
    raise InputError(f'unexpected arguments {argv[1:]}: everything is given by flags')
  indices = [int(i) for i in FLAGS.indices.split(',')]
  workdirs = FLAGS.workdirs.split(',')
  picture, columns = draw(FLAGS.config, workdirs, FLAGS.split, indices, FLAGS.crf)
  images.write_png(FLAGS.output, picture)
  print(f'wrote {FLAGS.output}: {len(indices)} {FLAGS.split} images x (image, ground truth, {", ".join(columns)})')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'experiment config file (dataset, model, tiles; default: the first '
                                  'workdir\'s config.json)', lock_config=True)
  flags.DEFINE_string('workdirs', None, 'comma-separated workdirs, one prediction column each')
  flags.DEFINE_string('split', 'test', 'which split')
  flags.DEFINE_string('indices', '0,1,2', 'comma-separated image indices of the split')
  flags.DEFINE_string('output', None, 'the PNG to write')
  flags.DEFINE_bool('crf', False, "after each workdir's column, its dense CRF's (WORKDIR/crf/params.json, from "
                    'crf_search')
  flags.mark_flags_as_required(['workdirs', 'output'])
  cli.run(main, config_from='workdirs')
