"""From an RGB image and its label to what the network trains on (arXiv 1511.07122 section 4; fyu/caffe-dilation
image_label_data_layer.cpp), and deterministic batches built by grain in worker processes.

The network sees BGR minus the dataset's mean (the released models' convention), reflection-padded (reflect-101)
by the front end's margin; the label is padded with IGNORE_LABEL and sampled at margin + stride * i of the crop,
so output cell i is supervised by the pixel at stride * i of the unpadded crop.

Nothing here imports JAX: this module and the sources are what grain's worker processes unpickle and run.
"""

import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from dilated_jax import InputError
from dilated_jax.data.info import IGNORE_LABEL


def to_network_input(image_rgb: np.ndarray, mean_bgr) -> np.ndarray:
  """RGB uint8 (..., H, W, 3) -> float32 BGR minus the per-channel BGR mean (numpy or JAX arrays alike)."""
  return image_rgb[..., ::-1].astype(np.float32) - np.asarray(mean_bgr, np.float32)


def crop_padding(hw, margin: int, crop: tuple[int, int]):
  """((top, bottom), (left, right)): the margin, then centred padding up to `crop` for a small image."""
  extra_h, extra_w = max(crop[0] - hw[0] - 2 * margin, 0), max(crop[1] - hw[1] - 2 * margin, 0)
  return ((margin + extra_h // 2, margin + extra_h - extra_h // 2),
          (margin + extra_w // 2, margin + extra_w - extra_w // 2))


def pad_to_crop(image, label, margin: int, crop: tuple[int, int]):
  """Reflect-pad the image by `margin`, then (centred) up to `crop`; the label likewise, with IGNORE_LABEL."""
  pads = crop_padding(image.shape[:2], margin, crop)
  image = np.pad(image, pads + ((0, 0),), mode='reflect')
  label = np.pad(label, pads, constant_values=IGNORE_LABEL)
  return image, label


def reflect_101(index: np.ndarray, n: int) -> np.ndarray:
  """Where padding index i of an axis of n pixels reads from: np.pad's 'reflect' (no edge repeat), for any i."""
  if n == 1:
    return np.zeros_like(index)
  period = 2 * (n - 1)
  index = np.abs(index) % period
  return np.where(index >= n, period - index, index)


def label_slice(label: np.ndarray, margin: int, stride: int, out_hw: tuple[int, int]) -> np.ndarray:
  """The label at output cell (i, j) of a crop: pixel (margin + stride i, margin + stride j); IGNORE_LABEL past the
  edge."""
  out = np.full(out_hw, IGNORE_LABEL, np.int32)
  sliced = label[margin::stride, margin::stride][:out_hw[0], :out_hw[1]]
  out[:sliced.shape[0], :sliced.shape[1]] = sliced
  return out


def label_region(label: np.ndarray, top_left, size) -> np.ndarray:
  """The label of the crop's pixels from `top_left`, `size` of them, at full resolution; IGNORE_LABEL past the
  crop (`stages.output_region`: what the CRF stages supervise)."""
  out = np.full(size, IGNORE_LABEL, np.int32)
  part = label[top_left[0]:top_left[0] + size[0], top_left[1]:top_left[1] + size[1]]
  out[:part.shape[0], :part.shape[1]] = part
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


def train_example(image_rgb, label, *, crop, margin, stride, out_hw, rng: np.random.Generator, flip: bool = True,
                  scale_range=(1.0, 1.0), label_offset: int = 0, full_resolution: bool = False):
  """One training pair: optional random rescaling, pad, uniform random crop, random horizontal flip, label slice
  (output cell i supervised by pixel stride * i + label_offset of the unpadded crop: `models.label_offset`); with
  `full_resolution` the label of every pixel the output cells cover instead (stride * out_hw of them, past the
  margin: the CRF stages' loss).

  The image stays RGB uint8 (a quarter of float32's bytes to move to the training process and the devices); the
  train step turns it into the network's input with `to_network_input`, on the device. The crop is read through
  reflected indices from the unpadded image: exactly `pad_to_crop` then slicing, without padding the whole image
  (a Cityscapes image is 13x a 628 px crop).
  """
  if tuple(scale_range) != (1.0, 1.0):  # off: no draw, so that the crops and flips stay those of the paper's runs
    image_rgb, label = rescale(image_rgb, label, rng.uniform(*scale_range))
  h, w = label.shape
  (top, bottom), (left, right) = crop_padding((h, w), margin, crop)
  y = int(rng.integers(h + top + bottom - crop[0] + 1))
  x = int(rng.integers(w + left + right - crop[1] + 1))
  rows, cols = np.arange(y, y + crop[0]) - top, np.arange(x, x + crop[1]) - left
  image = image_rgb.take(reflect_101(rows, h), axis=0).take(reflect_101(cols, w), axis=1)
  inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
  label = label.take(np.clip(rows, 0, h - 1), axis=0).take(np.clip(cols, 0, w - 1), axis=1)
  label = np.where(inside, label, IGNORE_LABEL)
  if flip and rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  if full_resolution:
    label = label_region(label, (margin, margin), tuple(stride * n for n in out_hw))
  else:
    label = label_slice(label, margin + label_offset, stride, out_hw)
  return {'image': np.ascontiguousarray(image), 'label': label}


def read_record(source, i: int, num_classes: int):
  """(image, label) of record i of `source`, after checking that the label fits its image and holds only classes
  and IGNORE_LABEL: what a prepared dataset does not promise (`python -m dilated_jax.data.check` lists them all)."""
  image, label = source[i]
  if label.shape != image.shape[:2]:
    raise InputError(f'{record_name(source, i)}: the label is {"x".join(map(str, label.shape[::-1]))} px but its '
                     f'image is {image.shape[1]}x{image.shape[0]} px')
  if label.size and int(label.max()) >= num_classes:
    values = np.unique(label[label >= num_classes])
    values = values[values != IGNORE_LABEL]
    if values.size:
      raise InputError(f'{record_name(source, i)}: label values {", ".join(map(str, values[:10]))} are outside '
                       f'the {num_classes} classes and not {IGNORE_LABEL} (void); `python -m dilated_jax.data.check` '
                       f'lists every such image')
  return image, label


def record_name(source, i: int) -> str:
  """'camvid/train record 12 (0001TP_006690)': the record and, where the source knows it, its image's name."""
  name = f'{getattr(source, "name", type(source).__name__)} record {i}'
  try:  # prepared datasets know the image's name
    return f'{name} ({source.inspect(i)[0]})'
  except Exception:  # noqa: BLE001 - only for the message
    return name


class ImageExamples:
  """make_example(i, rng) of the image stages (frontend, joint): record i read and checked, then `train_example`.

  A plain object of numbers and a source, so that grain's worker processes can unpickle it without JAX.
  """

  def __init__(self, source, num_classes: int, **train_example_args):
    self.source, self.num_classes, self.args = source, num_classes, train_example_args

  def __call__(self, i: int, rng: np.random.Generator) -> dict:
    image, label = read_record(self.source, i, self.num_classes)
    return train_example(image, label, rng=rng, **self.args)


class ScoreExamples:
  """make_example(i, rng) of the context stage: the cached front-end scores of image i and its labels at stride s,
  whole maps, randomly flipped (arXiv 1511.07122 section 5; fyu/dilation test.py --bin)."""

  def __init__(self, cache, flip: bool):
    self.cache, self.flip = cache, flip

  def __call__(self, i: int, rng: np.random.Generator) -> dict:
    x, y = self.cache[i]
    if self.flip and rng.random() < 0.5:
      x, y = x[:, ::-1], y[:, ::-1]
    return {'image': np.ascontiguousarray(x), 'label': np.ascontiguousarray(y, np.int32)}


def example_indices(step: int, global_batch: int, num_examples: int, seed: int) -> np.ndarray:
  """Dataset indices of the global batch at `step`: a fresh permutation every epoch, a pure function of (seed, step)."""
  positions = step * global_batch + np.arange(global_batch)
  epochs, offsets = np.divmod(positions, num_examples)
  perms = {e: np.random.default_rng([seed, int(e)]).permutation(num_examples) for e in np.unique(epochs)}
  return np.array([perms[e][o] for e, o in zip(epochs, offsets)])


class ProcessBatch:
  """Step t -> this process's rows of the global batch of step t: example j drawn with rng (seed, t, j)."""

  def __init__(self, make_example: Callable[[int, np.random.Generator], dict], num_examples: int, global_batch: int,
               seed: int, rows: range):
    self.make_example, self.num_examples, self.global_batch = make_example, num_examples, global_batch
    self.seed, self.rows = seed, rows

  def __call__(self, step: int) -> dict:
    idx = example_indices(step, self.global_batch, self.num_examples, self.seed)
    batch = None
    for row, j in enumerate(self.rows):  # into one array per key: a batch in memory once, not twice
      example = self.make_example(int(idx[j]), np.random.default_rng([self.seed, step, j]))
      if batch is None:
        batch = {k: np.empty((len(self.rows),) + np.shape(v), np.asarray(v).dtype) for k, v in example.items()}
      for k, v in example.items():
        batch[k][row] = v
    return batch


def batches(make_example: Callable[[int, np.random.Generator], dict], num_examples: int, *, global_batch: int,
            seed: int, start_step: int, stop_step: int, process_index: int = 0, process_count: int = 1,
            workers: int = 0) -> Iterator[dict]:
  """This process's share of the global batches of steps start_step..stop_step - 1, built by `workers` processes.

  Example j of step t is drawn with rng (seed, t, j) and record `example_indices(t, ...)[j]`, whoever builds it:
  a resumed run, and a run with any number of workers, devices or processes, sees exactly the same batches.
  """
  if global_batch % process_count:
    raise InputError(f'batch_size: {global_batch} does not split over {process_count} processes')
  per_process = global_batch // process_count
  rows = range(process_index * per_process, (process_index + 1) * per_process)
  build = ProcessBatch(make_example, num_examples, global_batch, seed, rows)
  return ordered_map(build, range(start_step, stop_step), workers)


def ordered_map(fn: Callable[[int], dict], indices: range, workers: int, buffer: int = 2) -> Iterator:
  """fn(i) for i in `indices`, in order, computed ahead by `workers` grain worker processes (0: one thread here).

  Worker k computes the items k, k + workers, ...; each works up to `buffer` items ahead. The iterator's
  state is its position: callers that resume start from a later index, so nothing else needs a checkpoint.
  """
  import grain  # here: only where batches are built

  _absl_flags_parsed()
  ds = grain.MapDataset.range(indices.start, indices.stop, indices.step).map(fn)
  if workers > 0:
    # An item is already a whole batch: each worker builds one while one waits in its queue.
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(1, buffer - 1)),
                        worker_init_fn=_worker_init)
  else:
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=buffer))
  return _closing(iter(ds))


def resolve_workers(workers: int) -> int:
  """data.workers: -1 means one per CPU core this process may run on."""
  if workers < -1:
    raise InputError(f'data.workers: expected -1 (one per core), 0 (in this process) or a count, got {workers}')
  if workers == -1:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
  return workers


def _closing(it) -> Iterator:
  """Yields from grain's iterator as plain arrays and closes it (its worker processes) when the consumer stops."""
  try:
    for item in it:
      if isinstance(item, dict):
        # Worker outputs arrive in shared memory that grain frees when the array is collected: a copy is ours.
        item = {k: v if type(v) is np.ndarray else np.array(v) for k, v in item.items()}
      yield item
  finally:
    close = getattr(it, 'close', None)
    if close is not None:
      close()
    # Batches grain had already taken from the workers free their shared memory when collected, by default in a
    # background thread that an exiting process may not wait for (its resource tracker then prints a warning after
    # the run's last line): free them now.
    from grain._src.python.ipc import shared_memory_array

    shared_memory_array.SharedMemoryArray._disable_async_del()  # noqa: SLF001 - no public way
    del it, close
    gc.collect()


def _absl_flags_parsed():
  """grain's worker processes read absl flags, which must count as parsed (they are in every entry point; a
  notebook or a test has not parsed them)."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _worker_init(index: int, count: int):
  """In each worker process: leave SIGINT and SIGTERM to the main process (which checkpoints, then closes the
  workers), and exit when the main process is gone (a SIGKILL leaves no one to close them)."""
  del index, count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  # The parent's sentinel, not getppid(): the parent may have died while this worker was still starting.
  parent = multiprocessing.parent_process()

  def watch():
    multiprocessing.connection.wait([parent.sentinel])
    os._exit(0)

  if parent is not None:
    threading.Thread(target=watch, daemon=True).start()
