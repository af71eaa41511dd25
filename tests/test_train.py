"""Training end to end on a tiny built-in dataset: data parallelism, resumption, the stages, the entry points."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from dilated_jax import InputError, checkpoint, config
from dilated_jax.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(stage='frontend', **fields):
  """experiments/synthetic.py shrunk to 32 px scenes and a few channels, so that a run takes seconds."""
  cfg = config.load(os.path.join(ROOT, f'experiments/synthetic.py:stage={stage}'))
  cfg.data.synthetic.update(image_size=32, train_size=16, val_size=8, test_size=8, num_objects=1, disc_radius=3,
                            frame_width=2, frame_distance=4)
  cfg.model.front_end.update(block_channels=(4, 8), fc_channels=8, dropout_rate=0.5)
  cfg.eval.update(tile=(32, 32), batch_size=8)
  cfg.update(batch_size=8, total_steps=3, log_every=1, eval_every=0, checkpoint_every=2)
  cfg.update(fields)
  return cfg


def assert_trees_equal(a, b, exact=True, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    (np.testing.assert_array_equal if exact else np.testing.assert_allclose)(x, y, **tol)


@pytest.mark.slow
def test_one_device_and_eight_devices_give_the_same_parameters(tmp_path):
  assert jax.device_count() == 8, 'tests/conftest.py asks for 8 simulated CPU devices'
  cfg = tiny(total_steps=2)
  train(cfg, str(tmp_path / 'one'), devices=jax.devices()[:1])
  train(cfg, str(tmp_path / 'eight'))
  one, eight = checkpoint.load_params(str(tmp_path / 'one')), checkpoint.load_params(str(tmp_path / 'eight'))
  assert_trees_equal(one, eight, exact=False, rtol=1e-5, atol=1e-6)
  assert not np.allclose(one['front_end']['final']['bias'], 0)


@pytest.mark.slow
def test_stopped_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
  cfg = tiny(total_steps=4)
  train(cfg, str(tmp_path / 'straight'))
  cfg_half = tiny(total_steps=2)
  train(cfg_half, str(tmp_path / 'resumed'))
  train(cfg, str(tmp_path / 'resumed'))  # the same command again, now to step 4: resumes from step 2
  assert_trees_equal(checkpoint.load_params(str(tmp_path / 'straight')),
                     checkpoint.load_params(str(tmp_path / 'resumed')))
  steps = [json.loads(line)['step'] for line in open(tmp_path / 'resumed' / 'metrics.jsonl')
           if json.loads(line)['kind'] == 'train']
  assert steps == [1, 2, 3, 4]  # no step trained twice


@pytest.mark.slow
def test_stages_chain_and_the_context_stage_trains_only_the_context_module(tmp_path):
  train(tiny('frontend'), str(tmp_path / 'frontend'))
  result = train(tiny('context', init_from=str(tmp_path / 'frontend')), str(tmp_path / 'context'))
  cached = list((tmp_path / 'frontend' / 'features').glob('train_*/scores.npy'))  # beside the front end that made them
  assert len(cached) == 1
  train(tiny('context,context=flat', init_from=str(tmp_path / 'frontend')), str(tmp_path / 'flat'))
  assert list((tmp_path / 'frontend' / 'features').glob('train_*/scores.npy')) == cached  # shared by the next run
  front = checkpoint.load_params(str(tmp_path / 'frontend'))
  ctx = checkpoint.load_params(str(tmp_path / 'context'))
  assert_trees_equal(front['front_end'], ctx['front_end'])
  assert set(ctx) == {'front_end', 'context_module'}
  assert 0 <= result['miou'] <= 1 and len(result['iou']) == 5
  joint = train(tiny('joint', init_from=str(tmp_path / 'context')), str(tmp_path / 'joint'))
  params = checkpoint.load_params(str(tmp_path / 'joint'))
  assert not np.array_equal(params['front_end']['conv1_1']['kernel'], ctx['front_end']['conv1_1']['kernel'])
  assert 0 <= joint['miou'] <= 1


def test_context_stage_without_init_from_is_refused(tmp_path):
  with pytest.raises(InputError, match='init_from'):
    train(tiny('context'), str(tmp_path / 'c'))


def test_batch_that_does_not_split_over_devices_is_refused(tmp_path):
  with pytest.raises(InputError, match='batch_size'):
    train(tiny(batch_size=12), str(tmp_path / 'b'))


# python -c PEAK_RSS module args...: runs the module as `python -m` would, then logs the process's peak memory: VmHWM,
# which starts afresh at exec (getrusage's ru_maxrss would count the parent's peak, since it survives exec).
PEAK_RSS = """
import atexit, re, runpy, sys
peak = lambda: re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)
atexit.register(lambda: print('peak_rss_kb', peak(), file=sys.stderr))
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def run_module(*args, cwd=ROOT, code=None):
  """python -m args, or with `code`: python -c code args."""
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='')
  return subprocess.run([sys.executable, *(('-c', code) if code else ('-m',)), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_evaluate_and_predict_entry_points(tmp_path):
  cfg_flags = ['--config=experiments/synthetic.py:stage=frontend', '--config.data.synthetic.image_size=32',
               '--config.data.synthetic.frame_width=2', '--config.data.synthetic.frame_distance=4',
               '--config.model.front_end.block_channels=(4,8)', '--config.model.front_end.fc_channels=8',
               '--config.eval.tile=(32,32)']
  work = str(tmp_path / 'run')
  r = run_module('dilated_jax.train', *cfg_flags, f'--workdir={work}', '--config.total_steps=2',
                 '--config.data.synthetic.train_size=8', '--config.data.synthetic.val_size=4')
  assert r.returncode == 0, r.stderr[-2000:]
  r = run_module('dilated_jax.evaluate', *cfg_flags, f'--workdir={work}', '--split=test',
                 '--config.data.synthetic.test_size=4')
  assert r.returncode == 0, r.stderr[-2000:]
  assert '| model | background | frame1 | frame2 | disc1 | disc2 | mIoU |' in r.stdout
  result = json.load(open(os.path.join(work, 'eval', 'test_best.json')))
  assert result['num_images'] == 4 and 0 <= result['miou'] <= 1
  # An output folder that cannot be written: one line naming it, before any evaluation or prediction runs.
  os.rename(os.path.join(work, 'eval'), os.path.join(work, 'eval.kept'))
  open(os.path.join(work, 'eval'), 'w').close()  # a file where the folder goes (root writes through permissions)
  r = run_module('dilated_jax.evaluate', *cfg_flags, f'--workdir={work}', '--split=test',
                 '--config.data.synthetic.test_size=4')
  assert r.returncode == 2 and 'evaluation:' not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith(f'error: --workdir: {work}/eval is not a writable folder')
  os.remove(os.path.join(work, 'eval'))
  os.rename(os.path.join(work, 'eval.kept'), os.path.join(work, 'eval'))
  r = run_module('dilated_jax.data.synthetic', f'--output_dir={tmp_path}/scenes', '--count=1')
  assert r.returncode == 0, r.stderr[-2000:]
  scene = f'{tmp_path}/scenes/test_0000.png'
  bad = tmp_path / 'broken.png'
  bad.write_bytes(open(scene, 'rb').read()[:100])  # a truncated PNG
  out = tmp_path / 'pred'
  r = run_module('dilated_jax.predict', *cfg_flags, f'--workdir={work}', f'--output_dir={out}', scene, str(bad))
  assert r.returncode == 2 and 'Traceback' not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith(f'error: {bad}')
  assert not out.exists()  # nothing written when one of the images is bad
  r = run_module('dilated_jax.predict', *cfg_flags, f'--workdir={work}', f'--output_dir={bad}/out', scene)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      f'error: --output_dir: {bad}/out is not a writable folder (Not a directory)'), r.stderr[-2000:]
  r = run_module('dilated_jax.predict', *cfg_flags, f'--workdir={work}', f'--output_dir={out}', '--save_probs', scene)
  assert r.returncode == 0, r.stderr[-2000:]
  assert Image.open(out / 'test_0000.png').size == (128, 128)  # the scene files are full-size (128 px)
  probs = np.load(out / 'test_0000.npy')
  assert probs.shape == (128, 128, 5) and np.allclose(probs.sum(-1), 1, atol=1e-5)
  # A thin image of a few hundred bytes: memory linear in its pixels (dense zoom matrices and all tiles in one batch
  # took 3.4 GB for 20000 x 1), and past --max_pixels (counted on the tile grid) refused before decoding.
  thin = tmp_path / 'thin.png'
  Image.fromarray(np.full((1, 20000, 3), 100, np.uint8)).save(thin)
  r = run_module('dilated_jax.predict', *cfg_flags, f'--workdir={work}', f'--output_dir={out}', str(thin),
                 code=PEAK_RSS)
  assert r.returncode == 0, r.stderr[-2000:]
  assert Image.open(out / 'thin.png').size == (20000, 1)
  peak_mb = int(re.search(r'peak_rss_kb (\d+)', r.stderr).group(1)) / 1024
  assert peak_mb < 1500, f'predict of a 20000 x 1 image peaked at {peak_mb:.0f} MB'
  r = run_module('dilated_jax.predict', *cfg_flags, f'--workdir={work}', f'--output_dir={out}', '--max_pixels=500000',
                 str(thin))
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      f'error: {thin}: 1 x 20000 pixels, 640000 on the network\'s 32 x 32 tiles: more than --max_pixels=500000 '
      '(memory grows with it)'), r.stderr[-2000:]
  # A config whose network does not match the checkpoint: one line naming the layer and both shapes.
  wider = [*cfg_flags, '--config.model.front_end.fc_channels=16', f'--workdir={work}']
  for module, extra in (('dilated_jax.evaluate', ['--split=test', '--config.data.synthetic.test_size=4']),
                        ('dilated_jax.predict', [f'--output_dir={tmp_path}/pred2', scene])):
    r = run_module(module, *wider, *extra)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert re.search(r'error: .*/run: front_end/fc6/\w+ has shape \(.*8,\), this network wants \(.*16,\)',
                     r.stderr.strip().splitlines()[-1]), r.stderr[-2000:]



def test_tiles_run_through_the_network_in_bounded_chunks_with_the_same_scores():
  """A device runs eval.tiles_per_device tiles at a time: 8 tiles need about the memory of 2, and score as one batch."""
  from dilated_jax import data as datasets, sharding
  from dilated_jax.inference import Predictor

  cfg = config.load(os.path.join(ROOT, 'experiments/synthetic.py:stage=frontend'))  # activations outweigh the tiles
  cfg.eval.tile = (32, 32)
  info, mesh = datasets.dataset_info(cfg.data), sharding.make_mesh(jax.devices()[:1])
  side = cfg.eval.tile[0] + 2 * Predictor(cfg.model, info, cfg.eval.tile, mesh).margin
  tiles = np.random.default_rng(0).normal(size=(8, side, side, 3)).astype(np.float32)
  scores, temp = {}, {}
  for k in (1, 8):
    predictor = Predictor(cfg.model, info, cfg.eval.tile, mesh, with_context=False, tiles_per_device=k)
    params = predictor.model.init(jax.random.key(0), tiles[:1])['params']
    scores[k] = np.asarray(predictor.scores_fn((1, 8))(params, tiles))
    temp[k] = {n: predictor.scores_fn((1, n)).lower(params, tiles[:n]).compile().memory_analysis().temp_size_in_bytes
               for n in (2, 8)}
  np.testing.assert_allclose(scores[1], scores[8], rtol=1e-5, atol=1e-5)
  # Each tile past 2 adds its input and scores in chunks of 1; as one batch, all of its activations too.
  assert temp[1][8] - temp[1][2] < 0.25 * (temp[8][8] - temp[8][2]), temp

@pytest.mark.parametrize('field,value', [('checkpoint_every', 0), ('log_every', 0), ('batch_size', 0),
                                         ('keep_checkpoints', 0), ('keep_checkpoints', -1), ('eval.batch_size', 0),
                                         ('eval.tiles_per_device', 0), ('eval.tensorboard_images', -1),
                                         ('data.workers', -2), ('total_steps', 0)])
def test_counts_a_run_cannot_use_are_one_line_naming_the_field(tmp_path, field, value):
  cfg = tiny()
  cfg.unlock()
  parent, _, key = ('.' + field).rpartition('.')
  (cfg[parent[1:]] if parent else cfg)[key] = value
  with pytest.raises(InputError, match=f'^{field}: expected an integer >= '):
    train(cfg, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()  # refused before anything is written


def test_an_empty_split_is_one_line_naming_it(tmp_path):
  cfg = tiny()
  cfg.data.synthetic.train_size = 0
  with pytest.raises(InputError, match='data: the train split of synthetic holds no images'):
    train(cfg, str(tmp_path / 'w'))


@pytest.mark.slow
def test_a_workdir_already_past_total_steps_is_refused_not_relabelled(tmp_path):
  train(tiny(total_steps=4), str(tmp_path / 'w'))
  with pytest.raises(InputError, match=r'total_steps: 2, but .*checkpoints/4 is already past it'):
    train(tiny(total_steps=2), str(tmp_path / 'w'))
  assert json.load(open(tmp_path / 'w' / 'eval' / 'val_final.json'))['step'] == 4  # not relabelled


def test_the_workdir_write_probe_never_collides_between_hosts_of_equal_process_ids(tmp_path):
  """Threads of one process stand in for hosts whose processes have equal ids on a shared filesystem."""
  import threading
  from dilated_jax.cli import check_writable

  errors = []

  def probe():
    for _ in range(300):
      try:
        check_writable(str(tmp_path), 'workdir')
      except OSError as e:
        errors.append(e)

  threads = [threading.Thread(target=probe) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and os.listdir(tmp_path) == []


def test_predict_refuses_outputs_that_would_overwrite_an_input_or_each_other(tmp_path):
  from dilated_jax.predict import output_stems

  a, b = tmp_path / 'in' / 'a.png', tmp_path / 'other' / 'a.jpg'
  assert output_stems([str(a)], str(tmp_path / 'out')) == [str(tmp_path / 'out' / 'a')]
  with pytest.raises(InputError, match=r'--output_dir: .*in/a\.png would overwrite the input image .*in/a\.png'):
    output_stems([str(a)], str(tmp_path / 'in'))
  with pytest.raises(InputError, match=r'in/a\.png and .*other/a\.jpg would both be written to .*out/a\.png'):
    output_stems([str(a), str(b)], str(tmp_path / 'out'))


@pytest.mark.slow
def test_a_failing_evaluation_keeps_the_checkpoint_of_its_step(tmp_path, monkeypatch):
  """The save comes first: an evaluation that fails (a bug, an OOM) costs no training."""
  import dilated_jax.train as train_module

  def failing(*args, **kwargs):
    raise RuntimeError('out of memory in the evaluation')

  monkeypatch.setattr(train_module, 'evaluate', failing)
  with pytest.raises(RuntimeError, match='out of memory'):
    train(tiny(total_steps=2, eval_every=2, checkpoint_every=2), str(tmp_path / 'w'))
  assert checkpoint.steps(str(tmp_path / 'w')) == [2]


@pytest.mark.slow
def test_sigterm_during_an_evaluation_exits_within_a_batch_with_the_checkpoint(tmp_path, monkeypatch):
  """A scheduler's grace period is shorter than a validation set: the flag is read between evaluation batches."""
  import signal
  from dilated_jax.inference import Predictor

  calls = []
  confusion = Predictor.confusion

  def terminated_in_the_first_batch(self, *args):
    calls.append(1)
    if len(calls) == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return confusion(self, *args)

  monkeypatch.setattr(Predictor, 'confusion', terminated_in_the_first_batch)
  cfg = tiny(total_steps=4, eval_every=2, checkpoint_every=4)
  cfg.data.synthetic.val_size = 64  # 8 batches of one image per device
  with pytest.raises(SystemExit) as stopped:
    train(cfg, str(tmp_path / 'w'))
  assert stopped.value.code == 128 + signal.SIGTERM
  assert len(calls) == 1, f'{len(calls)} of 8 evaluation batches ran after the SIGTERM'
  assert checkpoint.steps(str(tmp_path / 'w')) == [2]
  records = [json.loads(line) for line in open(tmp_path / 'w' / 'metrics.jsonl')]
  assert not [r for r in records if r['kind'] == 'val']  # the abandoned evaluation is not recorded


@pytest.mark.slow
def test_retention_keeps_the_newest_and_the_best_recorded_step_and_best_reads_it(tmp_path, monkeypatch):
  """mIoU recorded after each save: keep_checkpoints=1 leaves the newest step and the best one, which 'best' loads."""
  import dilated_jax.train as train_module

  miou = {2: 0.5, 4: 0.9, 6: 0.1, 8: 0.2}
  params_at = {}

  def scripted(predictor, params, *args, **kwargs):
    step = 2 * (len(params_at) + 1)
    params_at[step] = jax.device_get(params)
    return {'miou': miou[step], 'pixel_accuracy': 0.0, 'iou': dict.fromkeys(args[1].class_names, miou[step])}

  monkeypatch.setattr(train_module, 'evaluate', scripted)
  workdir = str(tmp_path / 'w')
  train(tiny(total_steps=8, eval_every=2, checkpoint_every=2, keep_checkpoints=1), workdir)
  assert checkpoint.steps(workdir) == [4, 8]
  assert_trees_equal(checkpoint.load_params(workdir, 'best'), params_at[4])
  assert_trees_equal(checkpoint.load_params(workdir, 'latest'), params_at[8])


@pytest.mark.slow
def test_evaluations_on_the_test_split_never_choose_the_best_checkpoint(tmp_path, monkeypatch):
  """CamVid and KITTI evaluate on test: 'best' must not be picked on it (it stays the latest checkpoint)."""
  import dilated_jax.train as train_module

  mious = iter([0.9, 0.1])  # step 2 would be the best

  def scripted(predictor, params, source, info, *args, **kwargs):
    return {'miou': next(mious), 'pixel_accuracy': 0.0, 'iou': dict.fromkeys(info.class_names, 0.5)}

  monkeypatch.setattr(train_module, 'evaluate', scripted)
  cfg = tiny(total_steps=4, eval_every=2, checkpoint_every=2)
  cfg.eval.split = 'test'
  train(cfg, str(tmp_path / 'w'))
  assert checkpoint.best_step(str(tmp_path / 'w')) is None
  assert not (tmp_path / 'w' / 'checkpoints' / '2' / 'metrics').exists()
