"""The paper's experiment configs run their first steps on the fixture datasets (tests/dataset_fixtures.py),
prepared as a user prepares the real ones: the configs, loaders, pipeline and evaluation fit together.

Only sizes change: a network 1/32 as wide, 388 px crops (2 x 2 label cells), an evaluation tile covering the
40 x 30 px fixture images, two steps of batch 2 on one device.
"""

import os

import jax
import numpy as np
import pytest

import dataset_fixtures as fixtures
from dilated_jax import config
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


@pytest.mark.parametrize('spec', ['voc_frontend.py:data=voc_sbd', 'voc_frontend.py:data=coco',
                                  'kitti_dilation7.py:stage=frontend', 'cityscapes_dilation10.py:stage=frontend'])
def test_front_end_configs_train_and_evaluate_on_fixture_data(tmp_path, data_dir, spec):
  cfg = tiny(spec, data_dir)
  result = train(cfg, str(tmp_path / 'run'), devices=jax.devices()[:1])
  assert 0 <= result['miou'] <= 1 and result['dataset'] == cfg.data.name
  source = datasets.get_source(cfg.data, cfg.eval.split)
  assert result['num_images'] == len(source)
  # Every labelled pixel of the split counted exactly once, through tiling, stitching and cropping (void left out).
  assert np.sum(result['confusion']) == sum(int((source[i][1] != 255).sum()) for i in range(len(source)))
  if cfg.data.name == 'cityscapes':  # Table 8: category IoU beside the class IoU
    assert set(result['category_iou']) == {c for c, _ in datasets.dataset_info(cfg.data).categories}
    assert 0 <= result['category_miou'] <= 1


def test_camvid_front_end_then_joint_and_voc_context_stage_on_fixture_data(tmp_path, data_dir):
  one = jax.devices()[:1]
  train(tiny('camvid_dilation8.py:stage=frontend', data_dir), str(tmp_path / 'camvid_fe'), devices=one)
  joint = train(tiny('camvid_dilation8.py:stage=joint', data_dir, init_from=str(tmp_path / 'camvid_fe')),
                str(tmp_path / 'camvid_joint'), devices=one)
  assert joint['num_images'] == 1 and joint['split'] == 'test'
  train(tiny('voc_frontend.py:data=voc_sbd', data_dir), str(tmp_path / 'voc_fe'), devices=one)
  context = train(tiny('voc_context.py:context=basic', data_dir, init_from=str(tmp_path / 'voc_fe')),
                  str(tmp_path / 'voc_context'), devices=one)
  assert context['num_images'] == 2 and context['split'] == 'val'
