"""Receptive fields measured through gradients agree with the analytic ones: 380 px / jump 8, and 67, 35, 259 cells."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dilated_jax import receptive_field as rf
from dilated_jax.models import context as ctx
from dilated_jax.models.context import ContextModule
from dilated_jax.models.frontend import FrontEnd


def positive_params(model, x):
  """Every kernel an average (constant 1 / fan-in), every bias 0: a positive input then keeps every ReLU open.

  Only the shapes of a real init are needed (eval_shape), which also skips compiling the random initialisers.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  return jax.tree.map(lambda p: jnp.full(p.shape, 1 / np.prod(p.shape[:-1])) if p.ndim == 4 else jnp.zeros(p.shape),
                      shapes)


def support(model, params, x, i, j):
  """Input pixels with a non-zero gradient for output pixel (i, j), channel 0."""
  return np.asarray(_support(model, params, x, i, j))


@jax.jit(static_argnums=0)  # one compilation per model; i, j are traced, so every output pixel reuses it
def _support(model, params, x, i, j):
  grad = jax.grad(lambda x: model.apply(params, x)[0, i, j, 0])(x)
  return jnp.any(grad[0] != 0, axis=-1)


def bounding_box(mask):
  rows, cols = np.nonzero(mask)
  return rows.min(), rows.max(), cols.min(), cols.max()


def ramps(size, channels):
  """Positive linear ramps rising towards the bottom-right and towards the top-left.

  Averaging keeps a linear ramp linear, so every 2x2 max pool picks the same corner of its window (a sparse gradient);
  the two ramps pick opposite corners, so the union of their supports reaches both ends of the receptive field.
  """
  r = np.arange(size, dtype=np.float32)
  up = (r[:, None] + r[None, :] + 1)[None, :, :, None] * np.ones(channels, np.float32)
  return jnp.asarray(up), jnp.asarray(up[:, ::-1, ::-1].copy())


def test_front_end_receptive_field_by_gradient():
  """Output cell (i, j) of the VALID front end sees input rows/cols 8i .. 8i + 379: 380 px with a jump of 8."""
  fe = FrontEnd(num_classes=2, width=1 / 32)  # 2..16 channels, fc 128: the paper's topology at CPU cost
  size = 372 + 8 * 3  # a 3 x 3 output
  x_br, x_tl = ramps(size, 3)
  params = positive_params(fe, x_br)
  assert fe.apply(params, x_br).shape == (1, 3, 3, 2)
  boxes = {}
  for i, j in [(1, 1), (1, 2), (2, 1)]:
    mask = support(fe, params, x_br, i, j) | support(fe, params, x_tl, i, j)
    boxes[i, j] = bounding_box(mask)
    top, bottom, left, right = boxes[i, j]
    assert (bottom - top + 1, right - left + 1) == (380, 380)
    assert (top, left) == (8 * i, 8 * j)
  # Adjacent output cells: the window moves by the jump, 8 px, along that axis only.
  assert np.subtract(boxes[1, 2], boxes[1, 1]).tolist() == [0, 0, 8, 8]
  assert np.subtract(boxes[2, 1], boxes[1, 1]).tolist() == [8, 8, 0, 0]
  assert rf.receptive_field(fe.layers()) == (380, 8)
  assert rf.receptive_field(FrontEnd(num_classes=21).layers()) == (380, 8)


@pytest.mark.parametrize('dilations,multipliers,expected', [
    (ctx.BASIC, None, 67),
    (ctx.BASIC, ctx.LARGE_MULTIPLIERS, 67),
    (ctx.DILATION7, None, 35),
    (ctx.DILATION10, None, 259),
])
def test_context_receptive_field_by_gradient(dilations, multipliers, expected):
  """An interior output cell of the context module depends on a full, hole-free square of `expected` feature cells."""
  module = ContextModule(num_classes=2, dilations=dilations, channel_multipliers=multipliers)
  size = expected + 12
  x = jnp.ones((1, size, size, 2))  # no pooling here, so a constant positive input is enough
  params = positive_params(module, x)
  centre = size // 2
  mask = support(module, params, x, centre, centre)
  top, bottom, left, right = bounding_box(mask)
  assert (bottom - top + 1, right - left + 1) == (expected, expected)
  assert (top + bottom) // 2 == (left + right) // 2 == centre
  assert mask.sum() == expected ** 2  # no gridding holes: these schedules cover every cell
  assert rf.receptive_field(module.layers()) == (expected, 1)


def test_table1_receptive_fields():
  """Table 1's receptive-field row for the Basic module: 3, 5, 9, 17, 33, 65, 67, 67; (2^(i+2) - 1) after layer i."""
  rows = rf.table(ContextModule(num_classes=21).layers())
  assert [r['receptive_field'] for r in rows] == [3, 5, 9, 17, 33, 65, 67, 67]
  # Section 2's pure doubling F_{i+1} = F_i *_{2^i} k_i has (2^(i+2) - 1); Table 1 repeats dilation 1 first.
  doubling = rf.table([rf.Layer(f'l{i}', 3, 2 ** i) for i in range(6)])
  assert [r['receptive_field'] for r in doubling] == [2 ** (i + 2) - 1 for i in range(6)]
  assert [r['name'] for r in rows] == ['ctx_conv1_1', 'ctx_conv1_2', 'ctx_conv2_1', 'ctx_conv3_1', 'ctx_conv4_1',
                                       'ctx_conv5_1', 'ctx_fc1', 'ctx_final']
  assert rf.shrinkage(FrontEnd(num_classes=21).layers()) == 372
