"""The fields every experiment config has; experiments/*.py start from `base()` and set what differs."""

import ml_collections

from dilated_jax.data import synthetic
from dilated_jax.models import model_config

STAGES = ('frontend', 'context', 'joint')


def parse_arg(arg: str | None, **defaults) -> dict:
  """'stage=context,variant=large' -> dict, over `defaults`; a key not in `defaults` is an error."""
  out = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep or key not in defaults:
      raise ValueError(f'config argument {item!r}: expected key=value with key one of {sorted(defaults)}')
    out[key] = value
  return out


def base(preset: str | None = None) -> ml_collections.ConfigDict:
  """Defaults: the released code's SGD settings (paper.md 3.5), the model of `preset`, no dataset chosen."""
  return ml_collections.ConfigDict(dict(
      stage='frontend',  # frontend | context (on the cached front-end scores) | joint
      init_from='',  # workdir of the previous stage (context, joint)
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
          dir='',  # root of a prepared paper dataset
          crop=(500, 500),  # training crop, margin included (paper.md 1.3); (0, 0): the whole image + margin
          flip=True,
          synthetic=synthetic.default_config(),
      ),
      eval=dict(split='val', tile=(528, 528), batch_size=8),
  ))


def finalize(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks the stage and locks the config, so that a mistyped override is an error."""
  if cfg.stage not in STAGES:
    raise ValueError(f'stage: expected one of {STAGES}, got {cfg.stage!r}')
  cfg.lock()
  return cfg
