"""The CRF-RNN stages (stages 'crf' and 'crf_joint'): full-resolution labels, the layer on the network's upsampled
output, training it alone or end to end, and evaluation through it, each against a reference written from the
definitions (crf_reference.py's brute-force dense mean field)."""

import types

import jax
import numpy as np
import pytest
from test_train import tiny

import crf_reference as ref
from dilated_jax import InputError, checkpoint, metrics, sharding, stages
from dilated_jax import data as datasets
from dilated_jax.data import pipeline
from dilated_jax.inference import Predictor, restore
from dilated_jax.models import crf as crf_lib, upsample_probabilities
from dilated_jax.train import Run, train


def exact(cfg, size: int):
  """model.crf with every pair of a size x size image in the window, at full resolution: the reference's field."""
  cfg.model.crf.update(downsample=1, window=2 * size - 1)
  return cfg


def test_full_resolution_labels_are_the_pixels_the_output_covers():
  """A crop of the whole image plus its margin has one position: the full-resolution label is the image's own
  label, and its every stride-th pixel is the label the other stages train on (zoom: cell i at pixel s i)."""
  rng = np.random.default_rng(0)
  h, w, margin, stride = 24, 32, 5, 4
  label = rng.integers(0, 6, (h, w)).astype(np.uint8)
  image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
  args = dict(crop=(h + 2 * margin, w + 2 * margin), margin=margin, stride=stride, out_hw=(h // stride, w // stride),
              flip=False)
  full = pipeline.train_example(image, label, rng=np.random.default_rng(1), full_resolution=True, **args)
  cells = pipeline.train_example(image, label, rng=np.random.default_rng(1), **args)
  np.testing.assert_array_equal(full['label'], label)
  np.testing.assert_array_equal(full['label'][::stride, ::stride], cells['label'])
  np.testing.assert_array_equal(full['image'][margin:margin + h, margin:margin + w], image)


def test_the_crf_head_is_the_mean_field_of_the_upsampled_probabilities_on_the_crops_pixels():
  """crf_head on a crop: the reference mean field (train_iterations) on log of the x2 zoom of the scores' softmax,
  fed the crop's RGB past the margin."""
  rng = np.random.default_rng(2)
  c, margin, stride, cells = 3, 3, 2, (4, 5)
  hw = (stride * cells[0], stride * cells[1])
  scores = rng.normal(size=(1,) + cells + (c,)).astype(np.float32)
  crop = rng.integers(0, 256, (1, hw[0] + 2 * margin, hw[1] + 2 * margin, 3)).astype(np.uint8)
  layer = crf_lib.MeanFieldCRF(theta_alpha=3.0, theta_beta=50.0, theta_gamma=1.0, window=2 * max(hw) - 1,
                               downsample=1, train_iterations=3)
  params = layer.init(jax.random.key(0), np.zeros((1,) + hw + (c,), np.float32),
                      np.zeros((1,) + hw + (3,), np.float32))['params']
  front_end = types.SimpleNamespace(margin=margin, stride=stride)
  got = np.asarray(stages.crf_head(layer, params, scores, crop, front_end, 'zoom')[0])
  probs = np.asarray(upsample_probabilities(scores, 'zoom', stride, hw)[0])
  image = crop[0, margin:margin + hw[0], margin:margin + hw[1]]
  want = ref.mean_field(np.log(probs), image, 3.0, 50.0, 1.0, w_spatial=3.0, w_bilateral=5.0, iterations=3)
  np.testing.assert_allclose(got, want, atol=2e-5)


def predictor_and_params(cfg):
  """Predictors with and without the CRF layer on one device, and the network's and layer's initial parameters."""
  mesh = sharding.make_mesh(jax.devices()[:1])
  info = datasets.dataset_info(cfg.data)
  predictor = Predictor(cfg.model, info, cfg.eval.tile, mesh, with_context=False, crf=True)
  network = Predictor(cfg.model, info, cfg.eval.tile, mesh, with_context=False)
  params = predictor.model.init(jax.random.key(0), np.zeros((1, 64, 64, 3)))['params']
  layer = predictor.crf.init(jax.random.key(0), np.zeros((1, 40, 40, cfg.model.num_classes), np.float32),
                             np.zeros((1, 40, 40, 3), np.float32))
  return predictor, network, {**params, 'crf': layer['params']}


def test_each_image_of_a_batch_is_refined_as_if_alone_and_zero_weights_give_the_network():
  """Images of two sizes in one batch: the padding to the batch's tile grid is masked out of the layer, so each gets
  what it gets alone; with both kernel weights 0 the layer returns the network's own probabilities."""
  cfg = exact(tiny('crf,context=none'), 40)
  cfg.eval.tile = (16, 16)
  rng = np.random.default_rng(3)
  images = [rng.integers(0, 256, s + (3,)).astype(np.uint8) for s in ((40, 36), (22, 30))]
  predictor, network, params = predictor_and_params(cfg)
  together = predictor.probabilities(params, images)
  for image, probs in zip(images, together):
    alone = predictor.probabilities(params, [image])[0]
    np.testing.assert_allclose(probs, alone, atol=1e-5)
  zero = dict(params, crf={**params['crf'], 'spatial_weight': np.float32(0), 'bilateral_weight': np.float32(0)})
  plain = network.probabilities(params, images)
  for refined, probs in zip(predictor.probabilities(zero, images), plain):
    np.testing.assert_allclose(refined, probs, atol=1e-6)
  assert np.abs(together[1] - plain[1]).max() > 1e-3  # the layer does something here


def test_impossible_crf_settings_are_one_line_naming_the_field(tmp_path):
  for field, value, message in (('window', 4, 'model.crf.window: expected an odd number'),
                                ('theta_beta', -1.0, 'model.crf.theta_beta: expected a kernel width > 0'),
                                ('train_iterations', 0, 'model.crf.train_iterations: expected a whole number')):
    cfg = tiny('crf,context=none', init_from=str(tmp_path))
    cfg.model.crf[field] = value
    with pytest.raises(InputError, match=message):
      Run(cfg)


@pytest.mark.slow
def test_the_crf_stage_trains_the_layer_alone_and_its_evaluation_is_the_reference_mean_field(tmp_path):
  train(tiny('frontend', total_steps=4), str(tmp_path / 'front'))
  cfg = exact(tiny('crf,context=none', init_from=str(tmp_path / 'front'), total_steps=3, lr=0.1), 32)
  result = train(cfg, str(tmp_path / 'rnn'))
  front, rnn = checkpoint.load_params(str(tmp_path / 'front')), checkpoint.load_params(str(tmp_path / 'rnn'))
  np.testing.assert_equal(jax.device_get(front['front_end']), jax.device_get(rnn['front_end']))  # held fixed
  layer = rnn['crf']
  assert float(layer['bilateral_weight']) != 5.0 and not np.allclose(layer['compatibility'], 1 - np.eye(5))

  # The evaluation: the network's probabilities of each validation image, the reference mean field on them with
  # the trained weights and compatibility (test_iterations), argmax, confusion; and evaluate's and predict's
  # probabilities (restore) against the reference's softmax, which the argmax alone could hide.
  info = datasets.dataset_info(cfg.data)
  source = datasets.get_source(cfg.data, 'val')
  mesh = sharding.make_mesh(jax.devices()[:1])
  network = Predictor(cfg.model, info, cfg.eval.tile, mesh, with_context=False)
  predictor, variables = restore(str(tmp_path / 'rnn'), 'latest', cfg, info, mesh)
  assert predictor.crf is not None and 'crf' in variables
  confusion = 0
  c = cfg.model.crf
  for i in range(len(source)):
    image, label = source[i]
    probs = network.probabilities(rnn, [image])[0]
    scores = ref.mean_field(np.log(np.maximum(probs, 1e-8)), image, c.theta_alpha, c.theta_beta, c.theta_gamma,
                            float(layer['spatial_weight']), float(layer['bilateral_weight']), c.test_iterations,
                            compatibility=np.asarray(layer['compatibility']))
    confusion = confusion + metrics.confusion_matrix(label, scores.argmax(-1), 5)
    np.testing.assert_allclose(predictor.probabilities(variables, [image])[0], ref.softmax(scores), atol=1e-4)
  np.testing.assert_array_equal(result['confusion'], confusion)

  # End to end through the layer: everything trains, from the crf stage's workdir.
  joint = exact(tiny('crf_joint,context=none', init_from=str(tmp_path / 'rnn'), total_steps=2), 32)
  train(joint, str(tmp_path / 'joint'))
  after = checkpoint.load_params(str(tmp_path / 'joint'))
  assert not np.array_equal(after['front_end']['conv1_1']['kernel'], rnn['front_end']['conv1_1']['kernel'])
  assert not np.array_equal(after['crf']['compatibility'], rnn['crf']['compatibility'])

  # A config with a context module on a workdir that has none: one line, not a context module left at its
  # initialisation.
  with pytest.raises(InputError, match='has no context_module parameters'):
    train(exact(tiny('crf', init_from=str(tmp_path / 'front')), 32), str(tmp_path / 'wrong'))
