"""Released weights: the Caffe and torch readers, the import onto every preset, prediction and conversion from files.

The files are written here, with known weights, as the authors' deploy networks lay them out (fyu/dilation
models/*_deploy.prototxt);
a numpy transcription of the deploy prototxts is the reference the imported network must match.
"""

import collections
import contextlib
import json
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

from dilated_jax import InputError, checkpoint, weights
from dilated_jax.data.info import DATASETS
from dilated_jax.models import build_model, model_config
from dilated_jax.models.layers import bilinear_kernel_1d
from dilated_jax.weights import caffe, importer, torch_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 1 / 32  # the paper's topology with 2..16 channels per conv and fc6/fc7 of 128: CPU-sized
PRESETS = ('pascal_voc', 'camvid', 'kitti', 'cityscapes')
CLASSES = {'pascal_voc': 21, 'camvid': 11, 'kitti': 11, 'cityscapes': 19}

# ------------------------------------------------------------------ the deploy networks, transcribed from the prototxts


def deploy(preset, width=WIDTH):
  """[(caffe name, OIHW shape, dilation, pad, relu)] and 'pool' markers, in the order of the deploy prototxt."""
  c, voc = CLASSES[preset], preset == 'pascal_voc'
  ch = lambda n: max(1, round(n * width))
  net, cin = [], 3
  for b, (n, out, d) in enumerate([(2, 64, 1), (2, 128, 1), (3, 256, 1), (3, 512, 1), (3, 512, 2)], start=1):
    for i in range(1, n + 1):
      net.append((f'conv{b}_{i}', (ch(out), cin, 3, 3), d, 0, True))
      cin = ch(out)
    if b <= 3:
      net.append('pool')
  net += [('fc6', (ch(4096), cin, 7, 7), 4, 0, True), ('fc7', (ch(4096), ch(4096), 1, 1), 1, 0, True),
          ('fc-final' if voc else 'final', (c, ch(4096), 1, 1), 1, 0, False)]
  dilations = {'pascal_voc': (1, 1, 2, 4, 8, 16, 1), 'camvid': (1, 1, 2, 4, 8, 16, 1), 'kitti': (1, 1, 2, 4, 8, 1),
               'cityscapes': (1, 1, 2, 4, 8, 16, 32, 64, 1)}[preset]
  multipliers = (2, 2, 4, 8, 16, 32, 32) if voc else (1,) * len(dilations)
  names = ['conv1_1', 'conv1_2'] + [f'conv{i}_1' for i in range(2, len(dilations) - 1)] + ['fc1']
  prefix, cin = ('ct_' if voc else 'ctx_'), c
  for k, (name, d, m) in enumerate(zip(names, dilations, multipliers)):
    # VOC: zero padding 33 once at ct_conv1_1, then unpadded; the urban models pad every layer by its dilation.
    net.append((prefix + name, (c * m, cin, 3, 3), d, (33 if k == 0 else 0) if voc else d, True))
    cin = c * m
  net.append((prefix + 'final', (c, cin, 1, 1), 1, 0, False))
  return net


def known_blobs(net, seed=0):
  """Distinct He-scaled weights and biases per layer: {caffe name: (OIHW weights, bias)}."""
  rng = np.random.default_rng(seed)
  out = {}
  for entry in net:
    if entry != 'pool':
      name, shape = entry[:2]
      w = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape).astype(np.float32)
      out[name] = (w, rng.normal(0, 0.1, shape[0]).astype(np.float32))
  return out


def caffe_layers(preset, blobs, inner_product=False):
  """The layers of a released .caffemodel: weights of every conv, plus layers without weights as Caffe has them."""
  layers = [caffe.Layer('data', 'Input', [])]
  for name, (w, b) in blobs.items():
    if inner_product and name in ('fc6', 'fc7'):  # ImageNet VGG-16: fully connected, the input flattened (C, H, W)
      layers.append(caffe.Layer(name, 'InnerProduct', [w.reshape(w.shape[0], -1), b]))
    else:
      layers.append(caffe.Layer(name, 'Convolution', [w, b]))
    layers.append(caffe.Layer(name + '_relu', 'ReLU', []))
  if preset == 'cityscapes':  # the frozen x8 deconvolution (bias_term: false)
    k = bilinear_kernel_1d(16)
    layers.append(caffe.Layer('ctx_upsample', 'Deconvolution', [np.tile(np.outer(k, k), (19, 1, 1, 1))]))
  return layers + [caffe.Layer('prob', 'Softmax', [])]


def np_conv(x, w, b, dilation, pad):
  """Caffe's convolution, directly: x (H, W, C) float64, w OIHW."""
  x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  _, _, kh, kw = w.shape
  ho, wo = x.shape[0] - dilation * (kh - 1), x.shape[1] - dilation * (kw - 1)
  out = np.zeros((ho, wo, w.shape[0])) + b
  for i in range(kh):
    for j in range(kw):
      out += x[i * dilation:i * dilation + ho, j * dilation:j * dilation + wo] @ w[:, :, i, j].T.astype(np.float64)
  return out


def np_pool(x):
  """Caffe's 2x2 stride-2 max pooling, which rounds up."""
  h, w = x.shape[:2]
  x = np.pad(x, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=-np.inf)
  return x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, -1).max(axis=(1, 3))


def np_deploy(net, blobs, x):
  """The deploy network's scores (before softmax / deconvolution) for one input (H, W, 3), BGR minus mean."""
  x = np.asarray(x, np.float64)
  for entry in net:
    if entry == 'pool':
      x = np_pool(x)
      continue
    name, _, dilation, pad, relu = entry
    x = np_conv(x, *blobs[name], dilation, pad)
    x = np.maximum(x, 0) if relu else x
  return x


def tiny_config(preset, width=WIDTH):
  cfg = model_config(preset)
  cfg.front_end.width = width
  return cfg


@pytest.fixture(scope='module')
def released(tmp_path_factory):
  """{preset: (deploy net, blobs, path of its .caffemodel)}, written once."""
  folder = tmp_path_factory.mktemp('released')
  out = {}
  for i, preset in enumerate(PRESETS):
    net = deploy(preset)
    blobs = known_blobs(net, seed=i)
    path = str(folder / f'{preset}.caffemodel')
    caffe.write_caffemodel(path, caffe_layers(preset, blobs))
    out[preset] = (net, blobs, path)
  return out


# ------------------------------------------------------------------ the protobuf reader


def caffe_proto_classes(packed=True):
  """NetParameter of the caffe.proto fields that weights use, built by the protobuf library itself."""
  pytest.importorskip('google.protobuf')
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  F = descriptor_pb2.FieldDescriptorProto
  fd = descriptor_pb2.FileDescriptorProto(name=f'caffe_subset_{packed}.proto', package='caffe', syntax='proto2')

  def message(name, fields):
    m = fd.message_type.add(name=name)
    for fname, number, kind, repeated, type_name in fields:
      f = m.field.add(name=fname, number=number, type=kind,
                      label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
      if type_name:
        f.type_name = type_name
      if repeated and kind in (F.TYPE_FLOAT, F.TYPE_DOUBLE, F.TYPE_INT64):
        f.options.packed = packed

  message('BlobShape', [('dim', 1, F.TYPE_INT64, True, None)])
  message('BlobProto', [('num', 1, F.TYPE_INT64, False, None), ('channels', 2, F.TYPE_INT64, False, None),
                        ('height', 3, F.TYPE_INT64, False, None), ('width', 4, F.TYPE_INT64, False, None),
                        ('data', 5, F.TYPE_FLOAT, True, None), ('diff', 6, F.TYPE_FLOAT, True, None),
                        ('shape', 7, F.TYPE_MESSAGE, False, '.caffe.BlobShape'),
                        ('double_data', 8, F.TYPE_DOUBLE, True, None)])
  message('LayerParameter', [('name', 1, F.TYPE_STRING, False, None), ('type', 2, F.TYPE_STRING, False, None),
                             ('bottom', 3, F.TYPE_STRING, True, None), ('top', 4, F.TYPE_STRING, True, None),
                             ('blobs', 7, F.TYPE_MESSAGE, True, '.caffe.BlobProto')])
  message('V1LayerParameter', [('bottom', 2, F.TYPE_STRING, True, None), ('name', 4, F.TYPE_STRING, False, None),
                               ('type', 5, F.TYPE_INT32, False, None),
                               ('blobs', 6, F.TYPE_MESSAGE, True, '.caffe.BlobProto')])
  message('NetParameter', [('name', 1, F.TYPE_STRING, False, None),
                           ('layers', 2, F.TYPE_MESSAGE, True, '.caffe.V1LayerParameter'),
                           ('input', 3, F.TYPE_STRING, True, None),
                           ('layer', 100, F.TYPE_MESSAGE, True, '.caffe.LayerParameter')])
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fd)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName('caffe.NetParameter'))


@pytest.mark.parametrize('packed', [True, False])
def test_reader_decodes_what_protobuf_writes(packed):
  """Both layer formats, shape and legacy 4-D blobs, float and double data, packed or not, other fields skipped."""
  Net = caffe_proto_classes(packed)
  rng = np.random.default_rng(0)
  w, b, fc, d = (rng.normal(size=s).astype(np.float32) for s in ((4, 3, 3, 3), (4,), (5, 12), (2, 2)))
  net = Net(name='deploy', input=['data'])
  layer = net.layer.add(name='conv1_1', type='Convolution', bottom=['data'], top=['conv1_1'])
  blob = layer.blobs.add(diff=[9.0] * 3)
  blob.shape.dim.extend(w.shape)
  blob.data.extend(w.ravel().tolist())
  blob = layer.blobs.add()
  blob.shape.dim.extend(b.shape)
  blob.data.extend(b.ravel().tolist())
  layer = net.layer.add(name='ct_fc1', type='Convolution')
  blob = layer.blobs.add()
  blob.shape.dim.extend(d.shape)
  blob.double_data.extend(d.astype(np.float64).ravel().tolist())
  net.layer.add(name='relu', type='ReLU', bottom=['conv1_1'])
  v1 = net.layers.add(name='fc6', type=14, bottom=['pool5'])
  v1.blobs.add(num=1, channels=1, height=5, width=12, data=fc.ravel().tolist())
  v1.blobs.add(num=1, channels=1, height=1, width=5, data=[1, 2, 3, 4, 5])
  layers = {layer.name: layer for layer in caffe.decode_net(net.SerializeToString())}
  assert list(layers) == ['fc6', 'conv1_1', 'ct_fc1', 'relu']  # protobuf writes field 2 (V1) before field 100
  assert layers['fc6'].type == 'InnerProduct' and layers['relu'].blobs == []
  np.testing.assert_array_equal(layers['conv1_1'].blobs[0], w)
  np.testing.assert_array_equal(layers['conv1_1'].blobs[1], b)
  np.testing.assert_array_equal(layers['ct_fc1'].blobs[0], d)
  np.testing.assert_array_equal(layers['fc6'].blobs[0], fc.reshape(1, 1, 5, 12))
  np.testing.assert_array_equal(layers['fc6'].blobs[1].ravel(), [1, 2, 3, 4, 5])


def test_writer_is_read_by_protobuf():
  """The encoder writes what protobuf parses (so files written here are real .caffemodels)."""
  Net = caffe_proto_classes()
  w = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
  for v1 in (False, True):
    net = Net()
    net.ParseFromString(caffe.encode_net([caffe.Layer('conv1_1', 'Convolution', [w, np.ones(2)])], v1=v1))
    layer = net.layers[0] if v1 else net.layer[0]
    blob = layer.blobs[0]
    assert layer.name == 'conv1_1' and layer.type == (4 if v1 else 'Convolution')
    dims = (blob.num, blob.channels, blob.height, blob.width) if v1 else tuple(blob.shape.dim)
    assert dims == w.shape and list(blob.data) == w.ravel().tolist()


# ------------------------------------------------------------------ the import onto each preset


@pytest.mark.parametrize('v1', [False, True], ids=['layer', 'V1 layers'])
@pytest.mark.parametrize('preset', PRESETS)
def test_every_tensor_lands_in_its_place(preset, v1, tmp_path):
  net = deploy(preset)
  blobs = known_blobs(net)
  path = str(tmp_path / 'model.caffemodel')
  caffe.write_caffemodel(path, [layer for layer in caffe_layers(preset, blobs) if layer.type != 'Input' or not v1],
                         v1=v1)
  imported = weights.import_weights(path, tiny_config(preset), DATASETS[preset].mean_bgr)
  for name, (w, b) in blobs.items():
    module = 'context_module' if name.startswith(('ct_', 'ctx_')) else 'front_end'
    layer = {'fc-final': 'final'}.get(name, name.replace('ct_', 'ctx_', 1))
    np.testing.assert_array_equal(imported.params[module][layer]['kernel'], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(imported.params[module][layer]['bias'], b)
  assert len(imported.layers) == len(blobs)
  assert any('ctx_upsample' in note for note in imported.notes) == (preset == 'cityscapes')


@pytest.mark.parametrize('preset', PRESETS)
def test_imported_network_computes_the_deploy_network(preset, released):
  """Scores of the whole imported network = the deploy prototxt computed in numpy (2 x 3 cells, non-square)."""
  net, blobs, path = released[preset]
  cfg = tiny_config(preset)
  params, with_context = weights.network_params(path, cfg, DATASETS[preset].mean_bgr)
  assert with_context
  x = np.random.default_rng(1).uniform(-120, 140, (388, 396, 3)).astype(np.float32)
  got = np.asarray(jax.jit(build_model(cfg).apply)({'params': params}, x[None]))[0]
  want = np_deploy(net, blobs, x)
  assert got.shape == want.shape == (2, 3, CLASSES[preset])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# ------------------------------------------------------------------ ImageNet VGG-16: Caffe and torchvision


def vgg16_blobs(seed=3):
  """ImageNet VGG-16 at WIDTH: the trunk conv1_1 .. fc7 and the 1000-way fc8 (here 10-way)."""
  net = [e for e in deploy('camvid') if e == 'pool' or e[0].startswith(('conv', 'fc6', 'fc7'))]
  blobs = known_blobs(net, seed)
  fc8 = np.random.default_rng(seed).normal(0, 0.1, (10, blobs['fc7'][0].shape[0], 1, 1)).astype(np.float32)
  return net, dict(blobs, fc8=(fc8, np.zeros(10, np.float32)))


@pytest.mark.slow
@pytest.mark.parametrize('inner_product', [False, True], ids=['vgg_conv', 'VGG_ILSVRC_16_layers'])
def test_vgg16_caffemodel_initialises_the_front_end(inner_product, tmp_path):
  """fc6 / fc7 stored as convolutions or as InnerProduct (V1 format, 4096 x 25088 at full width) land alike."""
  _, blobs = vgg16_blobs()
  path = str(tmp_path / 'vgg16.caffemodel')
  layers = caffe_layers('camvid', blobs, inner_product=inner_product)
  caffe.write_caffemodel(path, [layer for layer in layers if layer.type != 'Input' or not inner_product],
                         v1=inner_product)
  cfg = tiny_config('camvid')
  fresh = importer.init_params(cfg, with_context=False)
  params, imported = weights.initialise(fresh, path, cfg, DATASETS['camvid'].mean_bgr)
  for name, (w, b) in blobs.items():
    if name != 'fc8':
      np.testing.assert_array_equal(params['front_end'][name]['kernel'], w.transpose(2, 3, 1, 0))
      np.testing.assert_array_equal(params['front_end'][name]['bias'], b)
  np.testing.assert_array_equal(params['front_end']['final']['kernel'], fresh['front_end']['final']['kernel'])
  assert any(note.startswith('fc8') for note in imported.notes)
  assert any('final' in note for note in imported.notes)  # left to the paper's N(0, 0.001) initialisation
  with pytest.raises(InputError, match='no layer final.*cannot segment'):
    weights.network_params(path, cfg, DATASETS['camvid'].mean_bgr)


@contextlib.contextmanager
def torch_names():
  """Registers stand-in `torch` modules so that pickle can name torch's globals; only while writing."""
  torch, utils = types.ModuleType('torch'), types.ModuleType('torch._utils')
  storage = type('FloatStorage', (), {'__module__': 'torch'})
  torch.LongStorage = type('LongStorage', (), {'__module__': 'torch'})  # BatchNorm's num_batches_tracked

  def _rebuild_tensor_v2(*args):
    raise AssertionError('never called: the file is only written here')

  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'  # pickled by name, as torch's own
  torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = storage, utils, _rebuild_tensor_v2
  saved = {k: sys.modules.get(k) for k in ('torch', 'torch._utils')}
  sys.modules.update({'torch': torch, 'torch._utils': utils})
  try:
    yield storage, _rebuild_tensor_v2
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


def write_torch(path, state, legacy=False, transposed=(), checkpoint=None):
  """torch.save(state_dict) without torch: each layer's weight and bias share one storage (the bias at an offset);
  names in `transposed` are stored as a non-contiguous view (stride (1, rows)), as torch keeps `W.t()`. Integer
  arrays (BatchNorm's num_batches_tracked) are int64 in a storage of their own. `checkpoint`: the other entries of
  a training checkpoint that holds the state dict under 'state_dict' (fyu/drn segment.py's save_checkpoint)."""
  storages, order = {}, []
  with torch_names() as (float_storage, rebuild):
    storage_type = {np.dtype('<f4'): float_storage, np.dtype('<i8'): sys.modules['torch'].LongStorage}

    class Tensor:
      def __init__(self, key, offset, shape, stride):
        self.key, self.offset, self.shape, self.stride = key, offset, shape, stride

      def __reduce__(self):
        return rebuild, (('storage', self.key), self.offset, self.shape, self.stride, False, collections.OrderedDict())

    out = collections.OrderedDict()
    for name in state:
      array = state[name].astype('<i8' if state[name].dtype.kind in 'iu' else '<f4')
      layer = (name.rsplit('.', 1)[0], array.dtype)
      key = str(order.index(layer) if layer in order else len(order))
      if layer not in order:
        order.append(layer)
      data = storages.setdefault(key, [])
      offset = sum(a.size for a in data)
      if name in transposed:
        data.append(np.ascontiguousarray(array.T))
        out[name] = Tensor(key, offset, array.shape, (1, array.shape[0]))
      else:
        data.append(array)
        strides = tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim))
        out[name] = Tensor(key, offset, array.shape, strides)

    class Pickler(pickle.Pickler):
      def persistent_id(self, obj):
        if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == 'storage':
          numel = sum(a.size for a in storages[obj[1]])
          kind = storage_type[storages[obj[1]][0].dtype]
          return ('storage', kind, obj[1], 'cpu', numel) + ((None,) if legacy else ())
        return None

    obj = out if checkpoint is None else dict(checkpoint, state_dict=out)
    body = io_bytes(lambda f: Pickler(f, protocol=2).dump(obj))
  raw = {k: b''.join(a.tobytes() for a in v) for k, v in storages.items()}
  itemsize = {k: v[0].dtype.itemsize for k, v in storages.items()}
  if legacy:
    with open(path, 'wb') as f:
      for header in (torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL, {'little_endian': True}):
        pickle.dump(header, f, protocol=2)
      f.write(body)
      pickle.dump(list(raw), f, protocol=2)
      for k, data in raw.items():
        f.write(struct.pack('<q', len(data) // itemsize[k]) + data)
  else:
    with zipfile.ZipFile(path, 'w') as z:
      z.writestr('vgg16/data.pkl', body)
      z.writestr('vgg16/byteorder', 'little')
      for k, data in raw.items():
        z.writestr(f'vgg16/data/{k}', data)
      z.writestr('vgg16/version', '3\n')


def io_bytes(write):
  import io
  f = io.BytesIO()
  write(f)
  return f.getvalue()


def torchvision_state(blobs):
  """The torchvision names of the same VGG-16 weights (fc6 / fc7 / fc8 as nn.Linear)."""
  names = dict(zip(['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1', 'conv3_2', 'conv3_3', 'conv4_1', 'conv4_2',
                    'conv4_3', 'conv5_1', 'conv5_2', 'conv5_3', 'fc6', 'fc7', 'fc8'],
                   [f'features.{i}' for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
                   + ['classifier.0', 'classifier.3', 'classifier.6']))
  state = collections.OrderedDict()
  for name, (w, b) in blobs.items():
    state[names[name] + '.weight'] = w.reshape(w.shape[0], -1) if name.startswith('fc') else w
    state[names[name] + '.bias'] = b
  return state


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['zip', 'legacy', 'npz'])
def test_torchvision_vgg16_gives_the_caffe_import_features(kind, tmp_path):
  """Weights W in torchvision's convention: the torchvision import fed BGR minus the mean (0-255) computes at fc7
  what the unfolded (Caffe-style) import of W computes on torchvision's input (RGB / 255 - mean) / std."""
  _, blobs = vgg16_blobs()
  state = torchvision_state(blobs)
  path = str(tmp_path / ('vgg16.npz' if kind == 'npz' else 'vgg16.pth'))
  if kind == 'npz':
    np.savez(path, **state)
  else:
    write_torch(path, state, legacy=kind == 'legacy', transposed=('classifier.3.weight',))
  caffe_path = str(tmp_path / 'same_weights.caffemodel')
  caffe.write_caffemodel(caffe_path, caffe_layers('camvid', blobs))
  cfg, mean = tiny_config('camvid'), DATASETS['camvid'].mean_bgr
  fresh = importer.init_params(cfg, with_context=False)
  torch_params, imported = weights.initialise(fresh, path, cfg, mean)
  caffe_params, _ = weights.initialise(fresh, caffe_path, cfg, mean)
  assert imported.format.startswith('torchvision')
  rgb = np.random.default_rng(2).integers(0, 256, (388, 396, 3)).astype(np.float32)
  ours = rgb[..., ::-1] - np.asarray(mean, np.float32)
  theirs = (rgb / 255 - np.float32(importer.TORCHVISION_MEAN_RGB)) / np.float32(importer.TORCHVISION_STD_RGB)
  model = build_model(cfg, with_context=False)

  def fc7(params, x):
    _, state = model.apply({'params': params}, x[None], capture_intermediates=lambda m, _: m.name == 'fc7')
    return np.asarray(state['intermediates']['front_end']['fc7']['__call__'][0])

  want = fc7(caffe_params, theirs)
  np.testing.assert_allclose(fc7(torch_params, ours), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize('call', ['system', 'exec'])
@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_a_weights_file_that_runs_code_is_refused(call, legacy, tmp_path):
  marker = tmp_path / 'pwned'

  class Payload:
    def __reduce__(self):
      if call == 'system':
        return os.system, (f'touch {marker}',)
      return exec, (f'open({str(marker)!r}, "w").close()',)

  body = pickle.dumps(collections.OrderedDict([('features.0.weight', Payload())]), protocol=2)
  path = tmp_path / 'evil.pth'
  if legacy:
    path.write_bytes(b''.join(pickle.dumps(h, protocol=2) for h in (torch_pickle.LEGACY_MAGIC,
                                                                      torch_pickle.LEGACY_PROTOCOL, {})) + body)
  else:
    with zipfile.ZipFile(path, 'w') as z:
      z.writestr('evil/data.pkl', body)
  with pytest.raises(InputError) as error:
    weights.read_layers(str(path), DATASETS['camvid'].mean_bgr)
  message = str(error.value)
  assert '\n' not in message and ('posix.system' in message or '.exec' in message), message
  assert 'refused' in message and not marker.exists()


# ------------------------------------------------------------------ wrong files: one line naming the layer or byte


def test_a_file_of_another_preset_or_width_names_the_layer(released):
  _, _, camvid = released['camvid']
  _, _, kitti = released['kitti']
  _, _, cityscapes = released['cityscapes']
  cases = [(camvid, tiny_config('kitti'), 'ctx_conv5_1'),  # Dilation8 has a d16 layer that Dilation7 lacks
           (kitti, tiny_config('camvid'), 'no layer ctx_conv5_1'),
           (cityscapes, tiny_config('camvid'), 'final: the file has weights of 19x128x1x1, the network wants '
                                               '11x128x1x1'),
           (camvid, tiny_config('camvid', width=1 / 16), 'conv1_1: the file has weights of 2x3x3x3, the network '
                                                         'wants 4x3x3x3')]
  for path, cfg, expected in cases:
    with pytest.raises(InputError) as error:
      weights.network_params(path, cfg, DATASETS['camvid'].mean_bgr)
    assert expected in str(error.value) and '\n' not in str(error.value), str(error.value)


def test_a_truncated_file_names_the_byte(released, tmp_path):
  _, _, path = released['camvid']
  data = open(path, 'rb').read()
  cut = tmp_path / 'cut.caffemodel'
  cut.write_bytes(data[:len(data) * 2 // 3])
  with pytest.raises(InputError, match=r'not a complete \.caffemodel .*at byte \d+') as error:
    weights.read_layers(str(cut), DATASETS['camvid'].mean_bgr)
  assert '\n' not in str(error.value)


# ------------------------------------------------------------------ the entry points


def run_module(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='')
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def np_softmax(scores):
  prob = np.exp(scores - scores.max(-1, keepdims=True))
  return prob / prob.sum(-1, keepdims=True)


def np_deconv(scores, stride=8, kernel=16, pad=4):
  """Caffe's grouped Deconvolution with the bilinear filler: cell (i, j) adds its value x K[a, b] at output pixel
  (8i - 4 + a, 8j - 4 + b); the output is 8H x 8W."""
  h, w, c = scores.shape
  k = bilinear_kernel_1d(kernel)
  full = np.zeros((stride * (h - 1) + kernel, stride * (w - 1) + kernel, c))
  for a in range(kernel):
    for b in range(kernel):
      full[a:a + stride * h:stride, b:b + stride * w:stride] += scores * k[a] * k[b]
  return full[pad:pad + stride * h, pad:pad + stride * w]


def authors_probabilities(net, blobs, image_rgb, preset, tile=None):
  """The authors' test.py in numpy: BGR minus mean, reflect 186, deploy-input tiles taken at the stride of the output
  tile and reflected at their own bottom and right edges, softmax per tile (Cityscapes: after the in-network x8
  deconvolution), stitched, then cropped (Cityscapes) or zoomed x8 (util.interp_map). `tile`: the output tile
  (default: the preset's)."""
  (th, tw), m = tile or DATASETS[preset].tile, 186
  x = image_rgb[..., ::-1].astype(np.float32) - np.float32(DATASETS[preset].mean_bgr)
  x = np.pad(x, ((m, m), (m, m), (0, 0)), mode='reflect')
  h, w = image_rgb.shape[:2]
  rows = []
  for i in range(-(-h // th)):
    row = []
    for j in range(-(-w // tw)):
      tile = x[i * th:i * th + th + 2 * m, j * tw:j * tw + tw + 2 * m]
      tile = np.pad(tile, ((0, th + 2 * m - tile.shape[0]), (0, tw + 2 * m - tile.shape[1]), (0, 0)), mode='reflect')
      scores = np_deploy(net, blobs, tile)
      row.append(np_softmax(np_deconv(scores) if preset == 'cityscapes' else scores))
    rows.append(np.concatenate(row, axis=1))
  prob = np.concatenate(rows, axis=0)
  if preset == 'cityscapes':
    return prob[:h, :w]
  r0, c0 = np.arange(h) // 8, np.arange(w) // 8
  assert r0[-1] + 1 < prob.shape[0] and c0[-1] + 1 < prob.shape[1]  # interp_map reads one cell further
  rt, ct = (np.arange(h) / 8 - r0)[:, None, None], (np.arange(w) / 8 - c0)[None, :, None]
  v0 = rt * prob[r0 + 1][:, c0] + (1 - rt) * prob[r0][:, c0]  # util.interp_map
  v1 = rt * prob[r0 + 1][:, c0 + 1] + (1 - rt) * prob[r0][:, c0 + 1]
  return (1 - ct) * v0 + ct * v1


@pytest.mark.slow
def test_predict_and_convert_from_a_caffemodel(released, tmp_path):
  """predict --preset --weights = the authors' predict.py; convert's workdir predicts the same, and train and
  evaluate read it."""
  net, blobs, path = released['camvid']
  image = np.random.default_rng(4).integers(0, 256, (45, 61, 3)).astype(np.uint8)
  Image.fromarray(image).save(tmp_path / 'street.png')
  width = f'--width={WIDTH}'
  r = run_module('dilated_jax.predict', '--preset=camvid', f'--weights={path}', width, f'--output_dir={tmp_path}/a',
                 '--save_probs', str(tmp_path / 'street.png'))
  assert r.returncode == 0, r.stderr[-3000:]
  probs = np.load(tmp_path / 'a' / 'street.npy')
  assert probs.shape == (45, 61, 11) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)
  np.testing.assert_allclose(probs, authors_probabilities(net, blobs, image, 'camvid'), atol=2e-5)
  colours = np.asarray(Image.open(tmp_path / 'a' / 'street.png').convert('RGB'))
  np.testing.assert_array_equal(colours, np.asarray(DATASETS['camvid'].palette, np.uint8)[probs.argmax(-1)])

  work = tmp_path / 'converted'
  r = run_module('dilated_jax.weights.convert', '--preset=camvid', f'--weights={path}', width, f'--workdir={work}')
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.load(open(work / 'weights.json'))['preset'] == 'camvid'
  loaded = checkpoint.load_params(str(work), 'best')  # never evaluated: 'best' falls back to the latest
  np.testing.assert_array_equal(loaded['context_module']['ctx_conv5_1']['kernel'],
                                blobs['ctx_conv5_1'][0].transpose(2, 3, 1, 0))
  from dilated_jax.train import _merge  # what train --config.init_from=DIR does with it
  fresh = importer.init_params(tiny_config('camvid'))
  merged = _merge(fresh, loaded, keys=tuple(loaded), source=str(work))
  np.testing.assert_array_equal(merged['front_end']['fc6']['kernel'], loaded['front_end']['fc6']['kernel'])
  r = run_module('dilated_jax.predict', '--preset=camvid', f'--weights={work}', width, f'--output_dir={tmp_path}/b',
                 '--save_probs', str(tmp_path / 'street.png'))
  assert r.returncode == 0, r.stderr[-3000:]
  np.testing.assert_array_equal(np.load(tmp_path / 'b' / 'street.npy'), probs)
  r = run_module('dilated_jax.weights.convert', '--preset=camvid', f'--weights={path}', width, f'--workdir={work}')
  assert r.returncode == 2 and 'already holds checkpoints' in r.stderr  # never written over


@pytest.mark.slow
def test_cityscapes_predict_and_evaluate_stitch_tiles_and_deconvolve_as_the_authors(released, tmp_path):
  """The only preset with the in-network deconvolution, and the only one whose images need several tiles (2048x1024
  in 1024 px tiles): predict on one tile, and evaluate on a 3 x 3 grid of 64 px tiles with short last ones, against
  the numpy test.py above."""
  from dilated_jax import metrics, sharding
  from dilated_jax.inference import Predictor, evaluate

  net, blobs, path = released['cityscapes']
  rng = np.random.default_rng(8)
  image = rng.integers(0, 256, (150, 140, 3)).astype(np.uint8)
  Image.fromarray(image).save(tmp_path / 'street.png')
  r = run_module('dilated_jax.predict', '--preset=cityscapes', f'--weights={path}', f'--width={WIDTH}',
                 f'--output_dir={tmp_path}/out', '--save_probs', str(tmp_path / 'street.png'))
  assert r.returncode == 0, r.stderr[-3000:]
  probs = np.load(tmp_path / 'out' / 'street.npy')
  assert probs.shape == (150, 140, 19)
  # float32 logits reach the hundreds in this 27-layer network: near-even pixels differ by up to ~5e-4 from float64.
  # A tile or the deconvolution one pixel off differs by tenths on these random pixels.
  np.testing.assert_allclose(probs, authors_probabilities(net, blobs, image, 'cityscapes'), atol=1e-3)

  info, tile = DATASETS['cityscapes'], (64, 64)
  reference = authors_probabilities(net, blobs, image, 'cityscapes', tile)
  label = rng.integers(0, 19, image.shape[:2])
  label[rng.random(label.shape) < 0.1] = 255
  mesh = sharding.make_mesh(jax.devices()[:1])
  cfg = tiny_config('cityscapes')
  params, _ = weights.network_params(path, cfg, info.mean_bgr)
  predictor = Predictor(cfg, info, tile, mesh)
  np.testing.assert_allclose(predictor.probabilities(params, [image])[0], reference, atol=1e-3)
  result = evaluate(predictor, params, [(image, label)], info, batch_size=1)
  expected = np.asarray(metrics.confusion_matrix(label[None], reference.argmax(-1)[None], 19))
  # Only a pixel whose two best classes are within 1e-3 may change sides between float32 and float64.
  top2 = np.sort(reference, axis=-1)[..., -2:]
  near_ties = int(((top2[..., 1] - top2[..., 0] < 1e-3) & (label != 255)).sum())
  assert np.abs(np.asarray(result['confusion']) - expected).sum() <= 2 * near_ties
  assert np.sum(result['confusion']) == int((label != 255).sum())


@pytest.mark.slow
def test_entry_points_give_one_line_for_wrong_files(released, tmp_path):
  _, _, camvid = released['camvid']
  image = tmp_path / 'a.png'
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  cut = tmp_path / 'cut.caffemodel'
  cut.write_bytes(open(camvid, 'rb').read()[:5000])
  runs = [(('dilated_jax.predict', '--preset=kitti', f'--weights={camvid}', f'--width={WIDTH}',
            f'--output_dir={tmp_path}/out', str(image)), 'ctx_conv5_1'),
          (('dilated_jax.weights.convert', '--preset=camvid', f'--weights={cut}', f'--workdir={tmp_path}/w'),
           'at byte'),
          (('dilated_jax.predict', '--preset=camvid', f'--weights={camvid}', '--workdir=x',
            f'--output_dir={tmp_path}/out', str(image)), 'not both')]
  for args, expected in runs:
    r = run_module(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert lines[-1].startswith('error: ') and expected in lines[-1], lines[-1]
  assert not (tmp_path / 'out').exists() and not (tmp_path / 'w' / 'checkpoints').exists()


@pytest.mark.slow
def test_train_starts_from_a_weights_file(tmp_path):
  """--config.weights: a file for the experiment's own (narrow) front end puts every layer in place."""
  from dilated_jax import config
  from dilated_jax.train import train

  cfg = config.load(os.path.join(ROOT, 'experiments/synthetic.py:stage=frontend'))
  cfg.data.synthetic.update(image_size=32, train_size=8, val_size=8, test_size=8, num_objects=1, disc_radius=3,
                            frame_width=2, frame_distance=4)
  cfg.model.front_end.update(block_channels=(4, 8), fc_channels=8)
  cfg.eval.update(tile=(32, 32), batch_size=8)
  cfg.update(batch_size=8, total_steps=1, log_every=1, checkpoint_every=1, lr=0.0, weight_decay=0.0)
  shapes = importer.template(cfg.model, with_context=False)['front_end']
  rng = np.random.default_rng(5)
  blobs = {n: (rng.normal(size=(s['kernel'][3], s['kernel'][2]) + s['kernel'][:2]).astype(np.float32),
               rng.normal(size=s['bias']).astype(np.float32)) for n, s in shapes.items()}
  path = str(tmp_path / 'front.caffemodel')
  caffe.write_caffemodel(path, [caffe.Layer(n, 'Convolution', list(b)) for n, b in blobs.items()])
  cfg.weights = path
  train(cfg, str(tmp_path / 'run'))
  params = checkpoint.load_params(str(tmp_path / 'run'))
  for name, (w, b) in blobs.items():
    # the synthetic front end scales its input by input_scale: the import divides conv1_1 by it
    scale = cfg.model.front_end.input_scale if name == 'conv1_1' else 1.0
    np.testing.assert_allclose(params['front_end'][name]['kernel'], w.transpose(2, 3, 1, 0) / scale, rtol=1e-6)
    np.testing.assert_array_equal(params['front_end'][name]['bias'], b)
  cfg.init_from = str(tmp_path / 'run')
  with pytest.raises(InputError, match='not both'):
    train(cfg, str(tmp_path / 'both'))
