"""DRN-C / DRN-D (fyu/drn drn.py) and DRNSeg (segment.py): parameter counts, topology, BatchNorm, and fyu/drn state
dicts imported and run against a numpy transcription of drn.py.

The transcription (`drn_py`) follows drn.py's DRN.__init__ (names, shapes, strides, paddings, dilations) and
forward, torch's BatchNorm2d and ConvTranspose2d; the state dicts are written without torch (test_weights).
"""

import collections
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dilated_jax import InputError, receptive_field as rf, sharding
from dilated_jax.data import pipeline
from dilated_jax.models import ContextModule, DilatedConv, DilationNet, bilinear_deconv, drn
from dilated_jax.models.layers import bilinear_kernel_1d
from dilated_jax.weights import load_drn
from test_layers import caffe_deconv_ref
from test_weights import write_torch

# fyu/drn README: millions of parameters with the 1000-class head.
README_PARAMS = {'drn_c_26': 21.1, 'drn_c_42': 31.2, 'drn_c_58': 41.6, 'drn_d_22': 16.4, 'drn_d_38': 26.5,
                 'drn_d_54': 35.8, 'drn_d_105': 54.8}
WIDTH = 1 / 8  # channels 2 .. 64 (256 out of a Bottleneck level): CPU-sized, drn.py's topology
MEAN_BGR = (104.0, 117.0, 123.0)

# ------------------------------------------------------------------ drn.py, transcribed


def drn_py(arch, block, layers, width=1.0, num_classes=1000):
  """drn.py's DRN(block, layers, arch=arch).__init__: its modules in order of registration (name -> ('conv', out,
  in, k, stride, pad, dilation) or ('bn', c)), and the levels for its forward: (name, kind, blocks, residual)."""
  ch = [max(1, round(c * width)) for c in (16, 32, 64, 128, 256, 512, 512, 512)]
  modules, levels = collections.OrderedDict(), []
  inplanes = ch[0]

  def make_layer(name, kind, planes, blocks, stride=1, dilation=1, new_level=True, residual=True):
    nonlocal inplanes
    expansion = 4 if kind == 'bottleneck' else 1
    downsample = stride != 1 or inplanes != planes * expansion
    for b in range(blocks):
      d = (1, 1) if dilation == 1 else ((dilation // 2 if new_level else dilation, dilation) if b == 0 else
                                        (dilation, dilation))
      s = stride if b == 0 else 1
      p = f'{name}.{b}'
      if kind == 'basic':
        modules[p + '.conv1'] = ('conv', planes, inplanes, 3, s, d[0], d[0])
        modules[p + '.bn1'] = ('bn', planes)
        modules[p + '.conv2'] = ('conv', planes, planes, 3, 1, d[1], d[1])
        modules[p + '.bn2'] = ('bn', planes)
      else:
        modules[p + '.conv1'] = ('conv', planes, inplanes, 1, 1, 0, 1)
        modules[p + '.bn1'] = ('bn', planes)
        modules[p + '.conv2'] = ('conv', planes, planes, 3, s, d[1], d[1])
        modules[p + '.bn2'] = ('bn', planes)
        modules[p + '.conv3'] = ('conv', planes * 4, planes, 1, 1, 0, 1)
        modules[p + '.bn3'] = ('bn', planes * 4)
      if b == 0 and downsample:  # registered by the block after its own layers
        modules[p + '.downsample.0'] = ('conv', planes * expansion, inplanes, 1, stride, 0, 1)
        modules[p + '.downsample.1'] = ('bn', planes * expansion)
      inplanes = planes * expansion
    levels.append((name, kind, blocks, residual))

  def make_conv_layers(name, channels, convs, stride=1, dilation=1):
    nonlocal inplanes
    for i in range(convs):
      modules[f'{name}.{3 * i}'] = ('conv', channels, inplanes, 3, stride if i == 0 else 1, dilation, dilation)
      modules[f'{name}.{3 * i + 1}'] = ('bn', channels)
      inplanes = channels
    levels.append((name, 'conv', convs, False))

  if arch == 'C':
    modules['conv1'], modules['bn1'] = ('conv', ch[0], 3, 7, 1, 3, 1), ('bn', ch[0])
    make_layer('layer1', 'basic', ch[0], layers[0])
    make_layer('layer2', 'basic', ch[1], layers[1], stride=2)
  else:
    modules['layer0.0'], modules['layer0.1'] = ('conv', ch[0], 3, 7, 1, 3, 1), ('bn', ch[0])
    make_conv_layers('layer1', ch[0], layers[0])
    make_conv_layers('layer2', ch[1], layers[1], stride=2)
  make_layer('layer3', block, ch[2], layers[2], stride=2)
  make_layer('layer4', block, ch[3], layers[3], stride=2)
  make_layer('layer5', block, ch[4], layers[4], dilation=2, new_level=False)
  make_layer('layer6', block, ch[5], layers[5], dilation=4, new_level=False)
  if arch == 'C':
    make_layer('layer7', 'basic', ch[6], layers[6], dilation=2, new_level=False, residual=False)
    make_layer('layer8', 'basic', ch[7], layers[7], dilation=1, new_level=False, residual=False)
  else:
    make_conv_layers('layer7', ch[6], layers[6], dilation=2)
    make_conv_layers('layer8', ch[7], layers[7], dilation=1)
  if num_classes:
    modules['fc'] = ('fc', num_classes, inplanes)
  return modules, levels


def tensor_shapes(modules):
  """state_dict() names -> shapes: conv weight (OIHW); BN weight, bias, running_mean, running_var,
  num_batches_tracked; fc weight (out, in, 1, 1) and bias."""
  out = collections.OrderedDict()
  for name, spec in modules.items():
    if spec[0] == 'conv':
      out[name + '.weight'] = (spec[1], spec[2], spec[3], spec[3])
    elif spec[0] == 'bn':
      for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
        out[f'{name}.{leaf}'] = (spec[1],)
      out[name + '.num_batches_tracked'] = ()
    else:
      out[name + '.weight'], out[name + '.bias'] = (spec[1], spec[2], 1, 1), (spec[1],)
  return out


def random_state(modules, seed=0):
  """A state dict of drn.py's names with values a trained network could have (BN statistics away from 0 / 1)."""
  rng = np.random.default_rng(seed)
  state = collections.OrderedDict()
  for name, shape in tensor_shapes(modules).items():
    leaf = name.rsplit('.', 1)[1]
    if leaf == 'num_batches_tracked':
      state[name] = np.array(1234, np.int64)
    elif leaf == 'running_var':
      state[name] = rng.uniform(0.5, 2.0, shape)
    elif leaf == 'weight' and len(shape) == 1:  # BN scale
      state[name] = rng.uniform(0.5, 1.5, shape)
    elif len(shape) == 4:
      state[name] = rng.normal(0, math.sqrt(2 / (shape[0] * shape[2] * shape[3])), shape)
    else:
      state[name] = rng.normal(0, 0.2, shape)
  return collections.OrderedDict((k, v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in state.items())


def np_conv(x, w, stride=1, pad=0, dilation=1):
  """torch's Conv2d (NCHW, OIHW, no bias), tap by tap in float64."""
  n, _, h, wd = x.shape
  k = w.shape[2]
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh, ow = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1, (wd + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  out = np.zeros((n, w.shape[0], oh, ow))
  for i in range(k):
    for j in range(k):
      patch = xp[:, :, i * dilation:i * dilation + stride * (oh - 1) + 1:stride,
                 j * dilation:j * dilation + stride * (ow - 1) + 1:stride]
      out += np.einsum('nchw,oc->nohw', patch, w[:, :, i, j])
  return out


class TorchForward:
  """drn.py's forward on a state dict, torch's BatchNorm2d in eval mode (running statistics) or training mode
  (batch statistics; `updated` gets torch's running averages, momentum 0.1, the variance's unbiased)."""

  def __init__(self, modules, levels, state, train=False):
    self.modules, self.levels, self.state, self.train = modules, levels, state, train
    self.updated = {}

  def conv(self, name, x):
    _, _, _, _, stride, pad, dilation = self.modules[name]
    return np_conv(x, self.state[name + '.weight'], stride, pad, dilation)

  def bn(self, name, x):
    s = self.state
    if self.train:
      n = x.size // x.shape[1]
      mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
      self.updated[name] = (0.9 * s[name + '.running_mean'] + 0.1 * mean,
                            0.9 * s[name + '.running_var'] + 0.1 * var * n / (n - 1), n)  # (mean, var, cells)
    else:
      mean, var = s[name + '.running_mean'], s[name + '.running_var']
    scale = s[name + '.weight'] / np.sqrt(var + 1e-5)
    return (x - mean[:, None, None]) * scale[:, None, None] + s[name + '.bias'][:, None, None]

  def block(self, p, kind, residual, x):
    relu = lambda v: np.maximum(v, 0)
    out = relu(self.bn(p + '.bn1', self.conv(p + '.conv1', x)))
    out = self.bn(p + '.bn2', self.conv(p + '.conv2', out))
    if kind == 'bottleneck':
      out = self.bn(p + '.bn3', self.conv(p + '.conv3', relu(out)))
    shortcut = x
    if p + '.downsample.0' in self.modules:  # drn.py runs it even where the block does not add it
      shortcut = self.bn(p + '.downsample.1', self.conv(p + '.downsample.0', x))
    if residual or kind == 'bottleneck':  # drn.py's Bottleneck always adds
      out = out + shortcut
    return relu(out)

  def __call__(self, x, logits=False):
    relu = lambda v: np.maximum(v, 0)
    stem = 'conv1' if 'conv1' in self.modules else 'layer0.0'
    x = relu(self.bn('bn1' if stem == 'conv1' else 'layer0.1', self.conv(stem, x)))
    for name, kind, blocks, residual in self.levels:
      for b in range(blocks):
        if kind == 'conv':
          x = relu(self.bn(f'{name}.{3 * b + 1}', self.conv(f'{name}.{3 * b}', x)))
        else:
          x = self.block(f'{name}.{b}', kind, residual, x)
    if not logits:
      return x
    pooled = x.mean((2, 3))  # AvgPool2d(28) on drn.py's 28x28 maps: the global mean
    return pooled @ self.state['fc.weight'][:, :, 0, 0].T + self.state['fc.bias']


def config(name):
  return drn.VARIANTS[name]


def nchw(x):
  return np.transpose(x, (0, 3, 1, 2))


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def image(h, w, n=1):
  return jax.ShapeDtypeStruct((n, h, w, 3), jnp.float32)


def random_variables(model, seed=0):
  """Variables of `model`'s structure with random values (what load_drn overwrites): model.init would compile for
  10-30 s on these CPUs (its hundred threefry draws), jax.eval_shape takes a tenth of a second."""
  rng = np.random.default_rng(seed)

  def value(path, s):
    leaf = path[-1].key
    if leaf == 'kernel':  # He fan-out
      return rng.normal(0, math.sqrt(2 / math.prod(s.shape[:2] + s.shape[3:])), s.shape).astype(s.dtype)
    if leaf in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
    return rng.normal(0, 0.1, s.shape).astype(s.dtype)

  return jax.tree_util.tree_map_with_path(value, jax.eval_shape(model.init, jax.random.key(0), image(16, 16)))


# ------------------------------------------------------------------ sizes and topology


@pytest.mark.parametrize('name', sorted(drn.VARIANTS))
def test_parameter_counts_are_the_readme_s(name):
  """With the 1000-class head: fyu/drn README's millions, and exactly drn.py's parameters() (BN scale and bias, not
  the running statistics, which sit in batch_stats). The Bottleneck variants tell the conventions apart (C-58 41.6M,
  D-54 35.8M, D-105 54.8M would be 41.7, 35.9, 54.9 with the statistics); C-58's count has level 7's downsample."""
  variables = jax.eval_shape(drn.drn(name, num_classes=1000).init, jax.random.key(0), image(224, 224))
  shapes = tensor_shapes(drn_py(*config(name))[0])
  torch_parameters = sum(math.prod(s) for n, s in shapes.items() if not n.endswith(('running_mean', 'running_var',
                                                                                      'num_batches_tracked')))
  statistics = sum(math.prod(s) for n, s in shapes.items() if n.endswith(('running_mean', 'running_var')))
  assert count(variables['params']) == torch_parameters
  assert round(torch_parameters / 1e6, 1) == README_PARAMS[name]
  assert count(variables['batch_stats']) == statistics
  if config(name)[1] == 'bottleneck':
    assert round((torch_parameters + statistics) / 1e6, 1) != README_PARAMS[name]


def conv_calls(model, x_shape):
  """Every DilatedConv the model runs, in order: '/'-joined path -> (kernel, stride, dilation, padding)."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    m = context.module
    if isinstance(m, DilatedConv) and context.method_name == '__call__':
      calls['/'.join(m.path)] = (m.kernel_size, m.stride, m.dilation, m.padding)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), image(*x_shape))
  return calls


def strided(name):
  """The convolutions of stride 2, from drn.py's _make_layer / _make_conv_layers: the first block of levels 2-4."""
  arch, block, _ = config(name)
  out = {'layer2/0'} if arch == 'D' else {'layer2/0/conv1', 'layer2/0/downsample/0'}
  for level in ('layer3', 'layer4'):
    out |= {f'{level}/0/{"conv2" if block == "bottleneck" else "conv1"}', f'{level}/0/downsample/0'}
  return out


@pytest.mark.parametrize('name', ['drn_c_26', 'drn_c_58', 'drn_d_22', 'drn_d_54'])
def test_strides_dilations_and_paddings_per_level(name):
  """Stride 2 only in the first block of levels 2-4 (its strided 3x3 and its 1x1 downsample); dilation 2, 4, 2, 1
  at levels 5-8 in every 3x3, the first block's first included (drn.py's new_level=False); zero padding = dilation
  on every side (7x7 stem: 3, 1x1: 0). Every convolution as drn.py's, and layers() lists the main path's."""
  calls = conv_calls(drn.drn(name, width=WIDTH), (64, 64))
  assert {p for p, c in calls.items() if c[1] == 2} == strided(name)
  dilation = {'layer5': 2, 'layer6': 4, 'layer7': 2, 'layer8': 1}
  for path, (k, _, d, pad) in calls.items():
    assert d == (dilation.get(path.split('/')[0], 1) if k == 3 else 1), path
    assert isinstance(pad, int) and pad == d * (k - 1) // 2, path  # an int: the same on every side
  modules, _ = drn_py(*config(name), width=WIDTH, num_classes=0)
  want = {n.replace('.', '/'): (s[3], s[4], s[6], s[5]) for n, s in modules.items() if s[0] == 'conv'}
  assert calls == want
  main_path = [(layer.name, layer.kernel, layer.stride, layer.dilation) for layer in drn.drn(name).layers()]
  assert main_path == [(p, c[0], c[1], c[2]) for p, c in calls.items() if 'downsample' not in p]


def test_the_degridding_choices_are_fields():
  """dilations sets the 3x3s of levels 5-8 (padded alike); blocks 0 at levels 7-8 leaves them out (DRN-A's
  schedule, 2 then 4 to the end), residual_7_8 is tested with the residuals below."""
  calls = conv_calls(drn.drn('drn_c_26', width=WIDTH, dilations=(1, 2, 3, 5)), (32, 32))
  for path, (k, _, d, pad) in calls.items():
    level = int(path[len('layer')]) if path.startswith('layer') else 0
    assert d == ({5: 1, 6: 2, 7: 3, 8: 5}.get(level, 1) if k == 3 else 1) and pad == d * (k - 1) // 2, path
  a_style = drn.drn('drn_c_26', width=WIDTH, blocks=(1, 1, 2, 2, 2, 2, 0, 0))
  assert [lv.name for lv in a_style.levels()] == [f'layer{i}' for i in range(1, 7)]
  assert not any(p.startswith(('layer7', 'layer8')) for p in conv_calls(a_style, (32, 32)))
  assert a_style.stride == 8 and a_style.out_channels == 64


@pytest.mark.parametrize('side', [8, 33, 97, 224, 225])
def test_output_stride_8(side):
  """Three stride-2 levels, each ceil(n / 2) as torch's padded convolutions give; rf.output_size agrees."""
  model = drn.drn('drn_d_22', width=WIDTH)
  variables = jax.eval_shape(model.init, jax.random.key(0), image(side, side + 5))
  out = jax.eval_shape(model.apply, variables, image(side, side + 5)).shape
  want = [math.ceil(math.ceil(math.ceil(n / 2) / 2) / 2) for n in (side, side + 5)]
  assert out == (1, *want, 64) and model.stride == 8 and model.margin == 0
  assert [rf.output_size(n, model.layers(), model.padding) for n in (side, side + 5)] == want


@pytest.mark.parametrize('name,blocks', [
    ('drn_c_26', {'layer2/0', 'layer3/0', 'layer4/0', 'layer5/0', 'layer6/0'}),
    ('drn_c_58', {'layer2/0', 'layer3/0', 'layer4/0', 'layer5/0', 'layer6/0', 'layer7/0'}),  # 2048 -> 512, unused
    ('drn_d_22', {'layer3/0', 'layer4/0', 'layer5/0', 'layer6/0'}),
    ('drn_d_54', {'layer3/0', 'layer4/0', 'layer5/0', 'layer6/0'}),
])
def test_downsample_placement(name, blocks):
  """A 1x1 downsample (conv, BN) exactly where the stride or the channels change, in a level's first block."""
  params = jax.eval_shape(drn.drn(name, width=WIDTH).init, jax.random.key(0), image(32, 32))['params']
  have = {f'{level}/{b}' for level, group in params.items() if level.startswith('layer')
          for b, block in group.items() if isinstance(block, dict) and 'downsample' in block}
  assert have == blocks


def level_outputs(model, variables, x):
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
  return {k: np.asarray(v['__call__'][0]) for k, v in state['intermediates'].items() if k.startswith('layer')}


@pytest.mark.parametrize('name,residual_7_8', [('drn_c_26', False), ('drn_c_26', True), ('drn_c_58', False),
                                               ('drn_d_22', False)])
def test_residual_levels(name, residual_7_8):
  """With every block's last BN at scale 0 and bias 0 a block passes only its shortcut: levels with residuals keep
  a signal, DRN-C's levels 7-8 (BasicBlocks with residual=False, C-58's unused downsample included) give 0 unless
  residual_7_8; DRN-D's 7-8 are conv-BN-ReLU layers, untouched."""
  model = drn.drn(name, width=WIDTH, residual_7_8=residual_7_8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), jnp.float32)
  zeroed = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 0 if p[-2].key in ('bn2', 'bn3') and p[-1].key in ('scale', 'bias') else v,
      random_variables(model))
  out = level_outputs(model, zeroed, x)
  silent = {k for k, v in out.items() if not np.any(v)}
  assert silent == ({'layer7', 'layer8'} if name.startswith('drn_c') and not residual_7_8 else set())


def test_initialisation():
  """He fan-out (normal, std sqrt(2 / (k k out)), not truncated) for every convolution, seg included; every BN
  torch's (eps 1e-5, momentum 0.1, scale 1, bias 0, running mean 0 and variance 1); seg's bias 0."""
  w = np.asarray(drn.he_fan_out(jax.random.key(0), (3, 3, 64, 256)))
  std = math.sqrt(2 / (3 * 3 * 256))
  assert abs(w.std() / std - 1) < 0.02 and abs(w.mean()) < 0.02 * std
  assert np.abs(w).max() > 3 * std  # flax's he_normal truncates at 2 std
  model = drn.DRNSeg(drn.drn('drn_c_58'), num_classes=19, mean_bgr=MEAN_BGR)
  convs, norms = [], []

  def record(next_fun, args, kwargs, context):
    (convs if isinstance(context.module, DilatedConv) else norms if isinstance(context.module, nn.BatchNorm)
     else []).append(context.module)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), image(16, 16))
  modules = drn_py(*config('drn_c_58'), num_classes=0)[0].values()
  assert len(convs) == sum(m[0] == 'conv' for m in modules) + 1 and len(norms) == sum(m[0] == 'bn' for m in modules)
  for m in convs:
    assert m.kernel_init is drn.he_fan_out and m.use_bias == (m.name == 'seg') and m.bias_init is nn.initializers.zeros
  for m in norms:
    assert (m.epsilon, m.momentum, m.use_fast_variance) == (1e-5, 0.9, False)
    assert m.scale_init is nn.initializers.ones and m.bias_init is nn.initializers.zeros
  # The values of one block (the whole network's init compiles for tens of seconds on these CPUs).
  variables = drn.Block('basic', 32, stride=2).init(jax.random.key(1), jnp.zeros((1, 8, 8, 16)))
  for path, v in jax.tree_util.tree_flatten_with_path(variables)[0]:
    keys, v = [k.key for k in path], np.asarray(v)
    if keys[-1] == 'kernel':
      assert abs(v.std() / math.sqrt(2 / (v.shape[0] * v.shape[1] * v.shape[3])) - 1) < 0.1, keys
    else:
      np.testing.assert_array_equal(v, 1 if keys[-1] in ('scale', 'var') else 0, err_msg=str(keys))
  assert len(jax.tree.leaves(variables)) == 1 + 4 + 1 + 4 + 1 + 4  # conv1, bn1, conv2, bn2, downsample's conv, BN


@pytest.mark.parametrize('kwargs,field', [
    (dict(arch='E'), 'arch'), (dict(block='wide'), 'block'), (dict(blocks=(1, 1, 2)), 'blocks'),
    (dict(blocks=(1, 1, 2, 0, 2, 2, 1, 1)), 'blocks'), (dict(dilations=(2, 4, 2)), 'dilations'),
    (dict(dilations=(2, 0, 2, 1)), 'dilations'), (dict(arch='D', residual_7_8=True), 'residual_7_8'),
    (dict(width=0), 'width')])
def test_impossible_settings_name_the_field(kwargs, field):
  with pytest.raises(InputError, match=f'model.drn.{field}:'):
    jax.eval_shape(drn.DRN(**dict(dict(arch='C'), **kwargs)).init, jax.random.key(0), image(16, 16))
  with pytest.raises(InputError, match='model.drn.variant:'):
    drn.drn('drn_c_27')


# ------------------------------------------------------------------ BatchNorm


def imported(name, tmp_path, num_classes=1000, seed=0):
  """(model, variables, modules, levels, state, notes) of a drn.py state dict written to a file and imported."""
  modules, levels = drn_py(*config(name), width=WIDTH, num_classes=num_classes)
  state = random_state(modules, seed)
  model = drn.drn(name, width=WIDTH, num_classes=num_classes)
  path = str(tmp_path / f'{name}.pth')
  write_torch(path, state)
  variables, notes = load_drn(path, model, random_variables(model))
  return model, variables, modules, levels, state, notes


def test_training_mode_uses_batch_statistics_and_updates_the_running_ones(tmp_path):
  """train=True: every BN normalises by the batch's statistics (biased variance, as torch) and moves its running
  averages by momentum 0.1 towards them, as drn.py in model.train(). The variance moves towards the biased batch
  variance (flax), where torch takes the unbiased one: the factor (n - 1) / n, n = cells per channel."""
  model, variables, modules, levels, state, _ = imported('drn_c_26', tmp_path, num_classes=0)
  x = np.random.default_rng(1).normal(size=(3, 24, 32, 3)).astype(np.float32)
  out, new = model.apply(variables, jnp.asarray(x), train=True, mutable=['batch_stats'])
  torch = TorchForward(modules, levels, state, train=True)
  want = torch(nchw(x).astype(np.float64))
  np.testing.assert_allclose(nchw(np.asarray(out)), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
  stats = new['batch_stats']
  assert len(torch.updated) == len(jax.tree.leaves(stats)) // 2
  for name, (mean, var, n) in torch.updated.items():
    group = stats
    for k in name.split('.'):
      group = group[k]
    np.testing.assert_allclose(group['mean'], mean, rtol=1e-3, atol=1e-4, err_msg=name)
    old = 0.9 * state[name + '.running_var']
    np.testing.assert_allclose(group['var'], old + (var - old) * (n - 1) / n, rtol=1e-3, err_msg=name)


def test_evaluation_uses_the_running_statistics(tmp_path):
  """train=False: an image's output does not depend on the rest of the batch nor on the batch's statistics, only on
  the running ones; train=True: the reverse."""
  model, variables, *_ = imported('drn_d_22', tmp_path, num_classes=0)
  rng = np.random.default_rng(2)
  a, b, c = (jnp.asarray(rng.normal(size=(1, 24, 24, 3)), jnp.float32) for _ in range(3))
  run = lambda v, x, train: np.asarray(model.apply(v, x, train=train, mutable=['batch_stats'])[0] if train
                                       else model.apply(v, x))
  np.testing.assert_allclose(run(variables, jnp.concatenate([a, b]), False)[0],
                             run(variables, jnp.concatenate([a, c]), False)[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(run(variables, jnp.concatenate([a, b]), True)[0],
                         run(variables, jnp.concatenate([a, c]), True)[0], atol=1e-3)
  moved = dict(variables, batch_stats=jax.tree.map(lambda v: v * 1.5 + 0.1, variables['batch_stats']))
  x = jnp.concatenate([a, b])
  assert not np.allclose(run(variables, x, False), run(moved, x, False), atol=1e-3)
  np.testing.assert_allclose(run(variables, x, True), run(moved, x, True), rtol=1e-5, atol=1e-6)


def test_batch_statistics_are_the_global_batch_s_under_jit_over_the_mesh(tmp_path):
  """A batch sharded over 8 devices normalises by the statistics of all of it: the outputs and the updated running
  averages are those of one device (and those of drn.py, by the test above)."""
  model, variables, *_ = imported('drn_d_22', tmp_path, num_classes=0)
  x = np.random.default_rng(3).normal(size=(8, 16, 16, 3)).astype(np.float32)
  step = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  mesh = sharding.make_mesh()
  assert mesh.size == 8
  sharded = jax.jit(step, in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)))
  one = jax.devices()[0]
  want = jax.device_get(jax.jit(step)(jax.device_put(variables, one), jax.device_put(x, one)))
  got = jax.device_get(sharded(variables, x))
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5), got, want)


# ------------------------------------------------------------------ fyu/drn's weights


def place(name, arch, segment):
  """Where a drn.py / segment.py tensor goes: (collection, path), written from the names' definition."""
  parts = name.split('.')
  if segment and parts[0] == 'base':
    children = (['conv1', 'bn1', 'relu'] if arch == 'C' else ['layer0']) + [f'layer{i}' for i in range(1, 9)]
    parts = ['base', children[int(parts[1])]] + parts[2:]
  *module, leaf = parts
  return {'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}.get(
      leaf, ('params', leaf)), module


@pytest.mark.parametrize('name,target,wrap', [
    ('drn_c_26', 'classifier', None), ('drn_c_26', 'segment', 'module'), ('drn_d_54', 'segment', None),
    ('drn_c_58', 'imagenet_into_segment', None)])
def test_every_tensor_lands_in_its_place(name, target, wrap, tmp_path):
  """drn.py ImageNet files into the classifier, a DataParallel segment.py checkpoint ({'state_dict': {'module.base.0
  ...'}}) into DRNSeg, an ImageNet file into DRNSeg (fc noted, seg left as initialised): each tensor at its place
  (OIHW -> HWIO, running statistics in batch_stats), every leaf of the network from the file but those."""
  arch, block, blocks = config(name)
  segment = target == 'segment'
  modules, _ = drn_py(arch, block, blocks, width=WIDTH, num_classes=0 if segment else 1000)
  state = segment_state(arch, modules, classes=5, seed=5) if segment else random_state(modules, seed=5)
  base = drn.drn(name, width=WIDTH, num_classes=1000 if target == 'classifier' else 0)
  model = base if target == 'classifier' else drn.DRNSeg(base, num_classes=5, mean_bgr=MEAN_BGR)
  path = str(tmp_path / 'w.pth')
  if wrap:  # a training checkpoint of segment.py, saved from DataParallel
    write_torch(path, {f'{wrap}.{k}': v for k, v in state.items()}, checkpoint={'epoch': 3, 'best_prec1': 80.5})
  else:
    write_torch(path, state)
  fresh = random_variables(model)
  variables, notes = load_drn(path, model, fresh)
  landed = set()
  for key, value in state.items():
    if key.endswith('num_batches_tracked') or key == 'up.weight':
      continue
    (collection, leaf), module = place(key, arch, segment)
    if target == 'imagenet_into_segment':
      if module == ['fc']:
        continue
      module = ['base'] + module
    group = variables[collection]
    for k in module:
      group = group[k]
    leaf = {'weight': 'kernel' if value.ndim == 4 else 'scale'}.get(leaf, leaf)
    got = np.asarray(group[leaf])
    np.testing.assert_array_equal(got, value.transpose(2, 3, 1, 0) if value.ndim == 4 else value, err_msg=key)
    landed.add((collection,) + tuple(module) + (leaf,))
  everything = {(c,) + tuple(k.key for k in p) for c in variables
                for p, _ in jax.tree_util.tree_flatten_with_path(variables[c])[0]}
  untouched = everything - landed
  if target == 'imagenet_into_segment':
    assert untouched == {('params', 'seg', 'kernel'), ('params', 'seg', 'bias')}
    assert any(n.startswith('fc.weight') for n in notes) and any(n.startswith('seg:') for n in notes)
    np.testing.assert_array_equal(variables['params']['seg']['kernel'], fresh['params']['seg']['kernel'])
  else:
    assert untouched == set()
  if segment:
    assert any(n.startswith('up.weight') for n in notes)


def segment_state(arch, modules, classes, seed):
  """segment.py's DRNSeg.state_dict(): base.<i> (the DRN's children in order, relu counted) ..., seg, up."""
  rng = np.random.default_rng(seed + 1)
  children = (['conv1', 'bn1', 'relu'] if arch == 'C' else ['layer0']) + [f'layer{i}' for i in range(1, 9)]
  state = collections.OrderedDict()
  for key, value in random_state(modules, seed).items():
    child = key.split('.')[0]
    state[f'base.{children.index(child)}{key[len(child):]}'] = value
  out_dim = [s for s in modules.values() if s[0] == 'conv'][-1][1]
  state['seg.weight'] = rng.normal(0, math.sqrt(2 / classes), (classes, out_dim, 1, 1)).astype(np.float32)
  state['seg.bias'] = rng.normal(0, 0.1, (classes,)).astype(np.float32)
  k = bilinear_kernel_1d(16)
  state['up.weight'] = np.broadcast_to(np.outer(k, k), (classes, 1, 16, 16)).copy()
  return state


@pytest.mark.parametrize('name', ['drn_c_26', 'drn_c_42', 'drn_c_58', 'drn_d_22', 'drn_d_38', 'drn_d_54'])
def test_imported_network_computes_drn_py(name, tmp_path):
  """The imported classifier's features and logits are drn.py's forward (eval mode) of the same state dict."""
  model, variables, modules, levels, state, _ = imported(name, tmp_path)
  x = np.random.default_rng(4).normal(size=(2, 40, 48, 3)).astype(np.float32)
  torch = TorchForward(modules, levels, state)
  want = torch(nchw(x).astype(np.float64), logits=True)
  got = np.asarray(model.apply(variables, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
  features = drn.drn(name, width=WIDTH)
  out = np.asarray(features.apply({'params': {k: v for k, v in variables['params'].items() if k != 'fc'},
                                   'batch_stats': variables['batch_stats']}, jnp.asarray(x)))
  want = torch(nchw(x).astype(np.float64))
  np.testing.assert_allclose(nchw(out), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_imported_drnseg_computes_segment_py(tmp_path):
  """A segment.py DRNSeg file: scores at 1/8 through the 'deconv' upsampling, log-softmax, equal segment.py's output
  (normalised RGB in, base, seg, ConvTranspose2d(16, stride 8, pad 4, groups C), LogSoftmax) for this library's
  input, BGR minus the mean."""
  arch, block, blocks = config('drn_d_22')
  modules, levels = drn_py(arch, block, blocks, width=WIDTH, num_classes=0)
  state = segment_state(arch, modules, classes=5, seed=7)
  path = str(tmp_path / 'seg.pth')
  write_torch(path, state)
  norm_mean, norm_std = (0.290101, 0.328081, 0.286964), (0.182954, 0.186566, 0.184475)  # fyu/drn Cityscapes
  model = drn.DRNSeg(drn.drn('drn_d_22', width=WIDTH), num_classes=5, mean_bgr=MEAN_BGR, norm_mean_rgb=norm_mean,
                     norm_std_rgb=norm_std)
  variables, _ = load_drn(path, model, random_variables(model))
  rgb = np.random.default_rng(8).integers(0, 256, size=(2, 32, 40, 3)).astype(np.uint8)
  scores = model.apply(variables, jnp.asarray(pipeline.to_network_input(rgb, MEAN_BGR)))
  got = np.asarray(jax.nn.log_softmax(bilinear_deconv(scores), axis=-1))

  x = (nchw(rgb).astype(np.float64) / 255 - np.array(norm_mean)[:, None, None]) / np.array(norm_std)[:, None, None]
  base = {k[len('base.'):]: v for k, v in state.items() if k.startswith('base.')}
  children = ['layer0'] + [f'layer{i}' for i in range(1, 9)]
  base = {children[int(k.split('.')[0])] + k[len(k.split('.')[0]):]: v for k, v in base.items()}
  features = TorchForward(modules, levels, base)(x)
  seg = np.einsum('nchw,oc->nhwo', features, state['seg.weight'][:, :, 0, 0]) + state['seg.bias']
  up = caffe_deconv_ref(seg, state['up.weight'][0, 0])
  top = up.max(-1, keepdims=True)
  want = up - top - np.log(np.exp(up - top).sum(-1, keepdims=True))  # LogSoftmax over the classes
  assert got.shape == want.shape == (2, 32, 40, 5)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-3)


def test_wrong_files_give_one_line(tmp_path):
  """Another width, another variant, a segment file for a classifier, a foreign up.weight: one line naming the
  tensor (and both shapes where they differ)."""
  arch, block, blocks = config('drn_c_26')
  state = random_state(drn_py(arch, block, blocks, width=WIDTH)[0])
  path = str(tmp_path / 'c26.pth')
  write_torch(path, state)

  def load(model):
    return load_drn(path, model, random_variables(model))

  with pytest.raises(InputError, match=r'conv1.weight has shape 2x3x7x7 in the file, .* wants 4x3x7x7$'):
    load(drn.drn('drn_c_26', width=2 * WIDTH, num_classes=1000))
  with pytest.raises(InputError, match=r'no layer3\.2\.\S+, which this network .* needs'):
    load(drn.drn('drn_c_42', width=WIDTH, num_classes=1000))
  with pytest.raises(InputError, match=r'conv1.weight \(2x3x7x7\) has no place in this network \(DRN-D'):
    load(drn.drn('drn_d_22', width=WIDTH, num_classes=1000))
  notes = load(drn.drn('drn_c_26', width=WIDTH))[1]  # no classifier: fc is noted, not an error
  assert notes == ['fc.weight: the ImageNet classifier, not part of the segmentation network',
                   'fc.bias: the ImageNet classifier, not part of the segmentation network']
  seg_state = segment_state(arch, drn_py(arch, block, blocks, width=WIDTH, num_classes=0)[0], classes=5, seed=0)
  write_torch(path, seg_state)
  with pytest.raises(InputError, match='a segment.py DRNSeg state dict'):
    load(drn.drn('drn_c_26', width=WIDTH))
  seg_state['up.weight'] = seg_state['up.weight'] * 2
  write_torch(path, seg_state)
  with pytest.raises(InputError, match=r'up.weight: expected the frozen bilinear kernel 5x1x16x16 .* another kernel'):
    load(drn.DRNSeg(drn.drn('drn_c_26', width=WIDTH), num_classes=5, mean_bgr=MEAN_BGR))
  with pytest.raises(InputError, match=r'seg.weight has shape 5x64x1x1 in the file, .* wants 7x64x1x1'):
    load(drn.DRNSeg(drn.drn('drn_c_26', width=WIDTH), num_classes=7, mean_bgr=MEAN_BGR))


# ------------------------------------------------------------------ the context module on a DRN


def test_context_module_on_a_drn():
  """DilationNet(DRNSeg, Basic): parameters under front_end and context_module, BatchNorm statistics only under
  front_end, scores at 1/8; identity-initialised without noise, the module passes the DRN's scores through its ReLUs."""
  seg = drn.DRNSeg(drn.drn('drn_d_22', width=WIDTH), num_classes=5, mean_bgr=MEAN_BGR)
  context = ContextModule(num_classes=5, noise_std=0.0)
  net = DilationNet(seg, context)
  x = jnp.asarray(np.random.default_rng(9).normal(0, 50, size=(2, 48, 64, 3)), jnp.float32)
  front = random_variables(seg)
  variables = {'params': {'front_end': front['params'],
                          'context_module': context.init(jax.random.key(0), jnp.zeros((1, 6, 8, 5)))['params']},
               'batch_stats': {'front_end': front['batch_stats']}}
  assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, jax.eval_shape(net.init, jax.random.key(0), x))
  out = np.asarray(net.apply(variables, x))
  scores = np.asarray(seg.apply(front, x))
  assert out.shape == scores.shape == (2, 6, 8, 5)
  np.testing.assert_allclose(out, np.maximum(scores, 0), rtol=1e-5, atol=1e-5)
  _, new = net.apply(variables, x, train=True, mutable=['batch_stats'])  # train reaches the DRN's BatchNorm
  assert not np.allclose(jax.tree.leaves(new)[0], jax.tree.leaves(variables['batch_stats'])[0])


@pytest.mark.parametrize('fields,field', [
    (dict(blocks=(1, 1, 2)), 'blocks'), (dict(dilations=(2, 0, 2, 1)), 'dilations'),
    (dict(variant='drn_d_22', residual_7_8=True), 'residual_7_8')])
def test_the_degridding_config_fields_reach_the_drn_and_bad_ones_name_the_field(fields, field):
  """model.drn.dilations, residual_7_8 and blocks are the DRN's (build_model checks them before any layer runs)."""
  from dilated_jax.models import build_model, model_config

  cfg = model_config('cityscapes')
  cfg.update(backbone='drn')
  cfg.drn.update(variant='drn_c_26', width=WIDTH, dilations=(2, 4, 4, 1), residual_7_8=True,
                 blocks=(1, 1, 2, 2, 2, 2, 1, 0))
  base = build_model(cfg).front_end.base
  assert (base.dilations, base.residual_7_8, base.blocks) == ((2, 4, 4, 1), True, (1, 1, 2, 2, 2, 2, 1, 0))
  assert [lv.name for lv in base.levels()][-1] == 'layer7' and base.levels()[-1].residual
  assert drn.is_published({'variant': 'drn_c_26'}) and not drn.is_published(cfg.drn.to_dict())
  cfg.drn.update(dict(dict(dilations=drn.DILATIONS, residual_7_8=False, blocks=()), **fields))
  with pytest.raises(InputError, match=f'model.drn.{field}:'):
    build_model(cfg)
