"""The training stages of arXiv 1511.07122 (section 5, appendix A): what each trains, what it is fed, its forward pass.

Everything else of a run (resuming, the loop, checkpoints, evaluation) is the same for every stage; a new stage is a
new entry of `STAGES`.
"""

import dataclasses

import jax.numpy as jnp

from dilated_jax.data import pipeline

IMAGES, SCORES = 'images', 'scores'


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training stage.

  trains: the parameter subtrees that get gradients and updates; the others are held as they were loaded.
  with_context: whether its network has the context module.
  feeds: IMAGES (random crops of the training images through the whole network, dropout on) or SCORES (the fixed
    front end's score maps of whole training images, computed once and cached, through the context module alone).
  loads: the subtrees taken from the workdir given as init_from; None: all that workdir holds.
  needs_trained_front_end: it starts from init_from or from weights that hold a trained front end (`final`).
  """

  name: str
  trains: tuple[str, ...]
  with_context: bool
  feeds: str
  loads: tuple[str, ...] | None
  needs_trained_front_end: bool

  def forward(self, model, params, x, dropout_rng, mean_bgr, batch_stats=None):
    """(training-mode class scores, updated batch_stats) of a batch `x` as this stage is fed: uint8 RGB crops are
    made BGR minus `mean_bgr` here, on the device. BatchNorm (a DRN front end: `batch_stats` not None) normalises
    with the batch's statistics and returns its running averages updated; without it the second value is None."""
    if self.feeds == SCORES:  # the context module alone: no BatchNorm runs
      return model.context_module.apply({'params': params['context_module']}, x), batch_stats
    if x.dtype == jnp.uint8:
      x = pipeline.to_network_input(x, mean_bgr)
    if batch_stats is None:
      return model.apply({'params': params}, x, train=True, rngs={'dropout': dropout_rng}), None
    scores, updated = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                  rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    return scores, updated['batch_stats']


STAGES = {
    'frontend': Stage('frontend', trains=('front_end',), with_context=False, feeds=IMAGES, loads=None,
                      needs_trained_front_end=False),
    'context': Stage('context', trains=('context_module',), with_context=True, feeds=SCORES, loads=('front_end',),
                     needs_trained_front_end=True),
    'joint': Stage('joint', trains=('front_end', 'context_module'), with_context=True, feeds=IMAGES, loads=None,
                   needs_trained_front_end=True),
}
