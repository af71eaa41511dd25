"""The paper's tables with our rows beside them: per class, with the difference to the paper's own method.

  python -m dilated_jax.tables runs/voc/frontend runs/voc/context_large [--output_dir=docs/results]

Each workdir contributes the evaluation JSONs in WORKDIR/eval/ (written by `evaluate` and by `train`); the table is
chosen by the dataset and split in the JSON (pascal_voc val: Table 3, test: Tables 2 and 4; camvid test: Table 5;
kitti test: Table 6; cityscapes val/test: Table 7). Prints Markdown; with --output_dir also writes CSV files.
"""

import csv
import glob
import json
import os

from absl import app, flags
import numpy as np

from dilated_jax import InputError, cli
from dilated_jax.paper_results import TABLES

# (dataset, split) -> the paper's tables of it.
TABLES_OF = {('pascal_voc', 'val'): (3,), ('pascal_voc', 'test'): (2, 4), ('camvid', 'test'): (5,),
             ('kitti', 'test'): (6,), ('cityscapes', 'val'): (7,), ('cityscapes', 'test'): (7,)}


def reference_row(table: int, run: dict) -> str:
  """The paper's row that a run reproduces, for the difference column."""
  if table == 3:
    stage, multipliers = run.get('stage'), run.get('channel_multipliers') or ()
    return 'Front end' if stage == 'frontend' else ('Front + Large' if max(multipliers, default=1) > 1 else
                                                      'Front + Basic')
  return {2: 'Our front end', 4: 'Context', 5: 'Dilation8', 6: 'Dilation7', 7: run.get('split', 'val')}[table]


def load_runs(workdirs) -> list[dict]:
  """One entry per evaluation JSON: name (the workdir's name), dataset, split, stage, per-class IoU, mIoU."""
  runs = []
  for workdir in workdirs:
    paths = sorted(glob.glob(os.path.join(workdir, 'eval', '*.json')))
    if not paths:
      raise FileNotFoundError(f'{workdir}/eval: no evaluation JSON (run dilated_jax.evaluate on this workdir)')
    config = {}
    if os.path.exists(os.path.join(workdir, 'config.json')):
      with open(os.path.join(workdir, 'config.json')) as f:
        config = json.load(f)
    for path in paths:
      with open(path) as f:
        result = json.load(f)
      for key in ('iou', 'miou', 'split'):
        if key not in result:
          raise InputError(f'{path}: not an evaluation result (no {key!r})')
      runs.append(dict(
          name=f'{os.path.basename(os.path.normpath(workdir))} ({os.path.splitext(os.path.basename(path))[0]})',
          dataset=result.get('dataset') or config.get('data', {}).get('name'), split=result['split'],
          stage=config.get('stage'), channel_multipliers=config.get('model', {}).get('context', {}).get(
              'channel_multipliers'), iou=result['iou'], miou=result['miou']))
  return runs


def markdown(columns, rows) -> str:
  """A Markdown table; None prints as '-'."""
  cell = lambda v: '-' if v is None or (isinstance(v, float) and np.isnan(v)) else (
      f'{v:+.1f}' if isinstance(v, Diff) else f'{v:.1f}' if isinstance(v, float) else str(v))
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


class Diff(float):
  """A difference, printed with its sign."""


def paper_table(table: int, runs: list[dict]) -> tuple[list[str], list[list]]:
  """Header and rows: the paper's rows, then each of our runs and its difference to the paper's row it reproduces."""
  t = TABLES[table]
  classes = t['columns'][:-1]
  columns = ['model', *t['columns']]
  rows = [[name, *values] for name, values in t['rows']]
  paper = {name: np.array(values) for name, values in t['rows']}
  for run in runs:
    ours = np.array([100 * v if (v := run['iou'].get(c)) is not None else np.nan for c in classes] +
                    [100 * run['miou']])
    rows.append([f'ours: {run["name"]}', *ours])
    ref = reference_row(table, run)
    rows.append([f'ours - {ref}', *(Diff(d) for d in ours - paper[ref])])
  return columns, rows


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise InputError('no workdirs given: expected the workdirs of evaluated runs after the flags')
  runs = load_runs(workdirs)
  printed = False
  for (dataset, split), tables in TABLES_OF.items():
    mine = [r for r in runs if r['dataset'] == dataset and r['split'] == split]
    for table in tables if mine else ():
      columns, rows = paper_table(table, mine)
      print(f'\nTable {table}: {TABLES[table]["title"]}\n\n{markdown(columns, rows)}')
      printed = True
      if FLAGS.output_dir:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        with open(os.path.join(FLAGS.output_dir, f'table{table}.csv'), 'w', newline='') as f:
          csv.writer(f).writerows([columns] + [[f'{v:.2f}' if isinstance(v, float) else v for v in r] for r in rows])
  if not printed:
    raise InputError(f'none of the runs is on a dataset and split of the paper\'s tables: '
                     f'{sorted({(r["dataset"], r["split"]) for r in runs})}')


FLAGS = flags.FLAGS

if __name__ == '__main__':
  flags.DEFINE_string('output_dir', None, 'also write table<N>.csv files here')
  cli.run(main)
