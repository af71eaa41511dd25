r"""Cityscapes, Dilation10: front end, context module on cached scores, then both jointly (arXiv 1511.07122
appendix A, Table 7).

  python -m dilated_jax.train --config=experiments/cityscapes_dilation10.py:stage=frontend \
      --config.weights=vgg_conv.caffemodel --workdir=runs/cityscapes/frontend
  python -m dilated_jax.train --config=experiments/cityscapes_dilation10.py:stage=context \
      --config.init_from=runs/cityscapes/frontend --workdir=runs/cityscapes/context
  python -m dilated_jax.train --config=experiments/cityscapes_dilation10.py:stage=joint \
      --config.init_from=runs/cityscapes/context --workdir=runs/cityscapes/joint

Expected: Table 7 68.7 mIoU on the 500 val images (67.1 test, evaluation server); only the training set is used
for training. Prepare the dataset once first:
`python -m dilated_jax.data.prepare --dataset=cityscapes --manual_dir=...` (README.md, "Datasets").
"""

from dilated_jax import config as base_config


def get_config(arg=None):
  args = base_config.parse_arg(arg, stage=('frontend', 'context', 'joint'))
  # Dilation10 context, 'same' padding, x8 bilinear deconvolution before the softmax (model.upsample='deconv').
  cfg = base_config.urban_frontend(base_config.base('cityscapes'))
  # eval.tile (base): 1024x1024, so a 2048x1024 image is 1x2 tiles.
  cfg.eval.split = 'val'
  cfg.total_steps = 40_000  # front end: 40K (paper)
  if args['stage'] == 'context':
    # Whole uncropped images: the context stage reads the cached 128x256 score maps, so data.crop is not used.
    cfg.update(stage='context', batch_size=100, lr=1e-4, momentum=0.99, total_steps=24_000)
  elif args['stage'] == 'joint':  # half images: 1396x1396 crops including the margin, output 128x128
    cfg.update(stage='joint', batch_size=1, lr=1e-5, momentum=0.99, total_steps=60_000)
    cfg.data.crop = (1396, 1396)
  # Weight decay 5e-4 (base): the released code's; the paper is silent.
  return base_config.finalize(cfg)
