"""Flax Linen modules of the dilation network and of the Dilated Residual Networks."""

from dilated_jax.models.context import ContextModule, identity_init
from dilated_jax.models.drn import DRN, DRNSeg
from dilated_jax.models.frontend import FrontEnd
from dilated_jax.models.layers import DilatedConv, bilinear_deconv, bilinear_zoom, max_pool_ceil
from dilated_jax.models.net import (DilationNet, build_model, label_offset, model_config, upsample_probabilities,
                                    upsample_scores)
