"""Experiment configs: every one loads for each argument, is locked, builds its model, and states the paper's settings.

Also the command line's answer to a config without its dataset, and to a mistyped override (arXiv 1511.07122
sections 4, 5 and appendix A).
"""

import glob
import importlib.util
import os
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import pytest

from dilated_jax import InputError
from dilated_jax import data as datasets
from dilated_jax.models import build_model, context, upsample_probabilities

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every argument value of every config; a new experiments/*.py must be listed here.
ARGS = {
    'synthetic': [None, 'stage=frontend', 'stage=context', 'stage=joint', 'stage=context,context=large',
                  'stage=context,context=flat', 'stage=crf,context=none', 'stage=crf_joint,context=basic'],
    'voc_frontend': [None, 'data=voc_sbd', 'data=coco', 'data=voc_finetune'],
    'voc_context': [None, 'context=basic', 'context=large'],
    'voc_crf': [None, 'on=frontend', 'on=basic', 'on=large,stage=crf_joint'],
    'camvid_dilation8': [None, 'stage=frontend', 'stage=joint'],
    'camvid_scratch': [None, 'stage=frontend', 'stage=joint'],
    'kitti_dilation7': [None, 'stage=frontend', 'stage=joint'],
    'cityscapes_dilation10': [None, 'stage=frontend', 'stage=context', 'stage=joint'],
    'camvid_drn': [None, 'variant=drn_d_22', 'variant=drn_c_26'],
    'camvid_drn_scratch': [None, 'stage=frontend', 'stage=joint', 'stage=context'],
    'cityscapes_drn': [None, 'variant=drn_c_26', 'variant=drn_d_38', 'batch=16,schedule=poly,augment=scale'],
}
CASES = [(name, arg) for name, args in ARGS.items() for arg in args]


def path_of(name):
  return os.path.join(ROOT, 'experiments', f'{name}.py')


def load(name, arg=None):
  """As --config=experiments/<name>.py[:arg] does: import the file, call get_config(arg)."""
  spec = importlib.util.spec_from_file_location(name, path_of(name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def test_every_experiment_config_is_listed():
  found = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, 'experiments', '*.py'))}
  assert found == set(ARGS)


@pytest.mark.parametrize('name,arg', CASES)
def test_config_loads_is_locked_and_builds(name, arg):
  cfg = load(name, arg)
  with pytest.raises(AttributeError, match='totl_steps'):
    cfg.totl_steps = 5
  with pytest.raises(AttributeError, match='nope'):
    cfg.data.nope = 1
  info = datasets.dataset_info(cfg.data)
  assert cfg.model.num_classes == info.num_classes
  model = build_model(cfg.model, with_context=cfg.stage != 'frontend')
  fe = model.front_end
  assert (model.context_module is None) == (cfg.stage == 'frontend' or not cfg.model.context.dilations)
  assert all(t % fe.stride == 0 for t in cfg.eval.tile), cfg.eval.tile
  if cfg.data.name != 'synthetic':
    # A DRN (no margin) may test whole images, as fyu/drn segment.py: its tile seams would meet zero padding.
    whole = cfg.model.backbone == 'drn' and tuple(cfg.eval.tile) in ((1024, 2048), (360, 480))
    assert cfg.data.dir and (tuple(cfg.eval.tile) == info.tile or whole)
  crop = tuple(cfg.data.crop)
  if crop == (0, 0):
    crop = tuple(t + 2 * fe.margin for t in cfg.eval.tile)
  assert all((c - 2 * fe.margin) % fe.stride == 0 for c in crop), crop
  # Shapes only: eval_shape traces the full-size network without running it.
  x = jax.ShapeDtypeStruct((1,) + crop + (3,), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  scores = jax.eval_shape(model.apply, params, x)
  assert scores.shape == (1,) + tuple((c - 2 * fe.margin) // fe.stride for c in crop) + (info.num_classes,)
  tile = tuple(cfg.eval.tile)
  tile_scores = jax.ShapeDtypeStruct((1,) + tuple(t // fe.stride for t in tile) + (info.num_classes,), jnp.float32)
  probs = jax.eval_shape(lambda s: upsample_probabilities(s, cfg.model.upsample, fe.stride, tile), tile_scores)
  assert probs.shape == (1,) + tile + (info.num_classes,)


@pytest.mark.parametrize('name,arg', [(n, a) for n, a in CASES if a])
def test_config_flags_loads_the_same_config_and_overrides_it(name, arg):
  argv = ['prog', f'--config={path_of(name)}:{arg}', '--config.total_steps=7']
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  want = load(name, arg)
  want.total_steps = 7
  assert fv.config.to_dict() == want.to_dict()


# The paper's training settings (arXiv 1511.07122 sections 4, 5, appendix A): (config, arg) -> fields; dotted names
# reach into data/model.
PAPER = [
    ('voc_frontend', 'data=voc_sbd', {'stage': 'frontend', 'batch_size': 14, 'lr': 1e-3, 'momentum': 0.9,
                                      'total_steps': 60_000, 'lr_steps': (), 'data.name': 'pascal_voc',
                                      'data.train_set': 'sbd'}),
    ('voc_frontend', 'data=coco', {'batch_size': 14, 'lr': 1e-3, 'lr_steps': (100_000,), 'lr_gamma': 0.1,
                                   'total_steps': 140_000, 'data.train_set': 'coco'}),
    ('voc_frontend', 'data=voc_finetune', {'batch_size': 14, 'lr': 1e-5, 'total_steps': 50_000}),
    ('voc_context', 'context=basic', {'stage': 'context', 'lr': 1e-3, 'model.context.padding': 'pad_once',
                                      'model.context.channel_multipliers': (),  # all C: Basic
                                      'model.context.initialisation': 'identity', 'eval.split': 'val'}),
    ('voc_context', 'context=large', {'model.context.channel_multipliers': context.LARGE_MULTIPLIERS,
                                      'model.context.dilations': context.BASIC, 'model.context.padding': 'pad_once'}),
    ('camvid_dilation8', 'stage=frontend', {'batch_size': 8, 'data.crop': (628, 628), 'lr': 1e-4, 'momentum': 0.99,
                                            'total_steps': 20_000, 'eval.split': 'test'}),
    ('camvid_dilation8', 'stage=joint', {'stage': 'joint', 'batch_size': 1, 'data.crop': (852, 852), 'lr': 1e-5,
                                         'momentum': 0.9, 'model.context.dilations': context.BASIC}),
    ('kitti_dilation7', 'stage=frontend', {'batch_size': 8, 'data.crop': (628, 628), 'momentum': 0.99,
                                           'total_steps': 10_000}),
    ('kitti_dilation7', 'stage=joint', {'data.crop': (900, 900), 'momentum': 0.99, 'batch_size': 1, 'lr': 1e-5,
                                        'total_steps': 20_000, 'model.context.dilations': context.DILATION7}),
    ('cityscapes_dilation10', 'stage=frontend', {'batch_size': 8, 'data.crop': (628, 628), 'lr': 1e-4,
                                                 'momentum': 0.99, 'total_steps': 40_000, 'eval.split': 'val'}),
    ('cityscapes_dilation10', 'stage=context', {'stage': 'context', 'batch_size': 100, 'lr': 1e-4, 'momentum': 0.99,
                                                'total_steps': 24_000}),
    ('cityscapes_dilation10', 'stage=joint', {'data.crop': (1396, 1396), 'batch_size': 1, 'lr': 1e-5,
                                              'momentum': 0.99, 'total_steps': 60_000, 'model.upsample': 'deconv',
                                              'model.context.dilations': context.DILATION10}),
    ('camvid_drn', None, {'model.backbone': 'drn', 'model.drn.variant': 'drn_d_22', 'model.upsample': 'deconv',
                          'lr': 0.01, 'momentum': 0.9, 'weight_decay': 1e-4, 'lr_policy': 'poly', 'lr_power': 0.9,
                          'bias_lr_mult': 1.0, 'eval.split': 'test', 'loss_resolution': 'full'}),
    # The CPU run of issue 18 (docs/results/camvid_drn_scratch): camvid_scratch.py's data and SGD, fyu/drn's DRNSeg.
    ('camvid_drn_scratch', 'stage=joint', {'model.backbone': 'drn', 'model.drn.variant': 'drn_d_22',
                                           'model.upsample': 'deconv', 'model.context.dilations': context.BASIC,
                                           'data.crop': (0, 0), 'batch_size': 4, 'lr': 1e-2, 'momentum': 0.9,
                                           'weight_decay': 1e-4, 'bias_lr_mult': 1.0, 'lr_policy': 'step',
                                           'lr_steps': (), 'loss_resolution': 'full', 'eval.split': 'test'}),
    # fyu/drn README.md, "Training": -s 896 --batch-size 32 --epochs 250 --lr 0.01 --momentum 0.9 --step 100; 92
    # iterations an epoch (2975 // 32, drop_last).
    ('cityscapes_drn', None, {'model.backbone': 'drn', 'model.drn.variant': 'drn_d_22', 'model.upsample': 'deconv',
                              'model.context.dilations': (), 'data.crop': (896, 896), 'batch_size': 32, 'lr': 0.01,
                              'momentum': 0.9, 'weight_decay': 1e-4, 'bias_lr_mult': 1.0, 'lr_policy': 'step',
                              'lr_gamma': 0.1, 'lr_steps': (9200, 18400), 'total_steps': 23_000,
                              'data.scale_range': (1.0, 1.0), 'data.flip': True, 'eval.split': 'val',
                              'data.name': 'cityscapes', 'loss_resolution': 'full'}),
    ('cityscapes_drn', 'variant=drn_d_38,batch=16,schedule=poly,augment=scale', {
        'model.drn.variant': 'drn_d_38', 'batch_size': 16, 'total_steps': 250 * 185, 'lr_policy': 'poly',
        'lr_power': 0.9, 'data.scale_range': (0.5, 2.0)}),
    ('cityscapes_drn', 'variant=drn_c_26', {'model.drn.variant': 'drn_c_26', 'batch_size': 32}),
]


@pytest.mark.parametrize('name,arg,fields', PAPER)
def test_paper_hyperparameters(name, arg, fields):
  cfg = load(name, arg)
  for key, want in fields.items():
    got = cfg
    for part in key.split('.'):
      got = got[part]
    assert (tuple(got) if isinstance(want, tuple) else got) == want, key


@pytest.mark.parametrize('name,arg,named', [
    ('synthetic', 'foo=1', 'foo'), ('synthetic', 'stage=bogus', 'bogus'),
    ('voc_frontend', 'foo=1', 'foo'), ('voc_frontend', 'data=bogus', 'bogus'),
    ('voc_context', 'context=huge', 'huge'), ('voc_context', 'stage=joint', 'stage'),
    ('camvid_dilation8', 'stage=context', 'context'), ('camvid_dilation8', 'stage', 'stage'),
    ('kitti_dilation7', 'stage=bogus', 'bogus'), ('cityscapes_dilation10', 'stage=frontend,foo=1', 'foo'),
    ('cityscapes_drn', 'variant=drn_a_50', 'drn_a_50'), ('cityscapes_drn', 'rotate=10', 'rotate'),
])
def test_unknown_config_argument_is_an_error_naming_it(name, arg, named):
  with pytest.raises(InputError, match=named):
    load(name, arg)


# ------------------------------------------------------------------ the command line


def train_cli(*args):
  return subprocess.run([sys.executable, '-m', 'dilated_jax.train', *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)


def test_paper_experiment_without_its_dataset_is_one_clear_line(tmp_path):
  run = train_cli('--config=experiments/camvid_dilation8.py:stage=frontend', f'--workdir={tmp_path / "w"}',
                  f'--config.data.dir={tmp_path / "nope"}')
  last = run.stderr.strip().splitlines()[-1]
  assert run.returncode == 2, run.stderr[-2000:]
  assert last.startswith('error: ') and 'data.dir' in last, last
  assert 'Traceback' not in run.stderr


def test_config_typo_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'w'
  run = train_cli('--config=experiments/camvid_dilation8.py:stage=frontend', '--config.totl_steps=5',
                  f'--workdir={workdir}')
  assert run.returncode == 2, run.stderr[-2000:]
  assert 'Traceback' not in run.stderr
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'totl_steps' in last and 'total_steps' in last, last  # 'Did you mean ...'
  assert not workdir.exists()


def test_only_input_and_os_errors_become_one_line_and_a_bug_keeps_its_traceback(tmp_path):
  """An edited model's shape bug raises a plain ValueError (flax, jax): it must reach the user with its traceback."""
  from dilated_jax import cli

  code = ('import sys\nfrom dilated_jax import InputError, cli\n'
          'def main(argv):\n  raise {}\ncli.run(main)\n')
  for error, one_line in [("InputError('data.crop: expected ...')", 'error: data.crop: expected ...'),
                          ("FileNotFoundError(2, 'No such file or directory', 'x.png')",
                           "error: [Errno 2] No such file or directory: 'x.png'"),
                          ("ValueError('front_end')", None), ("KeyError('fc6')", None)]:
    script = tmp_path / 'entry.py'
    script.write_text(code.format(error))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    if one_line:
      assert r.returncode == 2 and r.stderr.strip().splitlines() == [one_line], r.stderr
    else:
      assert r.returncode == 1 and 'Traceback' in r.stderr and error.split('(')[0] in r.stderr, r.stderr
  assert issubclass(cli.USER_ERRORS[0], ValueError)  # callers that catch ValueError keep working
