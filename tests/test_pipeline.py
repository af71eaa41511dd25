"""The training pipeline of fyu/caffe-dilation image_label_data_layer.cpp: padding, crop, flip, label slice alignment,
deterministic batches."""

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
                                rng=np.random.default_rng(seed))
    x, y = ex['image'], ex['label']
    assert x.shape == crop + (3,) and x.dtype == np.uint8 and y.shape == (n, n)
    for i in range(n):
      for j in range(n):
        r, c = map(int, x[margin + stride * i, margin + stride * j, :2])  # channels 0, 1 = row, column mod 256
        if y[i, j] == IGNORE_LABEL:
          continue
        # the image pixel there is the one whose label sits at cell (i, j): reflections carry label 255
        assert y[i, j] == (r * w + c) % 250
        checked += 1
  assert checked > 100


@pytest.mark.parametrize('hw,crop,margin', [((61, 75), (52, 60), 8), ((13, 21), (420, 420), 186), ((1, 9), (12, 12), 4),
                                            ((360, 480), (628, 628), 186)])
def test_the_crop_is_the_padded_image_sliced_at_the_drawn_offset(hw, crop, margin):
  """The definition: reflect-101 pad the whole image (margin, then up to the crop), draw y and x uniformly, slice;
  the label padded with void. train_example reads only the crop, through reflected indices."""
  image, label = coded_pair(*hw)
  padded, plabel = pipeline.pad_to_crop(image, label, margin, crop)
  for seed in range(10):
    rng = np.random.default_rng(seed)
    y, x = int(rng.integers(padded.shape[0] - crop[0] + 1)), int(rng.integers(padded.shape[1] - crop[1] + 1))
    got = pipeline.train_example(image, label, crop=crop, margin=margin, stride=1, out_hw=crop, flip=False,
                                 rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(got['image'], padded[y:y + crop[0], x:x + crop[1]])
    want = pipeline.label_slice(plabel[y:y + crop[0], x:x + crop[1]], margin, 1, crop)
    np.testing.assert_array_equal(got['label'], want)


def test_the_train_step_input_is_bgr_minus_mean_of_the_uint8_crop():
  """What the network sees: to_network_input on the device gives the float32 BGR-minus-mean values the host would."""
  import jax.numpy as jnp

  image = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
  np.testing.assert_array_equal(np.asarray(pipeline.to_network_input(jnp.asarray(image), MEAN)),
                                pipeline.to_network_input(image, MEAN))


def test_small_image_is_padded_up_to_the_crop_with_void():
  image, label = coded_pair(8, 8)
  ex = pipeline.train_example(image, label, crop=(40, 40), margin=4, stride=4, out_hw=(8, 8),
                              rng=np.random.default_rng(0), flip=False)
  assert ex['image'].shape == (40, 40, 3)
  assert (ex['label'] != IGNORE_LABEL).sum() == 4  # 8 x 8 image pixels, every 4th row and column


def test_batches_are_a_pure_function_of_seed_and_step():
  make = lambda i, rng: {'i': np.int32(i), 'r': rng.random()}
  run = list(zip(range(7), pipeline.batches(make, 10, global_batch=4, seed=3, start_step=0, stop_step=7)))
  resumed = list(zip(range(3), pipeline.batches(make, 10, global_batch=4, seed=3, start_step=4, stop_step=7)))
  for (_, a), (_, b) in zip(run[4:], resumed):
    np.testing.assert_array_equal(a['i'], b['i'])
    np.testing.assert_array_equal(a['r'], b['r'])
  # every epoch visits every example once
  seen = np.concatenate([b['i'] for _, b in run])[:10]
  assert sorted(seen) == list(range(10))


class Draw:
  """A make_example that shows what it was given: the record and the first draws of its rng."""

  def __call__(self, i, rng):
    return {'i': np.int32(i), 'r': rng.random(3)}


@pytest.mark.parametrize('workers', [0, 2])
def test_example_j_of_step_t_is_record_and_rng_of_seed_step_j_whoever_builds_it(workers):
  """The definition, written out: example j of step t is record perm_e[(t B + j) mod N] of epoch e = (t B + j) // N,
  perm_e the permutation of rng (seed, e), drawn with rng (seed, t, j); with worker processes too."""
  seed, n, batch, start, stop = 5, 7, 4, 3, 9
  got = list(pipeline.batches(Draw(), n, global_batch=batch, seed=seed, start_step=start, stop_step=stop,
                              workers=workers))
  assert len(got) == stop - start
  for t, b in zip(range(start, stop), got):
    for j in range(batch):
      epoch, offset = divmod(t * batch + j, n)
      assert b['i'][j] == np.random.default_rng([seed, epoch]).permutation(n)[offset]
      np.testing.assert_array_equal(b['r'][j], np.random.default_rng([seed, t, j]).random(3))


def test_worker_errors_reach_the_training_loop_as_they_were_raised():
  class Bad:
    def __call__(self, i, rng):
      if i == 3:
        raise ValueError('record 3: label values 12 are outside the 11 classes')
      return {'i': np.int32(i)}

  with pytest.raises(ValueError, match='record 3: label values 12'):
    list(pipeline.batches(Bad(), 4, global_batch=4, seed=0, start_step=0, stop_step=2, workers=2))


def test_processes_read_disjoint_shares_of_the_global_batch():
  make = lambda i, rng: {'i': np.int32(i)}
  whole = next(pipeline.batches(make, 100, global_batch=8, seed=0, start_step=5, stop_step=6))['i']
  parts = [next(pipeline.batches(make, 100, global_batch=8, seed=0, start_step=5, stop_step=6, process_index=p,
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
                                rng=np.random.default_rng(seed))
    for i in range(n):
      for j in range(n):
        if ex['label'][i, j] == IGNORE_LABEL:
          continue
        r, c = map(int, ex['image'][margin + stride * i, margin + stride * j, :2])
        assert ex['label'][i, j] == (r * w + c) % 250
        labelled += 1
  assert 0 < labelled < 10 * n * n  # some cells fall on the image, the others on the void padding


def test_scale_augmentation_resizes_image_and_label_together_and_is_off_by_default():
  image, label = coded_pair(20, 30)
  kwargs = dict(crop=(40, 40), margin=4, stride=4, out_hw=(8, 8), flip=False)
  off = pipeline.train_example(image, label, rng=np.random.default_rng(1), **kwargs)
  same = pipeline.train_example(image, label, rng=np.random.default_rng(1), scale_range=(1.0, 1.0), **kwargs)
  np.testing.assert_array_equal(off['image'], same['image'])
  big_image, big_label = pipeline.rescale(image, label, 2.0)
  assert big_image.shape == (40, 60, 3) and big_label.shape == (40, 60)
  np.testing.assert_array_equal(big_label, np.kron(label, np.ones((2, 2), np.uint8)))
  small_image, small_label = pipeline.rescale(image, label, 0.5)
  assert small_image.shape == (10, 15, 3)
  np.testing.assert_array_equal(small_label, label[1::2, 1::2])  # the pixel under each output centre
  # The crop is a window of the padded image itself when off, of the padded doubled image at scale 2 (and not of
  # the other), with the labels of that window.
  for scale, (im, lab) in ((None, (image, label)), (2.0, (big_image, big_label))):
    args = dict(kwargs, scale_range=(scale, scale)) if scale else kwargs
    ex = pipeline.train_example(image, label, rng=np.random.default_rng(1), **args)
    padded, padded_label = pipeline.pad_to_crop(im, lab, 4, (40, 40))
    [(y, x)] = windows(padded, ex['image'])
    np.testing.assert_array_equal(ex['label'], pipeline.label_slice(padded_label[y:y + 40, x:x + 40], 4, 4, (8, 8)))
    other = pipeline.pad_to_crop(*((big_image, big_label) if scale is None else (image, label)), 4, (40, 40))[0]
    assert not windows(other, ex['image'])


def windows(big, small):
  """Every (y, x) where `small` sits in `big` exactly."""
  h, w = small.shape[:2]
  return [(y, x) for y in range(big.shape[0] - h + 1) for x in range(big.shape[1] - w + 1)
          if np.array_equal(big[y:y + h, x:x + w], small)]


def test_the_next_batch_goes_to_the_devices_before_the_current_one_is_handed_over():
  """prefetch_to_mesh: global arrays equal to the host batches, split over the 8 devices, one batch ahead: when the
  loop receives batch t (and dispatches its step), the transfer of batch t + 1 has already been started."""
  import jax
  from dilated_jax import sharding

  mesh = sharding.make_mesh()
  pulled = []

  def host_batches():
    for t in range(3):
      pulled.append(t)
      yield {'image': np.full((8, 2, 2, 3), t, np.float32)}

  it = sharding.prefetch_to_mesh(host_batches(), mesh)
  first = next(it)
  assert pulled == [0, 1]
  assert isinstance(first['image'], jax.Array) and len(first['image'].sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(first['image']), 0)
  assert [int(np.asarray(b['image'])[0, 0, 0, 0]) for b in it] == [1, 2] and pulled == [0, 1, 2]
