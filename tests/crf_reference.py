"""Brute-force dense mean field in numpy, written from the definitions, as the reference for the CRF tests.

Krähenbühl & Koltun 2011 eq. 3 kernels over all N^2 pixel pairs (self pair included, as their code's lattice
includes it), each normalised symmetrically, D^-1/2 K D^-1/2 with D = K 1 (their code's default); the CRF-RNN update
(Zheng et al. 2015, Algorithm 1): S = U - mu (sum_m w_m K~_m Q), Q = softmax(S), starting from Q = softmax(U).
"""

import numpy as np


def kernels(image: np.ndarray, theta_alpha: float, theta_beta: float, theta_gamma: float, window: int | None = None):
  """(spatial, bilateral) symmetric-normalised N x N kernels of an (H, W, 3) image, float64; with `window`, the
  bilateral kernel only between pixels at most window // 2 apart in rows and in columns."""
  h, w, _ = image.shape
  yx = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'), -1).reshape(-1, 2).astype(np.float64)
  rgb = image.reshape(-1, 3).astype(np.float64)
  d_pos = ((yx[:, None] - yx[None]) ** 2).sum(-1)
  d_rgb = ((rgb[:, None] - rgb[None]) ** 2).sum(-1)
  spatial = np.exp(-d_pos / (2 * theta_gamma ** 2))
  bilateral = np.exp(-d_pos / (2 * theta_alpha ** 2) - d_rgb / (2 * theta_beta ** 2))
  if window is not None:
    bilateral *= (np.abs(yx[:, None] - yx[None]) <= window // 2).all(-1)

  def normalised(k):
    d = k.sum(1)
    return k / np.sqrt(d[:, None] * d[None, :])

  return normalised(spatial), normalised(bilateral)


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def mean_field(unaries: np.ndarray, image: np.ndarray, theta_alpha: float, theta_beta: float, theta_gamma: float,
               w_spatial: float, w_bilateral: float, iterations: int, compatibility=None, window=None) -> np.ndarray:
  """The scores S (H, W, C) after `iterations` updates; compatibility (C, C) defaults to Potts, [l != l']."""
  h, w, c = unaries.shape
  u = unaries.reshape(-1, c).astype(np.float64)
  mu = 1 - np.eye(c) if compatibility is None else np.asarray(compatibility, np.float64)
  k_spatial, k_bilateral = kernels(image, theta_alpha, theta_beta, theta_gamma, window)
  s = u
  for _ in range(iterations):
    q = softmax(s)
    message = w_spatial * k_spatial @ q + w_bilateral * k_bilateral @ q
    s = u - message @ mu.T  # S_i(l) = U_i(l) - sum_l' mu(l, l') message_i(l')
  return s.reshape(h, w, c)


def scene(h: int, w: int, c: int, seed: int = 0):
  """A small image of four flat regions plus noise, its region map, and noisy probabilities that favour it."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  regions = ((yy > 0.4 * h).astype(int) + 2 * (xx > 0.6 * w)) % c
  image = np.clip(rng.integers(0, 256, (c, 3))[regions] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
  probs = softmax(1.5 * np.eye(c)[regions] + rng.normal(0, 1, (h, w, c))).astype(np.float32)
  return image, probs, regions
