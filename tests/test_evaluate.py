"""Evaluation against the labels themselves: a network whose scores are the one-hot labels that training gives its
cells reproduces the labels through the whole evaluation (margin, tiles, stitching, upsampling, cropping, confusion)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dilated_jax import sharding
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
