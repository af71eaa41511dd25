"""The fields every experiment config has; experiments/*.py start from `base()` and set what differs."""

import json
import os

from absl import logging
import ml_collections

from dilated_jax import InputError, stages
from dilated_jax.data import synthetic
from dilated_jax.data.info import DATASETS
from dilated_jax.models import model_config

STAGES = tuple(stages.STAGES)


def parse_arg(arg: str | None, **defaults) -> dict:
  """'stage=context,context=large' -> dict, over `defaults`; a key not in `defaults` is an error.

  A default given as a tuple lists the values allowed, the first being the default; another value is an error.
  """
  choices = {k: v for k, v in defaults.items() if isinstance(v, tuple)}
  out = {k: v[0] if k in choices else v for k, v in defaults.items()}
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep or key not in defaults:
      raise InputError(f'config argument {item!r}: expected key=value with key one of {sorted(defaults)}')
    if key in choices and value not in choices[key]:
      raise InputError(f'config argument {item!r}: expected {key} to be one of {choices[key]}')
    out[key] = value
  return out


def base(preset: str | None = None) -> ml_collections.ConfigDict:
  """Defaults: the released code's SGD settings (fyu/dilation train.py); with a preset, its model, dataset and test
  tile."""
  cfg = ml_collections.ConfigDict(dict(
      stage='frontend',  # frontend | context (on the cached front-end scores) | joint | crf | crf_joint (stages.py)
      init_from='',  # workdir of the previous stage (context, joint)
      weights='',  # or a weights file: ImageNet VGG-16 (front end) or a released model (dilated_jax.weights)
      seed=0,
      batch_size=8,  # global: split over all devices of all hosts
      total_steps=1000,
      lr=1e-4,
      lr_steps=(),  # steps at which lr is multiplied by lr_gamma (Caffe's step policy)
      lr_gamma=0.1,
      # 'step': Caffe's step policy (lr_steps, lr_gamma); 'poly': lr (1 - step / total_steps) ** lr_power, Caffe's
      # poly policy and fyu/drn segment.py's --lr-mode poly (power 0.9)
      lr_policy='step',
      lr_power=0.9,
      momentum=0.9,
      weight_decay=5e-4,  # on kernels only (Caffe decay_mult 0 for biases)
      bias_lr_mult=2.0,
      # 'output': one label per output cell, the loss at 1/8 resolution (arXiv 1511.07122 section 4, fyu/dilation);
      # 'full': the scores upsampled by model.upsample first, every pixel a label (fyu/drn segment.py). The CRF
      # stages are always 'full'; the context stage, on cached scores, 'output'.
      loss_resolution='output',
      log_every=50,
      eval_every=0,  # 0: evaluate at the end only
      checkpoint_every=1000,
      keep_checkpoints=3,
      profile_steps=(),  # (first, last): a jax.profiler trace of those steps into WORKDIR/tb (README, "Profiling")
      model=model_config(preset),
      data=dict(
          name='synthetic',
          dir='',  # where `python -m dilated_jax.data.prepare` wrote the paper datasets (its --data_dir)
          # which training set of data.name: '' its own train split; pascal_voc 'sbd' (VOC 2012 train + SBD) or
          # 'coco' (VOC + SBD + the COCO images with VOC classes)
          train_set='',
          # training crop, margin included (arXiv 1511.07122 section 5); (0, 0): the whole image + margin
          crop=(500, 500),
          flip=True,
          scale_range=(1.0, 1.0),  # training images rescaled by U(lo, hi) before padding; (1, 1): off, as the paper
          workers=-1,  # processes building training batches (grain): -1 one per available core, 0 in this process
          synthetic=synthetic.default_config(),
      ),
      # tiles_per_device: tiles a device runs through the network at once, whatever an image's size (memory bound);
      # tensorboard_images: the first images of the split drawn with their predictions at each evaluation;
      # boundary_width: mIoU also within that many pixels of label edges (the trimap measure; 0: not measured);
      # scales, flip: multi-scale and flip testing of `evaluate` and `predict` (fyu/drn segment.py --ms; inference.py,
      # `multiscale_log_probabilities`); (1.0,) without flip is the single-scale test of the paper.
      eval=dict(split='val', tile=(528, 528), batch_size=8, tiles_per_device=8, tensorboard_images=3,
                boundary_width=4, scales=(1.0,), flip=False),
  ))
  if preset is not None:
    cfg.data.update(name=preset, dir='data')
    cfg.eval.tile = DATASETS[preset].tile
  return cfg


def urban_frontend(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The front-end recipe of CamVid, KITTI and Cityscapes (arXiv 1511.07122 appendix A): 8 crops of 628, lr 1e-4,
  momentum 0.99."""
  cfg.update(stage='frontend', batch_size=8, lr=1e-4, momentum=0.99)
  cfg.data.crop = (628, 628)
  return cfg


def finalize(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks the stage and locks the config, so that a mistyped override is an error."""
  if cfg.stage not in STAGES:
    raise InputError(f'stage: expected one of {STAGES}, got {cfg.stage!r}')
  cfg.lock()
  return cfg


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of 'path/to/experiment.py[:arg]', as --config=spec gives it (for notebooks and tests)."""
  import importlib.util
  import os

  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config: {path} is not a file')
  module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


# Fields renamed since a workdir's config.json may have been written: old dotted name -> new (docs/decisions.md).
RENAMED = {'init_weights': 'weights', 'data.variant': 'data.train_set',
           'model.context.init': 'model.context.initialisation'}


def read_saved(workdir: str) -> dict:
  """WORKDIR/config.json as a dict, with the fields of `RENAMED` under their new names (a warning line each)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file (expected the workdir of a training run, or give --config)')
  try:
    with open(path) as f:
      saved = json.load(f)
  except ValueError as e:
    raise InputError(f'{path}: not a readable config ({e})') from None
  if not isinstance(saved, dict):
    raise InputError(f'{path}: expected a JSON object of config fields')
  for old, new in RENAMED.items():
    *parents, leaf = old.split('.')
    node = saved
    for key in parents:
      node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node:
      logging.warning('%s: reading %s as %s (renamed)', path, old, new)
      node.setdefault(new.split('.')[-1], node.pop(leaf))
  return saved


def from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The locked config a training run saved in `workdir`, over `base()` (fields added since get their defaults); a
  field this code does not know is an InputError naming it."""
  flat = {}

  def flatten(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        flatten(value, f'{prefix}{key}.')
      else:  # JSON has no tuples: every sequence of a config is one
        flat[prefix + key] = tuple(value) if isinstance(value, list) else value

  flatten(read_saved(workdir), '')
  cfg = base()
  cfg.lock()
  for key, value in flat.items():
    try:
      cfg.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError, TypeError) as e:
      raise InputError(f'{os.path.join(workdir, "config.json")}: {key}: not a field of this config, or of another '
                       f'type ({" ".join(str(e).split())})') from None
  return finalize(cfg)
