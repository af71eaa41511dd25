"""The paper's experiment configs run their first steps on the fixture datasets (tests/dataset_fixtures.py),
prepared as a user prepares the real ones: the configs, loaders, pipeline and evaluation fit together, and each
later stage (VOC fine-tuning, the Basic and Large context modules, the joint stages) starts from the one before it.

Only sizes change: a network 1/32 as wide, 388 px crops (2 x 2 label cells), an evaluation tile covering the
40 x 30 px fixture images, two steps of batch 2 on one device.
"""

import os

import jax
import numpy as np
import pytest

import dataset_fixtures as fixtures
from dilated_jax import checkpoint, config
from dilated_jax import data as datasets
from dilated_jax.data import builder
from dilated_jax.train import train

pytestmark = pytest.mark.slow  # every test here trains or runs entry points (README, "Tests")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  base = tmp_path_factory.mktemp('paper_datasets')
  for name, write in fixtures.WRITERS.items():
    write(str(base / 'manual' / name))
    builder.prepare(datasets.builder_class(name), str(base / 'manual' / name), str(base / 'data'))
  return str(base / 'data')


def tiny(spec, data_dir, **fields):
  """experiments/<spec> with the fixture data and CPU-sized shapes; everything else as the paper's config."""
  cfg = config.load(os.path.join(ROOT, 'experiments', spec))
  cfg.model.front_end.width = 1 / 32
  cfg.data.dir = data_dir
  if cfg.stage != 'context':
    cfg.data.crop = (388, 388)
  cfg.eval.update(tile=(32, 40), batch_size=2)
  cfg.update(batch_size=2, total_steps=2, log_every=1, eval_every=0, checkpoint_every=100, **fields)
  return cfg


# Each later stage starts from the workdir of the stage before it, as the configs' own commands chain them.
PREVIOUS = {
    'voc_frontend.py:data=voc_finetune': 'voc_frontend.py:data=coco',
    'voc_context.py:context=basic': 'voc_frontend.py:data=voc_sbd',
    'voc_context.py:context=large': 'voc_frontend.py:data=voc_finetune',
    'camvid_dilation8.py:stage=joint': 'camvid_dilation8.py:stage=frontend',
    'kitti_dilation7.py:stage=joint': 'kitti_dilation7.py:stage=frontend',
    'cityscapes_dilation10.py:stage=context': 'cityscapes_dilation10.py:stage=frontend',
    'cityscapes_dilation10.py:stage=joint': 'cityscapes_dilation10.py:stage=context',
}
SPECS = ['voc_frontend.py:data=voc_sbd', 'voc_frontend.py:data=coco', 'camvid_dilation8.py:stage=frontend',
         'kitti_dilation7.py:stage=frontend', 'cityscapes_dilation10.py:stage=frontend', *PREVIOUS]


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir):
  """spec -> (config, final evaluation, workdir), each trained once on one device, after the stage it starts from."""
  base, done = tmp_path_factory.mktemp('runs'), {}

  def run(spec):
    if spec not in done:
      fields = {'init_from': run(PREVIOUS[spec])[2]} if spec in PREVIOUS else {}
      cfg, work = tiny(spec, data_dir, **fields), str(base / spec.replace(':', '_').replace('=', '_'))
      done[spec] = (cfg, train(cfg, work, devices=jax.devices()[:1]), work)
    return done[spec]

  return run


def relative_change(params, before):
  """The largest ||kernel - kernel before|| / ||kernel before|| over the kernels both trees hold."""
  old = dict(jax.tree_util.tree_flatten_with_path(before)[0])
  return max(float(np.linalg.norm(leaf - old[path]) / np.linalg.norm(old[path]))
             for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
             if path in old and path[-1].key == 'kernel')


@pytest.mark.parametrize('spec', SPECS)
def test_paper_config_trains_from_the_stage_before_and_evaluates_on_fixture_data(runs, spec):
  cfg, result, work = runs(spec)
  assert result['dataset'] == cfg.data.name and result['split'] == cfg.eval.split and 0 <= result['miou'] <= 1
  source = datasets.get_source(cfg.data, cfg.eval.split)
  assert result['num_images'] == len(source)
  # Every labelled pixel of the split counted exactly once, through tiling, stitching and cropping (void left out).
  assert np.sum(result['confusion']) == sum(int((source[i][1] != 255).sum()) for i in range(len(source)))
  if cfg.data.name == 'cityscapes':  # Table 8: category IoU beside the class IoU
    assert set(result['category_iou']) == {c for c, _ in datasets.dataset_info(cfg.data).categories}
    assert 0 <= result['category_miou'] <= 1
  params = checkpoint.load_params(work, 'latest')
  assert ('context_module' in params) == (cfg.stage != 'frontend')
  if cfg.stage == 'context':  # the Large module's layers are 2C .. 32C wide (Table 1)
    widths = [params['context_module'][k]['kernel'].shape[-1] for k in sorted(params['context_module'])]
    multipliers = cfg.model.context.channel_multipliers or (1,) * len(cfg.model.context.dilations)  # () is Basic
    assert widths == [cfg.model.num_classes * m for m in multipliers] + [cfg.model.num_classes]
  if spec in PREVIOUS:  # started from the stage before: what it trained is kept (context) or moved a little
    before = checkpoint.load_params(runs(PREVIOUS[spec])[2], 'latest')
    if cfg.stage == 'context':
      jax.tree.map(np.testing.assert_array_equal, params['front_end'], before['front_end'])
    assert relative_change(params, before) < 0.25  # two steps; a fresh initialisation is ~1.4 away
