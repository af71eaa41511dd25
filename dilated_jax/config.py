"""The fields every experiment config has; experiments/*.py start from `base()` and set what differs."""

import ml_collections

from dilated_jax import InputError
from dilated_jax.data import synthetic
from dilated_jax.data.info import DATASETS
from dilated_jax.models import model_config

STAGES = ('frontend', 'context', 'joint')


def parse_arg(arg: str | None, **defaults) -> dict:
  """'stage=context,variant=large' -> dict, over `defaults`; a key not in `defaults` is an error.

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
      stage='frontend',  # frontend | context (on the cached front-end scores) | joint
      init_from='',  # workdir of the previous stage (context, joint)
      init_weights='',  # or a weights file: ImageNet VGG-16 (front end) or a released model (dilated_jax.weights)
      seed=0,
      batch_size=8,  # global: split over all devices of all hosts
      total_steps=1000,
      lr=1e-4,
      lr_steps=(),  # steps at which lr is multiplied by lr_gamma (Caffe's step policy)
      lr_gamma=0.1,
      momentum=0.9,
      weight_decay=5e-4,  # on kernels only (Caffe decay_mult 0 for biases)
      bias_lr_mult=2.0,
      log_every=50,
      eval_every=0,  # 0: evaluate at the end only
      checkpoint_every=1000,
      keep_checkpoints=3,
      model=model_config(preset),
      data=dict(
          name='synthetic',
          dir='',  # where `python -m dilated_jax.data.prepare` wrote the paper datasets (its --data_dir)
          variant='',  # which training set of data.name, e.g. pascal_voc 'sbd' or 'coco'; '' = the dataset's own
          # training crop, margin included (arXiv 1511.07122 section 5); (0, 0): the whole image + margin
          crop=(500, 500),
          flip=True,
          scale_range=(1.0, 1.0),  # training images rescaled by U(lo, hi) before padding; (1, 1): off, as the paper
          workers=-1,  # processes building training batches (grain): -1 one per available core, 0 in this process
          synthetic=synthetic.default_config(),
      ),
      # tiles_per_device: tiles a device runs through the network at once, whatever an image's size (memory bound).
      eval=dict(split='val', tile=(528, 528), batch_size=8, tiles_per_device=8),
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
