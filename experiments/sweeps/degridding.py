r"""Degridding (Yu, Koltun and Funkhouser, CVPR 2017, section 4; models/drn.py) on the built-in dataset, 3 seeds:
DRN-C-26 as DRNSeg at 1/8 width, trained alone (stage frontend), with three choices of levels 7-8.

  python -m dilated_jax.sweep --sweep=experiments/sweeps/degridding.py --workdir=runs/degridding

- C: levels 7-8 of BasicBlocks with dilations 2, then 1, without residual connections (DRN-C, fyu/drn drn.py);
- C with residuals: the same levels with their residual connections (model.drn.residual_7_8), what the DRN paper's
  DRN-B keeps;
- A-style: levels 7-8 removed (model.drn.blocks 0 there), the network ending on level 6's dilation 4, as DRN-A
  ends on its dilated levels without degridding. (DRN-A is a dilated ResNet, max pool in its stem; this keeps
  DRN-C's stem and levels 1-2, so that levels 7-8 are the only difference. model.drn.dilations of removed levels do
  nothing.)

Every run: experiments/synthetic.py's front-end stage with the DRN in place of the VGG front end (model.backbone
'drn'), width 0.125 (levels of 2 .. 64 channels), the zoom upsampling of that config, SGD lr 0.01 momentum 0.9 as
fyu/drn, `BUDGET` steps of 8 scenes, so that the 9 runs take minutes on 2 cores.
"""

SEEDS = (0, 1, 2)
CONFIG = 'experiments/synthetic.py:stage=frontend'
DRN = {'model.backbone': 'drn', 'model.drn.variant': 'drn_c_26', 'model.drn.width': 0.125, 'lr': 0.01,
       'momentum': 0.9, 'weight_decay': 1e-4, 'bias_lr_mult': 1.0}
BUDGET = {'total_steps': 300, 'batch_size': 8, 'checkpoint_every': 150, 'eval_every': 150, 'data.workers': 1}
# group -> (slug, overrides)
GROUPS = {
    'DRN-C-26: 7-8 dilation 2, 1, no residual': ('c', {}),
    'DRN-C-26 with residuals at 7-8': ('c_residual', {'model.drn.residual_7_8': True}),
    'A-style: levels 7-8 removed': ('a_style', {'model.drn.blocks': (1, 1, 2, 2, 2, 2, 0, 0)}),
}


def get_sweep():
  return [dict(name=f'{slug}_s{seed}', config=CONFIG, overrides={**DRN, **BUDGET, **overrides}, group=group,
               seed=seed)
          for group, (slug, overrides) in GROUPS.items() for seed in SEEDS]
