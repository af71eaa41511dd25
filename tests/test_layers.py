"""DilatedConv, ceil-mode pooling and both x8 upsamplings against numpy references (arXiv 1511.07122 section 2;
fyu/dilation util.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dilated_jax.models import layers


def dilated_conv_ref(x, kernel, bias, dilation, pads):
  """Cross-correlation as lax computes it: y[p] = bias + sum_t xpad[p + l t] @ k[t], t the tap index from the corner."""
  (pt, pb), (pl, pr) = pads
  xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  kh, kw = kernel.shape[:2]
  out_h = xp.shape[1] - dilation * (kh - 1)
  out_w = xp.shape[2] - dilation * (kw - 1)
  y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1])) + bias
  for ty in range(kh):
    for tx in range(kw):
      window = xp[:, dilation * ty:dilation * ty + out_h, dilation * tx:dilation * tx + out_w, :]
      y += window @ kernel[ty, tx].astype(np.float64)
  return y


def explicit_pads(padding, k, d):
  """The zero padding each padding spec stands for, written out: 'SAME' pads d (k - 1) / 2 on every side."""
  if padding == 'VALID':
    return ((0, 0), (0, 0))
  if padding == 'SAME':
    return ((d * (k - 1) // 2,) * 2,) * 2
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  return padding


def run_conv(x, features, kernel_size, dilation, padding):
  conv = layers.DilatedConv(features, kernel_size, dilation, padding,
                            bias_init=jax.nn.initializers.normal(1.0))  # non-zero bias, so it is checked too
  params = conv.init(jax.random.key(dilation), x)
  return np.asarray(conv.apply(params, x)), params['params']


@pytest.mark.parametrize('dilation', [1, 2, 4, 8, 16])
@pytest.mark.parametrize('padding', ['VALID', 'SAME', 3, ((1, 2), (0, 3))])
def test_dilated_conv_matches_numpy(dilation, padding):
  """DilatedConv equals the tap-by-tap numpy reference for every dilation and padding; multi-channel, non-square."""
  x = np.random.default_rng(0).normal(size=(2, 37, 41, 3)).astype(np.float32)  # >= 33 = extent of a d16 3x3
  y, p = run_conv(jnp.asarray(x), 4, 3, dilation, padding)
  ref = dilated_conv_ref(x, np.asarray(p['kernel']), np.asarray(p['bias']), dilation,
                         explicit_pads(padding, 3, dilation))
  assert y.shape == ref.shape
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  if padding == 'SAME':
    assert y.shape[1:3] == x.shape[1:3]


@pytest.mark.parametrize('stride,dilation,padding', [(2, 1, 1), (2, 2, 2), (2, 1, 'VALID'), (3, 1, 0)])
@pytest.mark.parametrize('side', [12, 13])
def test_strided_conv_is_the_stride_1_conv_subsampled(stride, dilation, padding, side):
  """stride s: every s-th output of the stride-1 convolution from the first, on odd and even sides alike; with
  padding = dilation the grid is symmetric, ceil(n / s) cells (torch's Conv2d, as the DRNs use it)."""
  x = np.random.default_rng(1).normal(size=(2, side, side + 3, 3)).astype(np.float32)
  conv = layers.DilatedConv(4, 3, dilation, padding, stride=stride, bias_init=jax.nn.initializers.normal(1.0))
  params = conv.init(jax.random.key(0), jnp.asarray(x))
  y = np.asarray(conv.apply(params, jnp.asarray(x)))
  p = params['params']
  pads = explicit_pads(padding, 3, dilation)
  ref = dilated_conv_ref(x, np.asarray(p['kernel']), np.asarray(p['bias']), dilation, pads)
  np.testing.assert_allclose(y, ref[:, ::stride, ::stride], rtol=1e-5, atol=1e-5)
  if padding == dilation:
    assert y.shape[1:3] == (-(-side // stride), -(-(side + 3) // stride))


@pytest.mark.parametrize('kernel_size,dilation', [(7, 4), (1, 1)])
def test_dilated_conv_fc_shapes(kernel_size, dilation):
  """The front end's other kernels: fc6 (7x7, dilation 4) and the 1x1 layers."""
  x = np.random.default_rng(1).normal(size=(1, 30, 27, 2)).astype(np.float32)
  y, p = run_conv(jnp.asarray(x), 5, kernel_size, dilation, 'VALID')
  ref = dilated_conv_ref(x, np.asarray(p['kernel']), np.asarray(p['bias']), dilation, ((0, 0), (0, 0)))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dilation', [1, 2, 4])
def test_paper_definition(dilation):
  """The paper's (F *_l k)(p) = sum_{s + l t = p} F(s) k(t), t centred, is DilatedConv ('SAME') with k(t) = K[1 - t]."""
  rng = np.random.default_rng(2)
  f = rng.normal(size=(11, 13)).astype(np.float32)
  kernel = rng.normal(size=(3, 3)).astype(np.float32)
  k = lambda t: kernel[1 - t[0], 1 - t[1]]  # the paper convolves; lax cross-correlates, hence the flip
  ref = np.zeros(f.shape)
  for p in np.ndindex(*f.shape):
    for t in np.ndindex(3, 3):
      t = (t[0] - 1, t[1] - 1)
      s = (p[0] - dilation * t[0], p[1] - dilation * t[1])  # the only s with s + l t = p
      if 0 <= s[0] < f.shape[0] and 0 <= s[1] < f.shape[1]:  # F is zero outside the map
        ref[p] += f[s] * k(t)
  conv = layers.DilatedConv(1, 3, dilation, 'SAME', use_bias=False)
  y = conv.apply({'params': {'kernel': jnp.asarray(kernel)[:, :, None, None]}}, jnp.asarray(f)[None, :, :, None])
  np.testing.assert_allclose(np.asarray(y)[0, :, :, 0], ref, rtol=1e-5, atol=1e-5)


def conv_input_grad_ref(dy, kernel, x_shape, dilation, pads):
  """The input gradient from the definition y[p] = sum_t xpad[p + l t] @ k[t]: dx[p + l t] += dy[p] @ k[t]^T, then
  the padding cut off."""
  (pt, pb), (pl, pr) = pads
  n, h, w, _ = x_shape
  kh, kw = kernel.shape[:2]
  out_h, out_w = dy.shape[1:3]
  dxp = np.zeros((n, h + pt + pb, w + pl + pr, kernel.shape[2]))
  for ty in range(kh):
    for tx in range(kw):
      dxp[:, dilation * ty:dilation * ty + out_h, dilation * tx:dilation * tx + out_w] += (
          dy.astype(np.float64) @ kernel[ty, tx].T.astype(np.float64))
  return dxp[:, pt:pt + h, pl:pl + w]


# (kernel, dilation, padding, input h, w): fc6 and the Large module's dilation-16 layer at (a fraction of) their
# training sizes, the early layers' wide maps, SAME and uneven paddings, a 1x1.
GRADIENT_CASES = [(7, 4, 'VALID', 40, 42), (3, 16, 'VALID', 50, 49), (3, 1, 'VALID', 60, 61), (3, 2, 'SAME', 21, 23),
                  (3, 8, ((1, 2), (0, 3)), 26, 25), (1, 1, 'VALID', 5, 6)]


@pytest.mark.parametrize('k,dilation,padding,h,w', GRADIENT_CASES)
def test_input_gradient_as_matmul_equals_the_transposed_convolution_and_the_definition(k, dilation, padding, h, w):
  """layers.conv_input_grad_matmul = the input gradient JAX derives from lax.conv_general_dilated = numpy's."""
  rng = np.random.default_rng(k * 100 + dilation)
  pads = layers.conv_padding(padding, k, dilation)
  x_shape = (2, h, w, 5)
  kernel = rng.normal(size=(k, k, 5, 6)).astype(np.float32)
  y_shape = jax.eval_shape(lambda: layers.conv(jnp.zeros(x_shape), kernel, dilation, pads)).shape
  dy = rng.normal(size=y_shape).astype(np.float32)
  ref = conv_input_grad_ref(dy, kernel, x_shape, dilation, pads)
  matmul = layers.conv_input_grad_matmul(jnp.asarray(dy), jnp.asarray(kernel), x_shape, dilation, pads)
  xla = layers.conv_input_grad_xla(jnp.asarray(dy), jnp.asarray(kernel), x_shape, dilation, pads)
  np.testing.assert_allclose(np.asarray(matmul), ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(xla), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('k,dilation,padding,h,w', GRADIENT_CASES)
def test_dilated_conv_is_lax_conv_with_its_gradients(k, dilation, padding, h, w, dtype):
  """The layer's custom gradient, whichever input gradient it picks, equals jax.grad of lax.conv_general_dilated;
  its forward pass is that convolution."""
  rng = np.random.default_rng(k + dilation)
  pads = layers.conv_padding(padding, k, dilation)
  x = jnp.asarray(rng.normal(size=(2, h, w, 5)), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, 5, 6)), dtype)
  lax_conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), pads, rhs_dilation=(dilation, dilation),
                                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ours = lambda x, k: layers.dilated_conv(x, k, dilation, pads)
  np.testing.assert_array_equal(np.asarray(jax.jit(ours)(x, kernel), np.float32),
                                np.asarray(jax.jit(lax_conv)(x, kernel), np.float32))
  weights = jnp.asarray(rng.normal(size=jax.eval_shape(lax_conv, x, kernel).shape), dtype)
  loss = lambda conv: lambda x, k: (conv(x, k).astype(jnp.float32) * weights).sum()
  got = jax.jit(jax.grad(loss(ours), (0, 1)))(x, kernel)
  want = jax.jit(jax.grad(loss(lax_conv), (0, 1)))(x, kernel)
  tol = 1e-4 if dtype == 'float32' else 2e-2
  for g, r in zip(got, want):
    assert g.dtype == r.dtype == jnp.dtype(dtype)
    g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
    np.testing.assert_allclose(g, r, rtol=tol, atol=tol * np.abs(r).max())


def test_the_input_gradient_of_fc6_is_a_matmul_on_cpu_and_the_early_layers_keep_xlas():
  """The rule of layers.WASTED_TAPS at the VOC training crop: fc6 (40 -> 16 px) and the dilation-16 context layer
  (50 -> 18) by matmul, conv1_2 (498 -> 496) and conv5_3 (44 -> 40) as XLA derives it; and the compiled gradient of
  fc6 holds one convolution, the kernel gradient's (the forward pass is not needed for the gradient of a sum)."""
  assert layers.input_grad_by_matmul((2, 40, 40), (2, 16, 16))
  assert layers.input_grad_by_matmul((2, 50, 50), (2, 18, 18))
  assert not layers.input_grad_by_matmul((2, 498, 498), (2, 496, 496))
  assert not layers.input_grad_by_matmul((2, 44, 44), (2, 40, 40))
  pads = ((0, 0), (0, 0))

  def convolutions(x_hw, k, d):
    x, kernel = jnp.zeros((1,) + x_hw + (4,)), jnp.zeros((k, k, 4, 8))
    grad = jax.grad(lambda x, w: layers.dilated_conv(x, w, d, pads).sum(), (0, 1))
    return jax.jit(grad).lower(x, kernel).compile().as_text().count(' convolution(')

  assert convolutions((40, 40), 7, 4) == 1
  assert convolutions((44, 44), 3, 2) == 2


@pytest.mark.parametrize('shape', [(8, 8), (7, 9), (5, 6)])
def test_max_pool_ceil_matches_caffe(shape):
  """Caffe's 2x2/2 pooling: ceil((n - 2) / 2) + 1 cells, the last window of an odd side holding one row or column."""
  x = np.random.default_rng(3).normal(size=(2, *shape, 3)).astype(np.float32)
  out_h, out_w = (int(np.ceil((n - 2) / 2)) + 1 for n in shape)
  ref = np.empty((2, out_h, out_w, 3), np.float32)
  for i in range(out_h):
    for j in range(out_w):
      ref[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))  # numpy slices clip at the edge
  np.testing.assert_array_equal(np.asarray(layers.max_pool_ceil(jnp.asarray(x))), ref)


@pytest.mark.parametrize('shape', [(8, 8), (7, 9), (5, 6), (1, 1)])
def test_max_pool_gradient_is_reduce_windows_first_maximum_per_window(shape):
  """The custom gradient of max_pool_ceil equals jax.grad of lax.reduce_window (select-and-scatter), ties included:
  all of a window's gradient to its first maximum in row-major order (Caffe's choice), none to the -inf padding;
  and the numpy reference of that rule."""
  rng = np.random.default_rng(4)
  x = rng.integers(0, 3, size=(2, *shape, 3)).astype(np.float32)  # values 0..2: most windows hold ties
  pooled = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                           ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)))
  g = rng.normal(size=pooled(x).shape).astype(np.float32)
  ours = jax.jit(lambda x, g: jax.vjp(layers.max_pool_ceil, x)[1](g)[0])(x, g)
  want = jax.vjp(pooled, jnp.asarray(x))[1](jnp.asarray(g))[0]
  ref = np.zeros_like(x)
  for i in range(g.shape[1]):
    for j in range(g.shape[2]):
      for n in range(2):
        for c in range(3):
          window = x[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
          di, dj = np.unravel_index(np.argmax(window), window.shape)  # argmax: the first maximum
          ref[n, 2 * i + di, 2 * j + dj, c] += g[n, i, j, c]
  np.testing.assert_array_equal(np.asarray(ours), ref)
  np.testing.assert_array_equal(np.asarray(want), ref)


def interp_map(prob, zoom, width, height):
  """fyu/dilation util.py interp_map, verbatim apart from style: prob is (C, h, w)."""
  zoom_prob = np.zeros((prob.shape[0], height, width), dtype=np.float32)
  for c in range(prob.shape[0]):
    for h in range(height):
      for w in range(width):
        r0 = h // zoom
        r1 = r0 + 1
        c0 = w // zoom
        c1 = c0 + 1
        rt = float(h) / zoom - r0
        ct = float(w) / zoom - c0
        v0 = rt * prob[c, r1, c0] + (1 - rt) * prob[c, r0, c0]
        v1 = rt * prob[c, r1, c1] + (1 - rt) * prob[c, r0, c1]
        zoom_prob[c, h, w] = (1 - ct) * v0 + ct * v1
  return zoom_prob


def zoom_both(prob, out_hw, pad_mode):
  """Ours and interp_map on prob padded by one row/column at the bottom/right (the loop reads one cell past h // 8)."""
  ours = np.asarray(layers.bilinear_zoom(jnp.asarray(prob)[None], 8, out_hw))[0]
  padded = np.pad(prob, ((0, 1), (0, 1), (0, 0)), mode=pad_mode).transpose(2, 0, 1)
  ref = interp_map(padded, 8, out_hw[1], out_hw[0]).transpose(1, 2, 0)
  return ours, ref


def test_bilinear_zoom_inside_matches_interp_map():
  """Output 8 (n - 1) + 1 only ever gives weight to cells 0..n-1, so the zero row past the end never counts."""
  prob = np.random.default_rng(4).random((5, 7, 3)).astype(np.float32)
  ours, ref = zoom_both(prob, (8 * 4 + 1, 8 * 6 + 1), 'constant')
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ours[::8, ::8], prob, rtol=1e-6)  # corner-aligned: pixel 8i is cell i exactly


def test_bilinear_zoom_memory_is_linear_in_the_output():
  """No array of the zoom (constants included) is larger than its output: a 7500-cell row zoomed to 60000 pixels
  needs kilobytes, where (out x in) interpolation matrices took 1.8 GB."""
  x = jax.ShapeDtypeStruct((1, 1, 7500, 2), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda v: layers.bilinear_zoom(v, 8, (8, 60000)))(x)
  out_size = 8 * 60000 * 2
  sizes = [np.size(c) for c in jaxpr.consts]
  for eqn in jaxpr.eqns:
    sizes += [np.prod(v.aval.shape) for v in eqn.outvars]
  assert max(sizes) <= out_size, max(sizes)

def test_bilinear_zoom_edge_repeats_last_cell():
  """Past the last cell (full 8h x 8w output) ours behaves as interp_map on a map whose last row/column is repeated."""
  prob = np.random.default_rng(5).random((4, 6, 2)).astype(np.float32)
  ours, ref = zoom_both(prob, (32, 48), 'edge')
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ours[24:], np.broadcast_to(ours[24], ours[24:].shape))  # flat past row 8 (h - 1)
  cropped = np.asarray(layers.bilinear_zoom(jnp.asarray(prob)[None], 8, (29, 45)))[0]  # cropped to an image size
  np.testing.assert_array_equal(cropped, ours[:29, :45])


def caffe_bilinear_filler(k):
  """caffe filler.hpp BilinearFiller for a (k, k) blob, element by element as the C++ loop does."""
  f = np.ceil(k / 2.0)
  c = (2 * f - 1 - f % 2) / (2.0 * f)
  data = np.empty(k * k)
  for i in range(k * k):
    x, y = i % k, (i // k) % k
    data[i] = (1 - abs(x / f - c)) * (1 - abs(y / f - c))
  return data.reshape(k, k)


def test_bilinear_kernel_1d():
  """The 16-tap kernel is .0625, .1875, ..., .9375, .9375, ..., .0625 and its outer product is Caffe's filler."""
  k1 = layers.bilinear_kernel_1d(16)
  half = np.arange(1, 16, 2) / 16
  np.testing.assert_allclose(k1, np.concatenate([half, half[::-1]]), rtol=1e-7)
  for k in (4, 5, 16):
    np.testing.assert_allclose(np.outer(layers.bilinear_kernel_1d(k), layers.bilinear_kernel_1d(k)),
                               caffe_bilinear_filler(k), rtol=1e-6)


def caffe_deconv_ref(x, k2d, stride=8, pad=4):
  """Caffe Deconvolution, one group per channel, no bias: cell (i, j) adds x * K[ky, kx] at (8i - 4 + ky,
  8j - 4 + kx)."""
  n, h, w, c = x.shape
  kh, kw = k2d.shape
  out_h, out_w = stride * (h - 1) + kh - 2 * pad, stride * (w - 1) + kw - 2 * pad
  out = np.zeros((n, out_h, out_w, c))
  for i in range(h):
    for j in range(w):
      for ky in range(kh):
        for kx in range(kw):
          oy, ox = stride * i - pad + ky, stride * j - pad + kx
          if 0 <= oy < out_h and 0 <= ox < out_w:
            out[:, oy, ox, :] += x[:, i, j, :] * k2d[ky, kx]
  return out


def test_bilinear_deconv_matches_caffe_scatter():
  """The frozen x8 deconvolution gives exactly 8H x 8W and equals the scatter above, channel by channel."""
  x = np.random.default_rng(6).normal(size=(2, 4, 5, 3)).astype(np.float32)
  ours = np.asarray(layers.bilinear_deconv(jnp.asarray(x)))
  ref = caffe_deconv_ref(x, caffe_bilinear_filler(16))
  assert ours.shape == (2, 32, 40, 3)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('stride,kernel,pad', [(8, 16, 4), (4, 8, 2), (2, 3, 0), (3, 7, 1), (2, 4, 3)])
def test_bilinear_deconv_and_its_gradient_at_other_strides_kernels_and_pads(stride, kernel, pad):
  """The per-axis form against Caffe's scatter for kernels other than twice the stride, and its gradient against
  that of the grouped transposed convolution (lhs_dilation) that XLA derives."""
  x = np.random.default_rng(8).normal(size=(1, 5, 3, 2)).astype(np.float32)
  ours = layers.bilinear_deconv(jnp.asarray(x), stride, kernel, pad)
  np.testing.assert_allclose(np.asarray(ours), caffe_deconv_ref(x, caffe_bilinear_filler(kernel), stride, pad),
                             rtol=1e-5, atol=1e-5)
  flipped = caffe_bilinear_filler(kernel)[::-1, ::-1]  # a transposed convolution's kernel (odd k: not symmetric)
  k2d = jnp.asarray(flipped[:, :, None, None] * np.ones((1, 1, 1, 2), np.float32))
  grouped = lambda x: jax.lax.conv_general_dilated(
      x, k2d, (1, 1), ((kernel - 1 - pad,) * 2,) * 2, lhs_dilation=(stride, stride),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=2, precision=jax.lax.Precision.HIGHEST)
  dy = jnp.asarray(np.random.default_rng(9).normal(size=ours.shape).astype(np.float32))
  want = jax.vjp(grouped, jnp.asarray(x))[1](dy)[0]
  got = jax.vjp(lambda x: layers.bilinear_deconv(x, stride, kernel, pad), jnp.asarray(x))[1](dy)[0]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_bilinear_deconv_is_half_pixel_bilinear_with_zero_border():
  """The Cityscapes deploy's deconvolution (kernel 16, stride 8, pad 4, bilinear filler) equals half-pixel-centre
  bilinear x8 of the map with zeros outside it."""
  x = np.random.default_rng(7).normal(size=(1, 4, 6, 2)).astype(np.float32)
  padded = jnp.pad(jnp.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  resized = jax.image.resize(padded, (1, 8 * 6, 8 * 8, 2), 'bilinear')[:, 8:-8, 8:-8]
  np.testing.assert_allclose(np.asarray(layers.bilinear_deconv(jnp.asarray(x))), np.asarray(resized),
                             rtol=1e-5, atol=1e-5)


def test_bad_layer_arguments():
  """A non-positive dilation or stride or an unknown padding string is refused with the field named."""
  x = jnp.zeros((1, 8, 8, 1))
  with pytest.raises(ValueError, match='dilation'):
    layers.DilatedConv(1, 3, 0).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='stride'):
    layers.DilatedConv(1, 3, 1, stride=0).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='padding'):
    layers.DilatedConv(1, 3, 1, 'FULL').init(jax.random.key(0), x)


def test_the_deconvolution_preset_trains_on_the_labels_at_its_offset():
  """Wiring: the training examples of each preset read their labels at the offset of its upsampling."""
  from dilated_jax import config
  from dilated_jax.data import synthetic
  from dilated_jax.models import build_model
  from dilated_jax.train import image_examples

  for preset, offset in (('camvid', 0), ('cityscapes', 4)):
    cfg = config.base(preset)
    info = synthetic.info(cfg.data.synthetic)
    make_example, _, _ = image_examples(cfg, synthetic.SyntheticScenes(cfg.data.synthetic, 'train'),
                                     build_model(cfg.model), info)
    assert make_example.args['label_offset'] == offset
