"""A DRN front end (model.backbone 'drn') through the normal entry points: training with BatchNorm, its running
statistics in the checkpoints, evaluation with them, and the config's answer to bad values."""

import json
import os

import jax
import numpy as np
from PIL import Image
import pytest
from test_train import assert_trees_equal, run_module, tiny
from test_weights import write_torch

from dilated_jax import InputError, benchmark, checkpoint, config, sharding
from dilated_jax import data as datasets
from dilated_jax.inference import restore
from dilated_jax.models import DRNSeg, build_model, model_config
from dilated_jax.train import Run, optimizer, resume_or_initialise, train
from dilated_jax.weights import drn as drn_weights


def tiny_drn(**fields):
  """DRN-D-22 at 1/8 of its channels (2 .. 64) on 32 px synthetic scenes: a few seconds a step on a CPU."""
  cfg = tiny(**fields)
  cfg.model.backbone = 'drn'
  cfg.model.drn.update(variant='drn_d_22', width=0.125)
  cfg.model.upsample = 'deconv'  # segment.py's x8 bilinear deconvolution
  return cfg


def train_losses(workdir):
  return [json.loads(line)['loss'] for line in open(os.path.join(workdir, 'metrics.jsonl'))
          if json.loads(line)['kind'] == 'train']


def test_build_model_gives_a_drnseg_front_end_with_batch_stats():
  cfg = model_config()
  cfg.update(backbone='drn', num_classes=5)
  cfg.drn.width = 0.125
  model = build_model(cfg, with_context=False, mean_bgr=(100.0, 110.0, 120.0))
  assert isinstance(model.front_end, DRNSeg) and model.context_module is None
  assert (model.front_end.stride, model.front_end.margin, model.front_end.padding) == (8, 0, 'SAME')
  variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)))
  assert set(variables) == {'params', 'batch_stats'} and set(variables['batch_stats']) == {'front_end'}
  assert model.apply(variables, np.zeros((2, 32, 32, 3))).shape == (2, 4, 4, 5)
  assert model.front_end.norm_std_rgb == (0.229, 0.224, 0.225)  # ImageNet's, as fyu/drn's classifiers
  cfg.drn.norm_mean_rgb = (0.290101, 0.328081, 0.286964)  # fyu/drn's Cityscapes info.json
  assert build_model(cfg).front_end.norm_mean_rgb == (0.290101, 0.328081, 0.286964)
  with_context = build_model(cfg, with_context=True)  # the context module on the DRN's scores
  assert with_context.context_module is not None
  vgg = build_model(model_config(), with_context=False)  # the default: the VGG front end, no BatchNorm
  assert 'batch_stats' not in jax.eval_shape(vgg.init, jax.random.key(0), np.zeros((1, 200, 200, 3)))


@pytest.mark.parametrize('field,value,message', [
    ('backbone', 'resnet', "model.backbone: expected one of ('vgg16', 'drn'), got 'resnet'"),
    ('drn.variant', 'drn_d_23', 'model.drn.variant: expected one of'),
    ('drn.width', 0.0, 'model.drn.width: expected a positive scale'),
    ('drn.norm_std_rgb', (0.2, 0.0, 0.2), 'model.drn.norm_std_rgb: expected 3 numbers (R, G, B), each > 0'),
    ('drn.norm_mean_rgb', (0.5, 0.5), 'model.drn.norm_mean_rgb: expected 3 numbers'),
])
def test_bad_backbone_fields_are_one_line_naming_the_field(field, value, message):
  cfg = model_config()
  cfg.backbone = 'drn'
  cfg.update_from_flattened_dict({field: value})
  with pytest.raises(InputError, match=message.replace('(', r'\(').replace(')', r'\)')):
    build_model(cfg)


@pytest.mark.parametrize('flag,message', [
    ('--config.model.backbone=resnet', "error: model.backbone: expected one of ('vgg16', 'drn'), got 'resnet'"),
    ('--config.model.drn.variant=drn_x', "error: model.drn.variant: expected one of ['drn_c_26', "),
])
def test_bad_backbone_on_the_command_line_is_one_line_exit_2(tmp_path, flag, message):
  r = run_module('dilated_jax.train', '--config=experiments/synthetic.py', '--config.model.backbone=drn', flag,
                 f'--workdir={tmp_path / "run"}')
  assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr[-2000:]


def test_old_workdir_config_without_the_backbone_fields_reads_as_vgg16(tmp_path):
  saved = json.loads(tiny().to_json())
  del saved['model']['backbone'], saved['model']['drn']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  cfg = config.from_workdir(str(tmp_path))
  assert cfg.model.backbone == 'vgg16' and cfg.model.drn.variant == 'drn_d_22'


@pytest.mark.slow
def test_drn_trains_its_batch_stats_are_checkpointed_and_evaluation_uses_them(tmp_path):
  work = str(tmp_path / 'run')
  cfg = tiny_drn(total_steps=8, checkpoint_every=4, lr=0.01, momentum=0.9, weight_decay=1e-4)
  result = train(cfg, work)
  losses = train_losses(work)
  # It learns: 5.6 -> 0.3 here; with the updates zeroed the losses only wander between 5.3 and 5.7.
  assert len(losses) == 8 and max(losses[-2:]) < 0.5 * losses[0], losses
  assert 0 <= result['miou'] <= 1

  # The running statistics moved from their initialisation (mean 0, variance 1) and are in the checkpoint.
  model = build_model(cfg.model, with_context=False)
  init = jax.device_get(model.init(jax.random.key(cfg.seed), np.zeros((1, 32, 32, 3))))['batch_stats']
  saved = checkpoint.load_variables(work)
  assert set(saved) == {'params', 'batch_stats'}
  assert jax.tree.structure(saved['batch_stats']) == jax.tree.structure(init)
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(saved['batch_stats']), jax.tree.leaves(init))]
  assert all(moved), f'{sum(moved)} of {len(moved)} statistics changed'

  # Exactly what the loop held: a rerun to the same step resumes and evaluates again, and resuming the step-4
  # checkpoint to step 8 ends where the straight run did, statistics included.
  half = str(tmp_path / 'half')
  train(tiny_drn(total_steps=4, checkpoint_every=4, lr=0.01, momentum=0.9, weight_decay=1e-4), half)
  train(cfg, half)
  assert_trees_equal(checkpoint.load_variables(half), saved)

  # Evaluation of the restored run: the running statistics, so an image's probabilities do not depend on the
  # images beside it (batch statistics would mix them).
  info = datasets.dataset_info(cfg.data)
  mesh = sharding.make_mesh(jax.devices()[:1])
  predictor, variables = restore(work, 'latest', cfg, info, mesh)
  assert set(variables) == {'params', 'batch_stats'}
  source = datasets.get_source(cfg.data, 'val')
  images = [source[i][0] for i in range(4)]
  alone = predictor.probabilities(variables, images[:1])[0]
  batched = predictor.probabilities(variables, images)[0]
  np.testing.assert_allclose(alone, batched, rtol=1e-5, atol=1e-6)
  # ... and the statistics matter: with the initial ones the probabilities differ.
  fresh = {'params': variables['params'], 'batch_stats': jax.device_put(init)}
  assert not np.allclose(predictor.probabilities(fresh, images[:1])[0], alone, atol=1e-4)


def test_vgg_state_holds_no_batch_stats():
  params = {'front_end': {'conv1_1': {'kernel': np.zeros((3, 3, 3, 4)), 'bias': np.zeros(4)}}}
  state = checkpoint.initial_state(params)
  assert set(state) == {'step', 'params'}
  assert checkpoint.eval_variables(state) is params
  with_stats = checkpoint.initial_state(params, batch_stats={'front_end': {'bn': {'mean': np.zeros(4)}}})
  assert set(checkpoint.eval_variables(with_stats)) == {'params', 'batch_stats'}


def drn_file(path, model, variables):
  """A fyu/drn drn.py (ImageNet) state dict of `model`'s DRN holding `variables` (torch names, OIHW), without seg."""
  places = drn_weights.torch_places(model, variables, segment_file=False)
  state = {}
  for name, (collection, keys) in places.items():
    if name.startswith('seg.'):
      continue
    value = variables[collection]
    for k in keys:
      value = value[k]
    value = np.asarray(value, np.float32)
    state[name] = np.ascontiguousarray(value.transpose(3, 2, 0, 1) if value.ndim == 4 else value)
  write_torch(path, state)


def test_a_fyu_drn_file_initialises_the_drn_front_end_with_its_statistics(tmp_path):
  cfg = tiny_drn()
  run = Run(cfg)
  model = run.model.front_end
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), shapes)
  path = str(tmp_path / 'drn_d_22.pth')
  drn_file(path, model, variables)
  cfg.weights = path
  state, step = resume_or_initialise(cfg, run, optimizer(cfg), str(tmp_path / 'run'))
  assert step == 0
  assert_trees_equal(state['batch_stats']['front_end'], variables['batch_stats'])
  assert_trees_equal(state['params']['front_end']['base'], variables['params']['base'])
  assert not np.allclose(state['params']['front_end']['seg']['kernel'], variables['params']['seg']['kernel'])
  # A context stage needs a trained seg layer, which an ImageNet file lacks: one line.
  cfg_ctx = tiny_drn(stage='context', weights=path)
  with pytest.raises(InputError, match='no seg layer'):
    resume_or_initialise(cfg_ctx, Run(cfg_ctx), optimizer(cfg_ctx), str(tmp_path / 'ctx'))


@pytest.mark.slow
def test_drn_through_the_train_evaluate_and_predict_entry_points(tmp_path):
  work = str(tmp_path / 'run')
  r = run_module('dilated_jax.train', '--config=experiments/synthetic.py', '--config.model.backbone=drn',
                 '--config.model.drn.width=0.125', '--config.model.upsample=deconv',
                 '--config.data.synthetic.image_size=32', '--config.data.synthetic.frame_width=2',
                 '--config.data.synthetic.frame_distance=4', '--config.data.synthetic.train_size=8',
                 '--config.data.synthetic.val_size=4', '--config.data.synthetic.test_size=4',
                 '--config.eval.tile=(32,32)', '--config.total_steps=2', f'--workdir={work}')
  assert r.returncode == 0, r.stderr[-2000:]
  saved = json.load(open(os.path.join(work, 'config.json')))['model']
  assert saved['backbone'] == 'drn' and (saved['drn']['variant'], saved['drn']['width']) == ('drn_d_22', 0.125)
  r = run_module('dilated_jax.evaluate', f'--workdir={work}', '--split=test')  # the workdir's own config
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.load(open(os.path.join(work, 'eval', 'test_best.json')))['num_images'] == 4
  r = run_module('dilated_jax.data.synthetic', f'--output_dir={tmp_path}/scenes', '--count=1')
  assert r.returncode == 0, r.stderr[-2000:]
  r = run_module('dilated_jax.predict', f'--workdir={work}', f'--output_dir={tmp_path}/pred',
                 f'{tmp_path}/scenes/test_0000.png')
  assert r.returncode == 0, r.stderr[-2000:]
  assert os.path.exists(tmp_path / 'pred' / 'test_0000.png')
  # Multi-scale and flip testing (fyu/drn --ms): a file of its own, the single-scale one left as it was.
  single = open(os.path.join(work, 'eval', 'test_best.json')).read()
  r = run_module('dilated_jax.evaluate', f'--workdir={work}', '--split=test', '--ms', '--flip')
  assert r.returncode == 0, r.stderr[-2000:]
  ms = json.load(open(os.path.join(work, 'eval', 'test_best_ms_flip.json')))
  assert ms['scales'] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and ms['flip'] is True and ms['num_images'] == 4
  assert open(os.path.join(work, 'eval', 'test_best.json')).read() == single
  r = run_module('dilated_jax.predict', f'--workdir={work}', f'--output_dir={tmp_path}/pred_ms', '--ms',
                 '--save_probs', f'{tmp_path}/scenes/test_0000.png')
  assert r.returncode == 0, r.stderr[-2000:]
  probs = np.load(tmp_path / 'pred_ms' / 'test_0000.npy')
  assert probs.shape[:2] == np.asarray(Image.open(tmp_path / 'scenes' / 'test_0000.png')).shape[:2]
  np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)


def test_poly_policy_is_caffes_and_fyu_drns():
  cfg = tiny(lr=0.01, lr_policy='poly', lr_power=0.9, momentum=0.0, weight_decay=0.0, total_steps=10)
  tx = optimizer(cfg)
  params = {'layer': {'kernel': np.zeros(2, np.float32)}}
  state, lrs = tx.init(params), []
  for _ in range(10):
    updates, state = tx.update({'layer': {'kernel': np.ones(2, np.float32)}}, state, params)
    lrs.append(-float(updates['layer']['kernel'][0]))
  np.testing.assert_allclose(lrs, [0.01 * (1 - i / 10) ** 0.9 for i in range(10)], rtol=1e-5)


@pytest.mark.parametrize('fields,message', [
    (dict(lr_policy='cosine'), "lr_policy: expected one of ('step', 'poly'), got 'cosine'"),
    (dict(lr_policy='poly', lr_steps=(2,)), "lr_steps: (2,) are the 'step' policy's"),
])
def test_bad_lr_policy_is_one_line_naming_the_field(tmp_path, fields, message):
  with pytest.raises(InputError) as error:
    train(tiny(**fields), str(tmp_path / 'run'))
  assert str(error.value).startswith(message)


@pytest.mark.slow
def test_drn_stages_chain_with_their_batch_stats(tmp_path):
  front, ctx, joint = (str(tmp_path / name) for name in ('frontend', 'context', 'joint'))
  train(tiny_drn(total_steps=2), front)
  train(tiny_drn(stage='context', total_steps=2, init_from=front), ctx)
  trained = checkpoint.load_variables(front)
  held = checkpoint.load_variables(ctx)
  assert set(held['batch_stats']) == {'front_end'}
  assert_trees_equal(held['batch_stats'], trained['batch_stats'])  # loaded with the front end, and held
  assert_trees_equal(held['params']['front_end'], trained['params']['front_end'])
  train(tiny_drn(stage='joint', total_steps=2, init_from=ctx), joint)
  moved = checkpoint.load_variables(joint)['batch_stats']['front_end']
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved),
                                                     jax.tree.leaves(held['batch_stats']['front_end'])))


@pytest.mark.slow
def test_the_overlap_benchmark_steps_a_drn_with_its_batch_stats():
  r = benchmark.overlap_benchmark(tiny_drn(loss_resolution='full'), [0], steps=2, windows=1)  # fyu/drn's loss
  assert len(r['constant']) == 2 and r['fed'][0]['step_s_median'] > 0


@pytest.mark.slow
def test_one_device_and_eight_devices_give_the_same_drn_and_statistics(tmp_path):
  """BatchNorm's batch statistics are those of the global batch, whatever the devices it is split over."""
  assert jax.device_count() == 8, 'tests/conftest.py asks for 8 simulated CPU devices'
  cfg = tiny_drn(total_steps=2)
  train(cfg, str(tmp_path / 'one'), devices=jax.devices()[:1])
  train(cfg, str(tmp_path / 'eight'))
  one, eight = checkpoint.load_variables(str(tmp_path / 'one')), checkpoint.load_variables(str(tmp_path / 'eight'))
  assert_trees_equal(one, eight, exact=False, rtol=1e-4, atol=1e-5)


def caffe_bilinear_deconv(scores, stride=8, kernel=16, pad=4):
  """Caffe's Deconvolution with the bilinear filler, from its definition: out[y] = sum_i k[y + pad - stride i] s[i]
  for 0 <= y + pad - stride i < kernel, k[d] = 1 - |d - 7.5| / 8, separably in y and x."""
  k = 1 - np.abs(np.arange(kernel) - (kernel - 1) / 2) / (kernel // 2)
  n, h, w, c = scores.shape

  def weights(size):  # (stride * size, size): output pixel, input cell
    m = np.zeros((stride * size, size))
    for y in range(stride * size):
      for i in range(size):
        if 0 <= y + pad - stride * i < kernel:
          m[y, i] = k[y + pad - stride * i]
    return m

  return np.einsum('yi,xj,nijc->nyxc', weights(h), weights(w), np.asarray(scores, np.float64))


def test_full_resolution_loss_is_the_deconvolution_then_log_softmax_over_every_pixel():
  """loss_resolution 'full' (fyu/drn segment.py): the x8 deconvolution of the scores, log_softmax, the mean NLL over
  every labelled pixel, against the image's own label pixels."""
  from dilated_jax.stages import STAGES
  from dilated_jax.train import loss_and_metrics

  cfg = tiny_drn(loss_resolution='full')
  cfg.data.flip = False  # whole 32 px scenes, no margin: the crop is the image
  run = Run(cfg, devices=jax.devices()[:1])
  example = run.image_examples(0, np.random.default_rng(0))
  image, label = datasets.get_source(cfg.data, 'train')[0]
  np.testing.assert_array_equal(example['image'], image)
  np.testing.assert_array_equal(example['label'], label)  # every pixel's label, not one per cell
  variables = run.model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)))
  x, stats = example['image'][None], variables['batch_stats']
  forward = STAGES['frontend'].forward
  rng = jax.random.key(1)
  cells, _ = forward(run.model, variables['params'], x, rng, run.info.mean_bgr, stats, upsample='deconv')
  full, _ = forward(run.model, variables['params'], x, rng, run.info.mean_bgr, stats, upsample='deconv',
                    full_resolution=True)
  assert cells.shape == (1, 4, 4, 5) and full.shape == (1, 32, 32, 5)
  up = caffe_bilinear_deconv(cells)
  np.testing.assert_allclose(full, up, rtol=1e-4, atol=1e-4)
  logp = up - np.log(np.exp(up - up.max(-1, keepdims=True)).sum(-1, keepdims=True)) - up.max(-1, keepdims=True)
  valid = label != 255
  expected = -np.take_along_axis(logp[0], np.where(valid, label, 0)[..., None], -1)[..., 0][valid].mean()
  loss, _ = loss_and_metrics(full, example['label'][None], 5)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


@pytest.mark.parametrize('fields,message', [
    (dict(loss_resolution='half'), "loss_resolution: expected one of ('output', 'full'), got 'half'"),
    (dict(stage='context', loss_resolution='full'), "loss_resolution: 'full' needs an image stage; stage context"),
])
def test_bad_loss_resolution_is_one_line_naming_the_field(tmp_path, fields, message):
  with pytest.raises(InputError) as error:
    train(tiny(**fields), str(tmp_path / 'run'))
  assert str(error.value).startswith(message)
