r"""Pascal VOC 2012 context module on the COCO-trained front end, controlled evaluation (arXiv 1511.07122
section 5, Table 3).

  python -m dilated_jax.train --config=experiments/voc_context.py:context=large \
      --config.init_from=runs/voc/frontend --workdir=runs/voc/context_large

init_from is the workdir of `experiments/voc_frontend.py:data=voc_finetune` (the COCO-trained front end, 69.8 val).
The front end stays fixed: its 66x66 score maps of the training images are computed once and cached.
Expected: Table 3 "Front + Basic" 71.3 / "Front + Large" 72.1 mIoU on VOC 2012 val (Large: Table 4 "Context" 73.5
test). Prepare the dataset once first:
`python -m dilated_jax.data.prepare --dataset=pascal_voc --manual_dir=...` (README.md, "Datasets").
"""

from dilated_jax import config as base_config
from dilated_jax.models import context


def get_config(arg=None):
  args = base_config.parse_arg(arg, context=('basic', 'large'))
  cfg = base_config.base('pascal_voc')  # 8 layers (Table 1), zero pad 33 once then valid convolutions (paper 5)
  cfg.data.train_set = 'sbd'  # VOC 2012 train + SBD (the paper does not say; as the VOC fine-tuning)
  cfg.eval.split = 'val'
  cfg.model.context.padding = 'pad_once'
  cfg.model.context.channel_multipliers = {'basic': (), 'large': context.LARGE_MULTIPLIERS}[args['context']]
  cfg.stage = 'context'
  # Paper: lr 1e-3, identity init. Batch 60 and momentum 0.9: docs/training.md of the released code (the paper is
  # silent). Iterations are stated nowhere: 24K as the Cityscapes context stage, the only count the paper gives,
  # whose lr 1e-4 / (1 - 0.99) equals this lr 1e-3 / (1 - 0.9); 24K x 60 is ~136 passes over ~10.6K score maps.
  cfg.update(batch_size=60, lr=1e-3, momentum=0.9, total_steps=24_000)
  return base_config.finalize(cfg)
