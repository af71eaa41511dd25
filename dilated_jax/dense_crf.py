"""Dense-CRF post-processing: Krähenbühl & Koltun's fully connected CRF with Gaussian edge potentials (NIPS 2011),
mean-field inference by their permutohedral-lattice code (pydensecrf2), on the network's full-resolution softmax.

The energy is E(x) = sum_i psi_u(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j), with psi_u = -log P(x_i) the network's
probabilities, Potts mu = [x_i != x_j] and two kernels (Krähenbühl & Koltun eq. 3):

  k(f_i, f_j) = w_bilateral exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)
              + w_spatial exp(-|p_i - p_j|^2 / 2 theta_gamma^2)

with p the pixel position and I its RGB colour, 0-255. The paper grid-searches the parameters on validation
images (arXiv 1511.07122 section 5; `crf_search`). Images run in spawned worker processes; nothing here imports
JAX (a worker still imports the entry point's module, as every spawned process does).
"""

import collections
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

from dilated_jax import InputError
from dilated_jax.data import pipeline

WIDTHS = ('theta_alpha', 'theta_beta', 'theta_gamma')
WEIGHTS = ('w_bilateral', 'w_spatial')


@dataclasses.dataclass(frozen=True)
class DenseCRFParams:
  """The CRF's kernel widths (pixels; theta_beta in 0-255 RGB levels), kernel weights and mean-field iterations.

  Defaults: DeepLab-LargeFOV's, cross-validated on VOC 2012 val for a VGG-16 network with dilated layers like the
  front end (Chen et al., ICLR 2015, arXiv 1412.7062 section 4.1: w_spatial = theta_gamma = 3 fixed, 10 iterations,
  the rest searched; their released values w_bilateral 4, theta_alpha 121, theta_beta 5).
  """

  theta_alpha: float = 121.0  # bilateral kernel: position
  theta_beta: float = 5.0  # bilateral kernel: colour
  theta_gamma: float = 3.0  # spatial (smoothness) kernel
  w_bilateral: float = 4.0
  w_spatial: float = 3.0
  iterations: int = 10

  def __post_init__(self):
    check_kernels(self, 'crf')
    if isinstance(self.iterations, bool) or not isinstance(self.iterations, (int, np.integer)) or self.iterations < 1:
      raise InputError(f'crf.iterations: expected a whole number of iterations >= 1, got {self.iterations!r}')

  @classmethod
  def from_dict(cls, values: dict) -> 'DenseCRFParams':
    """From a mapping of some of the fields (a config block, a JSON object); an unknown key is an error."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
      raise InputError(f'crf.{unknown[0]}: not a CRF parameter; expected some of {names}')
    return cls(**values)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def check_kernels(params, where: str):
  """Widths > 0 and weights >= 0 (a negative weight would reward label changes at edges), each named on error."""
  for name in WIDTHS + WEIGHTS:
    value = getattr(params, name)
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and np.isfinite(value)
    if name in WIDTHS and not (ok and value > 0):
      raise InputError(f'{where}.{name}: expected a kernel width > 0, got {value!r}')
    if name in WEIGHTS and not (ok and value >= 0):
      raise InputError(f'{where}.{name}: expected a kernel weight >= 0, got {value!r}')


def check_pair(probs: np.ndarray, image: np.ndarray):
  """(H, W, C) probabilities and the (H, W, 3) 0-255 RGB image they were computed from."""
  if probs.ndim != 3 or image.shape != probs.shape[:2] + (3,):
    raise InputError(f'dense CRF: expected (H, W, C) probabilities and the (H, W, 3) RGB image, got {probs.shape} '
                     f'and {image.shape}')
  if image.dtype != np.uint8:
    raise InputError(f'dense CRF: expected the original uint8 0-255 RGB image, got {image.dtype}')


def refine(probs: np.ndarray, image: np.ndarray, params: DenseCRFParams) -> np.ndarray:
  """Mean-field marginals Q (H, W, C) float32 of the dense CRF whose unaries are -log probs."""
  check_pair(probs, image)
  dcrf = library()
  h, w, c = probs.shape
  crf = dcrf.DenseCRF2D(w, h, c)
  # -log P, with P floored at float32's smallest normal number: an underflowed 0 would be an infinite energy.
  p = np.maximum(probs.reshape(h * w, c).T, np.finfo(np.float32).tiny)
  crf.setUnaryEnergy(np.ascontiguousarray(-np.log(p), np.float32))
  # A number as compat is the Potts model (the library's PottsCompatibility(w): messages -w Q, i.e. mu = w [l != l']
  # up to a per-pixel constant that the softmax ignores). Kernels are normalised symmetrically, the library default.
  crf.addPairwiseGaussian(sxy=params.theta_gamma, compat=params.w_spatial)
  crf.addPairwiseBilateral(sxy=params.theta_alpha, srgb=params.theta_beta, rgbim=np.ascontiguousarray(image),
                           compat=params.w_bilateral)
  q = np.asarray(crf.inference(params.iterations), np.float32)
  return q.T.reshape(h, w, c)


def library():
  """pydensecrf2 is the `crf` extra (a C++ build at install; docs/decisions.md): imported where it is used."""
  try:
    import pydensecrf.densecrf as dcrf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise InputError(f"dense CRF: pydensecrf2 is not installed ({e}); pip install 'dilated-jax[crf]'") from None
  return dcrf


def refine_labels(probs: np.ndarray, image: np.ndarray, params: DenseCRFParams) -> np.ndarray:
  """The CRF's labels (H, W) uint8: what evaluation needs, 1/C of the marginals' bytes back from a worker."""
  return refine(probs, image, params).argmax(-1).astype(np.uint8)


def refine_all(pairs: Iterable[tuple[np.ndarray, np.ndarray]], params: DenseCRFParams, workers: int = -1,
               labels: bool = False) -> Iterator[np.ndarray]:
  """`refine` (or `refine_labels`) of each (probs, image) pair, in order, over `workers` processes (-1: one per
  core, 0: in this process)."""
  fn = refine_labels if labels else refine
  return ordered_map(fn, ((probs, image, params) for probs, image in pairs), workers)


def ordered_map(fn: Callable, args: Iterable[tuple], workers: int) -> Iterator:
  """fn(*a) for each a in args, in order, in `workers` spawned processes (0: here), with at most two tasks per
  worker in flight, so a long input (a validation split of score maps) is never all in memory at once."""
  workers = pipeline.resolve_workers(workers)  # -1: one per core, as the input pipeline's data.workers
  if workers == 0:
    yield from (fn(*a) for a in args)
    return
  # spawn, not fork: the parent holds JAX's threads, and a forked copy of a multithreaded process can deadlock.
  with multiprocessing.get_context('spawn').Pool(workers, initializer=_worker_init) as pool:
    pending = collections.deque()
    for a in args:
      pending.append(pool.apply_async(fn, a))
      if len(pending) >= 2 * workers:
        yield pending.popleft().get()
    while pending:
      yield pending.popleft().get()


def _worker_init():
  """Ctrl-C is the parent's to handle (it terminates the pool); a worker whose parent was killed exits (a Pool's
  worker holds both ends of its task queue, so it would otherwise wait forever)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  parent = multiprocessing.parent_process()

  def watch():
    multiprocessing.connection.wait([parent.sentinel])
    os._exit(0)

  threading.Thread(target=watch, daemon=True).start()
