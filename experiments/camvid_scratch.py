r"""CamVid from scratch on a 2-core CPU: Dilation8's topology at a quarter of the width, SegNet's 480x360 release.

  bash experiments/camvid_scratch.sh runs/camvid_scratch      # all of it: ~1 h here (docs/results/camvid_scratch/)

Arguments: stage=frontend|joint. The network is the camvid preset's (the VALID front end on a reflection-padded input,
margin 186, then the Basic context module with 'same' padding, x8 zoom), with every layer's channels x0.25
(front_end.width; fc6/fc7 1024 channels): no ImageNet weights can be had here, and the full width trains at under
0.2 images/s on this CPU. Training feeds whole 480x360 images (crop (0, 0): the image plus the margin, 852x732),
which labels 2.6x the pixels of a 628 crop for 1.6x its cost. SGD from a He-normal initialisation at lr 1e-2,
momentum 0.9 (the paper's 1e-4 / 0.99 is the same step size for weights fine-tuned from ImageNet; from scratch the
shorter momentum horizon reacts faster), no weight-decay change, no class weighting, as the paper.
The test split (233 images) is evaluated once, at the end, by the paper's protocol (evaluate.py).
"""

from dilated_jax import config as base_config


def get_config(arg=None):
  args = base_config.parse_arg(arg, stage=('frontend', 'joint'))
  cfg = base_config.urban_frontend(base_config.base('camvid'))
  cfg.model.front_end.update(width=0.25, input_scale=0.017)  # ~unit-variance input: no ImageNet weights to expect 0-255
  cfg.data.crop = (0, 0)  # whole images
  cfg.update(stage=args['stage'], batch_size=4, lr=1e-2, momentum=0.9, total_steps=400, log_every=10,
             eval_every=0, checkpoint_every=50)
  cfg.eval.update(split='test', batch_size=4)
  return base_config.finalize(cfg)
