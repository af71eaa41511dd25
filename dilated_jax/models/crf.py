"""CRF-RNN (Zheng et al., ICCV 2015): mean-field inference in Krähenbühl & Koltun's dense CRF, unrolled as a
recurrent layer whose kernel weights and label compatibility are trained with the network.

Signs: U = -psi_u are the unary *scores* (the network's logits); the compatibility mu(l, l') is a penalty, Potts
[l != l'] at initialisation. Each step is Zheng et al.'s Algorithm 1:

  Q = softmax(S);  m = w_spatial K~_spatial Q + w_bilateral K~_bilateral Q;  S <- U - mu m,

starting from S = U; the layer returns the last S (scores: its softmax is Q_T, the loss takes it as logits).
K~ = D^-1/2 K D^-1/2, D = K 1, is each kernel normalised symmetrically, self pair included, as in Krähenbühl's code
(pydensecrf2's default), so the dense-CRF parameters of `dilated_jax.dense_crf` mean the same here.

The spatial kernel exp(-|p_i - p_j|^2 / 2 theta_gamma^2) is exact: separable, two dense 1-D Gaussian matrices at full
resolution. The bilateral kernel exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2) is
evaluated as ConvCRF does (Teichmann & Cipolla, arXiv 1805.04777): Q and the (position, colour) features averaged
over `downsample` x `downsample` cells, all pairs within a `window` x `window` of cells, the message upsampled
bilinearly. With downsample 1 and a window covering the image it is exact too. No custom ops, static shapes.

`valid` (B, H, W) marks the pixels that are the image's: a batch's images padded to one size send no messages from
their padding and leave it out of every normaliser D, so each image's field is the one of its own pixels (exactly
so for the spatial kernel and, at downsample 1, for the bilateral one).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dilated_jax import InputError
from dilated_jax.dense_crf import check_kernels

HIGHEST = jax.lax.Precision.HIGHEST  # float32 matmuls on TPU too (the default there rounds operands to bfloat16)


class MeanFieldCRF(nn.Module):
  """T mean-field steps on (B, H, W, C) unary scores and the (B, H, W, 3) 0-255 RGB image; returns the scores S_T.

  Kernel widths are fixed hyperparameters; w_spatial, w_bilateral (initial values of the learnt per-kernel weights)
  and theta_* default to CRF-RNN's (torrvision/crfasrnn, TVG_CRFRNN_new_deploy.prototxt; 5 iterations in training,
  10 at test, Zheng et al. section 6.1); window and downsample to ConvCRF's filter size 11 and blur 4.
  """

  theta_alpha: float = 160.0  # bilateral kernel: position, pixels
  theta_beta: float = 3.0  # bilateral kernel: colour, 0-255 levels
  theta_gamma: float = 3.0  # spatial kernel, pixels
  w_spatial: float = 3.0
  w_bilateral: float = 5.0
  window: int = 11  # odd side, in cells of the downsampled grid, of the bilateral kernel's window
  downsample: int = 4  # side in pixels of a cell of that grid
  train_iterations: int = 5
  test_iterations: int = 10

  @nn.compact
  def __call__(self, unaries, image, valid=None, train: bool = False):
    check_settings(self, unaries.shape, image.shape)
    num_classes = unaries.shape[-1]
    dtype = jnp.promote_types(unaries.dtype, jnp.float32)  # float32, or float64 under x64 (the gradient tests)
    w_spatial = self.param('spatial_weight', nn.initializers.constant(self.w_spatial), (), dtype)
    w_bilateral = self.param('bilateral_weight', nn.initializers.constant(self.w_bilateral), (), dtype)
    mu = self.param('compatibility', lambda _, shape, dt: 1 - jnp.eye(shape[0], dtype=dt), (num_classes,) * 2, dtype)
    u = unaries.astype(dtype)
    valid = jnp.ones(u.shape[:3], dtype) if valid is None else valid.astype(dtype)
    spatial = SpatialFilter(valid, self.theta_gamma)
    bilateral = BilateralFilter(image.astype(dtype), valid, self.theta_alpha, self.theta_beta, self.window,
                                self.downsample)

    def step(s, _):
      q = jax.nn.softmax(s, axis=-1)
      m = w_spatial * spatial(q) + w_bilateral * bilateral(q)
      return u - jnp.einsum('bhwk,lk->bhwl', m, mu, precision=HIGHEST), None

    iterations = self.train_iterations if train else self.test_iterations
    return jax.lax.scan(step, u, None, length=iterations)[0]


FIELDS = ('theta_alpha', 'theta_beta', 'theta_gamma', 'w_spatial', 'w_bilateral', 'window', 'downsample',
          'train_iterations', 'test_iterations')


def default_config() -> dict:
  """model.crf: the layer's settings, its defaults (the stages 'crf' and 'crf_joint' put the layer on a network)."""
  return {name: MeanFieldCRF.__dataclass_fields__[name].default for name in FIELDS}


def build(cfg) -> MeanFieldCRF:
  """The layer of a config's model.crf block; impossible values are one line naming the field when it first runs."""
  crf = MeanFieldCRF(**{name: cfg[name] for name in FIELDS})
  check_fields(crf)
  return crf


def fitted(crf: MeanFieldCRF, hw) -> MeanFieldCRF:
  """The layer with its window cut to what covers an h x w image: the same field (offsets past the grid add
  nothing), so that an image smaller than the window is refined, not refused, at test time."""
  cells = [-(-n // crf.downsample) for n in hw]
  return crf.clone(window=min(crf.window, 2 * max(cells) - 1))


def unaries(probabilities):
  """The layer's unary scores from a network's full-resolution probabilities: log p (-psi_u, as pydensecrf2's
  unary_from_softmax), floored so that a saturated softmax gives a finite score. With zero kernel weights the layer
  then returns the network's own prediction."""
  return jnp.log(jnp.maximum(probabilities, 1e-8))


def check_settings(crf: MeanFieldCRF, unaries_shape, image_shape):
  """One line naming the field for impossible settings, and a window no wider than what covers the image."""
  check_fields(crf)
  if len(unaries_shape) != 4 or tuple(image_shape) != tuple(unaries_shape[:3]) + (3,):
    raise InputError(f'model.crf: expected (B, H, W, C) unary scores and the (B, H, W, 3) RGB image, got '
                     f'{tuple(unaries_shape)} and {tuple(image_shape)}')
  cells = [-(-n // crf.downsample) for n in unaries_shape[1:3]]
  cover = 2 * max(cells) - 1  # from every cell, a window this wide reaches every other one
  if crf.window > cover:
    raise InputError(f'model.crf.window: {crf.window} cells is larger than the image: {cover} already cover the '
                     f'{cells[0]}x{cells[1]} cells of a {unaries_shape[1]}x{unaries_shape[2]} image at '
                     f'model.crf.downsample {crf.downsample}')


def check_fields(crf: MeanFieldCRF):
  """Kernel widths > 0, weights >= 0, whole counts >= 1 and an odd window, each named on error."""
  check_kernels(crf, 'model.crf')
  for name in ('window', 'downsample', 'train_iterations', 'test_iterations'):
    value = getattr(crf, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise InputError(f'model.crf.{name}: expected a whole number >= 1, got {value!r}')
  if crf.window % 2 == 0:
    raise InputError(f'model.crf.window: expected an odd number of cells (a window centred on each cell), got '
                     f'{crf.window}')


def gaussian_matrix(n: int, theta: float) -> np.ndarray:
  """(n, n) exp(-(a - b)^2 / 2 theta^2): the 1-D factor of a Gaussian kernel over n pixels."""
  a = np.arange(n, dtype=np.float64)
  return np.exp(-(a[:, None] - a[None, :]) ** 2 / (2 * theta ** 2))


class SpatialFilter:
  """q -> K~ q for the spatial kernel, exactly: K = G_y (x) G_x separable, D = K v over the valid pixels v."""

  def __init__(self, valid, theta: float):
    _, h, w = valid.shape
    self.gy, self.gx = (jnp.asarray(gaussian_matrix(n, theta), valid.dtype) for n in (h, w))
    self.valid = valid[..., None]
    self.norm = inverse_sqrt(self.blur(self.valid), self.valid)  # D^-1/2, (B, H, W, 1), 0 off the image

  def blur(self, x):
    return jnp.einsum('yY,bYXc,xX->byxc', self.gy, x, self.gx, precision=HIGHEST)

  def __call__(self, q):
    return self.norm * self.blur(self.norm * q)


def inverse_sqrt(d, valid):
  """D^-1/2 on the valid pixels (D > 0 there: the self pair), 0 elsewhere; no inf or NaN, in value or gradient."""
  return jnp.where(valid > 0, jax.lax.rsqrt(jnp.where(valid > 0, d, 1)), 0)


class BilateralFilter:
  """q -> K~ q for the bilateral kernel on the grid of cells, each pair of cells within the window (ConvCRF)."""

  def __init__(self, image, valid, theta_alpha: float, theta_beta: float, window: int, downsample: int):
    b, h, w, _ = image.shape
    self.hw, self.s, self.r = (h, w), downsample, window // 2
    r = self.r
    # The window's offsets, row-major: one scan step each, so compile time does not grow with the window.
    self.offsets = jnp.asarray([(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)], jnp.int32)
    yx = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing='ij'), -1).astype(image.dtype)
    features = jnp.concatenate([jnp.broadcast_to(yx / theta_alpha, (b, h, w, 2)), image / theta_beta], -1)
    self.valid = valid[..., None]
    v = self.pool(self.valid)  # the fraction of each cell that is the image's: 0 on padding, 1 inside
    f = self.pool(features * self.valid) / jnp.maximum(v, 1e-6)  # a cell's features: the mean of its valid pixels
    # k_o(I) = exp(-|f_I - f_(I+o)|^2 / 2) for each offset o: (window^2, B, h', w', 1). Where I + o is off the grid
    # or on padding, v and Q are 0 there, so the pair adds nothing.
    f_padded = self.pad(f)
    self.kernel = jax.vmap(lambda o: jnp.exp(
        -0.5 * jnp.sum((f - self.shifted(f_padded, o)) ** 2, -1, keepdims=True)))(self.offsets)
    # D_I = sum_o k_o(I) v_(I+o): the zero padding of pad(v) leaves out the offsets off the grid.
    v_padded = self.pad(v)
    d = jnp.sum(jax.vmap(lambda k, o: k * self.shifted(v_padded, o))(self.kernel, self.offsets), 0)
    self.norm = inverse_sqrt(self.upsample(d), self.valid)  # D^-1/2 at full resolution

  def pool(self, x):
    """Mean over each s x s cell of the pixels it holds (cells at the bottom and right edges may hold fewer)."""
    s, (h, w) = self.s, self.hw
    if s == 1:
      return x
    cells = (-(-h // s), -(-w // s))
    pad = ((0, 0), (0, cells[0] * s - h), (0, cells[1] * s - w), (0, 0))
    total = jnp.pad(x, pad).reshape(x.shape[0], cells[0], s, cells[1], s, x.shape[-1]).sum((2, 4))
    count = np.pad(np.ones((h, w)), pad[1:3]).reshape(cells[0], s, cells[1], s).sum((1, 3))
    return total / jnp.asarray(count[..., None], x.dtype)

  def upsample(self, x):
    """Bilinear, half-pixel centres (as ConvCRF's), from the grid of cells to the H x W pixels."""
    s, (h, w) = self.s, self.hw
    if s == 1:
      return x
    return jax.image.resize(x, (x.shape[0], x.shape[1] * s, x.shape[2] * s, x.shape[3]), 'linear')[:, :h, :w]

  def pad(self, x):
    """Zeros r cells wide around the grid, so that every offset of the window is a slice."""
    return jnp.pad(x, ((0, 0), (self.r, self.r), (self.r, self.r), (0, 0)))

  def shifted(self, padded, offset):
    """x[I + offset] for every cell I, from pad(x)."""
    b, h, w, c = padded.shape
    size = (b, h - 2 * self.r, w - 2 * self.r, c)
    zero = jnp.zeros((), offset.dtype)  # indices of one dtype, with or without x64
    return jax.lax.dynamic_slice(padded, (zero, self.r + offset[0], self.r + offset[1], zero), size)

  def __call__(self, q):
    q_padded = self.pad(self.pool(self.norm * q))  # norm is 0 off the image: padding sends nothing

    def add(message, kernel_and_offset):
      kernel, offset = kernel_and_offset
      return message + kernel * self.shifted(q_padded, offset), None

    zero = jnp.zeros(q_padded.shape[:1] + self.kernel.shape[2:4] + q.shape[-1:], q.dtype)
    message = jax.lax.scan(add, zero, (self.kernel, self.offsets))[0]
    return self.norm * self.upsample(message)
