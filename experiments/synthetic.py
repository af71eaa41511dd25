r"""The built-in synthetic dataset: front end, then the context module on its cached scores, then joint (optional).

  python -m dilated_jax.train --config=experiments/synthetic.py:stage=frontend --workdir=runs/synthetic/frontend
  python -m dilated_jax.train --config=experiments/synthetic.py:stage=context \
      --config.init_from=runs/synthetic/frontend --workdir=runs/synthetic/context
  python -m dilated_jax.evaluate --workdir=runs/synthetic/context

Arguments: stage=frontend|context|joint|crf|crf_joint, context=basic|large|flat|none (flat: the same depth, every
dilation 1; none: no context module, for a crf stage on the front end alone). The crf stages train the CRF-RNN layer
(models/crf.py) on the network of --config.init_from, then (crf_joint) everything through it.
The front end is shallow (two VGG blocks, one pool: stride 2, receptive field 18 px) so that on 128 px scenes the
context module's 67 cells (150 px of input, with the front end's 18) see the whole scene and the front end alone
does not: discs are only told apart by the colour of a frame at least 24 px away. Expected on a 2-core CPU
(experiments/quickstart.sh): see README.md.
"""

from dilated_jax import config as base_config
from dilated_jax.models import context


def get_config(arg=None):
  args = base_config.parse_arg(arg, stage=base_config.STAGES, context=('basic', 'large', 'flat', 'none'))
  cfg = base_config.base()
  s = cfg.data.synthetic
  cfg.model.num_classes = 1 + 2 * s.num_scenes
  cfg.model.front_end.update(block_convs=(2, 2), block_channels=(16, 32), block_dilations=(1, 1), pools=1,
                             fc6_kernel=3, fc6_dilation=1, fc_channels=64, dropout_rate=0.0,
                             input_scale=0.02)
  cfg.model.context.update({  # channel_multipliers () is all C (Basic)
      'basic': dict(dilations=context.BASIC, channel_multipliers=()),
      'large': dict(dilations=context.BASIC, channel_multipliers=context.LARGE_MULTIPLIERS),
      'flat': dict(dilations=(1,) * len(context.BASIC), channel_multipliers=()),
      'none': dict(dilations=()),  # the front end alone (a crf stage on the front end)
  }[args['context']])
  cfg.data.crop = (0, 0)  # whole scenes
  cfg.eval.tile = (s.image_size, s.image_size)
  cfg.eval.batch_size = 16
  cfg.stage = args['stage']
  if cfg.stage == 'frontend':
    cfg.update(batch_size=8, total_steps=600, lr=1e-2, log_every=50, checkpoint_every=200, eval_every=200)
  elif cfg.stage == 'context':
    cfg.update(batch_size=16, total_steps=800, lr=3e-3, log_every=100, checkpoint_every=400, eval_every=400)
  elif cfg.stage in ('crf', 'crf_joint'):  # on the network of init_from: front end (context=none) or + context
    cfg.update(batch_size=8, total_steps=200, lr=1e-2 if cfg.stage == 'crf' else 1e-3, log_every=50,
               checkpoint_every=100, eval_every=100)
    # The scenes' 128 px at full resolution: cells of 2 px, a window of 31 cells (62 px).
    cfg.model.crf.update(downsample=2, window=31)
  else:
    cfg.update(batch_size=8, total_steps=300, lr=1e-3, log_every=50, checkpoint_every=100, eval_every=100)
  return base_config.finalize(cfg)
