"""From an RGB image and its label to what the network trains on (paper.md 1.3), and deterministic batching.

The network sees BGR minus the dataset's mean (the released models' convention), reflection-padded (reflect-101)
by the front end's margin; the label is padded with IGNORE_LABEL and sampled at margin + stride * i of the crop,
so output cell i is supervised by the pixel at stride * i of the unpadded crop.
"""

import queue
import threading
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from dilated_jax.data.info import IGNORE_LABEL


def to_network_input(image_rgb: np.ndarray, mean_bgr) -> np.ndarray:
  """RGB uint8 (H, W, 3) -> float32 BGR minus the per-channel BGR mean."""
  return image_rgb[..., ::-1].astype(np.float32) - np.asarray(mean_bgr, np.float32)


def pad_to_crop(image, label, margin: int, crop: tuple[int, int]):
  """Reflect-pad the image by `margin`, then (centred) up to `crop`; the label likewise, with IGNORE_LABEL."""
  h, w = image.shape[:2]
  extra_h, extra_w = max(crop[0] - h - 2 * margin, 0), max(crop[1] - w - 2 * margin, 0)
  pads = ((margin + extra_h // 2, margin + extra_h - extra_h // 2),
          (margin + extra_w // 2, margin + extra_w - extra_w // 2))
  image = np.pad(image, pads + ((0, 0),), mode='reflect')
  label = np.pad(label, pads, constant_values=IGNORE_LABEL)
  return image, label


def label_slice(label: np.ndarray, margin: int, stride: int, out_hw: tuple[int, int]) -> np.ndarray:
  """The label at output cell (i, j) of a crop: pixel (margin + stride i, margin + stride j); IGNORE_LABEL past the edge."""
  out = np.full(out_hw, IGNORE_LABEL, np.int32)
  sliced = label[margin::stride, margin::stride][:out_hw[0], :out_hw[1]]
  out[:sliced.shape[0], :sliced.shape[1]] = sliced
  return out


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize to (width, height): each output pixel reads the input pixel under its centre."""
  h, w = label.shape
  rows = np.minimum(((np.arange(size[1]) + 0.5) * h / size[1]).astype(int), h - 1)
  cols = np.minimum(((np.arange(size[0]) + 0.5) * w / size[0]).astype(int), w - 1)
  return label[rows[:, None], cols[None, :]]


def rescale(image_rgb: np.ndarray, label: np.ndarray, scale: float):
  """Image and label scaled by `scale`: the image bicubic up and area-averaged down, the label nearest, as the
  authors' data layer does (caffe-dilation `rand_scale`)."""
  h, w = label.shape
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  image = Image.fromarray(image_rgb).resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BOX)
  return np.asarray(image), resize_nearest(label, size)


def train_example(image_rgb, label, *, crop, margin, stride, out_hw, mean_bgr, rng: np.random.Generator,
                  flip: bool = True, scale_range=(1.0, 1.0)):
  """One training pair: optional random rescaling, pad, uniform random crop, random horizontal flip, mean
  subtraction, label slice."""
  if tuple(scale_range) != (1.0, 1.0):  # off: no draw, so that the crops and flips stay those of the paper's runs
    image_rgb, label = rescale(image_rgb, label, rng.uniform(*scale_range))
  image, label = pad_to_crop(to_network_input(image_rgb, mean_bgr), label, margin, crop)
  y = int(rng.integers(image.shape[0] - crop[0] + 1))
  x = int(rng.integers(image.shape[1] - crop[1] + 1))
  image, label = image[y:y + crop[0], x:x + crop[1]], label[y:y + crop[0], x:x + crop[1]]
  if flip and rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  return {'image': np.ascontiguousarray(image), 'label': label_slice(label, margin, stride, out_hw)}


def example_indices(step: int, global_batch: int, num_examples: int, seed: int) -> np.ndarray:
  """Dataset indices of the global batch at `step`: a fresh permutation every epoch, a pure function of (seed, step)."""
  positions = step * global_batch + np.arange(global_batch)
  epochs, offsets = np.divmod(positions, num_examples)
  perms = {e: np.random.default_rng([seed, int(e)]).permutation(num_examples) for e in np.unique(epochs)}
  return np.array([perms[e][o] for e, o in zip(epochs, offsets)])


def batches(make_example: Callable[[int, np.random.Generator], dict], num_examples: int, *, global_batch: int,
            seed: int, start_step: int, process_index: int = 0, process_count: int = 1,
            prefetch: int = 2) -> Iterator[dict]:
  """This process's share of each global batch from `start_step` on, built in a background thread.

  Example j of step t is drawn with rng (seed, t, j), so a resumed run sees exactly the batches it would have seen.
  """
  if global_batch % process_count:
    raise ValueError(f'batch_size: {global_batch} does not split over {process_count} processes')
  per_process = global_batch // process_count
  lo = process_index * per_process
  q: queue.Queue = queue.Queue(maxsize=prefetch)
  stop = threading.Event()

  def produce():
    step = start_step
    try:
      while not stop.is_set():
        idx = example_indices(step, global_batch, num_examples, seed)
        examples = [make_example(int(idx[j]), np.random.default_rng([seed, step, j]))
                    for j in range(lo, lo + per_process)]
        q.put({k: np.stack([e[k] for e in examples]) for k in examples[0]})
        step += 1
    except Exception as e:  # handed to the consumer, which raises it in the main thread
      q.put(e)

  threading.Thread(target=produce, daemon=True).start()
  try:
    while True:
      item = q.get()
      if isinstance(item, Exception):
        raise item
      yield item
  finally:
    stop.set()
