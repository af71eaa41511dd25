r"""CamVid from scratch on a 2-core CPU with a DRN-D-22 in place of the VGG-16 front end (Yu, Koltun and Funkhouser,
CVPR 2017; fyu/drn drn.py, segment.py): experiments/camvid_scratch.py's question asked of the newer backbone, at the
same wall time.

  CFG=experiments/camvid_drn_scratch.py S1=151 S2=38 bash experiments/camvid_scratch.sh runs/camvid_drn_scratch
  python -m dilated_jax.train --config=experiments/camvid_drn_scratch.py:stage=context --config.data.dir=data \
      --config.init_from=runs/camvid_drn_scratch/frontend --config.seed=1 --workdir=runs/camvid_drn_scratch/context

Arguments: stage=frontend|joint|context (the paper's section 5 recipe: the Basic module alone on the fixed front
end's cached scores, loss at the scores' resolution, VOC's batch 60 and lr 1e-3; 1000 steps, ~163 passes). The
network is segment.py's DRNSeg (the DRN's levels, a 1x1 `seg` to the 11 classes, the frozen bilinear x8
deconvolution), every convolution zero-padded (no reflection margin), loss at full resolution as segment.py's; the
joint stage puts the camvid preset's Basic context module ('same' padding, identity initialisation) between `seg`
and the deconvolution. What differs from camvid_scratch.py is only what the DRN needs: the DRN normalises its own
input (ImageNet's RGB statistics), and takes fyu/drn's weight decay 1e-4 and one learning rate for weights and
biases. The same data per step (whole 480x360 images with random flips, batches of 4), the same SGD (lr 1e-2
constant, momentum 0.9), He-normal initialisation, BatchNorm's scales 1: no ImageNet weights can be had here. The
test split (233 images) is evaluated once, at the end, with the BatchNorm running statistics.
"""

from dilated_jax import config as base_config


def get_config(arg=None):
  args = base_config.parse_arg(arg, stage=('frontend', 'joint', 'context'))
  cfg = base_config.base('camvid')  # its context module: Basic, 'same' padding (the joint stage's)
  cfg.model.update(backbone='drn', upsample='deconv')
  cfg.model.drn.variant = 'drn_d_22'
  cfg.data.crop = (0, 0)  # whole images
  cfg.update(stage=args['stage'], loss_resolution='full', batch_size=4, lr=1e-2, momentum=0.9, weight_decay=1e-4,
             bias_lr_mult=1.0, total_steps=400, log_every=10, eval_every=0, checkpoint_every=50)
  if args['stage'] == 'context':  # the paper's recipe (section 5): the front end fixed, its cached scores
    cfg.update(loss_resolution='output', batch_size=60, lr=1e-3, total_steps=1000)  # VOC's batch and lr, voc_context.py
  cfg.eval.update(split='test', batch_size=4, tile=(360, 480))  # whole images: no margin, zero padding as training
  return base_config.finalize(cfg)
