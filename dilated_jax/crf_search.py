"""Grid search of the dense CRF's parameters on held-out validation images, as the paper did for its "+ CRF" rows
(arXiv 1511.07122 section 5: "CRF parameters grid-searched on the validation set"), scored by mIoU; the best is
written to a JSON file that evaluation reads back with `read_params`.

  python -m dilated_jax.crf_search --workdir=DIR [--split=val] [--images=100] [--grid='{"theta_beta": [3, 5]}']
  python -m dilated_jax.evaluate --workdir=DIR --split=val --crf_params=DIR/crf/params.json

The network is the workdir's (its config.json, or --config); the search's images are `held_out`: --images spread
evenly over the split, their full-resolution probabilities held in memory (H W C float32 each) for the whole search.
Writes DIR/crf/params.json (or --output): the best parameters, the images and every grid point's mIoU.
"""

import dataclasses
import itertools
import json
import math
import os
from typing import Iterable, Mapping, Sequence

from absl import flags
from ml_collections import config_flags
import numpy as np

from dilated_jax import InputError, cli, dense_crf, metrics, progress

FLAGS = flags.FLAGS

# The ranges DeepLab's search covered (Chen et al., ICLR 2015, arXiv 1412.7062 section 4.1; w_spatial and
# theta_gamma fixed at 3) around their VOC values and CRF-RNN's (theta_alpha 160, theta_beta 3, w_bilateral 5).
GRID = dict(theta_alpha=(80.0, 121.0, 160.0), theta_beta=(3.0, 5.0, 8.0, 13.0), w_bilateral=(3.0, 4.0, 5.0))
SEARCH_IMAGES = 100  # DeepLab searched on 100 validation images


def held_out(num_images: int, count: int = SEARCH_IMAGES) -> list[int]:
  """Indices of `count` images spread evenly over a split of `num_images` (every k-th): the search's share."""
  if num_images < 1 or count < 1:
    raise InputError(f'crf search: expected images to search on, got {count} of a split of {num_images}')
  return sorted(set(np.linspace(0, num_images - 1, min(count, num_images)).round().astype(int).tolist()))


def grid_points(grid: Mapping[str, Sequence[float]], base: dense_crf.DenseCRFParams) -> list[dense_crf.DenseCRFParams]:
  """Every combination of the grid's values over `base`, in row-major order (the first field varies slowest)."""
  for name, values in grid.items():
    if name not in base.to_dict():
      raise InputError(f'crf search grid: {name!r} is not a CRF parameter; expected some of {sorted(base.to_dict())}')
    if not len(values):
      raise InputError(f'crf search grid: {name} has no values')
  names = list(grid)
  return [dataclasses.replace(base, **dict(zip(names, point))) for point in itertools.product(*grid.values())]


def search(examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], grid: Mapping[str, Sequence[float]],
           num_classes: int, base: dense_crf.DenseCRFParams = dense_crf.DenseCRFParams(),
           workers: int = -1) -> tuple[dense_crf.DenseCRFParams, list[dict]]:
  """The grid point of best mIoU over `examples`, (probs (H, W, C), RGB uint8 image, label (H, W)) triples (a
  sequence: it is read once per grid point), and the table of every point: its fields and 'miou', after a first row
  'crf': False with the network's own mIoU. Ties go to the earlier point."""
  points = grid_points(grid, base)
  table = [{'crf': False, 'miou': miou(((p.argmax(-1), label) for p, _, label in examples), num_classes)}]
  # One pool for every (point, image) task, so that workers start once and stay busy across grid points.
  tasks = ((probs, image, params) for params in points for probs, image, _ in examples)
  preds = dense_crf.ordered_map(dense_crf.refine_labels, tasks, workers)
  bar = progress.Progress('crf search', len(points) * len(examples))
  try:
    for params in points:
      pairs = ((next(preds), label) for _, _, label in examples)
      table.append({'crf': True, **params.to_dict(), 'miou': miou(pairs, num_classes, bar)})
  finally:
    preds.close()  # ends the pool now, not when the generator is collected
  best = max(range(1, len(table)), key=lambda i: (table[i]['miou'], -i))
  return points[best - 1], table


def miou(preds_and_labels: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int, bar=None) -> float:
  """mIoU of one confusion matrix summed over the images, as every evaluation here (dilated_jax.metrics)."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  for pred, label in preds_and_labels:
    confusion += np.asarray(metrics.confusion_matrix(label, pred, num_classes))
    if bar is not None:
      bar.update()
  return metrics.scores(confusion)['miou']


def table_markdown(table: list[dict]) -> str:
  """The search's table, best first."""
  names = [f.name for f in dataclasses.fields(dense_crf.DenseCRFParams)]
  rows = sorted(table, key=lambda r: -r['miou'])
  lines = ['| ' + ' | '.join(names + ['mIoU']) + ' |', '|' + '---|' * (len(names) + 1)]
  for r in rows:
    cells = [f'{r[n]:g}' if r['crf'] else 'no CRF' if i == 0 else '' for i, n in enumerate(names)]
    lines.append('| ' + ' | '.join(cells + [f'{100 * r["miou"]:.2f}']) + ' |')
  return '\n'.join(lines)


def write_params(path: str, params: dense_crf.DenseCRFParams, table: list[dict], images):
  """The best parameters, with the search's images (their indices in the split) and table, written whole or not at
  all (a temporary file renamed)."""
  record = {'params': params.to_dict(), 'images': images, 'table': table}
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, path)


def read_params(path: str) -> dense_crf.DenseCRFParams:
  """The parameters `write_params` wrote; a bad file is one line naming it."""
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f'{path}: not a readable CRF parameter file ({type(e).__name__}: {e})') from None
  if not isinstance(record, dict) or not isinstance(record.get('params'), dict):
    raise InputError(f'{path}: expected a JSON object with the CRF parameters under "params", as crf_search writes')
  try:
    return dense_crf.DenseCRFParams.from_dict(record['params'])
  except InputError as e:
    raise InputError(f'{path}: {e}') from None


def parse_grid(text: str) -> dict:
  """--grid: a JSON object of CRF parameter -> list of values, over GRID (its other fields kept)."""
  try:
    grid = json.loads(text)
  except json.JSONDecodeError as e:
    raise InputError(f'--grid: expected a JSON object such as {{"theta_beta": [3, 5]}}, got {text!r} ({e})') from None
  if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
    raise InputError(f'--grid: expected a JSON object of parameter -> list of values, got {text!r}')
  return {**GRID, **grid}


def network_examples(predictor, params, source, ids: Sequence[int], batch_size: int) -> list[tuple]:
  """(probabilities (H, W, C), RGB image, label) of the images `ids` of `source`, `batch_size` at a time."""
  out = []
  bar = progress.Progress('network on the search images', len(ids))
  for start in range(0, len(ids), batch_size):
    pairs = [source[i] for i in ids[start:start + batch_size]]
    images = [p[0] for p in pairs] + [np.zeros_like(pairs[0][0])] * (batch_size - len(pairs))
    probs = predictor.probabilities(params, images)
    out += [(probs[k], image, label) for k, (image, label) in enumerate(pairs)]
    bar.update(len(pairs))
  return out


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel  (the search itself runs without JAX)

  from dilated_jax import data as datasets, sharding  # pylint: disable=import-outside-toplevel
  from dilated_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from dilated_jax.inference import restore  # pylint: disable=import-outside-toplevel

  cfg = FLAGS.config
  grid = parse_grid(FLAGS.grid) if FLAGS.grid else dict(GRID)
  base = dense_crf.DenseCRFParams()
  grid_points(grid, base)  # a bad grid: said before the network runs
  dense_crf.library()
  out = FLAGS.output or os.path.join(FLAGS.workdir, 'crf', 'params.json')
  if jax.process_index() == 0:
    cli.check_writable(os.path.dirname(os.path.abspath(out)), '--output')
  info = datasets.dataset_info(cfg.data)
  source = datasets.get_source(cfg.data, FLAGS.split)
  ids = held_out(len(source), FLAGS.images)
  mesh = sharding.make_mesh()
  predictor, params = restore(FLAGS.workdir, FLAGS.checkpoint, cfg, info, mesh)
  batch_size = math.ceil(cfg.eval.batch_size / mesh.size) * mesh.size
  examples = network_examples(predictor, params, source, ids, batch_size)
  best, table = search(examples, grid, info.num_classes, base, pipeline.resolve_workers(cfg.data.workers))
  print(table_markdown(table))
  print(f'best of {len(table) - 1} points on {len(ids)} {FLAGS.split} images: {best.to_dict()}, mIoU '
        f'{100 * max(r["miou"] for r in table[1:]):.2f} (network alone {100 * table[0]["miou"]:.2f})')
  if jax.process_index() == 0:
    write_params(out, best, table, ids)
    print(f'wrote {out}; evaluate with --crf_params={out}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'experiment config file (default: WORKDIR/config.json)',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'workdir of the training run whose network the CRF refines')
  flags.DEFINE_string('split', 'val', 'the split whose held-out images are searched on')
  flags.DEFINE_integer('images', SEARCH_IMAGES, 'images of the split searched on, spread evenly', lower_bound=1)
  flags.DEFINE_string('grid', None, 'JSON object of parameter -> values, replacing those of the default grid')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'which checkpoint of the workdir')
  flags.DEFINE_string('output', None, 'where the parameters go (default: WORKDIR/crf/params.json)')
  flags.mark_flags_as_required(['workdir'])
  cli.run(main, config_from='workdir')
