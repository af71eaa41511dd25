r"""KITTI (Ros et al. split), Dilation7: front end, then front end + context trained jointly (arXiv 1511.07122
appendix A, Table 6).

  python -m dilated_jax.train --config=experiments/kitti_dilation7.py:stage=frontend \
      --config.weights=vgg_conv.caffemodel --workdir=runs/kitti/frontend
  python -m dilated_jax.train --config=experiments/kitti_dilation7.py:stage=joint \
      --config.init_from=runs/kitti/frontend --workdir=runs/kitti/joint

No separate context stage (100 training images): the joint stage starts from the front end with an
identity-initialised 7-layer context module (no dilation 16). Expected: Table 6 59.2 mIoU on the 46 test images.
Prepare the dataset once first:
`python -m dilated_jax.data.prepare --dataset=kitti --manual_dir=...` (README.md, "Datasets").
"""

from dilated_jax import config as base_config


def get_config(arg=None):
  args = base_config.parse_arg(arg, stage=('frontend', 'joint'))
  cfg = base_config.urban_frontend(base_config.base('kitti'))  # Dilation7 context, 'same' padding
  # Evaluated on test (the paper's tables; KITTI has no val split): a test evaluation never picks the 'best'
  # checkpoint, which stays the latest.
  cfg.eval.split = 'test'
  cfg.total_steps = 10_000  # front end: 10K (paper)
  if args['stage'] == 'joint':  # paper: crops of 900, momentum 0.99, otherwise as CamVid (batch 1, lr 1e-5); 20K
    cfg.update(stage='joint', batch_size=1, lr=1e-5, momentum=0.99, total_steps=20_000)
    cfg.data.crop = (900, 900)
  # Weight decay 5e-4 (base): the released code's; the paper is silent.
  return base_config.finalize(cfg)
