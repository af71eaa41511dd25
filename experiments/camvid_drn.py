r"""CamVid with a DRN-D-22 in place of the VGG-16 front end (Yu, Koltun and Funkhouser, CVPR 2017; fyu/drn segment.py).

  python -m dilated_jax.train --config=experiments/camvid_drn.py --config.weights=drn_d_22-4bd2f8ea.pth \
      --workdir=runs/camvid_drn
  python -m dilated_jax.evaluate --workdir=runs/camvid_drn

Arguments: variant=drn_d_22|drn_d_38|drn_c_26|drn_c_42 (models/drn.py's VARIANTS with BasicBlocks). The network is
segment.py's DRNSeg: the DRN's levels, a 1x1 `seg` to the 11 classes, the frozen bilinear x8 deconvolution
(model.upsample 'deconv'); no context module, no reflection margin (every convolution zero-padded); the loss at
full resolution after it, as segment.py's (loss_resolution 'full'). fyu/drn's recipe
where this code has it: SGD lr 0.01, momentum 0.9, weight decay 1e-4 (here on kernels only), one learning rate for
every parameter (bias_lr_mult 1, as torch's SGD), the poly policy (power 0.9), random scaling by [0.5, 2] (its
--random-scale 2), flips. Not here: its random rotation, synchronised BatchNorm across devices is what jit gives (the
statistics of the global batch). 20k steps of 8 crops of 640 px are ~440 epochs of CamVid's 367 training images,
fyu/drn's 500 Cityscapes epochs at this dataset's size. Without --config.weights training starts from scratch
(He-normal, BN scale 1); --config.weights=drn_d_22-4bd2f8ea.pth (fyu/drn's ImageNet file) starts the DRN's levels and
running statistics from ImageNet, `seg` as initialised. The test split is evaluated once, at the end, with the
BatchNorm running statistics.
"""

from dilated_jax import config as base_config


def get_config(arg=None):
  args = base_config.parse_arg(arg, variant=('drn_d_22', 'drn_d_38', 'drn_c_26', 'drn_c_42'))
  cfg = base_config.base('camvid')
  cfg.model.update(backbone='drn', upsample='deconv')
  cfg.model.drn.variant = args['variant']
  cfg.model.context.dilations = ()  # DRNSeg alone (stage frontend)
  cfg.data.update(crop=(640, 640), scale_range=(0.5, 2.0))
  cfg.update(stage='frontend', loss_resolution='full', batch_size=8, total_steps=20_000, lr=0.01, lr_policy='poly',
             lr_power=0.9, momentum=0.9, weight_decay=1e-4, bias_lr_mult=1.0, log_every=50, eval_every=0,
             checkpoint_every=1000)
  cfg.eval.update(split='test', batch_size=4)
  return base_config.finalize(cfg)
