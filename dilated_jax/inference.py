"""Inference for one network: tiled full-image probabilities as the authors' test.py, and the evaluation of a split.

The library side of `evaluate`, `predict`, `figure` and the training loop's evaluations (fyu/dilation test.py,
test_image).
"""

import collections
import functools
import math

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
from PIL import Image

from dilated_jax import InputError, checkpoint, dense_crf, metrics, progress, sharding, weights
from dilated_jax.data import pipeline, tiling
from dilated_jax.models import build_model, crf as crf_lib, label_offset, upsample_probabilities


def stitch(maps, grid):
  """(B * nh * nw, h, w, C) tile outputs, row-major over the grid -> (B, nh * h, nw * w, C)."""
  nh, nw = grid
  _, h, w, c = maps.shape
  return maps.reshape(-1, nh, nw, h, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, nh * h, nw * w, c)


def in_chunks(fn, x, size: int):
  """fn over the leading axis of x, `size` rows at a time (the last chunk zero-filled): memory bounded by `size`, not
  by the number of rows."""
  n = x.shape[0]
  if n <= size:
    return fn(x)
  chunks = -(-n // size)
  x = jnp.pad(x, ((0, chunks * size - n),) + ((0, 0),) * (x.ndim - 1))
  y = jax.lax.map(fn, x.reshape((chunks, size) + x.shape[1:]))
  return y.reshape((chunks * size,) + y.shape[2:])[:n]


# fyu/drn segment.py --ms: the image itself and these rescalings of it (test_seg's scales, SegListMS, test_ms).
DRN_MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def check_test_time(scales, flip) -> tuple[tuple[float, ...], bool]:
  """(scales, flip) of eval.scales / eval.flip, checked: an InputError naming the field."""
  try:
    values = tuple(scales)
  except TypeError:
    values = None
  if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf
                           for v in values):
    raise InputError(f'eval.scales: expected one or more image scales > 0 (1.0: the image itself), got {scales!r}')
  if not isinstance(flip, bool):
    raise InputError(f'eval.flip: expected True or False, got {flip!r}')
  return tuple(float(v) for v in values), flip


def is_multiscale(scales, flip) -> bool:
  """Whether eval.scales / eval.flip ask for more than the single-scale test of the paper."""
  return tuple(scales) != (1.0,) or bool(flip)


def result_suffix(scales, flip) -> str:
  """What an evaluation file's name gets: '_ms' for scales other than (1.0,), '_flip' for flip (fyu/drn names its
  multi-scale output folder `_ms`)."""
  return ('_ms' if tuple(scales) != (1.0,) else '') + ('_flip' if flip else '')


def rescale_image(image_rgb: np.ndarray, scale: float) -> np.ndarray:
  """The image resized to int(w s) x int(h s) (at least 1 px) with PIL's bicubic filter, as fyu/drn SegListMS."""
  if scale == 1.0:
    return image_rgb
  h, w = image_rgb.shape[:2]
  size = (max(1, int(w * scale)), max(1, int(h * scale)))
  return np.asarray(Image.fromarray(image_rgb).resize(size, Image.Resampling.BICUBIC))


def resize_scores(maps: np.ndarray, hw) -> np.ndarray:
  """(h, w, C) float32 maps resized to `hw` channel by channel with PIL's bilinear filter on float images, as fyu/drn
  segment.py resize_4d_tensor (untouched when the size is already hw)."""
  if maps.shape[:2] == tuple(hw):
    return maps.astype(np.float32)
  size = (int(hw[1]), int(hw[0]))
  return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(maps[..., c], np.float32)).resize(
      size, Image.Resampling.BILINEAR)) for c in range(maps.shape[-1])], axis=-1)


class Predictor:
  """Tiled inference for one network: image batches in, full-resolution class probabilities out (fyu/dilation
  test.py, test_image).

  The image, BGR minus the mean, is reflect-padded by the margin and cut into tiles whose outputs are `tile` pixels
  and do not overlap; short tiles at the bottom and right are reflect-padded. Each device runs its tiles through the
  network `tiles_per_device` at a time, so that memory does not grow with an image's size. Scores are stitched,
  turned into probabilities, upsampled (zoom: softmax of the stitched map, then x8; deconv: per tile, as
  in-network), cropped. With `crf` (a network trained with the CRF-RNN layer: its parameters hold 'crf') the layer
  then refines the probabilities of each whole image, the batch's padding masked out (model.crf, test_iterations).
  """

  def __init__(self, model_cfg: ml_collections.ConfigDict, info, tile, mesh, with_context: bool = True,
               tiles_per_device: int = 8, crf: bool = False):
    self.model = build_model(model_cfg, with_context=with_context, mean_bgr=info.mean_bgr)
    self.crf = crf_lib.build(model_cfg.crf) if crf else None
    self.upsample = model_cfg.upsample
    self.mean_bgr, self.mesh = info.mean_bgr, mesh
    fe = self.model.front_end
    self.margin, self.stride = fe.margin, fe.stride
    self.tile = tuple(int(t) for t in tile)
    if any(t % self.stride for t in self.tile):
      raise InputError(f'eval.tile: expected multiples of the output stride {self.stride}, got {self.tile}')
    if not isinstance(tiles_per_device, int) or tiles_per_device < 1:
      raise InputError(f'eval.tiles_per_device: expected an integer >= 1, got {tiles_per_device!r}')
    self.tiles_per_device = tiles_per_device
    self.tiling = tiling.Tiling(self.tile, self.margin, self.stride, self.mean_bgr,
                                label_offset(self.upsample, self.stride))

  def _tile_scores(self, params, tiles):
    """(N, th / s, tw / s, C) scores of N tiles sharded over the mesh; each device runs its own in chunks."""
    def local(params, tiles):  # params: the parameters, or with BatchNorm {'params', 'batch_stats'} (eval_variables)
      variables = params if 'params' in params else {'params': params}
      return in_chunks(lambda x: self.model.apply(variables, x), tiles, self.tiles_per_device)

    return jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P('data')), out_specs=P('data'))(params, tiles)

  def _upsampled(self, params, tile_scores, grid, out_hw, rgb=None, sizes=None):
    """(B, out_h, out_w, C) probabilities of the batch's tile scores on `grid`, cropped to out_hw; with the CRF
    layer, refined on the (B, out_h, out_w, 3) RGB images whose own (height, width) are `sizes`."""
    if self.upsample == 'zoom':
      probs = upsample_probabilities(stitch(tile_scores, grid), 'zoom', self.stride, out_hw)
    else:
      probs = stitch(upsample_probabilities(tile_scores, 'deconv', self.stride, self.tile), grid)
      probs = probs[:, :out_hw[0], :out_hw[1]]
    if self.crf is None:
      return probs
    rows, cols = jnp.arange(out_hw[0]), jnp.arange(out_hw[1])
    valid = (rows[None, :, None] < sizes[:, 0, None, None]) & (cols[None, None, :] < sizes[:, 1, None, None])
    crf_params = (params['params'] if 'params' in params else params)['crf']
    layer = crf_lib.fitted(self.crf, out_hw)
    scores = layer.apply({'params': crf_params}, crf_lib.unaries(probs), rgb.astype(jnp.float32), valid)
    return jax.nn.softmax(scores, axis=-1)

  @functools.lru_cache(maxsize=None)
  def _jitted(self, grid):
    """Jitted (tile scores, probabilities cropped to a static size, confusion matrix) for batches on `grid`."""
    repl, rows = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    full = (grid[0] * self.tile[0], grid[1] * self.tile[1])

    def confusion(params, tiles, label_sets, rgb, sizes, num_classes):
      probs = self._upsampled(params, self._tile_scores(params, tiles), grid, full, rgb, sizes)
      preds = jnp.argmax(probs, axis=-1)
      return jnp.stack([metrics.confusion_matrix(labels, preds, num_classes) for labels in label_sets])

    return (jax.jit(self._tile_scores, in_shardings=(repl, rows), out_shardings=rows),
            jax.jit(lambda params, scores, out_hw, rgb, sizes: self._upsampled(params, scores, grid, out_hw, rgb,
                                                                             sizes),
                    in_shardings=(repl, rows, rows, rows), out_shardings=rows, static_argnums=2),
            jax.jit(confusion, in_shardings=(repl, rows, rows, rows, rows), out_shardings=repl, static_argnums=5))

  @functools.lru_cache(maxsize=None)
  def scores_fn(self, grid):
    """Jitted (params, tiles of a batch on `grid`) -> the network's stitched scores (B, nh h, nw w, C), before the
    softmax: what the score cache holds (fyu/dilation test.py --bin)."""
    repl, rows = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    return jax.jit(lambda params, tiles: stitch(self._tile_scores(params, tiles), grid),
                   in_shardings=(repl, rows), out_shardings=rows)

  def probabilities(self, params, images) -> list[np.ndarray]:
    """Full-resolution (H, W, C) float32 class probabilities of each image; the upsampling covers the batch's
    largest image, not its tile grid."""
    grid, local = self.tiling.batch(images, rows=sharding.process_rows(len(images)), rgb=self.crf is not None)
    scores_fn, upsampled_fn, _ = self._jitted(grid)
    out_hw = tuple(max(im.shape[i] for im in images) for i in (0, 1))
    batch = sharding.global_batch(self.mesh, local)
    rgb = batch['rgb'][:, :out_hw[0], :out_hw[1]] if 'rgb' in batch else None
    probs = upsampled_fn(params, scores_fn(params, batch['tiles']), out_hw, rgb, batch.get('sizes'))
    probs = np.asarray(multihost_utils.process_allgather(probs, tiled=True))
    return [p[:im.shape[0], :im.shape[1]] for p, im in zip(probs, images)]

  def confusion(self, params, grid, local: dict, num_classes: int):
    """(K, C, C) confusion matrices (on device) of a batch tiled on `grid`, of which `local` holds this process's
    rows ('tiles', 'labels' at full resolution padded to the grid and maybe 'boundary_labels'), as `Tiling.batch`
    makes them: one per label set, the boundary band's second."""
    batch = sharding.global_batch(self.mesh, local)
    label_sets = tuple(batch[k] for k in ('labels', 'boundary_labels') if k in batch)
    return self._jitted(grid)[2](params, batch['tiles'], label_sets, batch.get('rgb'), batch.get('sizes'),
                                 num_classes)

  def multiscale_log_probabilities(self, params, images, scales, flip: bool = False) -> list[np.ndarray]:
    """(H, W, C) float32 sum over `scales` (and, with `flip`, the mirrored image too) of each image's
    log-probabilities at that scale resized back to the image (fyu/drn segment.py, test_ms). One scale (one
    direction) at a time, each tiled as `probabilities`: memory is that of the largest scale, not of their sum."""
    total = [0.0] * len(images)
    for scale in scales:
      scaled = [rescale_image(im, scale) for im in images]
      for mirror in (False, True) if flip else (False,):
        inputs = [np.ascontiguousarray(im[:, ::-1]) for im in scaled] if mirror else scaled
        for i, probs in enumerate(self.probabilities(params, inputs)):
          logp = np.log(np.maximum(probs, np.finfo(np.float32).tiny))  # log 0 would make the resize's sums NaN
          total[i] = total[i] + resize_scores(logp[:, ::-1] if mirror else logp, images[i].shape[:2])
    return total


def restore(workdir: str, which: str, cfg: ml_collections.ConfigDict, info, mesh):
  """(Predictor, variables replicated over `mesh`: the parameters, with a BatchNorm network's running statistics
  `checkpoint.eval_variables`) of a workdir's `which` checkpoint ('best' or 'latest'), with the network, tiles and
  chunking of `cfg`; the network is the one the parameters hold (front end alone, or with the context module), and a
  layer of another shape than cfg's is one line naming it."""
  variables = checkpoint.load_variables(workdir, which)
  params = variables['params']
  weights.check_params(params, cfg.model, workdir)
  predictor = Predictor(cfg.model, info, cfg.eval.tile, mesh, with_context='context_module' in params,
                        tiles_per_device=cfg.eval.tiles_per_device, crf='crf' in params)
  return predictor, jax.device_put(checkpoint.eval_variables(variables), sharding.replicated(mesh))


IN_FLIGHT = 2


def evaluate(predictor: Predictor, params, source, info, batch_size: int, workers: int = 0, stop=None,
             boundary_width: int = 0, crf: dense_crf.DenseCRFParams | None = None, scales=None,
             flip: bool = False) -> dict | None:
  """Confusion matrix, per-class IoU, mIoU and pixel accuracy of `params` on every image of `source`; with
  `boundary_width` > 0 the same within that many pixels of label edges ('boundary_iou', 'boundary_miou'); with `crf`
  the dense CRF's labels instead of the network's (section 5's "+ CRF"). With `scales` (a tuple, (1.0,) included)
  and `flip`, the labels are the argmax of `Predictor.multiscale_log_probabilities` (fyu/drn's --ms), on the host;
  scales=None is the single-scale test on the devices.

  Batches of `batch_size` images in dataset order (the last filled up with blank images whose labels are all void)
  are read, decoded and tiled by `workers` processes (0: a thread here) while the devices run the previous ones; the
  CRF runs in `workers` processes of its own, on the probabilities on the host. `stop()` is asked between batches:
  when it is true (a SIGTERM) the evaluation is abandoned and None returned, so that a preempted run exits within a
  batch, not after a whole validation set.
  """
  if isinstance(boundary_width, bool) or not isinstance(boundary_width, int) or boundary_width < 0:
    raise InputError(f'eval.boundary_width: expected a whole number of pixels >= 0, got {boundary_width!r}')
  batch_size = math.ceil(batch_size / predictor.mesh.size) * predictor.mesh.size
  confusion = 0  # summed where the parts are: on device (the network's), on the host (the CRF's)
  done = progress.Progress('evaluation' + (' + CRF' if crf else ''), len(source), main=jax.process_index() == 0)
  if scales is not None:
    scales, flip = check_test_time(scales, flip)
    if crf:
      raise InputError('eval.scales: multi-scale or flip testing with the dense CRF is not supported; evaluate one '
                       'or the other')
  run = _crf_confusions if crf else _network_confusions
  if scales is not None:
    run = functools.partial(_multiscale_confusions, scales=scales, flip=flip)
  parts = run(predictor, params, source, info.num_classes, batch_size, workers, boundary_width, crf)
  seen = 0
  # Batches dispatched to the devices and not yet finished: at most IN_FLIGHT, so that the progress counts finished
  # images and the host does not queue the whole split's tiles on the devices ahead of them.
  in_flight = collections.deque()
  try:
    for images, part in parts:
      if stop is not None and stop():
        logging.warning('evaluation abandoned after %d of %d images (SIGTERM)', seen, len(source))
        return None
      confusion = confusion + part
      seen += images
      in_flight.append((images, confusion))
      while len(in_flight) > IN_FLIGHT:
        _finish(in_flight, done)
    while in_flight:
      _finish(in_flight, done)
  finally:
    parts.close()  # the worker processes, also when a record fails
  sets = 2 if boundary_width > 0 else 1
  confusion = np.asarray(jax.device_get(confusion)) + np.zeros((sets, info.num_classes, info.num_classes), np.int64)
  if crf or scales is not None:  # each process counted its own rows
    confusion = np.asarray(multihost_utils.process_allgather(confusion)).reshape((-1,) + confusion.shape).sum(0)
  result = metrics.scores(confusion[0])
  out = {'miou': result['miou'], 'pixel_accuracy': result['pixel_accuracy'], 'iou': _named(info.class_names, result),
         'confusion': confusion[0].tolist(), 'num_images': len(source)}
  if boundary_width > 0:
    boundary = metrics.scores(confusion[1])
    out.update(boundary_width=boundary_width, boundary_miou=boundary['miou'],
               boundary_iou=_named(info.class_names, boundary))
  if info.categories:  # Cityscapes: category IoU (Table 8)
    categories = metrics.scores(metrics.category_confusion(confusion[0], info.class_names, info.categories))
    out.update(category_iou=_named([c for c, _ in info.categories], categories), category_miou=categories['miou'])
  if crf:
    out['crf'] = crf.to_dict()
  out.update(scales=list(scales or (1.0,)), flip=bool(scales is not None and flip))
  return out


def _finish(in_flight, done):
  images, confusion = in_flight.popleft()
  jax.block_until_ready(confusion)
  done.update(images)


def _network_confusions(predictor, params, source, num_classes, batch_size, workers, boundary_width, crf):
  """(images, (K, C, C) confusions on device) of each batch: tiles and labels from worker processes, argmax on
  device."""
  del crf
  read = tiling.TiledBatches(source, predictor.tiling, batch_size, sharding.process_rows(batch_size),
                             boundary_width=boundary_width, rgb=predictor.crf is not None)
  batches = pipeline.ordered_map(read, range(len(read)), workers)
  try:
    for b, local in enumerate(batches):
      grid = tuple(int(g) for g in local.pop('grid'))
      yield min(batch_size, len(source) - b * batch_size), predictor.confusion(params, grid, local, num_classes)
  finally:
    batches.close()


def _crf_confusions(predictor, params, source, num_classes, batch_size, workers, boundary_width, crf):
  """(1, (K, C, C) confusions) of each image of this process's rows after the dense CRF: the network's
  full-resolution probabilities and the RGB image go to `workers` CRF processes (one pool for the whole split),
  the labels come back."""
  rows = sharding.process_rows(batch_size)
  labels = collections.deque()  # those of the images whose CRF is in flight, in order

  def tasks():
    for b in range(math.ceil(len(source) / batch_size)):
      pairs = [source[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(source)))]
      images = [p[0] for p in pairs] + [np.zeros_like(pairs[0][0])] * (batch_size - len(pairs))
      probs = predictor.probabilities(params, images)  # every process takes part, rows or not
      for j in range(batch_size)[rows]:
        if j < len(pairs):
          labels.append(pairs[j][1])
          yield probs[j], images[j], crf

  refined = dense_crf.ordered_map(dense_crf.refine_labels, tasks(), workers)
  try:
    for pred in refined:
      label = labels.popleft()
      sets = [label] + ([tiling.boundary_labels(label, boundary_width)] if boundary_width > 0 else [])
      yield 1, np.stack([metrics.confusion_matrix(s, pred, num_classes) for s in sets])
  finally:
    refined.close()


def _multiscale_confusions(predictor, params, source, num_classes, batch_size, workers, boundary_width, crf, scales,
                           flip):
  """(images, (K, C, C) confusions) of each batch's rows of this process, labelled by the argmax of the summed
  log-probabilities over `scales` (and flip); images read here (`workers` is not used: the host's time goes to the
  resizing), every process running every batch."""
  del workers, crf
  rows = sharding.process_rows(batch_size)
  for b in range(math.ceil(len(source) / batch_size)):
    pairs = [source[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(source)))]
    images = [p[0] for p in pairs] + [np.zeros_like(pairs[0][0])] * (batch_size - len(pairs))
    summed = predictor.multiscale_log_probabilities(params, images, scales, flip)
    confusion = 0
    for j in range(batch_size)[rows]:
      if j < len(pairs):
        label, pred = pairs[j][1], summed[j].argmax(-1)
        sets = [label] + ([tiling.boundary_labels(label, boundary_width)] if boundary_width > 0 else [])
        confusion = confusion + np.stack([metrics.confusion_matrix(s, pred, num_classes) for s in sets])
    yield len(pairs), confusion


def _named(names, result) -> dict:
  return dict(zip(names, [None if np.isnan(v) else float(v) for v in result['iou']]))


def report(result: dict, info, title: str) -> str:
  """The IoU table of an evaluation result, as Markdown."""
  iou = np.array([np.nan if result['iou'][n] is None else result['iou'][n] for n in info.class_names])
  return metrics.iou_table(info.class_names, iou, title)
