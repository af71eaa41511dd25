"""The context module: 3x3 convolutions with growing dilation, then a 1x1, identity-initialised (paper section 3)."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dilated_jax import InputError, receptive_field as rf
from dilated_jax.models.layers import DilatedConv

# Dilations of the 3x3 layers (arXiv 1511.07122 Table 1; Dilation7 and 10: appendix A, fyu/dilation
# models/*_deploy.prototxt); a final 1x1 layer always follows.
BASIC = (1, 1, 2, 4, 8, 16, 1)  # = Dilation8
DILATION7 = (1, 1, 2, 4, 8, 1)
DILATION10 = (1, 1, 2, 4, 8, 16, 32, 64, 1)
# Output channels of the 3x3 layers in units of C for the Large module (Table 1); Basic is all ones.
LARGE_MULTIPLIERS = (2, 2, 4, 8, 16, 32, 32)
PADDINGS = ('same', 'pad_once')


def layer_names(n: int) -> list[str]:
  """Names of n 3x3 layers and the final 1x1, as the released models: ctx_conv1_1, ctx_conv1_2, ctx_conv2_1, ..."""
  convs = ['ctx_conv1_1', 'ctx_conv1_2'][:n - 1] + [f'ctx_conv{i}_1' for i in range(2, n - 1)]
  return convs + ['ctx_fc1', 'ctx_final']


NOISES = ('fixed', 'scaled')


def identity_init(num_classes: int, noise_std: float = 0.01, noise: str = 'fixed'):
  """Eq. 5 (eq. 4 when c_in = c_out = C): C / c_out on the centre tap where floor(aC/c_in) = floor(bC/c_out), noise
  elsewhere.

  As the released IdentityFiller: N(0, sigma^2) everywhere first, then the identity taps are overwritten, noise-free.
  noise 'fixed': sigma = noise_std in every layer (the released filler); 'scaled': sigma = noise_std * C / c_out, so
  that sigma << C / c_out, which eq. 5 asks for, holds as well in the Large module's 16C and 32C layers.
  """

  def init(key, shape, dtype=jnp.float32):
    kh, kw, c_in, c_out = shape
    if c_in % num_classes or c_out % num_classes:
      raise InputError(f'identity init: C = {num_classes} must divide both {c_in} and {c_out} channels')
    group = lambda n: np.arange(n) * num_classes // n
    mask = group(c_in)[:, None] == group(c_out)[None, :]
    sigma = noise_std * (num_classes / c_out if noise == 'scaled' else 1.0)
    w = sigma * jax.random.normal(key, shape, dtype)
    centre = jnp.where(mask, jnp.asarray(num_classes / c_out, dtype), w[kh // 2, kw // 2])
    return w.at[kh // 2, kw // 2].set(centre)

  return init


def check_schedule(dilations: Sequence[int], channel_multipliers: Sequence[int] | None, padding: str,
                   noise: str = 'fixed'):
  """Raises ValueError naming the field when a dilation schedule cannot be built."""
  if not dilations:
    raise InputError('context.dilations: expected at least one 3x3 layer')
  if any(int(d) != d or d < 1 for d in dilations):
    raise InputError(f'context.dilations: expected positive integers, got {tuple(dilations)}')
  if channel_multipliers and (len(channel_multipliers) != len(dilations) or min(channel_multipliers) < 1):
    raise InputError(f'context.channel_multipliers: expected {len(dilations)} positive integers (one per 3x3 layer), '
                     f'got {tuple(channel_multipliers)}')
  if padding not in PADDINGS:
    raise InputError(f'context.padding: expected one of {PADDINGS}, got {padding!r}')
  if noise not in NOISES:
    raise InputError(f'context.noise: expected one of {NOISES}, got {noise!r}')


class ContextModule(nn.Module):
  """C score maps in, C maps out: 3x3 layers at `dilations`, ReLU after each, then a 1x1 to C with no ReLU.

  padding 'same' zero-pads every layer by its dilation (urban models); 'pad_once' zero-pads the input once by half
  the module's receptive field and then runs unpadded (the VOC Large model, pad 33).
  """

  num_classes: int
  dilations: Sequence[int] = BASIC
  channel_multipliers: Sequence[int] | None = None  # None = Basic (all C)
  padding: str = 'same'
  initialisation: str = 'identity'  # or 'random' (He normal), for the ablation of paper section 3
  noise_std: float = 0.01
  noise: str = 'fixed'  # NOISES: how the identity init's noise scales with a layer's width
  dtype: jnp.dtype | None = None

  def layers(self) -> list[rf.Layer]:
    names = layer_names(len(self.dilations))
    return [rf.Layer(n, 3, d) for n, d in zip(names, self.dilations)] + [rf.Layer(names[-1], 1)]

  @nn.compact
  def __call__(self, x):
    check_schedule(self.dilations, self.channel_multipliers, self.padding, self.noise)
    if self.initialisation == 'identity':
      kernel_init = identity_init(self.num_classes, self.noise_std, self.noise)
    elif self.initialisation == 'random':
      kernel_init = nn.initializers.he_normal()
    else:
      raise InputError(f"context.initialisation: expected 'identity' or 'random', got {self.initialisation!r}")
    multipliers = self.channel_multipliers or (1,) * len(self.dilations)
    if self.padding == 'pad_once':
      p = (rf.receptive_field(self.layers())[0] - 1) // 2
      x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    conv_padding = 'SAME' if self.padding == 'same' else 'VALID'
    names = layer_names(len(self.dilations))
    for name, d, m in zip(names, self.dilations, multipliers):
      x = nn.relu(DilatedConv(self.num_classes * m, 3, d, conv_padding, dtype=self.dtype, kernel_init=kernel_init,
                              name=name)(x))
    return DilatedConv(self.num_classes, 1, dtype=self.dtype, kernel_init=kernel_init, name=names[-1])(x)
