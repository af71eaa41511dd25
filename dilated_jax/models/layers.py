"""Building blocks: the dilated convolution, Caffe's ceil-mode pooling, and the two x8 upsamplings (fyu/dilation
util.py interp_map; the Cityscapes deploy prototxt's Deconvolution)."""

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
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype),
        window_strides=(self.stride, self.stride),
        padding=conv_padding(self.padding, k, self.dilation),
        rhs_dilation=(self.dilation, self.dilation),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), self.param_dtype).astype(dtype)
    return y


def max_pool_ceil(x):
  """Caffe's 2x2 stride-2 max pooling, which rounds the output size up: an odd side gets ceil(n / 2) cells."""
  pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
      ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


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


def bilinear_deconv(x, stride: int = 8, kernel: int = 16, pad: int = 4):
  """The frozen grouped bilinear Deconvolution of the Cityscapes model (kernel 16, stride 8, pad 4): (H, W) -> 8H x 8W.

  A transposed convolution is a convolution of the input dilated by the stride (lhs_dilation) with the flipped
  kernel, padded by kernel - 1 - pad; the bilinear kernel is symmetric, so no flip is needed.
  """
  c = x.shape[-1]
  k1 = bilinear_kernel_1d(kernel)
  w = jnp.asarray(np.outer(k1, k1)[:, :, None, None] * np.ones((1, 1, 1, c), np.float32), x.dtype)
  p = kernel - 1 - pad
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(1, 1), padding=((p, p), (p, p)), lhs_dilation=(stride, stride),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c,
      precision=jax.lax.Precision.HIGHEST)
