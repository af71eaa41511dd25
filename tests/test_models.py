"""Front end, context module and presets: sizes, parameter counts, identity initialisation, errors (arXiv 1511.07122
sections 3, 4, Table 1; fyu/dilation network.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dilated_jax import InputError
from dilated_jax import receptive_field as rf
from dilated_jax.models import context as ctx
from dilated_jax.models import frontend, net
from dilated_jax.models.context import ContextModule, identity_init
from dilated_jax.models.frontend import FrontEnd


def image(h, w, c=3):
  return jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)


def out_hw(model, h, w, c=3):
  """Output (H, W) from shapes alone: jax.eval_shape never runs the full-width network."""
  params = jax.eval_shape(model.init, jax.random.key(0), image(h, w, c))
  return jax.eval_shape(model.apply, params, image(h, w, c)).shape[1:3]


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('size', [380, 500, 628, 852, 900, 1396])
def test_front_end_valid_output_size(size):
  """Inputs = 372 (mod 8) give (in - 372) / 8 cells, from the module and from output_size."""
  fe = FrontEnd(num_classes=21)
  expected = (size - 372) // 8
  assert out_hw(fe, size, size) == (expected, expected)
  assert rf.output_size(size, fe.layers(), 'VALID') == expected


def test_front_end_ceil_mode_kitti():
  """KITTI's deploy input 852 x 1640: 1640 is not 372 (mod 8), a pool sees an odd side and rounds up to 159 columns."""
  fe = FrontEnd(num_classes=11)
  assert out_hw(fe, 852, 1640) == (60, 159)
  assert rf.output_size(852, fe.layers(), 'VALID') == 60
  assert rf.output_size(1640, fe.layers(), 'VALID') == 159


def test_output_size_agrees_with_module_for_every_size():
  """output_size matches the (narrow) module for every side 380..400, odd pool inputs included, VALID and SAME."""
  for padding in ('VALID', 'SAME'):
    fe = FrontEnd(num_classes=3, width=1 / 32, padding=padding)
    for n in range(380, 401):
      assert out_hw(fe, n, n + 1) == (rf.output_size(n, fe.layers(), padding),
                                      rf.output_size(n + 1, fe.layers(), padding)), (padding, n)
  assert rf.output_size(100, FrontEnd(num_classes=3).layers(), 'SAME') == 13  # ceil(ceil(ceil(100/2)/2)/2)


def test_margin_and_stride():
  """The reflection margin is half the 372 px shrinkage, whatever the width; 'SAME' needs none."""
  for width in (1.0, 1 / 32):
    fe = FrontEnd(num_classes=21, width=width)
    assert frontend.MARGIN == fe.margin == rf.shrinkage(fe.layers()) // 2 == 186
    assert frontend.OUTPUT_STRIDE == fe.stride == 8
  assert FrontEnd(num_classes=21, padding='SAME').margin == 0


def test_parameter_counts():
  """Front end (C=21) 134,346,581; Basic (C=21) 28,392; the VOC preset's Large module 6,803,139
  (counted from fyu/dilation's deploy prototxts)."""
  fe_params = jax.eval_shape(FrontEnd(num_classes=21).init, jax.random.key(0), image(380, 380))
  assert count(fe_params) == 134_346_581
  basic = jax.eval_shape(ContextModule(num_classes=21).init, jax.random.key(0), image(66, 66, 21))
  assert count(basic) == 28_392
  voc = net.build_model(net.model_config('pascal_voc'))
  params = jax.eval_shape(voc.init, jax.random.key(0), image(900, 900))['params']
  assert count(params['context_module']) == 6_803_139
  assert count(params['front_end']) == 134_346_581


@pytest.mark.parametrize('preset,hw,out,classes', [
    ('pascal_voc', (900, 900), (66, 66), 21),
    ('camvid', (900, 1100), (66, 91), 11),
    ('kitti', (852, 1640), (60, 159), 11),
    ('cityscapes', (1396, 1396), (128, 128), 19),
])
def test_presets_deploy_shapes(preset, hw, out, classes):
  """Each preset's whole network maps its deploy input to the front-end output size (fyu/dilation
  models/*_deploy.prototxt)."""
  model = net.build_model(net.model_config(preset))
  params = jax.eval_shape(model.init, jax.random.key(0), image(*hw))
  assert jax.eval_shape(model.apply, params, image(*hw)).shape == (1, *out, classes)


SCHEDULES = {'basic': (ctx.BASIC, None), 'large': (ctx.BASIC, ctx.LARGE_MULTIPLIERS),
             'dilation7': (ctx.DILATION7, None), 'dilation10': (ctx.DILATION10, None)}


@pytest.mark.parametrize('padding', ['same', 'pad_once'])
@pytest.mark.parametrize('schedule', [pytest.param(s, marks=pytest.mark.slow) if s == 'large' else s
                                      for s in sorted(SCHEDULES)])  # the Large module: 672 channels
def test_identity_init_gives_relu(schedule, padding):
  """Noise-free identity init computes ReLU(x) per channel (layer 1 truncates) and keeps the map size."""
  dilations, multipliers = SCHEDULES[schedule]
  module = ContextModule(num_classes=3, dilations=dilations, channel_multipliers=multipliers, padding=padding,
                         noise_std=0.0)
  x = jax.random.normal(jax.random.key(1), (2, 12, 17, 3))  # scores of both signs
  y = module.apply(module.init(jax.random.key(0), x), x)
  assert y.shape == x.shape
  np.testing.assert_allclose(np.asarray(y), np.asarray(jax.nn.relu(x)), rtol=1e-5, atol=1e-6)


def eq5_mask(c_in, c_out, classes):
  """Eq. 5's condition floor(a C / c_in) == floor(b C / c_out), pair by pair."""
  return np.array([[a * classes // c_in == b * classes // c_out for b in range(c_out)] for a in range(c_in)])


@pytest.mark.parametrize('shape', [(3, 3, 21, 21), (3, 3, 21, 42), (3, 3, 42, 84), (3, 3, 672, 672), (1, 1, 672, 21)])
def test_identity_init_taps(shape):
  """C / c_out on exactly the centre taps eq. 5 names, noise-free; N(0, 0.01^2) noise on every other weight."""
  w = np.asarray(identity_init(21, noise_std=0.01)(jax.random.key(0), shape))
  kh, kw, c_in, c_out = shape
  identity = np.zeros(shape, bool)
  identity[kh // 2, kw // 2] = eq5_mask(c_in, c_out, 21)
  np.testing.assert_array_equal(w[identity], 21 / c_out)
  noise = w[~identity]
  assert not np.any(np.isclose(noise, 21 / c_out, rtol=0, atol=1e-9))
  assert abs(noise.std() - 0.01) < 0.05 * 0.01 and abs(noise.mean()) < 0.001
  noise_free = np.asarray(identity_init(21, noise_std=0.0)(jax.random.key(0), shape))
  np.testing.assert_array_equal(noise_free, np.where(identity, 21 / c_out, 0.0))


def test_errors():
  """Bad schedules, paddings, presets and inits raise ValueError naming the field."""
  with pytest.raises(InputError, match='context.dilations'):
    ctx.check_schedule((1, 0, 2), None, 'same')
  with pytest.raises(InputError, match='context.dilations'):
    ctx.check_schedule((), None, 'same')
  with pytest.raises(InputError, match='context.channel_multipliers'):
    ctx.check_schedule(ctx.BASIC, (2, 2, 4), 'same')
  with pytest.raises(InputError, match='context.padding'):
    ctx.check_schedule(ctx.BASIC, None, 'reflect')
  x = jnp.zeros((1, 8, 8, 2))
  for kwargs, field in [(dict(dilations=(1, -1)), 'context.dilations'),
                        (dict(channel_multipliers=(1, 2)), 'context.channel_multipliers'),
                        (dict(padding='valid'), 'context.padding'),
                        (dict(initialisation='zeros'), 'context.initialisation')]:
    with pytest.raises(InputError, match=field):
      ContextModule(num_classes=2, **kwargs).init(jax.random.key(0), x)
  with pytest.raises(InputError, match='preset'):
    net.model_config('nope')
  cfg = net.model_config()
  cfg.upsample = 'nearest'
  with pytest.raises(InputError, match='model.upsample'):
    net.build_model(cfg)
  with pytest.raises(InputError, match='identity init'):
    identity_init(21)(jax.random.key(0), (3, 3, 21, 30))


def test_the_basic_default_follows_a_schedule_of_any_length():
  """One override of model.context.dilations gives a Basic module of that many 3x3 layers, each of C channels; a
  Large module's multipliers must still match the schedule."""
  for preset, c in ((None, 21), ('camvid', 11), ('cityscapes', 19)):
    cfg = net.model_config(preset)
    cfg.context.dilations = (1, 2, 4)
    module = net.build_model(cfg).context_module
    params = jax.eval_shape(module.init, jax.random.key(0), image(16, 16, c))['params']
    assert [params[n]['kernel'].shape for n in ctx.layer_names(3)] == [(3, 3, c, c)] * 3 + [(1, 1, c, c)], preset
  cfg = net.model_config('pascal_voc')  # Large: 7 multipliers
  cfg.context.dilations = (1, 2, 4)
  with pytest.raises(InputError, match='context.channel_multipliers: expected 3 positive integers'):
    net.build_model(cfg)


@pytest.mark.parametrize('mode', ['zoom', 'deconv'])
def test_upsample_probabilities(mode):
  """Both upsamplings give probabilities (summing to 1) at the requested image size."""
  scores = jax.random.normal(jax.random.key(0), (1, 6, 7, 5)) * 3
  probs = np.asarray(net.upsample_probabilities(scores, mode, 8, (45, 50)))
  assert probs.shape == (1, 45, 50, 5)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert probs.min() >= 0


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters_loss_and_gradients():
  """Mixed precision (model.dtype): convolutions in bfloat16, parameters, loss and gradients in float32."""
  from dilated_jax.train import loss_and_metrics

  cfg = net.model_config('camvid')
  cfg.front_end.width = 1 / 16
  x = jax.random.normal(jax.random.key(1), (1, 404, 404, 3))
  labels = jax.random.randint(jax.random.key(2), (1, 4, 4), 0, cfg.num_classes)
  models = {}
  for dtype in ('float32', 'bfloat16'):
    cfg.dtype = dtype
    models[dtype] = net.build_model(cfg)
  params = models['float32'].init(jax.random.key(0), x)['params']
  assert {p.dtype for p in jax.tree.leaves(models['bfloat16'].init(jax.random.key(0), x))} == {jnp.dtype('float32')}

  def loss(p, dtype):
    return loss_and_metrics(models[dtype].apply({'params': p}, x), labels, cfg.num_classes)[0]

  assert models['bfloat16'].apply({'params': params}, x).dtype == jnp.bfloat16
  (l32, g32), (l16, g16) = (jax.value_and_grad(loss)(params, d) for d in ('float32', 'bfloat16'))
  assert l16.dtype == jnp.float32 and {g.dtype for g in jax.tree.leaves(g16)} == {jnp.dtype('float32')}
  np.testing.assert_allclose(l16, l32, rtol=2e-2)
  final = lambda g: np.asarray(g['front_end']['final']['kernel'])
  assert np.corrcoef(final(g16).ravel(), final(g32).ravel())[0, 1] > 0.95


@pytest.mark.slow
def test_scaled_noise_keeps_the_large_module_near_the_identity_at_initialisation():
  """Eq. 5 needs sigma << C / c_out: with std 0.01 in the 16C and 32C layers the Large module starts far from the
  identity (about 65% of argmaxes kept, C = 21); scaled by C / c_out it keeps about 90%."""
  c = 21
  x = jax.nn.relu(3 * jax.random.normal(jax.random.key(1), (2, 48, 48, c)))
  kept = {}
  for noise in ('fixed', 'scaled'):
    module = ContextModule(c, ctx.BASIC, ctx.LARGE_MULTIPLIERS, 'same', noise=noise)
    y = module.apply(module.init(jax.random.key(0), x), x)
    kept[noise] = float((y.argmax(-1) == x.argmax(-1)).mean())
  assert kept['scaled'] > 0.85 and kept['fixed'] < 0.75, kept
