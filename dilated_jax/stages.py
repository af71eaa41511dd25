"""The training stages of arXiv 1511.07122 (section 5, appendix A): what each trains, what it is fed, its forward pass.

Everything else of a run (resuming, the loop, checkpoints, evaluation) is the same for every stage; a new stage is a
new entry of `STAGES`.
"""

import dataclasses

import jax.numpy as jnp

from dilated_jax.data import pipeline
from dilated_jax.models import crf as crf_lib, upsample_probabilities, upsample_scores

IMAGES, SCORES = 'images', 'scores'


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training stage.

  trains: the parameter subtrees that get gradients and updates (those the network has); the others are held as they
    were loaded, and a network none of whose own subtrees trains runs as at test time (no dropout, BatchNorm's
    running statistics).
  with_context: whether its network has the context module; None: as the config's model.context has it.
  with_crf: the CRF-RNN layer (models/crf.py, model.crf) on the network's upsampled output: unaries and loss at full
    resolution over the crop's output region (Zheng et al. 2015; arXiv 1511.07122 section 5, Tables 3-4 "+ RNN").
  feeds: IMAGES (random crops of the training images through the whole network, dropout on) or SCORES (the fixed
    front end's score maps of whole training images, computed once and cached, through the context module alone).
  loads: the subtrees taken from the workdir given as init_from; None: all that workdir holds.
  needs_trained_front_end: it starts from init_from or from weights that hold a trained front end (`final`).
  """

  name: str
  trains: tuple[str, ...]
  with_context: bool | None
  feeds: str
  loads: tuple[str, ...] | None
  needs_trained_front_end: bool
  with_crf: bool = False

  def forward(self, model, params, x, dropout_rng, mean_bgr, batch_stats=None, crf=None, upsample='zoom',
              full_resolution=False):
    """(training-mode class scores, updated batch_stats) of a batch `x` as this stage is fed: uint8 RGB crops are
    made BGR minus `mean_bgr` here, on the device. BatchNorm (a DRN front end: `batch_stats` not None) normalises
    with the batch's statistics and returns its running averages updated; without it the second value is None.
    With the CRF layer `crf` the scores are its own, at full resolution (`upsample`: the network's, model.upsample);
    with `full_resolution` (loss_resolution 'full') the network's upsampled, over the crop's output region."""
    if self.feeds == SCORES:  # the context module alone: no BatchNorm runs
      return model.context_module.apply({'params': params['context_module']}, x), batch_stats
    rgb = x
    if x.dtype == jnp.uint8:
      x = pipeline.to_network_input(x, mean_bgr)
    train = any(k in params and k in self.trains for k in ('front_end', 'context_module'))
    if batch_stats is None:
      scores = model.apply({'params': params}, x, train=train, rngs={'dropout': dropout_rng})
    elif not train:
      scores = model.apply({'params': params, 'batch_stats': batch_stats}, x)
    else:
      scores, updated = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                    rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
      batch_stats = updated['batch_stats']
    if crf is not None:
      scores = crf_head(crf, params['crf'], scores, rgb, model.front_end, upsample)
    elif full_resolution:
      scores = upsample_scores(scores, upsample, model.front_end.stride,
                               output_region(model.front_end, scores.shape[1:3])[1])
    return scores, batch_stats


def output_region(front_end, out_hw) -> tuple[tuple[int, int], tuple[int, int]]:
  """((top, left), (height, width)): the pixels of a training crop that its output cells (out_hw of them) cover at
  full resolution, past the front end's margin (`pipeline.train_example`'s full-resolution labels)."""
  return (front_end.margin,) * 2, tuple(front_end.stride * n for n in out_hw)


def crf_head(crf, crf_params, scores, rgb, front_end, upsample: str):
  """The CRF layer's full-resolution scores over a crop's output region: the network's 1/stride `scores` upsampled
  to probabilities as at test time (model.upsample), and the crop's own uint8 RGB pixels there."""
  (top, left), (h, w) = output_region(front_end, scores.shape[1:3])
  image = rgb[:, top:top + h, left:left + w].astype(jnp.float32)
  short = (h - image.shape[1], w - image.shape[2])  # a 'SAME' front end's last cells may reach past the crop
  image = jnp.pad(image, ((0, 0), (0, short[0]), (0, short[1]), (0, 0)), mode='edge')
  probs = upsample_probabilities(scores, upsample, front_end.stride, (h, w))
  return crf.apply({'params': crf_params}, crf_lib.unaries(probs), image, train=True)


STAGES = {
    'frontend': Stage('frontend', trains=('front_end',), with_context=False, feeds=IMAGES, loads=None,
                      needs_trained_front_end=False),
    'context': Stage('context', trains=('context_module',), with_context=True, feeds=SCORES, loads=('front_end',),
                     needs_trained_front_end=True),
    'joint': Stage('joint', trains=('front_end', 'context_module'), with_context=True, feeds=IMAGES, loads=None,
                   needs_trained_front_end=True),
    # The CRF-RNN layer trained on a fixed network (the front end, with the context module if the config has one),
    # then optionally everything through it, end to end.
    'crf': Stage('crf', trains=('crf',), with_context=None, feeds=IMAGES, loads=('front_end', 'context_module'),
                 needs_trained_front_end=True, with_crf=True),
    'crf_joint': Stage('crf_joint', trains=('front_end', 'context_module', 'crf'), with_context=None, feeds=IMAGES,
                       loads=None, needs_trained_front_end=True, with_crf=True),
}
