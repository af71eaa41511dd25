"""A workdir remembers its config: evaluate, predict and figure given --workdir alone use WORKDIR/config.json, with
overrides on top; a config.json of older field names reads under the new ones."""

import json
import os

from PIL import Image
import pytest

from dilated_jax import InputError, cli, config
from dilated_jax.train import train
from tests.test_train import ROOT, run_module, tiny


def test_the_workdir_config_goes_first_when_no_config_is_given():
  spec = f'--config={cli.WORKDIR_CONFIG}:'
  assert cli.with_workdir_config(['p', '--workdir=runs/a', '--split=test'], 'workdir') == [
      'p', spec + 'runs/a', '--workdir=runs/a', '--split=test']
  assert cli.with_workdir_config(['p', '--workdir', 'runs/a', '--config.eval.tile=(8,8)'], 'workdir') == [
      'p', spec + 'runs/a', '--workdir', 'runs/a', '--config.eval.tile=(8,8)']
  assert cli.with_workdir_config(['p', '--workdirs=runs/a,runs/b'], 'workdirs')[1] == spec + 'runs/a'
  given = ['p', '--config=experiments/synthetic.py', '--workdir=runs/a']
  assert cli.with_workdir_config(given, 'workdir') == given  # an explicit --config wins
  assert cli.with_workdir_config(['p', '--preset=camvid'], 'workdir') == ['p', '--preset=camvid']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A tiny run whose network and data differ from experiments/synthetic.py's defaults (32 px scenes, 4 and 8
  channels): an entry point that did not read its config.json would fail on the checkpoint's shapes."""
  work = str(tmp_path_factory.mktemp('run'))
  train(tiny(total_steps=1), work)
  return work


@pytest.mark.slow
def test_evaluate_predict_and_figure_take_the_workdirs_config_with_overrides(workdir, tmp_path):
  r = run_module('dilated_jax.evaluate', f'--workdir={workdir}', '--split=test')
  assert r.returncode == 0, r.stderr[-2000:]
  result = json.load(open(os.path.join(workdir, 'eval', 'test_best.json')))
  assert result['num_images'] == 8  # tiny's test split, not the experiment file's 100 scenes
  r = run_module('dilated_jax.evaluate', f'--workdir={workdir}', '--split=test', '--config.data.synthetic.test_size=4')
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.load(open(os.path.join(workdir, 'eval', 'test_best.json')))['num_images'] == 4  # the override holds

  r = run_module('dilated_jax.data.synthetic', f'--output_dir={tmp_path}/scenes', '--count=1')
  assert r.returncode == 0, r.stderr[-2000:]
  scene = f'{tmp_path}/scenes/test_0000.png'
  r = run_module('dilated_jax.predict', f'--workdir={workdir}', f'--output_dir={tmp_path}/out', scene,
                 '--config.eval.tile=(16,16)')
  assert r.returncode == 0, r.stderr[-2000:]
  assert Image.open(tmp_path / 'out' / 'test_0000.png').size == (128, 128)
  r = run_module('dilated_jax.predict', f'--workdir={workdir}', f'--output_dir={tmp_path}/out', scene,
                 '--config.eval.tile=(5,5)')  # overrides are used: this one is refused (the front end's stride is 2)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      'error: eval.tile: expected multiples of the output stride 2, got (5, 5)'), r.stderr[-2000:]

  picture = tmp_path / 'figure.png'
  r = run_module('dilated_jax.figure', f'--workdirs={workdir},{workdir}', '--indices=0', f'--output={picture}')
  assert r.returncode == 0, r.stderr[-2000:]
  assert Image.open(picture).size == (4 * (32 + 4), 32 + 4)  # image, truth, two predictions of the 32 px scenes


def test_a_saved_config_reads_back_as_the_run_and_old_names_under_new_ones(tmp_path, caplog):
  run = tiny(total_steps=1)
  (tmp_path / 'config.json').write_text(run.to_json_best_effort(indent=1, sort_keys=True))  # as train writes it
  assert config.from_workdir(str(tmp_path)).to_dict() == run.to_dict()
  old = json.load(open(tmp_path / 'config.json'))
  old['init_weights'] = old.pop('weights')
  old['data']['variant'] = old['data'].pop('train_set')
  old['model']['context']['init'] = old['model']['context'].pop('initialisation')
  old['model']['context']['init'] = 'random'
  del old['eval']['tensorboard_images']  # a field added since: its default
  (tmp_path / 'config.json').write_text(json.dumps(old))
  cfg = config.from_workdir(str(tmp_path))
  assert cfg.model.context.initialisation == 'random' and cfg.data.train_set == '' and cfg.weights == ''
  assert cfg.eval.tensorboard_images == config.base().eval.tensorboard_images
  assert 'reading model.context.init as model.context.initialisation (renamed)' in caplog.text
  old['data']['colour'] = 'red'
  (tmp_path / 'config.json').write_text(json.dumps(old))
  with pytest.raises(InputError, match=r'config.json: data.colour: not a field of this config'):
    config.from_workdir(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no such file'):
    config.from_workdir(str(tmp_path / 'nowhere'))
  assert os.path.isfile(os.path.join(ROOT, 'dilated_jax', 'workdir_config.py'))
