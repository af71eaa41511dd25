"""Evaluation against the labels themselves: a network whose scores are the one-hot labels that training gives its
cells reproduces the labels through the whole evaluation (margin, tiles, stitching, upsampling, cropping, confusion);
the boundary measure and the dense CRF's evaluation against their numpy computation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dilated_jax import dense_crf, sharding
from dilated_jax.data import tiling
from dilated_jax.data.info import DATASETS, IGNORE_LABEL
from dilated_jax.inference import Predictor, evaluate
from dilated_jax.models import label_offset, model_config


class LabelsAsScores(nn.Module):
  """Scores 20 x one-hot(class) per cell, the class read off the blue channel (10 x class) of the pixel at
  `margin + stride i + offset` of each tile: the pixel whose label a training crop gives cell i."""

  margin: int
  stride: int
  offset: int
  num_classes: int
  mean_b: float

  def __call__(self, x):
    m, s, o = self.margin, self.stride, self.offset
    cells = [(n - 2 * m) // s for n in x.shape[1:3]]
    blue = x[:, m + o:m + o + s * cells[0]:s, m + o:m + o + s * cells[1]:s, 0] + self.mean_b
    return 20.0 * jax.nn.one_hot(jnp.round(blue / 10).astype(jnp.int32), self.num_classes)


@pytest.mark.parametrize('mode', ['zoom', 'deconv'])
def test_labels_read_at_the_training_offset_come_back_through_evaluate(mode):
  """Through each upsampling, the labels come back up to the resolution loss when the cells are read where training
  reads them; read at the other upsampling's offset they land 3.5-4 px off (the deconvolution puts cell i at pixel
  8i + 3.5, the zoom at 8i). A 3 x 4 grid of tiles with short last ones, so the stitching is in the path too."""
  rng = np.random.default_rng(0)
  h, w, c = 150, 200, 6
  seeds, classes = rng.uniform(0, [h, w], size=(12, 2)), rng.integers(0, c, 12)  # regions with edges every way
  yy, xx = np.mgrid[:h, :w]
  label = classes[((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2).argmin(-1)]
  image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
  image[..., 2] = 10 * label  # RGB: blue is the network input's channel 0 (BGR)
  voided = label.copy()
  voided[rng.random(label.shape) < 0.05] = IGNORE_LABEL  # void pixels are left out, not counted as errors
  info = DATASETS['camvid']
  cfg = model_config('camvid')
  cfg.update(num_classes=c, upsample=mode)
  miou = {}
  for offset in (0, 4):
    predictor = Predictor(cfg, info, (64, 64), sharding.make_mesh(jax.devices()[:1]), with_context=False)
    predictor.model = LabelsAsScores(predictor.margin, predictor.stride, offset, c, info.mean_bgr[0])
    result = evaluate(predictor, {}, [(image, voided)], info, batch_size=1)
    assert np.sum(result['confusion']) == int((voided != IGNORE_LABEL).sum())
    miou[offset] = result['miou']
  ours, other = miou[label_offset(mode, 8)], miou[4 - label_offset(mode, 8)]
  assert ours > 0.9 and ours > other + 0.05, miou


def brute_force_band(label: np.ndarray, width: int) -> np.ndarray:
  """From the definition: a pixel is an edge when a 4-neighbour inside the image has another label; the band is
  every pixel at most `width` rows and `width` columns from an edge pixel."""
  h, w = label.shape
  edges = [(y, x) for y in range(h) for x in range(w)
           if any(0 <= y + dy < h and 0 <= x + dx < w and label[y + dy, x + dx] != label[y, x]
                  for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)))]
  band = np.zeros((h, w), bool)
  for y in range(h):
    for x in range(w):
      band[y, x] = any(abs(y - ey) <= width and abs(x - ex) <= width for ey, ex in edges)
  return band


def test_boundary_band_is_the_pixels_within_its_width_of_a_label_edge():
  rng = np.random.default_rng(1)
  label = rng.integers(0, 3, (4, 5)).repeat(4, 0).repeat(3, 1).astype(np.uint8)  # 16 x 15 blocks: straight edges
  label[5, 7] = IGNORE_LABEL  # a void pixel is another label: VOC outlines objects with void
  for width in (0, 1, 3):
    np.testing.assert_array_equal(tiling.boundary_band(label, width), brute_force_band(label, width))
  band = tiling.boundary_labels(label, 2)
  np.testing.assert_array_equal(band, np.where(brute_force_band(label, 2), label, IGNORE_LABEL))
  assert not tiling.boundary_band(np.zeros((6, 7), np.uint8), 2).any()  # one label: the image's border is no edge


class PixelScores(nn.Module):
  """Class scores of each cell: a learned linear map of the input pixel the cell's block starts at."""

  margin: int
  stride: int
  num_classes: int

  @nn.compact
  def __call__(self, x):
    m, s = self.margin, self.stride
    cells = [(n - 2 * m) // s for n in x.shape[1:3]]
    return nn.Dense(self.num_classes)(x[:, m:m + s * cells[0]:s, m:m + s * cells[1]:s] / 40.0)


def pixel_scores_setup(rng, upsample='zoom'):
  """A camvid predictor (margin 186, stride 8, tiles of 24) whose network is PixelScores, its parameters, and three
  40 x 48 images of 16 px blocks of classes, void in a corner."""
  info, hw = DATASETS['camvid'], (40, 48)
  c = info.num_classes
  cfg = model_config('camvid')
  cfg.upsample = upsample
  predictor = Predictor(cfg, info, (24, 24), sharding.make_mesh(jax.devices()[:1]), with_context=False)
  predictor.model = PixelScores(predictor.margin, predictor.stride, c)
  size = 2 * predictor.margin + 24
  params = predictor.model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))['params']
  pairs = []
  for _ in range(3):
    label = rng.integers(0, c, (3, 3)).repeat(16, 0).repeat(16, 1)[:hw[0], :hw[1]].astype(np.uint8)
    label[:5, :7] = IGNORE_LABEL
    image = np.clip(40 * label[..., None] + rng.normal(0, 30, hw + (3,)), 0, 255).astype(np.uint8)
    pairs.append((image, label))
  return predictor, params, info, pairs


def test_evaluate_with_boundary_band_and_dense_crf_counts_as_numpy_does():
  """The boundary measure and the dense CRF's labels through evaluate equal their numpy computation from the same
  probabilities: three images in batches of two (the last one filled up), the CRF in two worker processes."""
  predictor, params, info, pairs = pixel_scores_setup(np.random.default_rng(2))
  c, hw = info.num_classes, pairs[0][1].shape
  crf = dense_crf.DenseCRFParams(theta_alpha=20.0, theta_beta=10.0, iterations=5)
  probs = [predictor.probabilities(params, [image])[0] for image, _ in pairs]

  def reference(preds, width=None):
    labels = [label if width is None else tiling.boundary_labels(label, width) for _, label in pairs]
    return sum(confusion_by_loops(y, p, c) for y, p in zip(labels, preds))

  plain = [p.argmax(-1) for p in probs]
  refined = [dense_crf.refine_labels(p, image, crf) for p, (image, _) in zip(probs, pairs)]
  ours = evaluate(predictor, params, pairs, info, batch_size=2, boundary_width=2)
  theirs = evaluate(predictor, params, pairs, info, batch_size=2, workers=2, boundary_width=2, crf=crf)
  np.testing.assert_array_equal(ours['confusion'], reference(plain))
  np.testing.assert_array_equal(theirs['confusion'], reference(refined))
  for result, preds in ((ours, plain), (theirs, refined)):
    boundary = reference(preds, 2)
    assert 0 < boundary.sum() < 0.75 * result['num_images'] * hw[0] * hw[1]  # the band, not the image
    expected = np.nanmean([boundary[k, k] / (boundary[k].sum() + boundary[:, k].sum() - boundary[k, k])
                           if boundary[k].sum() + boundary[:, k].sum() else np.nan for k in range(c)])
    assert result['boundary_miou'] == pytest.approx(expected) and result['boundary_width'] == 2
  assert theirs['crf'] == crf.to_dict() and 'crf' not in ours
  assert not np.array_equal(ours['confusion'], theirs['confusion'])  # the CRF changed labels: a real path


def confusion_by_loops(label, pred, c):
  out = np.zeros((c, c), np.int64)
  for y, p in zip(label.ravel(), pred.ravel()):
    if y != IGNORE_LABEL:
      out[y, p] += 1
  return out


def test_the_progress_counts_finished_batches_with_at_most_two_in_flight(monkeypatch):
  """evaluate waits for a batch's confusion before counting its images, IN_FLIGHT batches behind the dispatch: the
  progress tells finished images, and the devices never hold the whole split's queue."""
  import types

  from dilated_jax import inference, progress

  events, blocked = [], []
  info = DATASETS['camvid']

  def dispatched(*args):
    for b in range(5):
      events.append(f'dispatch {b}')
      yield 2, jnp.full((1, info.num_classes, info.num_classes), b)

  monkeypatch.setattr(inference, '_network_confusions', dispatched)
  monkeypatch.setattr(jax, 'block_until_ready', lambda x: blocked.append(int(x[0, 0, 0])) or x)
  monkeypatch.setattr(progress.Progress, 'update', lambda self, n: events.append(f'done {n}'))
  predictor = types.SimpleNamespace(mesh=types.SimpleNamespace(size=1))
  result = evaluate(predictor, {}, [None] * 10, info, batch_size=2)
  assert events == ['dispatch 0', 'dispatch 1', 'dispatch 2', 'done 2', 'dispatch 3', 'done 2', 'dispatch 4',
                    'done 2', 'done 2', 'done 2']
  assert blocked == [0, 1, 3, 6, 10]  # each batch's running sum, in order
  assert result['confusion'][0][0] == 10
