"""The training pipeline of paper.md 1.3: padding, crop, flip, label slice alignment, deterministic batches."""

import numpy as np
import pytest

from dilated_jax.data import pipeline
from dilated_jax.data.info import IGNORE_LABEL

MEAN = (10.0, 20.0, 30.0)


def coded_pair(h, w):
  """An image whose pixels encode their own (row, column), and a label equal to row * w + column mod 250."""
  yy, xx = np.mgrid[:h, :w]
  image = np.stack([yy % 256, xx % 256, (yy * w + xx) % 256], -1).astype(np.uint8)
  return image, ((yy * w + xx) % 250).astype(np.uint8)


def test_to_network_input_is_bgr_minus_mean():
  image = np.array([[[1, 2, 3]]], np.uint8)
  np.testing.assert_array_equal(pipeline.to_network_input(image, MEAN), [[[3 - 10, 2 - 20, 1 - 30]]])


def test_reflect_101_padding_and_void_label():
  image, label = coded_pair(5, 6)
  padded, plabel = pipeline.pad_to_crop(image, label, margin=2, crop=(9, 10))
  assert padded.shape[:2] == (9, 10)
  # reflect-101 (OpenCV BORDER_REFLECT_101): the edge pixel is not repeated
  np.testing.assert_array_equal(padded[2, 0], image[0, 2])
  np.testing.assert_array_equal(padded[0, 2], image[2, 0])
  assert (plabel[:2] == IGNORE_LABEL).all() and (plabel[:, :2] == IGNORE_LABEL).all()
  np.testing.assert_array_equal(plabel[2:7, 2:8], label)


@pytest.mark.parametrize('margin,stride', [(186, 8), (8, 2), (0, 8)])
def test_label_at_cell_i_is_pixel_stride_i_of_the_unpadded_crop(margin, stride):
  """Whatever the random crop and flip, label cell i is the label of the pixel under image position margin + s i."""
  h, w, n = 61, 75, 5
  crop = (2 * margin + n * stride, 2 * margin + n * stride)
  image, label = coded_pair(h, w)
  checked = 0
  for seed in range(20):
    ex = pipeline.train_example(image, label, crop=crop, margin=margin, stride=stride, out_hw=(n, n),
                                mean_bgr=MEAN, rng=np.random.default_rng(seed))
    x, y = ex['image'], ex['label']
    assert x.shape == crop + (3,) and y.shape == (n, n)
    for i in range(n):
      for j in range(n):
        bgr = x[margin + stride * i, margin + stride * j] + np.asarray(MEAN)
        r, c = int(round(bgr[2])), int(round(bgr[1]))  # channels 0 and 1 of RGB = row, column mod 256
        if y[i, j] == IGNORE_LABEL:
          continue
        # the image pixel there is the one whose label sits at cell (i, j): reflections carry label 255
        assert y[i, j] == (r * w + c) % 250
        checked += 1
  assert checked > 100


def test_small_image_is_padded_up_to_the_crop_with_void():
  image, label = coded_pair(8, 8)
  ex = pipeline.train_example(image, label, crop=(40, 40), margin=4, stride=4, out_hw=(8, 8), mean_bgr=MEAN,
                              rng=np.random.default_rng(0), flip=False)
  assert ex['image'].shape == (40, 40, 3)
  assert (ex['label'] != IGNORE_LABEL).sum() == 4  # 8 x 8 image pixels, every 4th row and column


def test_batches_are_a_pure_function_of_seed_and_step():
  make = lambda i, rng: {'i': np.int32(i), 'r': rng.random()}
  run = list(zip(range(7), pipeline.batches(make, 10, global_batch=4, seed=3, start_step=0)))
  resumed = list(zip(range(3), pipeline.batches(make, 10, global_batch=4, seed=3, start_step=4)))
  for (_, a), (_, b) in zip(run[4:], resumed):
    np.testing.assert_array_equal(a['i'], b['i'])
    np.testing.assert_array_equal(a['r'], b['r'])
  # every epoch visits every example once
  seen = np.concatenate([b['i'] for _, b in run])[:10]
  assert sorted(seen) == list(range(10))


def test_processes_read_disjoint_shares_of_the_global_batch():
  make = lambda i, rng: {'i': np.int32(i)}
  whole = next(pipeline.batches(make, 100, global_batch=8, seed=0, start_step=5))['i']
  parts = [next(pipeline.batches(make, 100, global_batch=8, seed=0, start_step=5, process_index=p,
                                 process_count=2))['i'] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_label_alignment_with_the_paper_margin_when_padding_up_to_the_crop():
  """An image smaller than the crop (here 13 x 21 px in a 420 px crop): reflection padding by 186, then up to the
  crop; label cell i is still the pixel at 8 i of the unpadded crop, and the padding is void."""
  h, w, margin, stride, n = 13, 21, 186, 8, 6
  crop = (2 * margin + n * stride,) * 2
  image, label = coded_pair(h, w)
  labelled = 0
  for seed in range(10):
    ex = pipeline.train_example(image, label, crop=crop, margin=margin, stride=stride, out_hw=(n, n),
                                mean_bgr=MEAN, rng=np.random.default_rng(seed))
    for i in range(n):
      for j in range(n):
        if ex['label'][i, j] == IGNORE_LABEL:
          continue
        bgr = ex['image'][margin + stride * i, margin + stride * j] + np.asarray(MEAN)
        assert ex['label'][i, j] == (int(round(bgr[2])) * w + int(round(bgr[1]))) % 250
        labelled += 1
  assert 0 < labelled < 10 * n * n  # some cells fall on the image, the others on the void padding


def test_scale_augmentation_resizes_image_and_label_together_and_is_off_by_default():
  image, label = coded_pair(20, 30)
  kwargs = dict(crop=(40, 40), margin=4, stride=4, out_hw=(8, 8), mean_bgr=MEAN, flip=False)
  off = pipeline.train_example(image, label, rng=np.random.default_rng(1), **kwargs)
  same = pipeline.train_example(image, label, rng=np.random.default_rng(1), scale_range=(1.0, 1.0), **kwargs)
  np.testing.assert_array_equal(off['image'], same['image'])
  big_image, big_label = pipeline.rescale(image, label, 2.0)
  assert big_image.shape == (40, 60, 3) and big_label.shape == (40, 60)
  np.testing.assert_array_equal(big_label, np.kron(label, np.ones((2, 2), np.uint8)))
  small_image, small_label = pipeline.rescale(image, label, 0.5)
  assert small_image.shape == (10, 15, 3)
  np.testing.assert_array_equal(small_label, label[1::2, 1::2])  # the pixel under each output centre
  # a drawn scale is used: examples at scale 2 have the labels of the doubled image
  ex = pipeline.train_example(image, label, rng=np.random.default_rng(1), scale_range=(2.0, 2.0), **kwargs)
  values = set(np.unique(ex['label'])) - {IGNORE_LABEL}
  assert values and values <= set(np.unique(big_label))
