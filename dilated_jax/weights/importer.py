"""Released weights onto this library's network: layer names, OIHW -> HWIO, every shape checked.

Sources: a Caffe .caffemodel (the authors' dilation*.caffemodel, vgg_conv.caffemodel, VGG_ILSVRC_16_layers with
fc6/fc7 as InnerProduct), a torchvision VGG-16 state dict (.pth, or .npz of the same names), or a workdir / orbax
checkpoint of this library. Caffe's input convention is this library's (BGR minus the dataset mean, 0-255), so
Caffe weights go in unchanged; torchvision's (RGB / 255, normalised) is folded into conv1_1.
"""

import dataclasses
import io
import math
import os
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dilated_jax import InputError, checkpoint
from dilated_jax.models import build_model, drn
from dilated_jax.models.layers import bilinear_kernel_1d
from dilated_jax.weights import caffe, torch_pickle

# The ImageNet classifier of VGG-16 files: never part of the dilation network.
IMAGENET_CLASSIFIER = 'fc8'
# torchvision's VGG-16: features.<i> are the 13 convolutions, classifier.0 / .3 the fully connected fc6 / fc7.
TORCHVISION_VGG16 = dict(zip(
    (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    ('conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1', 'conv3_2', 'conv3_3', 'conv4_1', 'conv4_2', 'conv4_3',
     'conv5_1', 'conv5_2', 'conv5_3')))
TORCHVISION_CLASSIFIER = {0: 'fc6', 3: 'fc7', 6: IMAGENET_CLASSIFIER}
# torchvision's input: RGB / 255, then (x - mean) / std per channel (RGB order); fyu/drn's ImageNet DRNs take it too.
TORCHVISION_MEAN_RGB, TORCHVISION_STD_RGB = drn.IMAGENET_MEAN_RGB, drn.IMAGENET_STD_RGB
# An .npz member's header is read from at most this many bytes (numpy's own limit on a header is 10,000).
_NPY_HEAD = 10_016


def canonical_name(name: str) -> str:
  """The library's name of a released layer: the VOC deploy's `fc-final` is `final` and its `ct_*` are `ctx_*`."""
  if name == 'fc-final':
    return 'final'
  if name.startswith('ct_'):
    return 'ctx_' + name[3:]
  return name


# ------------------------------------------------------------------ reading any weights file as Caffe layers


def fold_torchvision_input(kernel_oihw: np.ndarray, bias: np.ndarray, mean_bgr) -> tuple[np.ndarray, np.ndarray]:
  """conv1_1 taking BGR minus `mean_bgr` (0-255) from one taking torchvision's (RGB / 255 - mean) / std.

  x_rgb[c] = (y[2 - c] + mean_rgb[c] - 255 m[c]) / (255 s[c]) for the input y here, so the kernel is divided by
  255 s, its channels reversed, and the constant term goes into the bias. Exact for unpadded convolutions (this
  front end); a zero-padded border would miss the constant.
  """
  w = np.asarray(kernel_oihw, np.float64)
  scale = 255.0 * np.asarray(TORCHVISION_STD_RGB)
  offset = np.asarray(mean_bgr, np.float64)[::-1] - 255.0 * np.asarray(TORCHVISION_MEAN_RGB)
  w = w / scale[None, :, None, None]
  b = np.asarray(bias, np.float64) + np.einsum('oihw,i->o', w, offset)
  return w[:, ::-1].astype(np.float32), b.astype(np.float32)


def torchvision_layers(state: dict[str, np.ndarray], mean_bgr, source: str) -> list[caffe.Layer]:
  """Caffe-style layers (OIHW; fc6/fc7 InnerProduct) of a torchvision VGG-16 state dict, preprocessing folded."""
  state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}  # DataParallel
  if any(k.endswith('running_mean') for k in state):
    raise InputError(f'{source}: a VGG-16 with batch normalisation (vgg16_bn); the paper\'s front end has none')
  wanted = [(f'features.{i}', n, 'Convolution') for i, n in TORCHVISION_VGG16.items()]
  wanted += [(f'classifier.{i}', n, 'InnerProduct') for i, n in TORCHVISION_CLASSIFIER.items()]
  layers = []
  for key, name, kind in wanted:
    if f'{key}.weight' not in state or f'{key}.bias' not in state:
      if name == IMAGENET_CLASSIFIER:
        continue
      raise InputError(f'{source}: no {key}.weight / {key}.bias ({name}): not a torchvision VGG-16 state dict')
    layers.append(caffe.Layer(name, kind, [state[f'{key}.weight'], state[f'{key}.bias']]))
  used = {f'{k}.{p}' for k, _, _ in wanted for p in ('weight', 'bias')}
  extra = sorted(set(state) - used)
  if extra:
    raise InputError(f'{source}: {extra[0]} is not a VGG-16 parameter (a state dict of another network?)')
  w, b = layers[0].blobs
  if w.ndim != 4 or w.shape[1] != 3 or b.shape != w.shape[:1]:  # before folding, which would broadcast any shape
    raise InputError(f'{source}: features.0.weight (conv1_1) has shape {_oihw(w.shape)} and its bias {_oihw(b.shape)}, '
                     'expected out x 3 x kh x kw and out')
  layers[0].blobs = list(fold_torchvision_input(w, b, mean_bgr))
  return layers


def _npy(members: torch_pickle.ZipMembers, info: zipfile.ZipInfo) -> np.ndarray:
  """One .npz member's array: its header's shape and dtype checked against the member's size before its data is
  read (np.load allocates the declared shape first: 4 TiB from a 100-byte member)."""
  with members.open(info) as stream:
    head = stream.read(min(info.file_size, _NPY_HEAD))
    f = io.BytesIO(head)
    try:
      version = np.lib.format.read_magic(f)
      read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
      if version not in read_header:
        raise InputError(f'.npy format version {version}')
      shape, fortran_order, dtype = read_header[version](f)
    except Exception as e:  # noqa: BLE001 - numpy parses the header with ast and tokenize, which raise many kinds
      raise InputError(f'{info.filename} is not an .npy array ({" ".join(str(e).split())})') from None
    if dtype.kind not in 'biuf':
      raise InputError(f'{info.filename} holds {dtype} values, not numbers')
    nbytes = math.prod(shape) * dtype.itemsize
    if min(shape, default=0) < 0 or f.tell() + nbytes != info.file_size:
      raise InputError(f'{info.filename} declares shape {shape} of {dtype} ({nbytes} bytes) but holds '
                       f'{info.file_size - f.tell()} bytes')
    out = np.empty(nbytes, np.uint8)
    out[:len(head) - f.tell()] = np.frombuffer(head, np.uint8, offset=f.tell())
    members.fill(stream, info, out[len(head) - f.tell():])
  if fortran_order:
    return out.view(dtype).reshape(shape[::-1]).transpose()
  return out.view(dtype).reshape(shape)


def read_npz(path: str) -> dict[str, np.ndarray]:
  """name -> array of an .npz of numbers (no pickles), in memory bounded by the file's size."""
  try:
    with zipfile.ZipFile(path) as archive:
      members = torch_pickle.ZipMembers(archive, os.path.getsize(path))
      return {info.filename[:-len('.npy')]: _npy(members, info) for info in archive.infolist()}
  except (ValueError,) + torch_pickle.ZIP_ERRORS as e:
    raise InputError(f'{path}: not loaded as an .npz of arrays: {" ".join(str(e).split()) or type(e).__name__}') \
        from None


def read_layers(path: str, mean_bgr) -> tuple[list[caffe.Layer], str]:
  """(layers, format) of a weights file: a .caffemodel, a torch state dict (.pth / .pt) or an .npz state dict."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such weights file')
  if zipfile.is_zipfile(path):
    try:
      with zipfile.ZipFile(path) as z:
        is_npz = all(n.endswith('.npy') for n in z.namelist())
    except (ValueError,) + torch_pickle.ZIP_ERRORS as e:  # ValueError: a name that is not the UTF-8 it claims
      raise InputError(f'{path}: a broken zip archive ({" ".join(str(e).split()) or type(e).__name__})') from None
    if is_npz:
      return torchvision_layers(read_npz(path), mean_bgr, path), 'torchvision (npz)'
    return torchvision_layers(torch_pickle.read_state_dict(path), mean_bgr, path), 'torchvision'
  with open(path, 'rb') as f:
    head = f.read(2)
  if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05'):  # a pickle: legacy torch.save
    return torchvision_layers(torch_pickle.read_state_dict(path), mean_bgr, path), 'torchvision (legacy)'
  return caffe.read_caffemodel(path), 'caffe'


# ------------------------------------------------------------------ mapping layers onto the network


@dataclasses.dataclass
class Imported:
  """Parameters found in a weights file ({'front_end': {...}, 'context_module': {...}}, only the layers it has)."""

  params: dict
  source: str
  format: str
  notes: list[str]  # one line each: what the file holds that the network does not use, and why

  @property
  def layers(self) -> list[str]:
    return [n for module in self.params.values() for n in module]


def _oihw(shape) -> str:
  return 'x'.join(str(d) for d in shape)


def _convert(layer: caffe.Layer, want: dict, where: str) -> dict:
  """{'kernel' (HWIO), 'bias'} of one Caffe layer, with its shapes checked against the network's."""
  kh, kw, cin, cout = want['kernel']
  if len(layer.blobs) != 2:
    raise InputError(f'{where}: {len(layer.blobs)} blobs, expected 2 (weights and bias)')
  w, b = layer.blobs
  conv_shape = (cout, cin, kh, kw)
  if layer.type == 'InnerProduct':
    # Caffe flattens the input (C, H, W) in that order: fc6 of VGG-16 is 4096 x (512 * 7 * 7).
    flat = w.reshape(w.shape[-2:]) if w.ndim >= 2 and all(d == 1 for d in w.shape[:-2]) else w
    if flat.shape != (cout, cin * kh * kw):
      raise InputError(f'{where}: the file has an InnerProduct of {_oihw(w.shape)}, the network wants '
                       f'{cout}x{cin * kh * kw} (= {_oihw(conv_shape)}, out x in x kh x kw)')
    w = flat.reshape(conv_shape)
  elif w.shape != conv_shape:
    raise InputError(f'{where}: the file has weights of {_oihw(w.shape)}, the network wants {_oihw(conv_shape)} '
                     '(out x in x kh x kw)')
  if b.size != cout or b.squeeze().ndim > 1:
    raise InputError(f'{where}: the file has a bias of {_oihw(b.shape)}, the network wants {cout}')
  # Copies: the arrays read from a file may be read-only views of its bytes.
  return {'kernel': np.array(w.transpose(2, 3, 1, 0), np.float32, order='C'), 'bias': np.array(b.reshape(cout),
                                                                                                np.float32)}


def _check_deconvolution(layer: caffe.Layer, num_classes: int, upsample: str, where: str):
  """The Cityscapes model's frozen x8 deconvolution is computed, not a parameter: it must be the bilinear one."""
  if upsample != 'deconv':
    raise InputError(f'{where}: a Deconvolution in the file, but this network upsamples by {upsample!r} '
                     '(only the cityscapes preset has the in-network deconvolution)')
  k = bilinear_kernel_1d(16)
  want = np.broadcast_to(np.outer(k, k), (num_classes, 1, 16, 16))
  if len(layer.blobs) != 1 or layer.blobs[0].shape != want.shape or not np.allclose(layer.blobs[0], want, atol=1e-6):
    shapes = ', '.join(_oihw(b.shape) for b in layer.blobs)
    raise InputError(f'{where}: expected the frozen bilinear kernel {_oihw(want.shape)} that model.upsample '
                     f"'deconv' computes, found {shapes or 'no blobs'}")


def _looks_like(name: str) -> str | None:
  """Which module a layer name belongs to when the network has no such layer: for naming wrong-preset files."""
  if name.startswith('ctx_'):
    return 'context_module'
  if name in ('fc6', 'fc7', 'final') or (name.startswith('conv') and '_' in name):
    return 'front_end'
  return None


def import_layers(layers: list[caffe.Layer], template: dict, source: str, fmt: str = 'caffe', *,
                  num_classes: int, upsample: str = 'zoom', input_scale: float = 1.0) -> Imported:
  """Maps file layers onto `template` ({'front_end': {layer: {'kernel': shape, 'bias': shape}}, ...}) by name.

  Every layer with weights must find its place (shapes checked); the exceptions are noted: an ImageNet classifier
  (fc8), the Cityscapes deconvolution (checked to be the bilinear kernel), and layers of a module the network
  does not have (a released model's context layers in a front-end-only network). The file must hold the VGG trunk
  conv1_1 .. fc7; `final` whenever it has context layers; the context module entirely or not at all.
  """
  where_of = {name: module for module, group in template.items() for name in group}
  params, notes, seen = {}, [], {}
  for layer in layers:
    if not layer.blobs:
      continue
    name = canonical_name(layer.name)
    where = f'{source}: layer {layer.name}'
    if name in seen:
      raise InputError(f'{where}: appears twice in the file')
    seen[name] = layer.name
    if layer.type == 'Deconvolution':
      _check_deconvolution(layer, num_classes, upsample, where)
      notes.append(f'{layer.name}: the frozen bilinear x8 deconvolution, computed by model.upsample')
    elif name in where_of:
      module = where_of[name]
      params.setdefault(module, {})[name] = _convert(layer, template[module][name], where)
    elif name == IMAGENET_CLASSIFIER:
      notes.append(f'{layer.name}: the ImageNet classifier, not part of the dilation network')
    elif (module := _looks_like(name)) is not None and module not in template:
      notes.append(f'{layer.name}: this network has no {module}; not used')
    else:
      shapes = ', '.join(_oihw(b.shape) for b in layer.blobs)
      raise InputError(f'{where} ({layer.type}, {shapes}) has no place in this network, whose layers are '
                       f'{_span(template)}: weights of another preset or dilation schedule?')
  _check_complete(params, template, source, seen)
  if input_scale != 1.0 and 'conv1_1' in params.get('front_end', {}):
    # The front end multiplies its input by input_scale first; the imported kernel expects it unscaled.
    params['front_end']['conv1_1']['kernel'] = params['front_end']['conv1_1']['kernel'] / np.float32(input_scale)
  return Imported(params, source, fmt, notes)


def _span(template: dict) -> str:
  names = [n for group in template.values() for n in group]
  return f'{names[0]} .. {names[-1]} ({len(names)})' if len(names) > 3 else ', '.join(names)


def _check_complete(params: dict, template: dict, source: str, seen: dict):
  fe, ctx = params.get('front_end', {}), params.get('context_module')
  trunk = [n for n in template['front_end'] if n != 'final']
  needed = trunk + (['final'] if ctx else [])
  if 'context_module' in template and ctx:
    needed += list(template['context_module'])
  missing = [n for n in needed if n not in fe and n not in (ctx or {})]
  if missing:
    found = ', '.join(seen.values()) or 'none'
    raise InputError(f'{source}: no layer {missing[0]}' + (f' (nor {", ".join(missing[1:])})' if missing[1:] else '')
                     + f', which this network needs; the file\'s layers with weights: {found}')


# ------------------------------------------------------------------ the network's parameters from a file


def template(model_cfg: ml_collections.ConfigDict, with_context: bool = True) -> dict:
  """The network's parameter shapes, {module: {layer: {'kernel': shape, 'bias': shape}}}, computed abstractly."""
  shapes = jax.eval_shape(lambda: init_params(model_cfg, with_context))
  return jax.tree.map(lambda s: tuple(s.shape), shapes)


def init_params(model_cfg: ml_collections.ConfigDict, with_context: bool = True, seed: int = 0) -> dict:
  """The network's own initialisation (paper: final N(0, 0.001), identity context), as train starts it."""
  model = build_model(model_cfg, with_context=with_context)
  fe = model.front_end
  side = 2 * fe.margin + fe.stride  # the smallest input with one output cell
  init = jax.jit(model.init)  # under jit the forward pass is dead code: only the parameters are computed
  return init(jax.random.key(seed), jnp.zeros((1, side, side, 3)))['params']


def import_weights(path: str, model_cfg: ml_collections.ConfigDict, mean_bgr, with_context: bool = True) -> Imported:
  """The layers of a weights file that fit the network of `model_cfg` (see import_layers for what is checked)."""
  layers, fmt = read_layers(path, mean_bgr)
  return import_layers(layers, template(model_cfg, with_context), path, fmt, num_classes=model_cfg.num_classes,
                       upsample=model_cfg.upsample, input_scale=model_cfg.front_end.input_scale)


def check_params(params: dict, model_cfg: ml_collections.ConfigDict, source: str):
  """Raises ValueError naming the first layer whose shape differs from the network's (a checkpoint's params); layers
  at any depth (a DRN's front_end/base/layer3/0/conv1)."""
  want = template(model_cfg, with_context='context_module' in params)
  for module, group in want.items():
    if module not in params:
      raise InputError(f'{source}: no {module} parameters')
    got = _leaves(params[module])
    for path, shape in _leaves(group, shapes=True).items():
      if path not in got:
        raise InputError(f'{source}: no {module}/{path}, which this network needs')
      if got[path] != shape:
        raise InputError(f'{source}: {module}/{path} has shape {got[path]}, this network wants {shape}')
    extra = sorted(set(got) - set(_leaves(group, shapes=True)))
    if extra:
      raise InputError(f'{source}: {module}/{extra[0].rpartition("/")[0]} has no place in this network: another '
                       'preset?')
  crf = _leaves(params.get('crf', {}))  # the CRF-RNN layer of the crf stages: a C x C compatibility, two weights
  want_crf = {'compatibility': (model_cfg.num_classes,) * 2, 'spatial_weight': (), 'bilateral_weight': ()}
  for path in sorted(set(crf) | set(want_crf)) if crf else ():
    if crf.get(path) != want_crf.get(path):
      raise InputError(f'{source}: crf/{path}: shape {crf.get(path, "(missing)")}, the CRF layer of '
                       f'{model_cfg.num_classes} classes wants {want_crf.get(path, "(no such parameter)")}')


def _leaves(tree: dict, shapes: bool = False) -> dict[str, tuple]:
  """'layer/leaf' -> shape of every array of a nested dict (of shape tuples, with `shapes`)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update({f'{key}/{k}': v for k, v in _leaves(value, shapes).items()})
    else:
      out[str(key)] = tuple(value) if shapes else tuple(np.shape(value))
  return out


def network_params(path: str, model_cfg: ml_collections.ConfigDict, mean_bgr, which: str = 'best'):
  """(params, with_context) for prediction from a weights file or a workdir; the file must hold `final`.

  A file without context layers (a front-end model) gives the front end alone, as a front-end workdir does.
  """
  if os.path.isdir(path):
    workdir = os.path.dirname(os.path.abspath(path)) if os.path.basename(os.path.normpath(path)) == 'checkpoints' \
        else path
    params = checkpoint.load_params(workdir, which)
    check_params(params, model_cfg, path)
    return params, 'context_module' in params
  imported = import_weights(path, model_cfg, mean_bgr)
  if 'final' not in imported.params.get('front_end', {}):
    raise InputError(f'{path}: no layer final (nor fc-final): an ImageNet VGG-16 initialises training '
                     '(train --config.weights, or weights.convert) but cannot segment')
  return imported.params, 'context_module' in imported.params


def initialise(params: dict, path: str, model_cfg: ml_collections.ConfigDict, mean_bgr,
               need_final: bool = False) -> tuple[dict, Imported]:
  """`params` (a network's fresh initialisation) with every layer the weights file has put in its place."""
  imported = import_weights(path, model_cfg, mean_bgr, with_context='context_module' in params)
  if need_final and 'final' not in imported.params.get('front_end', {}):
    raise InputError(f'{path}: no layer final (nor fc-final): a context or joint stage starts from a trained '
                     'front end, not from ImageNet weights')
  out = {module: dict(group) for module, group in params.items()}
  for module, group in imported.params.items():
    out[module].update(group)
  kept = [n for module, group in params.items() for n in group if n not in imported.params.get(module, {})]
  if kept:
    imported.notes.append(f'not in the file, initialised as in training: {", ".join(kept)}')
  return out, imported
