"""The paper-table script and the sweep runner, on evaluation files written here and on a tiny real sweep."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dilated_jax import InputError, sweep, tables
from dilated_jax.data.info import DATASETS
from dilated_jax.paper_results import TABLES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_eval(workdir, dataset, split, iou, stage='joint', multipliers=(1,) * 7):
  os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
  with open(os.path.join(workdir, 'eval', f'{split}_best.json'), 'w') as f:
    json.dump({'dataset': dataset, 'split': split, 'iou': iou, 'miou': float(np.mean(list(iou.values())))}, f)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'stage': stage, 'data': {'name': dataset}, 'model': {'context': {'channel_multipliers': multipliers}}},
              f)


def test_paper_tables_are_consistent():
  """Every row has a value per column, and each urban table's mIoU is the mean of its classes (paper.md §0)."""
  for t in TABLES.values():
    for name, values in t['rows']:
      assert len(values) == len(t['columns']), name
  for number in (5, 6, 7):
    for name, values in TABLES[number]['rows']:
      assert abs(np.mean(values[:-1]) - values[-1]) < 0.11, (number, name)
  assert TABLES[5]['columns'][:-1] == DATASETS['camvid'].class_names
  assert TABLES[7]['columns'][:-1] == DATASETS['cityscapes'].class_names
  assert TABLES[3]['columns'][:-1] == DATASETS['pascal_voc'].class_names[1:]  # background is not listed


def test_our_row_and_its_difference_to_the_paper(tmp_path):
  names = DATASETS['camvid'].class_names
  iou = {n: 0.5 + 0.01 * i for i, n in enumerate(names)}
  write_eval(str(tmp_path / 'camvid_joint'), 'camvid', 'test', iou)
  runs = tables.load_runs([str(tmp_path / 'camvid_joint')])
  columns, rows = tables.paper_table(5, runs)
  assert columns == ['model', *names, 'mIoU']
  ours, diff = rows[-2], rows[-1]
  paper = dict(TABLES[5]['rows'])['Dilation8']
  np.testing.assert_allclose(ours[1:-1], [100 * iou[n] for n in names])
  np.testing.assert_allclose(diff[1:], np.array(ours[1:]) - np.array(paper))
  assert diff[0] == 'ours - Dilation8'
  assert '| ours - Dilation8 | ' + f'{100 * iou["Building"] - paper[0]:+.1f}' in tables.markdown(columns, rows)


def test_voc_context_runs_compare_with_their_own_rows(tmp_path):
  names = DATASETS['pascal_voc'].class_names
  write_eval(str(tmp_path / 'large'), 'pascal_voc', 'val', {n: 0.7 for n in names}, 'context', (2, 2, 4, 8, 16, 32, 32))
  write_eval(str(tmp_path / 'front'), 'pascal_voc', 'val', {n: 0.7 for n in names}, 'frontend')
  runs = tables.load_runs([str(tmp_path / 'large'), str(tmp_path / 'front')])
  _, rows = tables.paper_table(3, runs)
  assert [r[0] for r in rows[-4:]] == ['ours: large (val_best)', 'ours - Front + Large', 'ours: front (val_best)',
                                       'ours - Front end']


def test_tables_command_prints_and_writes_csv(tmp_path):
  write_eval(str(tmp_path / 'kitti'), 'kitti', 'test', {n: 0.6 for n in DATASETS['kitti'].class_names})
  r = subprocess.run([sys.executable, '-m', 'dilated_jax.tables', f'--output_dir={tmp_path / "out"}',
                      str(tmp_path / 'kitti')], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert 'Table 6' in r.stdout and '| ours - Dilation7 |' in r.stdout
  assert (tmp_path / 'out' / 'table6.csv').exists()
  r = subprocess.run([sys.executable, '-m', 'dilated_jax.tables', str(tmp_path / 'missing')], cwd=ROOT,
                     capture_output=True, text=True)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith('error: ')


def write_sweep(path, body):
  path.write_text(body)
  return str(path)


def test_sweep_file_is_checked(tmp_path):
  bad = write_sweep(tmp_path / 's.py', "def get_sweep():\n  return [dict(name='b', config='c', group='g', seed=0, "
                                       "init_from='a'), dict(name='a', config='c', group='g', seed=0)]\n")
  with pytest.raises(InputError, match='not an earlier run'):
    sweep.load_sweep(bad)


def test_claims_sweep_expands_to_every_variant_and_seed():
  runs = sweep.load_sweep(os.path.join(ROOT, 'experiments/sweeps/synthetic_claims.py'))
  groups = {r['group'] for r in runs}
  assert len(runs) == 21 and len(groups) == 7
  for r in runs:
    cfg = sweep.run_config(r)
    assert cfg.seed == 0 or r['seed'] in (1, 2)
    if r['group'].startswith(('flat', 'hybrid', 'reversed', 'Basic')):  # equal parameter counts: 7 layers of C
      assert len(cfg.model.context.dilations) == 7 and set(cfg.model.context.channel_multipliers) == {1}
  rf = {r['group']: sweep.receptive_field_px(r) for r in runs}
  assert rf['front end alone'] == 18
  assert rf['Basic (exponential 1,1,2,4,8,16,1)'] == 18 + 66 * 2  # 67 cells at stride 2
  assert rf['flat 1,1,1,1,1,1,1'] == 18 + 14 * 2


TINY = ("{'data.synthetic.image_size': 32, 'data.synthetic.train_size': 8, 'data.synthetic.val_size': 4, "
        "'data.synthetic.test_size': 4, 'data.synthetic.disc_radius': 3, 'data.synthetic.frame_width': 2, "
        "'data.synthetic.frame_distance': 4, 'model.front_end.block_channels': (4, 8), "
        "'model.front_end.fc_channels': 8, 'eval.tile': (32, 32), 'total_steps': 2, 'eval_every': 0, 'log_every': 1}")


def test_a_tiny_sweep_runs_resumes_and_gathers(tmp_path):
  path = write_sweep(tmp_path / 'tiny.py', f"""
T = {TINY}
def get_sweep():
  return [dict(name='front', config='experiments/synthetic.py:stage=frontend', overrides=T, group='front', seed=0),
          dict(name='ctx', config='experiments/synthetic.py:stage=context', overrides=T, group='ctx', seed=0,
               init_from='front')]
""")
  work = tmp_path / 'runs'
  command = [sys.executable, '-m', 'dilated_jax.sweep', f'--sweep={path}', f'--workdir={work}']
  r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (work / 'miou_vs_receptive_field.png').exists()
  lines = (work / 'results.csv').read_text().splitlines()
  assert lines[0].startswith('group,receptive field (px),mIoU mean') and len(lines) == 3
  r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)  # everything done: skipped
  assert r.returncode == 0 and r.stderr.count('skipped') == 2


def test_figure_rows_are_image_ground_truth_and_each_runs_prediction(tmp_path):
  from dilated_jax import data as datasets, figure, predict
  from dilated_jax.train import train
  from tests.test_train import tiny

  cfg = tiny()
  train(cfg, str(tmp_path / 'run'))
  picture = figure.draw(cfg, [str(tmp_path / 'run')] * 2, 'test', [0, 3])
  size = cfg.data.synthetic.image_size
  assert picture.shape == (2 * (size + 4), 4 * (size + 4), 3)
  image, label = datasets.get_source(cfg.data, 'test')[3]
  row = picture[size + 4:2 * size + 4]
  np.testing.assert_array_equal(row[:, :size], image)
  truth = predict.colourise(label, datasets.dataset_info(cfg.data).palette)
  np.testing.assert_array_equal(row[:, size + 4:2 * size + 4], truth)
  np.testing.assert_array_equal(row[:, 2 * (size + 4):3 * size + 8], row[:, 3 * (size + 4):4 * size + 12])
  with pytest.raises(InputError, match='--indices'):
    figure.draw(cfg, [str(tmp_path / 'run')], 'test', [cfg.data.synthetic.test_size])
