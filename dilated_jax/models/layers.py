"""Building blocks: the dilated convolution, Caffe's ceil-mode pooling, and the two x8 upsamplings (fyu/dilation
util.py interp_map; the Cityscapes deploy prototxt's Deconvolution)."""

import functools
from typing import Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# 'VALID', 'SAME', an int (the same zero padding on every side) or ((top, bottom), (left, right)).
Padding = Union[str, int, Sequence[Sequence[int]]]


def conv_padding(padding: Padding, kernel_size: int, dilation: int):
  """Padding in the form lax.conv_general_dilated takes; 'SAME' keeps the size for odd kernels at any dilation."""
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == 'VALID':
      return ((0, 0), (0, 0))
    if mode == 'SAME':
      p = dilation * (kernel_size - 1) // 2
      return ((p, p), (p, p))
    raise ValueError(f"padding: expected 'VALID', 'SAME' or an int, got {padding!r}")
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  return tuple(tuple(int(v) for v in pair) for pair in padding)


def conv(x, kernel, dilation: int, padding):
  """lax.conv_general_dilated with kernel dilation: NHWC in and out, HWIO kernel, explicit ((t, b), (l, r)) padding."""
  return jax.lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding=padding,
                                      rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv_input_grad_xla(dy, kernel, x_shape, dilation: int, padding):
  """The input gradient of `conv` as JAX transposes it: a convolution of dy padded by the dilated kernel's extent."""
  return jax.vjp(lambda x: conv(x, kernel, dilation, padding), jnp.zeros(x_shape, dy.dtype))[1](dy)[0]


def conv_input_grad_matmul(dy, kernel, x_shape, dilation: int, padding):
  """The input gradient of `conv` as one matmul, dy times every tap of the kernel, and the sum of each tap's product
  shifted to where that tap reads the input (col2im): only products of taps with input pixels, none with padding."""
  kh, kw = kernel.shape[:2]
  n, ho, wo, _ = dy.shape
  (pt, pb), (pl, pr) = padding
  hp, wp = x_shape[1] + pt + pb, x_shape[2] + pl + pr
  # float32 sums of bfloat16 products, as the convolution accumulates
  taps = jnp.einsum('nhwo,ijco->nhwijc', dy, kernel, preferred_element_type=jnp.float32)
  d = dilation
  dx = sum(jnp.pad(taps[:, :, :, i, j], ((0, 0), (i * d, hp - ho - i * d), (j * d, wp - wo - j * d), (0, 0)))
           for i in range(kh) for j in range(kw))
  return dx[:, pt:pt + x_shape[1], pl:pl + x_shape[2]].astype(dy.dtype)


# XLA runs the input gradient of a convolution as a convolution of the output gradient padded by the dilated kernel's
# extent d (k - 1) on every side: (H W) / (H' W') times the forward pass's taps for an input of H x W pixels and an
# output of H' x W', the rest being products with zeros. Unpadded layers whose kernels span much of their input pay
# most: fc6 (7x7, dilation 4) at the VOC crop, 40 -> 16 px, does 6.25x its work that way; the Large module's
# dilation-16 layer 7.7x. Past WASTED_TAPS the matmul form is faster on CPU (per-layer table of
# docs/results/benchmark_cpu.md, `python -m dilated_jax.benchmark --layers`); below it the two tie or XLA's wins.
WASTED_TAPS = 1.25


def input_grad_by_matmul(x_shape, y_shape) -> bool:
  """Whether `dilated_conv` computes the input gradient as a matmul on CPU: see WASTED_TAPS."""
  return x_shape[1] * x_shape[2] > WASTED_TAPS * y_shape[1] * y_shape[2]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dilated_conv(x, kernel, dilation: int, padding):
  """`conv`, whose input gradient on CPU is `conv_input_grad_matmul` where XLA's would multiply mostly zeros."""
  return conv(x, kernel, dilation, padding)


def _dilated_conv_fwd(x, kernel, dilation, padding):
  return conv(x, kernel, dilation, padding), (x, kernel)


def _dilated_conv_bwd(dilation, padding, residuals, dy):
  x, kernel = residuals
  dkernel = jax.vjp(lambda k: conv(x, k, dilation, padding), kernel)[1](dy)[0]
  args = (dy, kernel, x.shape, dilation, padding)
  if input_grad_by_matmul(x.shape, dy.shape):
    # Other backends keep their own (cuDNN's) input gradient; the lowering keeps the branch of the platform.
    dx = jax.lax.platform_dependent(*args[:2], cpu=lambda dy, k: conv_input_grad_matmul(dy, k, *args[2:]),
                                    default=lambda dy, k: conv_input_grad_xla(dy, k, *args[2:]))
  else:
    dx = conv_input_grad_xla(*args)
  return dx, dkernel


dilated_conv.defvjp(_dilated_conv_fwd, _dilated_conv_bwd)


class DilatedConv(nn.Module):
  """A 2-D convolution with kernel dilation (F *_l k)(p) = sum_{s + l t = p} F(s) k(t), NHWC in, HWIO kernel."""

  features: int
  kernel_size: int = 3
  dilation: int = 1
  padding: Padding = 'VALID'
  use_bias: bool = True
  dtype: jnp.dtype | None = None  # compute dtype; None follows the input
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = nn.initializers.he_normal()
  bias_init: Callable = nn.initializers.zeros
  stride: int = 1  # the DRNs' downsampling convolutions; the paper's networks pool instead

  @nn.compact
  def __call__(self, x):
    if self.dilation < 1:
      raise ValueError(f'dilation: expected a positive integer, got {self.dilation}')
    if self.stride < 1:
      raise ValueError(f'stride: expected a positive integer, got {self.stride}')
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype)
    dtype = self.dtype or x.dtype
    padding = conv_padding(self.padding, k, self.dilation)
    if self.stride == 1:
      y = dilated_conv(x.astype(dtype), kernel.astype(dtype), self.dilation, padding)
    else:  # the DRNs' downsampling convolutions: small kernels over their input, XLA's own gradient is the fast one
      y = jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (self.stride,) * 2, padding,
                                       rhs_dilation=(self.dilation,) * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), self.param_dtype).astype(dtype)
    return y


def _pool_windows(x):
  """The four cells of every 2x2 window, (top left, top right, bottom left, bottom right), an odd side padded with
  -inf (which never wins: every window holds a cell of the map)."""
  x = jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)), constant_values=-jnp.inf)
  return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


@jax.custom_vjp
def max_pool_ceil(x):
  """Caffe's 2x2 stride-2 max pooling, which rounds the output size up: an odd side gets ceil(n / 2) cells.

  The gradient goes to the first maximum of each window in row-major order, as Caffe's and lax.reduce_window's do;
  computed here from the window's four cells in one elementwise pass, where XLA's CPU backend expands the
  select-and-scatter of reduce_window's gradient into a loop 3x slower than PyTorch's pooling (docs/results).
  """
  pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
      ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def _max_pool_fwd(x):
  return max_pool_ceil(x), x


def _max_pool_bwd(x, g):
  cells = _pool_windows(x)
  y = functools.reduce(jnp.maximum, cells)
  taken = jnp.zeros(y.shape, bool)
  grads = []
  for cell in cells:
    first = (cell == y) & ~taken
    taken = taken | first
    grads.append(jnp.where(first, g, 0).astype(g.dtype))
  top, bottom = jnp.stack(grads[:2], axis=3), jnp.stack(grads[2:], axis=3)  # (n, h', w', 2, c): the columns
  n, h2, w2, c = y.shape
  dx = jnp.stack([top, bottom], axis=2).reshape(n, 2 * h2, 2 * w2, c)  # (n, h', 2, w', 2, c): rows then columns
  return (dx[:, :x.shape[1], :x.shape[2]],)


max_pool_ceil.defvjp(_max_pool_fwd, _max_pool_bwd)


def zoom_taps(n_in: int, n_out: int, zoom: int):
  """The authors' corner-aligned interpolation in one dimension: out[h] = (1 - t) in[r0] + t in[r1], r0 = h // z,
  r1 = r0 + 1, t = (h % z) / z, as three (n_out,) arrays.

  util.py's `interp_map` reads one cell past h // z; past the last cell we repeat the edge (the authors' tiles always
  have that cell, since the network sees the reflected margin).
  """
  h = np.arange(n_out)
  r0 = h // zoom
  return (np.minimum(r0, n_in - 1).astype(np.int32), np.minimum(r0 + 1, n_in - 1).astype(np.int32),
          ((h % zoom) / zoom).astype(np.float32))


def _zoom_axis(x, axis: int, n_out: int, zoom: int):
  r0, r1, t = zoom_taps(x.shape[axis], n_out, zoom)
  shape = [1] * x.ndim
  shape[axis] = n_out
  t = jnp.asarray(t, x.dtype).reshape(shape)
  x0 = jnp.take(x, r0, axis=axis)
  return x0 + t * (jnp.take(x, r1, axis=axis) - x0)  # exactly x0 where r1 == r0 (the repeated edge)


def bilinear_zoom(x, zoom: int = 8, out_hw: tuple[int, int] | None = None):
  """Corner-aligned bilinear upsampling of NHWC maps (fyu/dilation util.py, zoom = 8): output pixel (h, w) reads
  (h/z, w/z).

  Separable and gathered (two taps per output row, then per column): memory linear in the output's pixels, where
  (out x in) interpolation matrices grow with the square of a side (a 60000 x 1 image needed gigabytes).
  """
  h, w = x.shape[1:3]
  out_h, out_w = out_hw or (h * zoom, w * zoom)
  return _zoom_axis(_zoom_axis(x, 1, out_h, zoom), 2, out_w, zoom)


def bilinear_kernel_1d(kernel: int = 16) -> np.ndarray:
  """Caffe's BilinearFiller in one dimension: 1 - |x / f - c|, f = ceil(k / 2), c = (2f - 1 - f % 2) / (2f)."""
  f = int(np.ceil(kernel / 2))
  c = (2 * f - 1 - f % 2) / (2.0 * f)
  return (1 - np.abs(np.arange(kernel) / f - c)).astype(np.float32)


def _deconv_axis(x, axis: int, stride: int, kernel: int, pad: int):
  """One axis of the grouped bilinear deconvolution: out[s j + r] = sum_d x[j - d] k[s d + r + pad] (x zero outside
  the map), as a few shifted copies of x times per-phase weights."""
  k1 = bilinear_kernel_1d(kernel)
  n = x.shape[axis]
  n_out = (n - 1) * stride + kernel - 2 * pad
  cells = -(-n_out // stride)
  d_min, d_max = -((stride - 1 + pad) // stride), (kernel - 1 - pad) // stride
  before, after = max(d_max, 0), max(cells - n - d_min, 0)
  widths = [(0, 0)] * x.ndim
  widths[axis] = (before, after)
  xp = jnp.pad(x, widths)
  out = 0
  for d in range(d_min, d_max + 1):
    taps = stride * d + np.arange(stride) + pad
    w = np.where((taps >= 0) & (taps < kernel), k1[np.clip(taps, 0, kernel - 1)], 0)
    if not w.any():
      continue
    shifted = jax.lax.slice_in_dim(xp, before - d, before - d + cells, axis=axis)
    shape = [1] * (x.ndim + 1)
    shape[axis + 1] = stride
    out = out + jnp.expand_dims(shifted, axis + 1) * jnp.asarray(w.reshape(shape), x.dtype)
  out = out.reshape(x.shape[:axis] + (cells * stride,) + x.shape[axis + 1:])
  return jax.lax.slice_in_dim(out, 0, n_out, axis=axis)


def bilinear_deconv(x, stride: int = 8, kernel: int = 16, pad: int = 4):
  """The frozen grouped bilinear Deconvolution of the Cityscapes model (kernel 16, stride 8, pad 4): (H, W) -> 8H x 8W.

  Caffe's Deconvolution (cell i adds x[i] k[t] to output s i - pad + t) with the separable BilinearFiller kernel, one
  group per channel, computed per axis from shifted copies of the map: elementwise, so fast in both directions on
  every backend and linear in memory. As a grouped transposed convolution (lhs_dilation) XLA's CPU backend took
  1.6 s per 480 x 360 output of 11 classes, where a half-width DRN-D-22's forward pass takes 0.17 s.
  """
  return _deconv_axis(_deconv_axis(x, 1, stride, kernel, pad), 2, stride, kernel, pad)
