r"""Cityscapes with fyu/drn's segmentation recipe (Yu, Koltun and Funkhouser, CVPR 2017; fyu/drn README.md,
"Training", and segment.py): DRN-C-26, DRN-D-22 or DRN-D-38 as DRNSeg, evaluated on the 500 val images.

  python -m dilated_jax.train --config=experiments/cityscapes_drn.py:variant=drn_d_22 \
      --config.weights=drn_d_22-4bd2f8ea.pth --workdir=runs/cityscapes_drn_d_22
  python -m dilated_jax.evaluate --workdir=runs/cityscapes_drn_d_22 --split=val [--ms]
  python -m dilated_jax.tables runs/cityscapes_drn_d_22      # the DRN table: fyu/drn's published val mIoU beside ours

Arguments: variant=drn_d_22|drn_c_26|drn_d_38; batch=32|16 (README's command: 32; its DRN-D-105 command: 16);
schedule=step|poly (README: lr x0.1 every 100 of 250 epochs; --lr-mode poly, power 0.9, per step here, per epoch
there); augment=none|scale (scale: segment.py --random-scale 2, a rescaling by U(0.5, 2) before the crop).
fyu/drn's published val mIoU (README.md): 68.0 DRN-C-26, 68.0 DRN-D-22, 71.4 DRN-D-38, single-scale.

As fyu/drn: crops of 896 px, random flips, SGD lr 0.01, momentum 0.9, weight decay 1e-4 (here on kernels only), one
learning rate for every parameter (bias_lr_mult 1), 250 epochs of the 2,975 training images (2975 // batch
iterations each: segment.py drops the last short batch). Not here: random rotation (segment.py --random-rotate,
used for its DRN-D-105): the input pipeline has no rotation, so no argument offers it. The test is one tile per
2048 x 1024 image (eval.tile 1024 x 2048): a DRN has no reflection margin, so tiles would meet zero padding at their
seams where segment.py sees the neighbouring pixels. The loss is at full resolution, after the x8 deconvolution, as
segment.py's (loss_resolution 'full'; docs/decisions.md, "A DRN trains as a front end").
"""

from dilated_jax import config as base_config

TRAIN_IMAGES = 2975  # Cityscapes fine train split
EPOCHS, STEP_EPOCHS = 250, 100  # README.md: --epochs 250 --step 100


def get_config(arg=None):
  args = base_config.parse_arg(arg, variant=('drn_d_22', 'drn_c_26', 'drn_d_38'), batch=('32', '16'),
                               schedule=('step', 'poly'), augment=('none', 'scale'))
  cfg = base_config.base('cityscapes')
  cfg.model.update(backbone='drn', upsample='deconv')  # segment.py's DRNSeg: 1x1 seg, bilinear x8 deconvolution
  cfg.model.drn.variant = args['variant']
  cfg.model.context.dilations = ()  # DRNSeg alone (stage frontend)
  batch = int(args['batch'])
  per_epoch = TRAIN_IMAGES // batch
  cfg.data.crop = (896, 896)  # segment.py -s 896
  if args['augment'] == 'scale':
    cfg.data.scale_range = (0.5, 2.0)  # data_transforms.RandomScale(2): U(1 / 2, 2)
  cfg.update(stage='frontend', loss_resolution='full', batch_size=batch, total_steps=EPOCHS * per_epoch, lr=0.01,
             momentum=0.9, weight_decay=1e-4, bias_lr_mult=1.0, log_every=50, eval_every=0, checkpoint_every=1000)
  if args['schedule'] == 'step':
    cfg.update(lr_policy='step', lr_gamma=0.1, lr_steps=tuple(e * per_epoch for e in range(STEP_EPOCHS, EPOCHS,
                                                                                            STEP_EPOCHS)))
  else:
    cfg.update(lr_policy='poly', lr_power=0.9)
  cfg.eval.update(split='val', tile=(1024, 2048), batch_size=4)
  return base_config.finalize(cfg)
