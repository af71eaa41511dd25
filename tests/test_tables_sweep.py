"""The paper-table script and the sweep runner, on evaluation files written here and on a tiny real sweep."""

import csv
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


def write_eval(workdir, dataset, split, iou, stage='joint', multipliers=(1,) * 7, crf=False):
  """An evaluation JSON (with crf, as `evaluate --crf` writes it) and a minimal config.json: a joint (front end +
  Basic module) run."""
  os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
  result = {'dataset': dataset, 'split': split, 'iou': iou, 'miou': float(np.mean(list(iou.values())))}
  if crf:
    result['crf'] = {'theta_alpha': 121.0, 'theta_beta': 5.0, 'theta_gamma': 3.0, 'w_bilateral': 4.0,
                     'w_spatial': 3.0, 'iterations': 10}
  with open(os.path.join(workdir, 'eval', f'{split}_best{"_crf" if crf else ""}.json'), 'w') as f:
    json.dump(result, f)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'stage': stage, 'data': {'name': dataset}, 'model': {'context': {'channel_multipliers': multipliers}}},
              f)


def test_paper_tables_are_consistent():
  """Every row has a value per column, and each urban table's mIoU is the mean of its classes (Tables 5-8)."""
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


def experiment_workdir(tmp_path, name, spec, split, init_from=None, crf=False):
  """A workdir as train leaves it: the experiment config's config.json (init_from set) and one evaluation JSON."""
  from dilated_jax import config as config_lib
  cfg = json.loads(config_lib.load(os.path.join(ROOT, spec)).to_json())
  cfg['init_from'] = init_from or ''
  workdir = str(tmp_path / name)
  dataset = cfg['data']['name']
  write_eval(workdir, dataset, split, {n: 0.6 for n in DATASETS[dataset].class_names}, crf=crf)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(cfg, f)
  return workdir


def test_each_experiment_config_meets_the_paper_row_of_what_it_trains(tmp_path):
  """Rows by what the run is: the VOC + SBD front end only in Table 2 (test), the COCO-trained front end and its
  context modules in Tables 3 (val) and 4 (test), urban front ends alone nowhere."""
  expected = {  # (experiment, init_from) -> {split: {table: row}}
      ('voc_frontend.py:data=voc_sbd', None): {'val': {3: None}, 'test': {2: 'Our front end', 4: None}},
      ('voc_frontend.py:data=coco', None): {'val': {3: 'Front end'}, 'test': {2: None, 4: 'Front end'}},
      ('voc_frontend.py:data=voc_finetune', 'coco'): {'val': {3: 'Front end'}, 'test': {2: None, 4: 'Front end'}},
      ('voc_context.py:context=basic', 'finetune'): {'val': {3: 'Front + Basic'}, 'test': {2: None, 4: None}},
      ('voc_context.py:context=large', 'finetune'): {'val': {3: 'Front + Large'}, 'test': {2: None, 4: 'Context'}},
      ('voc_context.py:context=large', 'sbd'): {'val': {3: None}, 'test': {2: None, 4: None}},
      ('camvid_dilation8.py:stage=frontend', None): {'test': {5: None}},
      ('camvid_dilation8.py:stage=joint', None): {'test': {5: 'Dilation8'}},
      ('kitti_dilation7.py:stage=frontend', None): {'test': {6: None}},
      ('kitti_dilation7.py:stage=joint', None): {'test': {6: 'Dilation7'}},
      ('cityscapes_dilation10.py:stage=frontend', None): {'val': {7: None}},
      ('cityscapes_dilation10.py:stage=context', None): {'val': {7: 'val'}, 'test': {7: 'test'}},
      ('cityscapes_dilation10.py:stage=joint', None): {'val': {7: 'val'}},
  }
  fronts = {'coco': experiment_workdir(tmp_path, 'coco', 'experiments/voc_frontend.py:data=coco', 'val'),
            'sbd': experiment_workdir(tmp_path, 'sbd', 'experiments/voc_frontend.py:data=voc_sbd', 'val')}
  fronts['finetune'] = experiment_workdir(tmp_path, 'finetune', 'experiments/voc_frontend.py:data=voc_finetune',
                                          'val', fronts['coco'])
  for i, ((spec, parent), splits) in enumerate(expected.items()):
    for split, rows in splits.items():
      workdir = experiment_workdir(tmp_path, f'run{i}_{split}', f'experiments/{spec}', split, fronts.get(parent))
      [run] = tables.load_runs([workdir])
      for table, row in rows.items():
        assert tables.paper_row(table, run) == row, (spec, parent, split, table)


def test_an_evaluation_with_the_dense_crf_meets_the_crf_row_of_what_it_trains(tmp_path):
  """The "+ CRF" rows: every VOC val condition of Table 3, on test only Table 4's Context; no CRF row elsewhere."""
  expected = {  # (experiment, init_from) -> {split: {table: row}}
      ('voc_frontend.py:data=coco', None): {'val': {3: 'Front end + CRF'}, 'test': {2: None, 4: None}},
      ('voc_frontend.py:data=voc_sbd', None): {'test': {2: None}},
      ('voc_context.py:context=basic', 'coco'): {'val': {3: 'Front + Basic + CRF'}, 'test': {4: None}},
      ('voc_context.py:context=large', 'coco'): {'val': {3: 'Front + Large + CRF'}, 'test': {4: 'Context + CRF'}},
      ('camvid_dilation8.py:stage=joint', None): {'test': {5: None}},
      ('cityscapes_dilation10.py:stage=context', None): {'val': {7: None, 8: None}},
  }
  coco = experiment_workdir(tmp_path, 'coco', 'experiments/voc_frontend.py:data=coco', 'val')
  for i, ((spec, parent), splits) in enumerate(expected.items()):
    for split, rows in splits.items():
      workdir = experiment_workdir(tmp_path, f'run{i}_{split}', f'experiments/{spec}', split,
                                   coco if parent else None, crf=True)
      [run] = tables.load_runs([workdir])
      assert run['crf'] == 'dense'
      for table, row in rows.items():
        assert tables.paper_row(table, run) == row, (spec, parent, split, table)


def test_a_network_trained_with_the_crf_rnn_layer_meets_the_rnn_row_of_what_it_is_on(tmp_path):
  """The "+ RNN" rows (Table 3) and Table 4's "Context + CRF-RNN": experiments/voc_crf.py on the COCO-trained front
  end alone or with a module, layer alone or end to end; a dense CRF on such a run is not an RNN row."""
  expected = {  # experiment -> {split: {table: row}}
      'voc_crf.py:on=frontend': {'val': {3: 'Front end + RNN'}, 'test': {2: None, 4: None}},
      'voc_crf.py:on=basic': {'val': {3: 'Front + Basic + RNN'}, 'test': {4: None}},
      'voc_crf.py:on=large': {'val': {3: 'Front + Large + RNN'}, 'test': {4: 'Context + CRF-RNN'}},
      'voc_crf.py:on=large,stage=crf_joint': {'val': {3: 'Front + Large + RNN'}},
  }
  coco = experiment_workdir(tmp_path, 'coco', 'experiments/voc_frontend.py:data=coco', 'val')
  for i, (spec, splits) in enumerate(expected.items()):
    for split, rows in splits.items():
      workdir = experiment_workdir(tmp_path, f'rnn{i}_{split}', f'experiments/{spec}', split, coco)
      [run] = tables.load_runs([workdir])
      assert run['crf'] == 'rnn'
      for table, row in rows.items():
        assert tables.paper_row(table, run) == row, (spec, split, table)


def test_a_run_appears_once_per_split_and_says_when_the_paper_has_no_figure(tmp_path):
  front = experiment_workdir(tmp_path, 'front', 'experiments/voc_frontend.py:data=coco', 'test')
  basic = experiment_workdir(tmp_path, 'basic', 'experiments/voc_context.py:context=basic', 'test', front)
  r = subprocess.run([sys.executable, '-m', 'dilated_jax.tables', front, basic], cwd=ROOT, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stderr
  assert r.stdout.count('| ours: front (test_best) |') == 1 and r.stdout.count('| ours: basic (test_best) |') == 1
  table4 = r.stdout[r.stdout.index('Table 4'):]
  assert '| ours - Front end |' in table4 and '| no paper figure |' in r.stdout
  assert 'Table 2' not in r.stdout  # neither run is the VOC + SBD front end


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
  assert {(r['group'], r['seed']) for r in runs} == {(g, s) for g in groups for s in (0, 1, 2)}
  for r in runs:
    cfg = sweep.run_config(r)
    assert f'--config.seed={r["seed"]}' in sweep.commands(r, 'w')[0]  # each run trains with its own seed
    if r['group'].startswith(('flat', 'hybrid', 'reversed', 'Basic')):  # equal parameter counts: 7 layers of C
      assert len(cfg.model.context.dilations) == 7 and cfg.model.context.channel_multipliers == ()  # all C
  rf = {r['group']: sweep.receptive_field_px(r) for r in runs}
  assert rf['front end alone'] == 18
  assert rf['Basic (exponential 1,1,2,4,8,16,1)'] == 18 + 66 * 2  # 67 cells at stride 2
  assert rf['flat 1,1,1,1,1,1,1'] == 18 + 14 * 2


def test_crf_sweep_searches_and_evaluates_each_run_with_its_own_parameters():
  runs = sweep.load_sweep(os.path.join(ROOT, 'experiments/sweeps/crf_builtin.py'))
  rnn = [r for r in runs if 'stage=crf,' in r['config']]
  assert len(runs) == 12 and len(rnn) == 6 and all(not r.get('crf') for r in rnn)
  assert {r['init_from'] for r in rnn} == {r['name'] for r in runs if r.get('crf')}  # one layer per network
  for r in [r for r in runs if r not in rnn]:
    train, test, search, crf_test = sweep.commands(r, 'w')
    assert search[2:5] == ['dilated_jax.crf_search', f'--config={r["config"]}', f'--workdir=w/{r["name"]}']
    assert '--split=val' in search and crf_test == test + [f'--crf_params=w/{r["name"]}/crf/params.json']
    assert sweep.outputs(r, 'w')[2:] == [f'w/{r["name"]}/crf/params.json', f'w/{r["name"]}/eval/test_best_crf.json']


TINY = ("{'data.synthetic.image_size': 32, 'data.synthetic.train_size': 8, 'data.synthetic.val_size': 4, "
        "'data.synthetic.test_size': 4, 'data.synthetic.disc_radius': 3, 'data.synthetic.frame_width': 2, "
        "'data.synthetic.frame_distance': 4, 'model.front_end.block_channels': (4, 8), "
        "'model.front_end.fc_channels': 8, 'eval.tile': (32, 32), 'total_steps': 2, 'eval_every': 0, 'log_every': 1}")


@pytest.mark.slow
def test_a_tiny_sweep_runs_resumes_and_gathers(tmp_path):
  path = write_sweep(tmp_path / 'tiny.py', f"""
T = {TINY}
def get_sweep():
  return [dict(name='front', config='experiments/synthetic.py:stage=frontend', overrides=T, group='front', seed=0),
          dict(name='ctx', config='experiments/synthetic.py:stage=context', overrides=T, group='ctx', seed=0,
               init_from='front', crf=True)]
""")
  work = tmp_path / 'runs'
  command = [sys.executable, '-m', 'dilated_jax.sweep', f'--sweep={path}', f'--workdir={work}']
  r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (work / 'miou_vs_receptive_field.png').exists()
  lines = list(csv.reader((work / 'results.csv').read_text().splitlines()))
  assert lines[0][:3] == ['group', 'receptive field (px)', 'mIoU mean'] and [r[0] for r in lines[1:]] == [
      'front', 'ctx', 'ctx + CRF']
  crf = json.load(open(work / 'ctx' / 'eval' / 'test_best_crf.json'))
  assert crf['crf'] == json.load(open(work / 'ctx' / 'crf' / 'params.json'))['params']  # searched on val
  row = dict(zip(lines[0], lines[3]))
  assert float(row['mIoU mean']) == pytest.approx(100 * crf['miou'], abs=0.05)
  assert float(row['boundary mIoU mean']) == pytest.approx(100 * crf['boundary_miou'], abs=0.05)
  r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)  # everything done: skipped
  assert r.returncode == 0 and r.stderr.count('skipped') == 2


@pytest.mark.slow
def test_figure_rows_are_image_ground_truth_and_each_runs_prediction(tmp_path):
  import jax
  from dilated_jax import checkpoint, data as datasets, figure, images, sharding
  from dilated_jax.inference import Predictor
  from dilated_jax.train import train
  from tests.test_train import tiny

  cfg = tiny()
  runs = [str(tmp_path / 'run'), str(tmp_path / 'other')]
  train(cfg, runs[0])
  # Another network, one that says class 2 everywhere (the tiny trained one says background): its column is its own.
  params = checkpoint.load_params(runs[0], 'best')
  params['front_end']['final']['bias'] = params['front_end']['final']['bias'] + 100 * np.eye(5)[2]
  with checkpoint.manager(runs[1], keep=1) as mngr:
    checkpoint.save(mngr, 0, {'step': np.zeros((), np.int32), 'params': params}, force=True)
    checkpoint.wait(mngr)
  picture, _ = figure.draw(cfg, runs, 'test', [0, 3])
  size = cfg.data.synthetic.image_size
  assert picture.shape == (2 * (size + 4), 4 * (size + 4), 3)
  image, label = datasets.get_source(cfg.data, 'test')[3]
  row = picture[size + 4:2 * size + 4]
  np.testing.assert_array_equal(row[:, :size], image)
  info = datasets.dataset_info(cfg.data)
  np.testing.assert_array_equal(row[:, size + 4:2 * size + 4], images.colourise(label, info.palette))
  columns = []
  for k, workdir in enumerate(runs):  # what predict draws for this image with each run's best checkpoint
    params = checkpoint.load_params(workdir, 'best')
    predictor = Predictor(cfg.model, info, cfg.eval.tile, sharding.make_mesh(jax.devices()[:1]),
                          with_context='context_module' in params)
    labels = predictor.probabilities(params, [image])[0].argmax(-1).astype(np.uint8)
    columns.append(row[:, (2 + k) * (size + 4):(2 + k) * (size + 4) + size])
    np.testing.assert_array_equal(columns[-1], images.colourise(labels, info.palette))
  assert not np.array_equal(columns[0], columns[1])
  with pytest.raises(InputError, match='--indices'):
    figure.draw(cfg, [str(tmp_path / 'run')], 'test', [cfg.data.synthetic.test_size])
  # With crf: after each run's column, its dense CRF's labels with the parameters crf_search wrote in that run.
  from dilated_jax import crf_search, dense_crf
  crf = dense_crf.DenseCRFParams(w_bilateral=10.0, theta_beta=20.0, iterations=3)
  with pytest.raises(InputError, match=f'{runs[0]}/crf/params.json: not a readable CRF parameter file'):
    figure.draw(cfg, runs[:1], 'test', [3], crf=True)
  os.makedirs(os.path.join(runs[0], 'crf'))
  crf_search.write_params(os.path.join(runs[0], 'crf', 'params.json'), crf, [], images=[])
  picture, names = figure.draw(cfg, runs[:1], 'test', [3], crf=True)
  assert picture.shape == (size + 4, 4 * (size + 4), 3) and names == [runs[0], f'{runs[0]} + CRF']
  np.testing.assert_array_equal(picture[:size, 2 * (size + 4):2 * (size + 4) + size], columns[0])
  predictor = Predictor(cfg.model, info, cfg.eval.tile, sharding.make_mesh(jax.devices()[:1]), with_context=False)
  probs = predictor.probabilities(checkpoint.load_params(runs[0], 'best'), [image])[0]
  np.testing.assert_array_equal(picture[:size, 3 * (size + 4):3 * (size + 4) + size],
                                images.colourise(dense_crf.refine_labels(probs, image, crf), info.palette))


def test_cityscapes_runs_print_table_8_from_their_category_iou(tmp_path):
  workdir = experiment_workdir(tmp_path, 'joint', 'experiments/cityscapes_dilation10.py:stage=joint', 'val')
  path = os.path.join(workdir, 'eval', 'val_best.json')
  result = json.load(open(path))
  categories = [c for c, _ in DATASETS['cityscapes'].categories]
  result.update(category_iou={c: 0.8 for c in categories}, category_miou=0.8)
  json.dump(result, open(path, 'w'))
  r = subprocess.run([sys.executable, '-m', 'dilated_jax.tables', workdir], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  table8 = r.stdout[r.stdout.index('Table 8'):]
  assert '| model | ' + ' | '.join(categories) + ' | mIoU |' in table8
  paper = dict(TABLES[8]['rows'])['val']
  assert '| ours - val | ' + ' | '.join(f'{80 - v:+.1f}' for v in paper) + ' |' in table8


def test_a_sweep_override_goes_through_the_locked_config_and_a_mistyped_one_is_one_line():
  run = dict(name='x', config='experiments/synthetic.py:stage=context', group='g', seed=0,
             overrides={'model.context.dilations': (1, 2, 5), 'total_steps': 5})
  cfg = sweep.run_config(run)
  assert cfg.model.context.dilations == (1, 2, 5) and cfg.total_steps == 5
  run['overrides'] = {'totl_steps': 5}
  with pytest.raises(InputError, match=r'^sweep: run x: Key "totl_steps" does not exist .* Did you mean "total_steps"'):
    sweep.run_config(run)


def drn_workdir(tmp_path, name, arg, overrides=None, scales=None):
  """A cityscapes_drn workdir with a val evaluation (with scales: a multi-scale one, as `evaluate --ms` writes it)."""
  workdir = experiment_workdir(tmp_path, name, f'experiments/cityscapes_drn.py:{arg}', 'val')
  if overrides or scales:
    path = os.path.join(workdir, 'config.json')
    with open(path) as f:
      cfg = json.load(f)
    cfg['model']['drn'].update(overrides or {})
    with open(path, 'w') as f:
      json.dump(cfg, f)
  if scales:
    src = os.path.join(workdir, 'eval', 'val_best.json')
    with open(src) as f:
      result = json.load(f)
    os.remove(src)
    with open(os.path.join(workdir, 'eval', 'val_best_ms.json'), 'w') as f:
      json.dump(dict(result, scales=scales, flip=False), f)
  return workdir


def test_the_drn_table_places_a_drn_run_by_its_variant(tmp_path):
  """A DRN evaluated on Cityscapes val meets fyu/drn's published row of its variant, and no Dilation10 row; not at
  another width or dilation schedule, nor evaluated at several scales (the published figures are single-scale)."""
  from dilated_jax.paper_results import DRN
  expected = {('variant=drn_d_38', None, None): 'DRN-D-38', ('variant=drn_c_26', None, None): 'DRN-C-26',
              ('variant=drn_d_22', None, None): 'DRN-D-22', ('variant=drn_d_22', (('width', 0.25),), None): None,
              ('variant=drn_c_26', (('dilations', (1, 1, 1, 1)),), None): None,
              ('variant=drn_c_26', (('residual_7_8', True),), None): None,
              ('variant=drn_d_38', None, (0.5, 1.0)): None}
  for i, ((arg, overrides, scales), row) in enumerate(expected.items()):
    [run] = tables.load_runs([drn_workdir(tmp_path, f'drn{i}', arg, dict(overrides or ()), scales)])
    assert tables.paper_row(DRN, run) == row, (arg, overrides, scales)
    assert tables.paper_row(7, run) is None and tables.paper_row(8, run) is None
  with_context = drn_workdir(tmp_path, 'drn_context', 'variant=drn_d_22')  # a DRN + context module: no row
  with open(os.path.join(with_context, 'config.json')) as f:
    cfg = json.load(f)
  with open(os.path.join(with_context, 'config.json'), 'w') as f:
    json.dump(dict(cfg, stage='context'), f)
  [run] = tables.load_runs([with_context])
  assert [tables.paper_row(t, run) for t in (7, 8, DRN)] == [None, None, None]
  [dilation10] = tables.load_runs([experiment_workdir(tmp_path, 'd10', 'experiments/cityscapes_dilation10.py:'
                                                      'stage=context', 'val')])
  assert tables.paper_row(7, dilation10) == 'val' and tables.paper_row(DRN, dilation10) is None
  experiment_workdir(tmp_path, 'd10front', 'experiments/cityscapes_dilation10.py:stage=frontend', 'val')
  r = subprocess.run([sys.executable, '-m', 'dilated_jax.tables', str(tmp_path / 'drn0'), str(tmp_path / 'drn6'),
                      str(tmp_path / 'd10'), str(tmp_path / 'd10front')], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  drn_table = r.stdout[r.stdout.index('DRN table'):]
  assert '| DRN-D-38 | 71.4 |' in drn_table and '| ours - DRN-D-38 | -11.4 |' in drn_table  # ours: 0.6 everywhere
  assert '| ours: drn6 (val_best_ms) | 60.0 |\n| no paper figure | - |' in drn_table
  assert 'ours: drn0' not in r.stdout[:r.stdout.index('DRN table')]  # the DRN runs are in the DRN table only
  assert '| ours - val |' in r.stdout[r.stdout.index('Table 7'):r.stdout.index('DRN table')]
  assert 'd10front' not in drn_table  # a Dilation10 front end has no figure: the paper's tables, not the DRN's


def test_degridding_sweep_builds_each_group_with_its_levels_7_8():
  """3 groups x 3 seeds of DRNSeg on the built-in dataset; each config builds and runs on a scene, and the groups
  differ exactly in levels 7-8: C without residuals, C with them, A-style without the levels."""
  import jax
  import jax.numpy as jnp

  from dilated_jax.models import build_model

  runs = sweep.load_sweep(os.path.join(ROOT, 'experiments/sweeps/degridding.py'))
  assert len(runs) == 9 and {(r['group'], r['seed']) for r in runs} == {
      (g, s) for g in {r['group'] for r in runs} for s in (0, 1, 2)}
  levels = {}
  for r in runs:
    cfg = sweep.run_config(r)
    assert cfg.model.backbone == 'drn' and cfg.data.name == 'synthetic' and cfg.stage == 'frontend'
    if r['seed']:
      continue
    model = build_model(cfg.model)
    base = model.front_end.base
    levels[r['group']] = [(lv.name, lv.dilation, lv.residual) for lv in base.levels()[-3:]]
    x = jnp.zeros((1, cfg.eval.tile[0], cfg.eval.tile[1], 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (1, 16, 16, cfg.model.num_classes)
  assert levels == {
      'DRN-C-26: 7-8 dilation 2, 1, no residual': [('layer6', 4, True), ('layer7', 2, False), ('layer8', 1, False)],
      'DRN-C-26 with residuals at 7-8': [('layer6', 4, True), ('layer7', 2, True), ('layer8', 1, True)],
      'A-style: levels 7-8 removed': [('layer4', 1, True), ('layer5', 2, True), ('layer6', 4, True)]}
