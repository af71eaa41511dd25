r"""Checks a prepared dataset as a config reads it: images per split, image sizes, the labels' class histogram.

  python -m dilated_jax.data.check --config=experiments/camvid_dilation8.py --config.data.dir=data

Prints, per split, the image count (beside the release's), the image sizes and the pixels of each class and of
void (255). Labels outside the classes (neither a class id nor 255), or a label whose size is not its image's,
end it with a one-line error naming the split, the values and the first such image (exit code 2).
"""

import collections
import time

from absl import flags, logging
from ml_collections import config_flags
import numpy as np

from dilated_jax import InputError, cli
from dilated_jax import data as datasets
from dilated_jax.data.info import IGNORE_LABEL, SPLIT_SIZES

FLAGS = flags.FLAGS


def check_split(source, num_classes: int) -> dict:
  """Counts of one split: sizes, a 256-bin label histogram, and the images with labels outside the classes."""
  sizes, histogram, outside, mismatched = collections.Counter(), np.zeros(256, np.int64), [], []
  for i in range(len(source)):
    name, size, label = source.inspect(i)
    sizes[size] += 1
    counts = np.bincount(label.ravel(), minlength=256)
    histogram += counts
    if counts[num_classes:IGNORE_LABEL].any():
      outside.append(name)
    if label.shape != (size[1], size[0]):
      mismatched.append(name)
    if (i + 1) % 1000 == 0:
      logging.info('%s: %d of %d images', source.name, i + 1, len(source))
  return {'images': len(source), 'sizes': sizes, 'histogram': histogram, 'outside': outside,
          'mismatched': mismatched}


def report(cfg, results: dict, info) -> str:
  """The tables of `check` as text."""
  expected = SPLIT_SIZES.get(info.name, {})
  if cfg.train_set == 'coco':  # the train split adds COCO, whose count depends on the release
    expected = {k: v for k, v in expected.items() if k != 'train'}
  lines = [f'{info.name}{" (" + cfg.train_set + ")" if cfg.train_set else ""} in {cfg.dir}: {info.num_classes} classes',
           '', f'{"split":8} {"images":>8} {"release":>8}  image sizes (width x height: images)']
  for split, r in results.items():
    sizes = ', '.join(f'{w}x{h}: {n}' for (w, h), n in r['sizes'].most_common())
    lines.append(f'{split:8} {r["images"]:8d} {expected.get(split, "-")!s:>8}  {sizes}')
  lines += ['', f'{"class":12}' + ''.join(f' {split:>22}' for split in results)]
  rows = [(name, c) for c, name in enumerate(info.class_names)] + [(f'void ({IGNORE_LABEL})', IGNORE_LABEL)]
  for name, c in rows:
    cells = []
    for r in results.values():
      total = max(int(r['histogram'].sum()), 1)
      cells.append(f' {int(r["histogram"][c]):>14,d} {100 * r["histogram"][c] / total:6.2f}%')
    lines.append(f'{name:12}' + ''.join(cells))
  outside = {s: r['histogram'][info.num_classes:IGNORE_LABEL] for s, r in results.items()}
  if any(o.any() for o in outside.values()):
    lines.append(f'{"outside":12}' + ''.join(f' {int(o.sum()):>14,d} {"":7}' for o in outside.values()))
  return '\n'.join(lines)


def problems(results: dict, num_classes: int) -> list[str]:
  out = []
  for split, r in results.items():
    if r['outside']:
      values = np.flatnonzero(r['histogram'][num_classes:IGNORE_LABEL]) + num_classes
      out.append(f'{split}: labels {", ".join(map(str, values))} outside the {num_classes} classes in '
                 f'{len(r["outside"])} images (first: {r["outside"][0]})')
    if r['mismatched']:
      out.append(f'{split}: {len(r["mismatched"])} labels of another size than their image '
                 f'(first: {r["mismatched"][0]})')
  return out


def main(argv):
  del argv
  cfg = FLAGS.config
  info = datasets.dataset_info(cfg.data)
  if cfg.data.name == 'synthetic':
    raise InputError('data.name: check reads prepared datasets; the synthetic one is generated, not prepared')
  results = {}
  start = time.time()
  for split in datasets.builder_class(cfg.data.name).SPLITS:
    results[split] = check_split(datasets.get_source(cfg.data, split), info.num_classes)
  print(report(cfg.data, results, info))
  print(f'\n{sum(r["images"] for r in results.values())} images checked in {time.time() - start:.1f} s')
  found = problems(results, info.num_classes)
  if found:
    raise InputError(f'{info.name} in {cfg.data.dir}: ' + '; '.join(found))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'experiment config file (its data fields are checked)',
                                  lock_config=True)
  flags.mark_flags_as_required(['config'])
  cli.run(main)
