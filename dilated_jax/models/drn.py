"""Dilated Residual Networks (Yu, Koltun and Funkhouser, CVPR 2017, arXiv 1705.09914) as fyu/drn drn.py builds them,
and segment.py's DRNSeg on top.

Eight levels of 16 .. 512 channels after a 7x7 stem; stride 2 at levels 2-4 gives output stride 8, and dilation
(2 and 4 at levels 5-6) keeps that resolution where a ResNet would downsample. Levels 7-8 (dilation 2, then 1) undo
the gridding of the dilated levels ("degridding"). DRN-C builds levels 1-2 and 7-8 of BasicBlocks, those of 7-8
without residual connections; DRN-D builds its stem and levels 1-2, 7-8 of plain conv-BN-ReLU layers. Levels 3-6
are BasicBlocks or Bottlenecks. Parameter names are drn.py's (conv1, bn1, layer1/0/conv1, layer3/0/downsample/0,
DRN-D's layer0/0 and layer0/1, ...), so its state dicts map by name (weights/drn.py).
"""

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dilated_jax import InputError, receptive_field as rf
from dilated_jax.models.layers import DilatedConv

CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)  # levels 1-8 (a Bottleneck's output is 4x this)
STRIDES = (1, 2, 2, 2, 1, 1, 1, 1)
DILATIONS = (2, 4, 2, 1)  # levels 5-8; levels 1-4 are undilated
EXPANSION = {'basic': 1, 'bottleneck': 4}
# drn.py's constructors with released weights: (arch, block of levels 3-6, blocks per level).
VARIANTS = {
    'drn_c_26': ('C', 'basic', (1, 1, 2, 2, 2, 2, 1, 1)),
    'drn_c_42': ('C', 'basic', (1, 1, 3, 4, 6, 3, 1, 1)),
    'drn_c_58': ('C', 'bottleneck', (1, 1, 3, 4, 6, 3, 1, 1)),
    'drn_d_22': ('D', 'basic', (1, 1, 2, 2, 2, 2, 1, 1)),
    'drn_d_38': ('D', 'basic', (1, 1, 3, 4, 6, 3, 1, 1)),
    'drn_d_54': ('D', 'bottleneck', (1, 1, 3, 4, 6, 3, 1, 1)),
    'drn_d_105': ('D', 'bottleneck', (1, 1, 3, 4, 23, 3, 1, 1)),
}
# fyu/drn classify.py's input normalisation (torchvision's), RGB in [0, 1]: what its ImageNet weights expect.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

# drn.py: normal(0, sqrt(2 / (kh kw out_channels))), not truncated.
he_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(features: int, kernel: int, stride: int = 1, dilation: int = 1, dtype=None, name=None) -> DilatedConv:
  """drn.py's bias-free convolution, zero-padded by d (k - 1) / 2 on every side (the dilation, for a 3x3).

  Explicit and symmetric: lax's 'SAME' would pad a stride-2 layer (0, 1) on an even side, moving the sampling grid
  by a pixel against drn.py's and its weights.
  """
  return DilatedConv(features, kernel, dilation, dilation * (kernel - 1) // 2, use_bias=False, dtype=dtype,
                     kernel_init=he_fan_out, stride=stride, name=name)


def batch_norm(train: bool, dtype=None, name=None) -> nn.BatchNorm:
  """torch.nn.BatchNorm2d: eps 1e-5, running averages with momentum 0.1 (flax's 0.9 weighs the old value), scale 1
  and bias 0 at initialisation. Batch statistics in training (over the global batch under jit), running ones in
  evaluation. The two-pass variance, as torch: E[x^2] - E[x]^2 loses precision where the mean dominates."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                      dtype=dtype, name=name)


def check_drn(arch: str, block: str, blocks: Sequence[int], dilations: Sequence[int], residual_7_8: bool,
              width: float):
  """InputError naming the model.drn field that cannot give a DRN (config values, before any layer)."""
  if arch not in ('C', 'D'):
    raise InputError(f"model.drn.arch: expected 'C' or 'D', got {arch!r}")
  if block not in EXPANSION:
    raise InputError(f'model.drn.block: expected one of {tuple(EXPANSION)}, got {block!r}')
  blocks = tuple(blocks)
  if len(blocks) != 8 or any(int(n) != n or n < 0 for n in blocks) or min(blocks[:5]) < 1:
    raise InputError(f'model.drn.blocks: expected 8 block counts (levels 1-8), at least 1 at levels 1-5 and 0 or '
                     f'more at 6-8 (0 leaves a level out), got {blocks}')
  if len(dilations) != 4 or any(int(d) != d or d < 1 for d in dilations):
    raise InputError(f'model.drn.dilations: expected 4 positive integers (levels 5-8), got {tuple(dilations)}')
  if residual_7_8 and arch == 'D':
    raise InputError('model.drn.residual_7_8: DRN-D builds levels 7-8 of plain conv-BN-ReLU layers, which have no '
                     "residual connection; only arch 'C' (BasicBlocks) has the choice")
  if not width > 0:
    raise InputError(f'model.drn.width: expected a positive scale of the channels, got {width}')


@dataclasses.dataclass(frozen=True)
class Level:
  """One level: `blocks` blocks of `kind` ('conv': conv-BN-ReLU layers, 'basic', 'bottleneck'), the first with the
  level's stride; every 3x3 of the level at its dilation."""

  name: str  # drn.py's: layer1 .. layer8
  kind: str
  planes: int
  blocks: int
  stride: int
  dilation: int
  residual: bool

  @property
  def out_channels(self) -> int:
    return self.planes * EXPANSION.get(self.kind, 1)


class ConvBN(nn.Module):
  """`convs` convolution-BN(-ReLU) layers named as drn.py's nn.Sequential (convolution 3i, BN 3i + 1): DRN-D's stem
  and levels 1, 2, 7, 8, and a residual block's 1x1 `downsample` (one convolution and BN, no ReLU)."""

  features: int
  kernel: int = 3
  stride: int = 1
  dilation: int = 1
  convs: int = 1
  relu: bool = True
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(self.convs):
      x = conv(self.features, self.kernel, self.stride if i == 0 else 1, self.dilation, self.dtype, str(3 * i))(x)
      x = batch_norm(train, self.dtype, str(3 * i + 1))(x)
      if self.relu:
        x = nn.relu(x)
    return x


class Block(nn.Module):
  """drn.py's BasicBlock (two 3x3s, the first strided) or Bottleneck (1x1 to `planes`, strided 3x3, 1x1 to 4
  planes), BN after each convolution, ReLU after the sum with the shortcut: the input, or drn.py's 1x1 `downsample`
  where the stride or the channels change. residual=False (DRN-C's levels 7-8) drops the sum; drn.py's Bottleneck
  ignores the argument, but no DRN has a Bottleneck level without residuals."""

  kind: str  # 'basic' or 'bottleneck'
  planes: int
  stride: int = 1
  dilation: int = 1
  residual: bool = True
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda i, y: batch_norm(train, self.dtype, f'bn{i}')(y)
    p, s, d, dt = self.planes, self.stride, self.dilation, self.dtype
    if self.kind == 'basic':
      out = nn.relu(bn(1, conv(p, 3, s, d, dt, 'conv1')(x)))
      out = bn(2, conv(p, 3, 1, d, dt, 'conv2')(out))
    else:
      out = nn.relu(bn(1, conv(p, 1, dtype=dt, name='conv1')(x)))
      out = nn.relu(bn(2, conv(p, 3, s, d, dt, 'conv2')(out)))
      out = bn(3, conv(4 * p, 1, dtype=dt, name='conv3')(out))
    shortcut = x
    if s != 1 or x.shape[-1] != out.shape[-1]:
      # Made and run whenever the channels change, residual or not, as drn.py does: DRN-C-58's level 7 (2048 ->
      # 512) has one whose output is never added. Its parameters count and are in the released files.
      shortcut = ConvBN(out.shape[-1], 1, s, relu=False, dtype=dt, name='downsample')(x, train)
    return nn.relu(out + shortcut if self.residual else out)


class Blocks(nn.Module):
  """A residual level: its blocks named 0, 1, ...; only the first strides (and may downsample)."""

  level: Level
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    lv = self.level
    for i in range(lv.blocks):
      x = Block(lv.kind, lv.planes, lv.stride if i == 0 else 1, lv.dilation, lv.residual, self.dtype,
                name=str(i))(x, train)
    return x


class DRN(nn.Module):
  """drn.py's DRN (arch 'C' or 'D'), NHWC; its input is drn.py's (RGB / 255, normalised).

  Returns the level-8 features at 1/8 resolution, or with `num_classes` the ImageNet classifier's logits (global
  average pool, then a 1x1 `fc` with bias; drn.py's AvgPool2d(28) is the global pool of its 224 px crops).
  `dilations` (levels 5-8) and `residual_7_8` are the degridding choices (DRN-C: (2, 4, 2, 1), no residual).
  Every 3x3 of a level has the level's dilation, the first block's first one included: drn.py passes
  new_level=False at every dilated level, so its dilation // 2 rule for that layer never applies. `width` scales
  every channel count (CPU-sized tests).
  """

  arch: str = 'D'
  block: str = 'basic'
  blocks: Sequence[int] = VARIANTS['drn_d_22'][2]
  dilations: Sequence[int] = DILATIONS
  residual_7_8: bool = False
  width: float = 1.0
  num_classes: int = 0  # 0: no classifier (the segmentation base)
  dtype: jnp.dtype | None = None

  padding = 'SAME'  # every convolution is padded: no reflection margin (segment.py runs whole images)
  margin = 0

  def channels(self, c: int) -> int:
    return max(1, round(c * self.width))

  def levels(self) -> list[Level]:
    """Levels 1-8 as drn.py builds them; a level of 0 blocks (6-8 only) is left out, as drn.py's None."""
    out = []
    for i, (c, n, s) in enumerate(zip(CHANNELS, self.blocks, STRIDES), start=1):
      outer = i in (1, 2, 7, 8)  # DRN-D's plain levels; DRN-C's BasicBlock levels whatever the block of 3-6
      kind = ('basic' if self.arch == 'C' else 'conv') if outer else self.block
      residual = kind != 'conv' and (i < 7 or self.residual_7_8)
      if n:
        out.append(Level(f'layer{i}', kind, self.channels(c), int(n), s, 1 if i <= 4 else self.dilations[i - 5],
                         residual))
    return out

  @property
  def stride(self) -> int:
    return math.prod(lv.stride for lv in self.levels())

  @property
  def out_channels(self) -> int:
    return self.levels()[-1].out_channels

  def layers(self) -> list[rf.Layer]:
    """The convolutions of the main path in order (the shortcuts see less), for receptive fields and output sizes."""
    out = [rf.Layer('conv1' if self.arch == 'C' else 'layer0/0', 7)]
    for lv in self.levels():
      for b in range(lv.blocks):
        s = lv.stride if b == 0 else 1
        if lv.kind == 'conv':
          out.append(rf.Layer(f'{lv.name}/{3 * b}', 3, lv.dilation, s))
        elif lv.kind == 'basic':
          out += [rf.Layer(f'{lv.name}/{b}/conv1', 3, lv.dilation, s), rf.Layer(f'{lv.name}/{b}/conv2', 3, lv.dilation)]
        else:
          out += [rf.Layer(f'{lv.name}/{b}/conv1', 1), rf.Layer(f'{lv.name}/{b}/conv2', 3, lv.dilation, s),
                  rf.Layer(f'{lv.name}/{b}/conv3', 1)]
    return out

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_drn(self.arch, self.block, self.blocks, self.dilations, self.residual_7_8, self.width)
    if self.arch == 'C':
      x = nn.relu(batch_norm(train, self.dtype, 'bn1')(conv(self.channels(16), 7, dtype=self.dtype, name='conv1')(x)))
    else:
      x = ConvBN(self.channels(16), 7, dtype=self.dtype, name='layer0')(x, train)
    for lv in self.levels():
      if lv.kind == 'conv':
        x = ConvBN(lv.planes, 3, lv.stride, lv.dilation, lv.blocks, dtype=self.dtype, name=lv.name)(x, train)
      else:
        x = Blocks(lv, self.dtype, name=lv.name)(x, train)
    if not self.num_classes:
      return x
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = DilatedConv(self.num_classes, 1, dtype=self.dtype, kernel_init=he_fan_out, name='fc')(x)
    return x.reshape(x.shape[0], -1)


def drn(name: str, **kwargs) -> DRN:
  """One of drn.py's constructors by its name (drn_c_26, drn_d_22, ...); kwargs override fields (width, dilations)."""
  if name not in VARIANTS:
    raise InputError(f'model.drn.variant: expected one of {sorted(VARIANTS)}, got {name!r}')
  arch, block, blocks = VARIANTS[name]
  return DRN(**{'arch': arch, 'block': block, 'blocks': blocks, **kwargs})


def is_published(drn_cfg: dict) -> bool:
  """Whether a saved config's model.drn fields are the variant as fyu/drn published it: full width, its dilations,
  no residuals at levels 7-8, its block counts (fields a config predates count as their defaults)."""
  variant = drn_cfg.get('variant')
  blocks = tuple(drn_cfg.get('blocks') or ())
  return (variant in VARIANTS and drn_cfg.get('width', 1.0) == 1.0 and not drn_cfg.get('residual_7_8', False)
          and tuple(drn_cfg.get('dilations', DILATIONS)) == DILATIONS and blocks in ((), VARIANTS[variant][2]))


class DRNSeg(nn.Module):
  """segment.py's DRNSeg without its upsampling: the DRN's levels (`base`, no classifier), then a 1x1 `seg` to C
  classes with bias. Returns class scores at 1/8 resolution, as the DilationNet front end does: the frozen bilinear
  x8 deconvolution (segment.py's `up`) is model.upsample 'deconv' (`layers.bilinear_deconv`), and segment.py's
  output is the log-softmax of that.

  The input is this library's (BGR minus `mean_bgr`, 0-255: data/pipeline.py); it is made RGB / 255 normalised by
  `norm_mean_rgb` / `norm_std_rgb` (fyu/drn's info.json) here, before the stem's zero padding, so that imported
  weights compute exactly what they computed in torch at the border too.
  """

  base: DRN
  num_classes: int
  mean_bgr: Sequence[float]
  norm_mean_rgb: Sequence[float] = IMAGENET_MEAN_RGB
  norm_std_rgb: Sequence[float] = IMAGENET_STD_RGB
  dtype: jnp.dtype | None = None

  padding = DRN.padding
  margin = DRN.margin

  @property
  def stride(self) -> int:
    return self.base.stride

  def layers(self) -> list[rf.Layer]:
    return self.base.layers() + [rf.Layer('seg', 1)]

  def normalise(self, x):
    """BGR minus mean_bgr (0-255) -> (RGB / 255 - norm_mean_rgb) / norm_std_rgb."""
    rgb = x[..., ::-1].astype(jnp.float32) + jnp.asarray(self.mean_bgr[::-1], jnp.float32)
    return (rgb / 255 - jnp.asarray(self.norm_mean_rgb, jnp.float32)) / jnp.asarray(self.norm_std_rgb, jnp.float32)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.base.num_classes:
      raise ValueError('DRNSeg: the base DRN must have no classifier (num_classes=0)')
    x = self.base(self.normalise(x), train)
    return DilatedConv(self.num_classes, 1, dtype=self.dtype, kernel_init=he_fan_out, name='seg')(x)
