"""The numpy half of the authors' test-time tiling (fyu/dilation test.py, test_image): images cut into the network's
input tiles, labels padded to the tile grid, and batches of a dataset read and tiled by grain's worker processes.

Nothing here imports JAX: grain's worker processes unpickle `Tiling` and `TiledBatches` and run them.
"""

import math

import numpy as np

from dilated_jax.data import pipeline
from dilated_jax.data.info import IGNORE_LABEL


def boundary_band(label: np.ndarray, width: int) -> np.ndarray:
  """(H, W) bool: the pixels within `width` pixels (the square window of side 2 width + 1) of a label edge, a pixel
  whose 4-neighbour has another label (void included: VOC outlines its objects with void). The band of the trimap
  measure (Kohli et al., IJCV 2009; DeepLab, arXiv 1412.7062 section 4.2), where a x8 upsampling blurs and a CRF
  sharpens. The image's border is not an edge."""
  label = np.asarray(label)
  edge = np.zeros(label.shape, bool)
  rows, cols = label[1:] != label[:-1], label[:, 1:] != label[:, :-1]
  edge[1:] |= rows
  edge[:-1] |= rows
  edge[:, 1:] |= cols
  edge[:, :-1] |= cols
  for axis in (0, 1):  # a square dilation as two running maxima
    padded = np.pad(edge, [(width, width) if a == axis else (0, 0) for a in (0, 1)])
    edge = np.lib.stride_tricks.sliding_window_view(padded, 2 * width + 1, axis=axis).any(-1)
  return edge


def boundary_labels(label: np.ndarray, width: int) -> np.ndarray:
  """The label with every pixel outside `boundary_band` void: its confusion matrix is the boundary measure's."""
  return np.where(boundary_band(label, width), label, IGNORE_LABEL).astype(label.dtype)


class Tiling:
  """Cuts an image, BGR minus the mean and reflect-padded by the margin, into tiles whose outputs are `tile` pixels
  and do not overlap; short tiles at the bottom and right are reflect-padded."""

  def __init__(self, tile, margin: int, stride: int, mean_bgr, label_offset: int = 0):
    self.tile, self.margin, self.stride = tuple(int(t) for t in tile), int(margin), int(stride)
    self.label_offset = int(label_offset)  # the pixel of a cell's block that supervises it: `models.label_offset`
    self.mean_bgr = tuple(float(m) for m in mean_bgr)

  def grid(self, hw) -> tuple[int, int]:
    return math.ceil(hw[0] / self.tile[0]), math.ceil(hw[1] / self.tile[1])

  def tiles(self, image_rgb, grid) -> np.ndarray:
    """(nh * nw, tile_h + 2 margin, tile_w + 2 margin, 3) network inputs of one image."""
    (th, tw), m = self.tile, self.margin
    x = pipeline.to_network_input(image_rgb, self.mean_bgr)
    # As the authors' predict.py / test.py: reflect by the margin, cut, and reflect a short tile about its own
    # bottom and right edges. One np.pad to the grid's size would reflect about the image's edge instead: other
    # pixels beyond the margin, which the last cells and (through the context module) the whole tile see.
    x = np.pad(x, ((m, m), (m, m), (0, 0)), mode='reflect')
    size = (th + 2 * m, tw + 2 * m)
    tiles = []
    for i in range(grid[0]):
      for j in range(grid[1]):
        t = x[i * th:i * th + size[0], j * tw:j * tw + size[1]]
        if t.shape[0] < 2 or t.shape[1] < 2:  # past this image, in a batch's larger grid: cropped away
          t = np.zeros(size + (3,), x.dtype)
        tiles.append(np.pad(t, ((0, size[0] - t.shape[0]), (0, size[1] - t.shape[1]), (0, 0)), mode='reflect'))
    return np.stack(tiles)

  def batch(self, images, labels=None, rows=slice(None), boundary_width: int = 0, rgb: bool = False):
    """(grid, arrays) of a batch: the tiles of images[rows] on the grid of the whole batch (every image's fits) and
    their labels padded to that grid with IGNORE_LABEL; with `boundary_width` > 0 also 'boundary_labels', the labels
    void outside each image's own `boundary_band` (taken before the padding, whose edge is not a label edge); with
    `rgb` the images themselves, zero-padded to the grid, and their 'sizes' (what a CRF layer refines on)."""
    grid = tuple(max(g) for g in zip(*(self.grid(im.shape[:2]) for im in images)))
    mine = range(len(images))[rows]
    out = {'tiles': np.concatenate([self.tiles(images[j], grid) for j in mine])}
    if rgb:
      out['rgb'] = np.zeros((len(mine), grid[0] * self.tile[0], grid[1] * self.tile[1], 3), np.uint8)
      for r, j in zip(out['rgb'], mine):
        r[:images[j].shape[0], :images[j].shape[1]] = images[j]
      out['sizes'] = np.array([images[j].shape[:2] for j in mine], np.int32).reshape(-1, 2)
    if labels is not None:
      out['labels'] = self._padded([labels[j] for j in mine], grid)
      if boundary_width > 0:
        out['boundary_labels'] = self._padded([boundary_labels(labels[j], boundary_width) for j in mine], grid)
    return grid, out

  def _padded(self, labels, grid) -> np.ndarray:
    padded = np.full((len(labels), grid[0] * self.tile[0], grid[1] * self.tile[1]), IGNORE_LABEL, np.int32)
    for p, label in zip(padded, labels):
      p[:label.shape[0], :label.shape[1]] = label
    return padded

  def cells(self, grid) -> tuple[int, int]:
    """The size of the stitched score map of a tile grid."""
    return grid[0] * self.tile[0] // self.stride, grid[1] * self.tile[1] // self.stride


class TiledBatches:
  """Batch b -> this process's rows of batch b of `source` (records b * size ..), read, decoded and tiled.

  The last batch is filled up with blank images of its first image's size whose labels are all void. Every process
  reads the whole batch, since the tile grid is the largest of all its images, and tiles only its `rows`.
  `labels`: 'pixels' (full resolution, padded to the grid: evaluation), 'cells' (the pixel at stride s of each score
  cell, IGNORE_LABEL past the image, with each image's own grid: the score cache; records are then checked by
  `pipeline.read_record`) or None.
  """

  def __init__(self, source, tiling: Tiling, batch_size: int, rows: slice, labels: str | None = 'pixels',
               num_classes: int | None = None, boundary_width: int = 0, rgb: bool = False):
    if labels not in ('pixels', 'cells', None):
      raise ValueError(f"labels: expected 'pixels', 'cells' or None, got {labels!r}")
    self.source, self.tiling, self.batch_size, self.rows = source, tiling, batch_size, rows
    self.labels, self.num_classes, self.boundary_width, self.rgb = labels, num_classes, boundary_width, rgb

  def __len__(self):
    return math.ceil(len(self.source) / self.batch_size)

  def __call__(self, b: int) -> dict:
    ids = range(b * self.batch_size, min((b + 1) * self.batch_size, len(self.source)))
    if self.num_classes is None:
      pairs = [self.source[i] for i in ids]
    else:
      pairs = [pipeline.read_record(self.source, i, self.num_classes) for i in ids]
    blank = (np.zeros_like(pairs[0][0]), np.full_like(pairs[0][1], IGNORE_LABEL))
    pairs += [blank] * (self.batch_size - len(pairs))
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    grid, out = self.tiling.batch(images, labels if self.labels == 'pixels' else None, self.rows,
                                  self.boundary_width, self.rgb)
    out['grid'] = np.array(grid)
    if self.labels == 'cells':
      mine = range(len(images))[self.rows]
      grids = np.array([self.tiling.grid(images[j].shape[:2]) for j in mine]).reshape(-1, 2)
      size = self.tiling.cells(grid)
      cells = np.full((len(mine),) + size, IGNORE_LABEL, np.uint8)
      for c, g, j in zip(cells, grids, mine):
        own = self.tiling.cells(g)
        c[:own[0], :own[1]] = pipeline.label_slice(labels[j], self.tiling.label_offset, self.tiling.stride, own)
      out.update(cells=cells, grids=grids)
    return out
