"""fyu/drn's state dicts onto models.drn, read by torch_pickle (no code from the file runs), every shape checked.

drn.py (ImageNet): conv1.weight, bn1.weight / bias / running_mean / running_var (DRN-C's stem), layer0.0.weight and
layer0.1.* (DRN-D's), layer1.0.conv1.weight, layer3.0.downsample.0.weight, ..., fc.weight / fc.bias.
segment.py's DRNSeg (Cityscapes): base.<i>.<the rest>, where base is the DRN's children in order (C: conv1, bn1,
relu, layer1 .. layer8; D: layer0 .. layer8), then seg.weight / seg.bias and up.weight (the frozen bilinear
kernel). A file saved from DataParallel has `module.` in front of every name; a training checkpoint wraps the
state dict in {'state_dict': ...}. BatchNorm's running statistics go into the batch_stats collection;
num_batches_tracked (torch's count of steps, unused with a fixed momentum) is ignored.
"""

import os

import jax
import numpy as np

from dilated_jax import InputError
from dilated_jax.models.drn import DRN, DRNSeg
from dilated_jax.models.layers import bilinear_kernel_1d
from dilated_jax.weights import torch_pickle

# flax leaf -> torch leaf: a module with a kernel is a convolution, one with a scale a BatchNorm.
_TORCH_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight', ('params', 'bias'): 'bias',
               ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}


def base_children(model: DRN) -> list[str]:
  """The DRN's child modules in drn.py's order of registration, which DRNSeg's base.<i> counts (relu included)."""
  stem = ['conv1', 'bn1', 'relu'] if model.arch == 'C' else ['layer0']
  return stem + [lv.name for lv in model.levels()]


def torch_places(model: DRN | DRNSeg, variables: dict, segment_file: bool) -> dict[str, tuple]:
  """torch name -> (collection, path of keys) of every leaf of `variables` of `model`; a DRNSeg's base named
  base.<i>. in a segment.py file and as drn.py's own names in an ImageNet one."""
  index = {c: i for i, c in enumerate(base_children(model.base))} if isinstance(model, DRNSeg) else {}
  places = {}
  for collection, tree in variables.items():
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
      keys = tuple(k.key for k in path)
      names = list(keys[:-1])
      if names[0] == 'base':
        names = [str(index[names[1]])] + names[2:] if segment_file else names[1:]
        names = (['base'] if segment_file else []) + names
      places['.'.join(names + [_TORCH_LEAF[collection, keys[-1]]])] = (collection, keys)
  return places


def _shape(shape) -> str:
  return 'x'.join(str(d) for d in shape) or 'a scalar'


def _check_up(array: np.ndarray, num_classes: int, where: str):
  """segment.py's up.weight must be the frozen bilinear kernel that model.upsample 'deconv' computes."""
  k = bilinear_kernel_1d(16)
  want = np.broadcast_to(np.outer(k, k), (num_classes, 1, 16, 16))
  if array.shape != want.shape or not np.allclose(array, want, atol=1e-6):
    raise InputError(f"{where}: expected the frozen bilinear kernel {_shape(want.shape)} that model.upsample 'deconv' "
                     f'computes, found {"another kernel" if array.shape == want.shape else _shape(array.shape)}')


def read_state(path: str) -> dict[str, np.ndarray]:
  """name -> array of a torch state dict (or a checkpoint holding one), DataParallel's `module.` taken off."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such weights file')
  state = torch_pickle.read_state_dict(path)
  if state and all(k.startswith('module.') for k in state):
    state = {k[len('module.'):]: v for k, v in state.items()}
  return state


def load_drn(path: str, model: DRN | DRNSeg, variables: dict) -> tuple[dict, list[str]]:
  """`variables` ({'params', 'batch_stats'} of `model`, as model.init gives them) with every tensor of the fyu/drn
  state dict at `path` in its place, and one note per thing the file holds that the network does not use.

  Every tensor of the network must be in the file, except a DRNSeg's `seg` from an ImageNet file (left as
  initialised); every tensor of the file must find its place, except an ImageNet classifier `fc` that the network
  does not have and segment.py's `up.weight` (checked to be the bilinear kernel). A shape that differs is one
  line naming the tensor and both shapes.
  """
  state = read_state(path)
  segment_file = any(k.startswith('base.') for k in state)
  if segment_file and not isinstance(model, DRNSeg):
    raise InputError(f'{path}: a segment.py DRNSeg state dict (base.*, seg.*), but this network is a DRN classifier')
  base = model.base if isinstance(model, DRNSeg) else model
  what = f'DRN-{base.arch} ({base.block} blocks {tuple(base.blocks)}, width {base.width})'
  places = torch_places(model, variables, segment_file)
  out = jax.tree.map(np.asarray, variables)
  notes = []
  for name, array in state.items():
    where = f'{path}: {name}'
    if name.endswith('.num_batches_tracked'):
      continue
    if name in places:
      collection, keys = places[name]
      parent = out[collection]
      for k in keys[:-1]:
        parent = parent[k]
      want = parent[keys[-1]].shape
      # OIHW in the file, HWIO here.
      torch_shape = (want[3], want[2], want[0], want[1]) if len(want) == 4 else want
      if array.shape != torch_shape:
        raise InputError(f'{where} has shape {_shape(array.shape)} in the file, the network ({what}) wants '
                         f'{_shape(torch_shape)}')
      if array.dtype.kind != 'f':
        raise InputError(f'{where} holds {array.dtype} values, expected floating point')
      value = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
      parent[keys[-1]] = np.array(value, np.float32, order='C')  # a copy: the file's arrays may be read-only views
    elif name == 'up.weight' and isinstance(model, DRNSeg):
      _check_up(array, model.num_classes, where)
      notes.append("up.weight: the frozen bilinear x8 deconvolution, computed by model.upsample 'deconv'")
    elif name.split('.')[0] == 'fc' and not base.num_classes:
      notes.append(f'{name}: the ImageNet classifier, not part of the segmentation network')
    else:
      raise InputError(f'{where} ({_shape(array.shape)}) has no place in this network ({what}): weights of another '
                       'DRN variant?')
  missing = [n for n in places if n not in state]
  if missing and not segment_file and all(n.startswith('seg.') for n in missing):
    notes.append('seg: not in the file (ImageNet weights), initialised as in training')
  elif missing:
    raise InputError(f'{path}: no {missing[0]}, which this network ({what}) needs ({len(missing)} tensors missing): '
                     'weights of another DRN variant?')
  return out, notes
