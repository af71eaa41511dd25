"""The front end's scores of every training image, computed once for the context stage, which is trained on them
(arXiv 1511.07122, section 5; fyu/dilation test.py --bin), and read back one image at a time.

On disk, `FRONT_END_WORKDIR/features/train_<hash>/` holds two .npy files: `scores.npy`, float32 (N, h, w, C), and
`labels.npy`, uint8 (N, h, w) with IGNORE_LABEL (255) for void. They are written one image after another and read
by offset, one image at a time, never whole: Cityscapes' cache is 7.4 GB.

Grain's worker processes unpickle `ScoreCache` from this module, so JAX is imported only where scores are computed.
"""

import hashlib
import json
import os
import shutil
import socket
import time

from absl import logging
import numpy as np

from dilated_jax import InputError, progress
from dilated_jax.data import pipeline, tiling
from dilated_jax.data.info import IGNORE_LABEL

SCORES, LABELS = 'scores.npy', 'labels.npy'
_DTYPES = {SCORES: np.dtype('<f4'), LABELS: np.dtype('u1')}


def npy_header(path: str, dtype: np.dtype, ndim: int) -> tuple[tuple[int, ...], int]:
  """(shape, offset of the data) of a C-order .npy of `dtype` and `ndim` dimensions whose size is exactly its header
  plus its data: a damaged, truncated or foreign file is a ValueError naming it, before any of its data is read."""
  try:
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
      if read is None:
        raise InputError(f'.npy format version {version}, expected 1.0 or 2.0')
      # numpy reads the header's announced length before it checks it: a few bytes could ask for gigabytes.
      length = int.from_bytes(f.read(2 if version == (1, 0) else 4), 'little')
      if length > 10_000:
        raise InputError(f'a header of {length} bytes announced, expected at most 10000')
      f.seek(-(2 if version == (1, 0) else 4), os.SEEK_CUR)
      shape, fortran, found = read(f)  # parsed as literals only
      offset = f.tell()
  except (ValueError, SyntaxError, EOFError) as e:
    raise InputError(f'{path}: not a readable .npy file ({str(e).splitlines()[0] if str(e) else type(e).__name__})')
  if found != dtype or fortran or len(shape) != ndim or any(n < 0 for n in shape):
    raise InputError(f'{path}: expected a C-order {dtype} array of {ndim} dimensions, found '
                     f'{"a Fortran-order" if fortran else "a"} {found} array of shape {shape}')
  expected = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
  size = os.path.getsize(path)
  if size != expected:
    raise InputError(f'{path}: {size} bytes, but its header ({"x".join(map(str, shape))} {found}) needs {expected}; '
                     f'the file is {"truncated" if size < expected else "longer than its array"}')
  return tuple(shape), offset


class ScoreCache:
  """`len()` images; `[i]` -> (float32 scores (h, w, C), uint8 labels (h, w) at stride s, IGNORE_LABEL past the
  image), read from the cache folder `path` by offset.

  Pickles its path only: each process (grain's workers) opens the files itself, on first use. Rows are read with
  os.preadv rather than from a memory map: the pages of a map that a process has touched count in its resident
  memory until the kernel reclaims them, so an epoch over a mapped 7.4 GB cache shows as ~7 GB resident (measured:
  978 MB resident after reading every row of a 1 GB mapped file, 31 MB by offset); read by offset they stay in the
  page cache, outside the process.
  """

  def __init__(self, path: str):
    self.path = path
    self._open()  # checked now, in the process that makes it

  def __getstate__(self):
    return {'path': self.path}

  def __setstate__(self, state):
    self.path, self._fds = state['path'], None

  def _open(self):
    shapes, offsets = {}, {}
    for name, ndim in ((SCORES, 4), (LABELS, 3)):
      shapes[name], offsets[name] = npy_header(os.path.join(self.path, name), _DTYPES[name], ndim)
    if shapes[LABELS] != shapes[SCORES][:3]:
      raise InputError(f'{os.path.join(self.path, LABELS)}: labels of shape {shapes[LABELS]} do not match the scores '
                       f'{shapes[SCORES]} beside them')
    self.shape, self._offsets = shapes[SCORES], offsets
    fds = {}
    try:
      for name in (SCORES, LABELS):
        fds[name] = os.open(os.path.join(self.path, name), os.O_RDONLY)
    except OSError:
      for fd in fds.values():
        os.close(fd)
      raise
    self._fds = fds

  def close(self, _close=os.close):  # bound here: at the interpreter's exit, `os` may be gone before __del__ runs
    for fd in (getattr(self, '_fds', None) or {}).values():
      _close(fd)
    self._fds = None

  __del__ = close

  def __len__(self):
    if self._fds is None:
      self._open()
    return self.shape[0]

  def __getitem__(self, i: int):
    if self._fds is None:
      self._open()
    n, h, w, c = self.shape
    if not 0 <= i < n:
      raise IndexError(f'{self.path}: image {i} of a cache of {n}')
    scores, labels = np.empty((h, w, c), _DTYPES[SCORES]), np.empty((h, w), _DTYPES[LABELS])
    for name, out in ((SCORES, scores), (LABELS, labels)):
      got = os.preadv(self._fds[name], [out], self._offsets[name] + i * out.nbytes)
      if got != out.nbytes:  # shortened since it was checked
        raise InputError(f'{os.path.join(self.path, name)}: image {i} ends past the end of the file (truncated)')
    return scores, labels


class CacheWriter:
  """Writes a cache folder one image at a time: each .npy's header first, then the images' rows appended."""

  def __init__(self, path: str, shape: tuple[int, int, int, int]):
    self.path, self.shape, self.count = path, tuple(int(n) for n in shape), 0
    os.makedirs(path)
    self.files = {}
    for name, dims in ((SCORES, self.shape), (LABELS, self.shape[:3])):
      f = self.files[name] = open(os.path.join(path, name), 'wb')
      header = {'descr': np.lib.format.dtype_to_descr(_DTYPES[name]), 'fortran_order': False, 'shape': dims}
      np.lib.format.write_array_header_1_0(f, header)

  def append(self, scores: np.ndarray, labels: np.ndarray):
    if self.count == self.shape[0]:
      raise InputError(f'{self.path}: all {self.shape[0]} images already written')
    if scores.shape != self.shape[1:] or labels.shape != self.shape[1:3]:
      raise InputError(f'{self.path}: image {self.count} has scores {scores.shape} and labels {labels.shape}, '
                       f'expected {self.shape[1:]} and {self.shape[1:3]}')
    self.files[SCORES].write(np.ascontiguousarray(scores, _DTYPES[SCORES]).data)
    self.files[LABELS].write(np.ascontiguousarray(labels, _DTYPES[LABELS]).data)
    self.count += 1

  def close(self):
    """Flushes to disk: a cache is renamed into place only once it is whole, also after a power cut."""
    if self.count != self.shape[0]:
      raise InputError(f'{self.path}: {self.count} of {self.shape[0]} images written')
    for f in self.files.values():
      f.flush()
      os.fsync(f.fileno())
      f.close()

  def abort(self):
    for f in self.files.values():
      f.close()


def cache_path(folder: str, tiling, front_end_params, data_cfg, source) -> str:
  """`folder/features/train_<hash>`: a hash of the front end's parameters, the data settings, the tile and the
  prepared split's files (`Split.identity`: names, sizes, modification times), so that every context run from one
  front end shares the cache, and a changed front end or a dataset prepared again never reads a stale one. Labels
  read at an offset (`tiling.label_offset`, the deconvolution presets) make another cache."""
  import jax  # here: see the module's docstring

  settings = json.loads(data_cfg.to_json())
  settings.pop('workers', None)  # how many processes read the data does not change a score
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + repr(tuple(tiling.tile)).encode()
                          + (f' label offset {tiling.label_offset}'.encode() if tiling.label_offset else b'')
                          + repr(getattr(source, 'identity', None)).encode())  # synthetic: its config says it all
  for leaf in jax.tree.leaves(front_end_params):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return os.path.join(folder, 'features', f'train_{digest.hexdigest()[:16]}')


def cached_scores(folder, source, predictor, front_end_params, data_cfg, workers: int = 0,
                  batch_size: int = 8) -> ScoreCache:
  """The front end's score maps of every training image and their labels at stride s, computed once.

  Scores come from the test-time tiling (as the authors' test.py --bin), `batch_size` images at a time, read and
  tiled by `workers` processes; the label of cell i is pixel s * i of the image, IGNORE_LABEL beyond it. With several
  processes, all compute (the parameters are global arrays), process 0 writes, and all then read the cache.
  """
  import jax  # here: see the module's docstring
  from jax.experimental import multihost_utils

  path = cache_path(folder, predictor.tiling, front_end_params, data_cfg, source)
  main = jax.process_index() == 0
  usable = _usable(path) if main else False
  if jax.process_count() > 1:  # every process must compute, or none: process 0 decides
    usable = bool(multihost_utils.broadcast_one_to_all(np.int32(usable)))
  if not usable:
    tmp = f'{path}.{socket.gethostname()}.{os.getpid()}.tmp'  # context runs from one front end may race: see below
    if main:
      _remove_stale_tmp(path)
    try:
      _compute(tmp if main else None, source, predictor, front_end_params, workers, batch_size)
      if main:
        try:
          os.rename(tmp, path)
        except OSError:  # another run finished first (a folder is renamed only onto an empty one): use its cache
          if not os.path.isdir(path):
            raise
          logging.info('%s was written by another run meanwhile; using it', path)
          shutil.rmtree(tmp)
    except BaseException:
      if main:
        shutil.rmtree(tmp, ignore_errors=True)
      raise
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('score cache written')
  return ScoreCache(path)


def _usable(path: str) -> bool:
  """Whether the cache folder `path` exists and reads back; a damaged one is set aside to be computed again."""
  if not os.path.exists(path):
    return False
  try:
    ScoreCache(path).close()
    return True
  except (ValueError, OSError) as e:
    # A cache is a function of the front end and the data, so computing it again gives what it should hold; stopping
    # would only make the user delete it by hand. It is moved, not deleted, for whoever wants to see what broke it.
    aside = f'{path}.corrupt.{time.strftime("%Y%m%d-%H%M%S")}.{os.getpid()}'
    logging.warning('%s; the cache is moved to %s and computed again', e, aside)
    try:
      os.rename(path, aside)
    except FileNotFoundError:  # another run moved it first
      pass
    return False


def _remove_stale_tmp(path: str):
  """Removes what runs of this host killed while writing this cache left (their process is gone)."""
  folder, name = os.path.split(path)
  prefix = f'{name}.{socket.gethostname()}.'
  for entry in os.listdir(folder) if os.path.isdir(folder) else ():
    pid = entry[len(prefix):-len('.tmp')]
    if entry.startswith(prefix) and entry.endswith('.tmp') and pid.isdigit() and not _alive(int(pid)):
      logging.info('removing %s, left by a run killed while writing it', os.path.join(folder, entry))
      shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's
    return True
  return True


def _compute(tmp, source, predictor, front_end_params, workers: int, batch_size: int):
  """Writes the cache into the new folder `tmp` (None: compute without writing, as the other processes do)."""
  import jax  # here: see the module's docstring
  from jax.experimental import multihost_utils

  from dilated_jax import sharding

  num_classes = predictor.model.front_end.num_classes
  if not len(source):
    raise InputError(f'stage context: {getattr(source, "name", "the training set")} has no images')
  if num_classes >= IGNORE_LABEL:
    raise InputError(f'model.num_classes: the score cache stores labels as uint8 with {IGNORE_LABEL} for void, '
                     f'so at most {IGNORE_LABEL - 1} classes, got {num_classes}')
  mesh, t = predictor.mesh, predictor.tiling
  batch_size = -(-batch_size // mesh.size) * mesh.size
  read = tiling.TiledBatches(source, t, batch_size, sharding.process_rows(batch_size), labels='cells',
                             num_classes=num_classes)
  logging.info('computing the front end scores of %d training images (once)', len(source))
  done = progress.Progress('front-end scores', len(source), main=jax.process_index() == 0)
  writer, size = None, None
  batches = pipeline.ordered_map(read, range(len(read)), workers)
  try:
    for b, local in enumerate(batches):
      grid = tuple(int(g) for g in local['grid'])
      tiles = sharding.global_batch(mesh, {'tiles': local['tiles']})['tiles']
      # Every process takes part in the call and the gathers; each then holds the whole batch.
      maps = np.asarray(multihost_utils.process_allgather(predictor.scores_fn(grid)(front_end_params, tiles),
                                                          tiled=True))
      cells = np.asarray(multihost_utils.process_allgather(local['cells'], tiled=True))
      grids = np.asarray(multihost_utils.process_allgather(local['grids'], tiled=True))
      for j in range(min(batch_size, len(source) - b * batch_size)):
        h, w = t.cells(grids[j])  # an image's own map: its batch's grid may be larger
        if size is None:
          size = (h, w)
        if (h, w) != size:
          raise InputError(f'stage context: every training image must give score maps of one size (the paper trains '
                           f'the context module on whole images); {pipeline.record_name(source, b * batch_size + j)} '
                           f'gives {h}x{w} cells, the first image {size[0]}x{size[1]}')
        if tmp is not None:
          if writer is None:
            writer = CacheWriter(tmp, (len(source), h, w, maps.shape[-1]))
          writer.append(maps[j, :h, :w], cells[j, :h, :w])
      done.update(min(batch_size, len(source) - b * batch_size))
  except BaseException:
    if writer is not None:
      writer.abort()
    raise
  finally:
    batches.close()  # the worker processes
  if writer is not None:
    writer.close()
