"""The front end: VGG-16 with pool4 and pool5 removed, conv5 dilated by 2, fc6 a 7x7 conv dilated by 4 (arXiv 1511.07122
section 4; fyu/dilation network.py)."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dilated_jax import InputError, receptive_field as rf
from dilated_jax.models.layers import DilatedConv, max_pool_ceil

# Half of the paper front end's shrinkage, 372 px: the reflection margin around every input image (fyu/dilation
# test.py, label_margin).
MARGIN = 186
OUTPUT_STRIDE = 8


def check_front_end(cfg) -> None:
  """ValueError naming the model.front_end field that cannot give a network (config values, before any layer)."""
  n = len(cfg.block_convs)
  if not n or len(cfg.block_channels) != n or len(cfg.block_dilations) != n:
    raise InputError(f'model.front_end: block_convs, block_channels and block_dilations must have one entry per '
                     f'block, got {tuple(cfg.block_convs)}, {tuple(cfg.block_channels)}, {tuple(cfg.block_dilations)}')
  for field in ('block_dilations', 'block_convs', 'block_channels'):
    values = tuple(cfg[field])
    if any(int(v) != v or v < 1 for v in values):
      raise InputError(f'model.front_end.{field}: expected positive integers, got {values}')
  for field in ('fc6_dilation', 'fc6_kernel', 'fc_channels'):
    if int(cfg[field]) != cfg[field] or cfg[field] < 1:
      raise InputError(f'model.front_end.{field}: expected a positive integer, got {cfg[field]}')
  if not 0 <= cfg.pools <= n:
    raise InputError(f'model.front_end.pools: expected 0..{n} (one pool after each of the first blocks), '
                     f'got {cfg.pools}')
  if not cfg.width > 0:
    raise InputError(f'model.front_end.width: expected a positive scale of the channels, got {cfg.width}')
  if not 0 <= cfg.dropout_rate < 1:
    raise InputError(f'model.front_end.dropout_rate: expected 0 <= rate < 1, got {cfg.dropout_rate}')


class FrontEnd(nn.Module):
  """VGG-16 adapted for dense prediction; the defaults are the paper's network, other fields give CPU-sized variants.

  Blocks conv1..conv5 have `block_convs` 3x3 convolutions each; a 2x2 ceil-mode max pool follows each of the first
  `pools` blocks. `width` scales every channel count and keeps the topology.
  """

  num_classes: int
  width: float = 1.0
  padding: str = 'VALID'
  block_convs: Sequence[int] = (2, 2, 3, 3, 3)
  block_channels: Sequence[int] = (64, 128, 256, 512, 512)
  block_dilations: Sequence[int] = (1, 1, 1, 1, 2)
  pools: int = 3
  fc6_kernel: int = 7
  fc6_dilation: int = 4
  fc_channels: int = 4096
  dropout_rate: float = 0.5
  # Multiplies the input (BGR minus mean, 0-255). 1 for the paper's networks, whose weights expect that range;
  # about 1/50 for networks trained from scratch, so that He-initialised activations start near unit scale.
  input_scale: float = 1.0
  dtype: jnp.dtype | None = None

  def layers(self) -> list[rf.Layer]:
    """The spatial layers in order, for receptive fields and output sizes."""
    out = []
    for b, (n, d) in enumerate(zip(self.block_convs, self.block_dilations), start=1):
      out += [rf.Layer(f'conv{b}_{i}', 3, d) for i in range(1, n + 1)]
      if b <= self.pools:
        out.append(rf.Layer(f'pool{b}', 2, stride=2, pool=True))
    return out + [rf.Layer('fc6', self.fc6_kernel, self.fc6_dilation), rf.Layer('fc7', 1), rf.Layer('final', 1)]

  @property
  def stride(self) -> int:
    return 2 ** self.pools

  @property
  def margin(self) -> int:
    """Reflection padding that makes a VALID front end's output cover the image: half its shrinkage; 0 for 'SAME'."""
    return rf.shrinkage(self.layers()) // 2 if self.padding.upper() == 'VALID' else 0

  def channels(self, c: int) -> int:
    return max(1, round(c * self.width))

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda name, c, k=3, d=1: DilatedConv(
        self.channels(c), k, d, self.padding, dtype=self.dtype, name=name)
    if self.input_scale != 1.0:
      x = x * self.input_scale
    for b, (n, c, d) in enumerate(zip(self.block_convs, self.block_channels, self.block_dilations), start=1):
      for i in range(1, n + 1):
        x = nn.relu(conv(f'conv{b}_{i}', c, d=d)(x))
      if b <= self.pools:
        x = max_pool_ceil(x)
    x = nn.relu(conv('fc6', self.fc_channels, self.fc6_kernel, self.fc6_dilation)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(conv('fc7', self.fc_channels, 1)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # Raw class scores, no ReLU: the context module reads them as they are (the deploy prototxts).
    return DilatedConv(self.num_classes, 1, padding=self.padding, dtype=self.dtype, name='final',
                       kernel_init=nn.initializers.normal(0.001))(x)
