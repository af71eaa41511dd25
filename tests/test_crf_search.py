"""The dense CRF's grid search (crf_search.py): every point scored as a direct computation scores it, the best chosen,
and the parameter file written and read back, a bad one refused in one line."""

import json
import os
import re

import numpy as np
from PIL import Image
import pytest

from dilated_jax import InputError, crf_search, dense_crf
from crf_reference import scene


def direct_miou(preds, labels, num_classes: int) -> float:
  """From the definition: per-class TP / (TP + FP + FN) over all pixels of all images, mean over present classes."""
  pred, label = np.concatenate([p.ravel() for p in preds]), np.concatenate([y.ravel() for y in labels])
  ious = []
  for k in range(num_classes):
    tp = np.sum((pred == k) & (label == k))
    fp, fn = np.sum((pred == k) & (label != k)), np.sum((pred != k) & (label == k))
    if tp + fp + fn:
      ious.append(tp / (tp + fp + fn))
  return float(np.mean(ious))


@pytest.fixture(scope='module')
def examples():
  out = []
  for seed in range(3):
    image, probs, regions = scene(20, 24, 3, seed=seed)
    out.append((probs, image, regions.astype(np.uint8)))
  return out


def test_search_scores_every_point_and_picks_the_best(examples):
  grid = dict(theta_alpha=(5.0, 40.0), theta_beta=(3.0, 20.0), w_bilateral=(0.0, 4.0))
  base = dense_crf.DenseCRFParams(iterations=5)
  best, table = crf_search.search(examples, grid, num_classes=3, base=base, workers=2)
  assert len(table) == 1 + 8 and table[0]['crf'] is False
  assert table[0]['miou'] == pytest.approx(direct_miou([p.argmax(-1) for p, _, _ in examples],
                                                       [y for _, _, y in examples], 3))
  for row in table[1:]:
    params = dense_crf.DenseCRFParams.from_dict({k: v for k, v in row.items() if k not in ('crf', 'miou')})
    preds = [dense_crf.refine(p, im, params).argmax(-1) for p, im, _ in examples]
    assert row['miou'] == pytest.approx(direct_miou(preds, [y for _, _, y in examples], 3)), row
  mious = [row['miou'] for row in table[1:]]
  assert best.to_dict() == {k: v for k, v in table[1 + int(np.argmax(mious))].items() if k not in ('crf', 'miou')}
  assert len(set(mious)) > 1  # the points differ, so picking the best is a real choice here
  assert max(mious) > table[0]['miou']  # and the CRF removes the probabilities' noise


def test_parameter_file_round_trip_and_bad_files(tmp_path):
  params = dense_crf.DenseCRFParams(theta_alpha=80.0, theta_beta=13.0, w_bilateral=5.0, iterations=5)
  path = str(tmp_path / 'crf.json')
  crf_search.write_params(path, params, [{'crf': False, 'miou': 0.5}], images=3)
  assert crf_search.read_params(path) == params
  assert os.listdir(tmp_path) == ['crf.json']  # no temporary file left
  bad = {
      'missing.json': None,
      'text.json': 'theta_alpha = 80',
      'list.json': json.dumps([1, 2]),
      'negative.json': json.dumps({'params': {'theta_alpha': -80}}),
      'unknown.json': json.dumps({'params': {'theta_delta': 3}}),
      'zero_iterations.json': json.dumps({'params': {'iterations': 0}}),
  }
  for name, text in bad.items():
    p = tmp_path / name
    if text is not None:
      p.write_text(text)
    with pytest.raises(InputError) as e:
      crf_search.read_params(str(p))
    message = str(e.value)
    assert message.startswith(str(p)) and '\n' not in message, message
  with pytest.raises(InputError, match='crf.theta_alpha'):
    crf_search.read_params(str(tmp_path / 'negative.json'))


def test_held_out_images_spread_over_the_split():
  assert crf_search.held_out(1449) == sorted(set(crf_search.held_out(1449)))
  indices = crf_search.held_out(1449, 100)
  assert len(indices) == 100 and indices[0] == 0 and indices[-1] == 1448
  assert max(np.diff(indices)) <= 15
  assert crf_search.held_out(7, 100) == list(range(7))


def test_bad_grids_name_the_field():
  base = dense_crf.DenseCRFParams()
  for grid, named in ((dict(theta_delta=(3.0,)), 'theta_delta'), (dict(theta_beta=()), 'theta_beta'),
                      (dict(theta_alpha=(80.0, -1.0)), 'crf.theta_alpha')):
    with pytest.raises(InputError, match=named):
      crf_search.grid_points(grid, base)
  assert len(crf_search.grid_points(crf_search.GRID, base)) == 3 * 4 * 3


@pytest.mark.slow
def test_search_then_evaluate_and_predict_with_its_parameters_from_the_command_line(tmp_path):
  """train -> crf_search (its table, the file) -> evaluate --crf_params (the "+ CRF" result) -> predict --crf; a bad
  grid or parameter file is one line before the network runs."""
  from test_train import run_module

  cfg_flags = ['--config=experiments/synthetic.py:stage=frontend', '--config.data.synthetic.image_size=32',
               '--config.data.synthetic.frame_width=2', '--config.data.synthetic.frame_distance=4',
               '--config.model.front_end.block_channels=(4,8)', '--config.model.front_end.fc_channels=8',
               '--config.eval.tile=(32,32)', '--config.data.synthetic.val_size=4', '--config.data.workers=0']
  work = str(tmp_path / 'run')
  r = run_module('dilated_jax.train', *cfg_flags, f'--workdir={work}', '--config.total_steps=2',
                 '--config.data.synthetic.train_size=8')
  assert r.returncode == 0, r.stderr[-2000:]
  grid = '{"theta_alpha": [10, 80], "theta_beta": [5], "w_bilateral": [0, 4]}'
  r = run_module('dilated_jax.crf_search', *cfg_flags, f'--workdir={work}', '--images=3', f'--grid={grid}')
  assert r.returncode == 0, r.stderr[-2000:]
  points = re.findall(r'^\| (10|80) \| 5 \| 3 \| (0|4) \| 3 \| 10 \| [\d.]+ \|$', r.stdout, re.M)
  assert '| no CRF |' in r.stdout and sorted(points) == [('10', '0'), ('10', '4'), ('80', '0'), ('80', '4')]
  record = json.load(open(os.path.join(work, 'crf', 'params.json')))
  assert record['images'] == [0, 2, 3] and len(record['table']) == 1 + 4
  best = max(record['table'][1:], key=lambda row: row['miou'])
  assert record['params'] == {k: v for k, v in best.items() if k not in ('crf', 'miou')}
  params_file = os.path.join(work, 'crf', 'params.json')
  r = run_module('dilated_jax.evaluate', *cfg_flags, f'--workdir={work}', '--split=val', f'--crf_params={params_file}')
  assert r.returncode == 0, r.stderr[-2000:]
  assert '| val + CRF |' in r.stdout.replace('synthetic val + CRF', 'val + CRF')
  result = json.load(open(os.path.join(work, 'eval', 'val_best_crf.json')))
  assert result['crf'] == record['params'] and result['crf_params_file'] == params_file
  assert result['num_images'] == 4 and 0 <= result['boundary_miou'] <= 1
  scene = tmp_path / 'scene.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3)).astype(np.uint8)).save(scene)
  r = run_module('dilated_jax.predict', *cfg_flags, f'--workdir={work}', f'--output_dir={tmp_path}/pred', '--crf',
                 '--save_probs', str(scene))
  assert r.returncode == 0, r.stderr[-2000:]
  marginals = np.load(tmp_path / 'pred' / 'scene.npy')
  assert marginals.shape == (40, 48, 5) and np.allclose(marginals.sum(-1), 1, atol=1e-4)
  for flag, message in (('--grid={"theta_beta": [0]}', 'crf.theta_beta: expected a kernel width > 0'),
                        ('--grid=[1]', '--grid: expected a JSON object')):
    r = run_module('dilated_jax.crf_search', *cfg_flags, f'--workdir={work}', flag)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith('error: ' + message), r.stderr[-2000:]
  (tmp_path / 'bad.json').write_text('{"params": {"theta_alpha": -1}}')
  r = run_module('dilated_jax.evaluate', *cfg_flags, f'--workdir={work}', f'--crf_params={tmp_path}/bad.json')
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      f'error: {tmp_path}/bad.json: crf.theta_alpha: expected a kernel width > 0, got -1'), r.stderr[-2000:]
