r"""Pascal VOC 2012 front end (arXiv 1511.07122 sections 4 and 5): VOC + SBD alone (Table 2), or VOC + SBD + COCO
then VOC fine-tuning.

  python -m dilated_jax.train --config=experiments/voc_frontend.py:data=voc_sbd \
      --config.weights=vgg_conv.caffemodel --workdir=runs/voc/frontend_sbd
  python -m dilated_jax.train --config=experiments/voc_frontend.py:data=coco \
      --config.weights=vgg_conv.caffemodel --workdir=runs/voc/frontend_coco
  python -m dilated_jax.train --config=experiments/voc_frontend.py:data=voc_finetune \
      --config.init_from=runs/voc/frontend_coco --workdir=runs/voc/frontend

Expected: data=voc_sbd, Table 2 "Front end" 67.6 mIoU on VOC 2012 test (evaluation server; no local number in the
paper). data=coco then data=voc_finetune: 69.8 val / 71.3 test (Tables 3 and 4 "Front end"); its workdir is the
init_from of experiments/voc_context.py. Prepare the dataset once first:
`python -m dilated_jax.data.prepare --dataset=pascal_voc --manual_dir=...` (README.md, "Datasets").
"""

from dilated_jax import config as base_config


def get_config(arg=None):
  args = base_config.parse_arg(arg, data=('voc_sbd', 'coco', 'voc_finetune'))
  cfg = base_config.base('pascal_voc')
  cfg.eval.split = 'val'  # VOC test labels are withheld: test numbers come from the evaluation server
  cfg.stage = 'frontend'
  # Paper: batch 14, momentum 0.9, lr 1e-3 (the released code defaults to 1e-4). Not in the paper, the code's
  # defaults: crop 500 (base), weight decay 5e-4 (base), random crop + flip, no lr step within these runs.
  cfg.update(batch_size=14, momentum=0.9, lr=1e-3)
  if args['data'] == 'voc_sbd':  # 3.1: VOC 2012 train + SBD, VOC val images excluded
    cfg.data.train_set = 'sbd'  # VOC 2012 train + SBD (the common train_aug list; count unstated)
    cfg.total_steps = 60_000
  elif args['data'] == 'coco':  # 3.2 stage 1: 100K at 1e-3, then 40K at 1e-4
    cfg.data.train_set = 'coco'  # VOC + SBD + every COCO image with a VOC class, others -> background
    cfg.update(total_steps=140_000, lr_steps=(100_000,))
  else:  # 3.2 stage 2: VOC only, 50K at 1e-5, from the data=coco run
    cfg.data.train_set = 'sbd'  # VOC 2012 train + SBD, as data=voc_sbd
    cfg.update(total_steps=50_000, lr=1e-5)
    # init_from: the data=coco workdir, given on the command line: train starts from all its latest parameters, with
    # the step and the optimizer afresh.
  return base_config.finalize(cfg)
