"""The paper's tables with our rows beside them: per class, with the difference to the paper's own method.

  python -m dilated_jax.tables runs/voc/frontend runs/voc/context_large [--output_dir=docs/results]

Each workdir contributes the evaluation JSONs in WORKDIR/eval/ (written by `evaluate` and by `train`); the table is
chosen by the dataset and split in the JSON (pascal_voc val: Table 3, test: Tables 2 and 4; camvid test: Table 5;
kitti test: Table 6; cityscapes val/test: Tables 7 and 8, class and category IoU; a DRN on cityscapes val: the DRN
table of fyu/drn's published mIoU), the row by what the run is (`paper_row`: stage, context module, the data its front
end saw, the DRN variant); a run the paper has no figure for says so, a multi-scale or flip evaluation among them
(every published figure is single-scale). Prints Markdown; with --output_dir also writes CSV files.
"""

import csv
import glob
import json
import os

from absl import flags
import numpy as np

from dilated_jax import InputError, cli, config as config_lib
from dilated_jax.models.drn import is_published
from dilated_jax.paper_results import DRN, DRN_ROWS, TABLES

# (dataset, split) -> the paper's tables of it.
TABLES_OF = {('pascal_voc', 'val'): (3,), ('pascal_voc', 'test'): (2, 4), ('camvid', 'test'): (5,),
             ('kitti', 'test'): (6,), ('cityscapes', 'val'): (7, 8, DRN), ('cityscapes', 'test'): (7, 8)}
NO_FIGURE = 'no paper figure'


def paper_row(table: int, run: dict) -> str | None:
  """The row of `table` that `run` reproduces, by what the run is: its network (front end alone, or its context
  module), its CRF, its split and (VOC) the data its front end saw; None where the paper gives no figure for such a
  run.

  VOC (section 5): Table 2 is the front end trained on VOC + SBD (test only); Tables 3 (val) and 4 (test) build on
  the COCO-trained front end, with Basic and Large modules on val and the Large one ('Context') on test, each also
  with the dense CRF (run['crf'] == 'dense': the "+ CRF" rows) and with the trained CRF-RNN layer ('rnn': "+ RNN",
  Table 4's "+ CRF-RNN"); on test only the Large one's. The urban datasets' Dilation7/8/10 are front end + context
  module (section 6): a front end alone, or with a CRF, has no figure. The DRN table: DRNSeg alone (stage
  frontend), the variant as published (`models.drn.is_published`); a DRN has no row in the paper's tables. A
  multi-scale or flip evaluation (run['multiscale']) has no row anywhere.
  """
  stage, context, training, crf = run.get('stage'), run.get('context'), run.get('training'), run.get('crf')
  if run.get('multiscale'):
    return None
  if table == DRN:
    ok = run.get('backbone') == 'drn' and stage == 'frontend' and not crf and run.get('published_drn')
    return DRN_ROWS.get(run.get('drn_variant')) if ok else None
  if run.get('backbone') == 'drn':
    return None
  if table == 2:
    return 'Our front end' if context is None and training == 'voc_sbd' and not crf else None
  if table in (3, 4):
    if training != 'coco':
      return None
    if table == 3:
      row = 'Front end' if context is None else {'basic': 'Front + Basic', 'large': 'Front + Large'}.get(context)
      return row and row + {'dense': ' + CRF', 'rnn': ' + RNN'}.get(crf, '')
    if context is None:
      return None if crf else 'Front end'
    return 'Context' + {'dense': ' + CRF', 'rnn': ' + CRF-RNN'}.get(crf, '') if context == 'large' else None
  if stage not in ('context', 'joint') or crf:
    return None
  return {5: 'Dilation8', 6: 'Dilation7', 7: run.get('split'), 8: run.get('split')}[table]


def _config(workdir: str) -> dict:
  """The workdir's saved config (old field names read under their new ones), {} when it has none."""
  return config_lib.read_saved(workdir) if os.path.exists(os.path.join(workdir, 'config.json')) else {}


def training_data(config: dict, seen=()) -> str | None:
  """What the front end under a VOC run was trained on: 'coco' (VOC + SBD + COCO, fine-tuned or not), 'voc_sbd', or
  None when it cannot be told (a workdir started from one that is gone). Context and joint runs, and a front end
  fine-tuned from another (init_from), are what their init_from was."""
  data = config.get('data', {})
  if data.get('train_set') == 'coco':
    return 'coco'
  init_from = config.get('init_from')
  if init_from:
    if init_from in seen or not os.path.isdir(init_from):
      return None
    return training_data(_config(init_from), seen + (init_from,))
  return 'voc_sbd' if config.get('stage') == 'frontend' and data.get('train_set') == 'sbd' else None


def load_runs(workdirs) -> list[dict]:
  """One entry per evaluation JSON: name (the workdir's name), dataset, split, stage, context ('basic', 'large' or
  None), training (VOC: `training_data`), crf ('dense' when evaluated with the dense CRF, 'rnn' for a network
  trained with the CRF-RNN layer, else None), per-class IoU, mIoU."""
  runs = []
  for workdir in workdirs:
    paths = sorted(glob.glob(os.path.join(workdir, 'eval', '*.json')))
    if not paths:
      raise FileNotFoundError(f'{workdir}/eval: no evaluation JSON (run dilated_jax.evaluate on this workdir)')
    config = _config(workdir)
    drn_cfg = config.get('model', {}).get('drn', {})
    context = config.get('model', {}).get('context', {})
    multipliers = context.get('channel_multipliers') or ()
    stage = config.get('stage')
    rnn = stage in ('crf', 'crf_joint')  # on the front end alone where the config has no context module
    front_alone = stage == 'frontend' or (rnn and not context.get('dilations'))
    for path in paths:
      with open(path) as f:
        result = json.load(f)
      for key in ('iou', 'miou', 'split'):
        if key not in result:
          raise InputError(f'{path}: not an evaluation result (no {key!r})')
      runs.append(dict(
          name=f'{os.path.basename(os.path.normpath(workdir))} ({os.path.splitext(os.path.basename(path))[0]})',
          dataset=result.get('dataset') or config.get('data', {}).get('name'), split=result['split'], stage=stage,
          context=None if front_alone else 'large' if max(multipliers, default=1) > 1 else 'basic',
          training=training_data(config), crf='dense' if result.get('crf') else 'rnn' if rnn else None,
          iou=result['iou'],
          miou=result['miou'],
          category_iou=result.get('category_iou'), category_miou=result.get('category_miou'),
          backbone=config.get('model', {}).get('backbone', 'vgg16'), drn_variant=drn_cfg.get('variant'),
          published_drn=is_published(drn_cfg),
          multiscale=list(result.get('scales', [1.0])) != [1.0] or bool(result.get('flip'))))
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
  """Header and rows: the paper's rows, then each of our runs and its difference to the paper's row it reproduces
  (`paper_row`), or a 'no paper figure' line."""
  t = TABLES[table]
  classes = t['columns'][:-1]
  columns = ['model', *t['columns']]
  rows = [[name, *values] for name, values in t['rows']]
  paper = {name: np.array(values) for name, values in t['rows']}
  for run in runs:
    iou, miou = (run['category_iou'], run['category_miou']) if table == 8 else (run['iou'], run['miou'])
    ours = np.array([100 * v if (v := iou.get(c)) is not None else np.nan for c in classes] + [100 * miou])
    rows.append([f'ours: {run["name"]}', *ours])
    ref = paper_row(table, run)
    rows.append([f'ours - {ref}', *(Diff(d) for d in ours - paper[ref])] if ref else
                [NO_FIGURE, *[None] * len(ours)])
  return columns, rows


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise InputError('no workdirs given: expected the workdirs of evaluated runs after the flags')
  runs = load_runs(workdirs)
  printed = False
  for (dataset, split), tables in TABLES_OF.items():
    mine = [r for r in runs if r['dataset'] == dataset and r['split'] == split]
    # Each run in the table that has its row (Cityscapes: class and category IoU, Tables 7 and 8), or with 'no
    # paper figure' in the last table of its split that can show it: a DRN's the DRN table where there is one, the
    # others the paper's.
    def shows(t, r):
      if DRN in tables and (t == DRN) != (r['backbone'] == 'drn'):
        return False
      return t != 8 or r['category_iou'] is not None  # evaluations before Table 8 had none
    placed = {t: [r for r in mine if paper_row(t, r) and shows(t, r)] for t in tables}
    for run in mine:
      if not any(paper_row(t, run) for t in tables):
        placed[[t for t in tables if shows(t, run)][-1]].append(run)
    for table in (t for t in tables if placed[t]):
      columns, rows = paper_table(table, placed[table])
      label = 'DRN table' if table == DRN else f'Table {table}'
      print(f'\n{label}: {TABLES[table]["title"]}\n\n{markdown(columns, rows)}')
      printed = True
      if FLAGS.output_dir:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        name = 'table_drn.csv' if table == DRN else f'table{table}.csv'
        with open(os.path.join(FLAGS.output_dir, name), 'w', newline='') as f:
          csv.writer(f).writerows([columns] + [[f'{v:.2f}' if isinstance(v, float) else v for v in r] for r in rows])
  if not printed:
    raise InputError(f'none of the runs is on a dataset and split of the paper\'s tables: '
                     f'{sorted({(r["dataset"], r["split"]) for r in runs})}')


FLAGS = flags.FLAGS

if __name__ == '__main__':
  flags.DEFINE_string('output_dir', None, 'also write table<N>.csv files here')
  cli.run(main)
