"""The whole network: front end, context module, upsampling; one preset per dataset (fyu/dilation
models/*_deploy.prototxt)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dilated_jax import InputError
from dilated_jax.models import context as ctx, crf, drn
from dilated_jax.models.context import ContextModule
from dilated_jax.models.frontend import FrontEnd, check_front_end
from dilated_jax.models.layers import bilinear_deconv, bilinear_zoom

UPSAMPLINGS = ('zoom', 'deconv')
# vgg16: the paper's front end (FrontEnd, model.front_end); drn: a Dilated Residual Network (models/drn.py's DRNSeg,
# model.drn) in its place, class scores at 1/8 as the front end's.
BACKBONES = ('vgg16', 'drn')


class DilationNet(nn.Module):
  """Front end then (optionally) the context module; returns class scores at 1/stride resolution.

  Parameters live under 'front_end' and 'context_module', so each training stage can hold the part it trains. The
  front end is the VGG-16 FrontEnd or a DRNSeg (model.backbone), whose BatchNorm statistics are the batch_stats
  collection, under 'front_end' too.
  """

  front_end: FrontEnd | drn.DRNSeg
  context_module: ContextModule | None = None

  def __call__(self, x, train: bool = False):
    scores = self.front_end(x, train=train)
    return scores if self.context_module is None else self.context_module(scores)


def label_offset(mode: str, stride: int) -> int:
  """Where in its stride x stride block the label of an output cell is read in training: the pixel the upsampling
  puts the cell on. The zoom puts cell i at pixel s i (corner-aligned); the bilinear deconvolution (kernel 2s, pad
  s / 2) at s i + (s - 1) / 2, 3.5 for s = 8, so its cells are supervised by pixel s i + s / 2 (docs/decisions.md)."""
  return 0 if mode == 'zoom' else stride // 2


def upsample_probabilities(scores, mode: str, zoom: int, out_hw: tuple[int, int]):
  """Full-resolution class probabilities from 1/zoom scores: softmax then corner-aligned zoom, or deconv then
  softmax."""
  if mode == 'zoom':
    return bilinear_zoom(jax.nn.softmax(scores.astype(jnp.float32), axis=-1), zoom, out_hw)
  return jax.nn.softmax(upsample_scores(scores, mode, zoom, out_hw), axis=-1)


def upsample_scores(scores, mode: str, zoom: int, out_hw: tuple[int, int]):
  """Full-resolution class scores (logits) from 1/zoom scores, for a loss at full resolution (loss_resolution
  'full'): the same linear upsampling as the test's, on the scores (fyu/drn segment.py: its `up` deconvolution, then
  log_softmax); with 'zoom' that is the zoom of the scores, not of the probabilities the test zooms."""
  if mode == 'zoom':
    return bilinear_zoom(scores.astype(jnp.float32), zoom, out_hw)
  if mode == 'deconv':
    if zoom != 8:
      raise InputError(f"model.upsample: 'deconv' is the x8 Cityscapes layer, but the front end's stride is {zoom}")
    return bilinear_deconv(scores.astype(jnp.float32))[:, :out_hw[0], :out_hw[1]]
  raise InputError(f'model.upsample: expected one of {UPSAMPLINGS}, got {mode!r}')


def model_config(preset: str | None = None) -> ml_collections.ConfigDict:
  """The model fields of an experiment config; `preset` is pascal_voc, camvid, kitti or cityscapes (the deploy
  networks)."""
  fe = FrontEnd.__dataclass_fields__
  cfg = ml_collections.ConfigDict(dict(
      num_classes=21,
      front_end={k: fe[k].default for k in (
          'width', 'padding', 'block_convs', 'block_channels', 'block_dilations', 'pools', 'fc6_kernel',
          'fc6_dilation', 'fc_channels', 'dropout_rate', 'input_scale')},
      # dilations=() means no context module (the front-end stage). channel_multipliers: output channels of each 3x3
      # layer in units of C, () = all C (Basic, whatever the schedule's length). initialisation: 'identity' (eq. 4, 5)
      # or 'random'; noise: 'fixed' (std noise_std in every layer, the released IdentityFiller) or 'scaled'
      # (noise_std C / c_out).
      context=dict(dilations=ctx.BASIC, channel_multipliers=(), padding='same', initialisation='identity',
                   noise_std=0.01, noise='fixed'),
      backbone='vgg16',  # one of BACKBONES
      # backbone 'drn': variant one of models/drn.py's VARIANTS; width scales every channel count (1: the paper's);
      # norm_mean_rgb / norm_std_rgb: the RGB / 255 normalisation its weights expect (ImageNet's; fyu/drn's
      # segment.py models: their info.json's). The degridding choices (DRN paper section 4): dilations of levels 5-8,
      # residual_7_8 (DRN-C only: residual connections at levels 7-8), blocks (8 counts per level, 0 at 6-8 leaves a
      # level out; (): the variant's).
      drn=dict(variant='drn_d_22', width=1.0, norm_mean_rgb=drn.IMAGENET_MEAN_RGB, norm_std_rgb=drn.IMAGENET_STD_RGB,
               dilations=drn.DILATIONS, residual_7_8=False, blocks=()),
      upsample='zoom',
      dtype='float32',  # compute dtype; parameters stay float32
      # the CRF-RNN layer (models/crf.py) that the stages crf and crf_joint put on the network's upsampled output
      crf=crf.default_config(),
  ))
  presets = {
      'pascal_voc': dict(num_classes=21, dilations=ctx.BASIC, multipliers=ctx.LARGE_MULTIPLIERS, padding='pad_once'),
      'camvid': dict(num_classes=11, dilations=ctx.BASIC),
      'kitti': dict(num_classes=11, dilations=ctx.DILATION7),
      'cityscapes': dict(num_classes=19, dilations=ctx.DILATION10, upsample='deconv'),
  }
  if preset is not None:
    if preset not in presets:
      raise InputError(f'preset: expected one of {sorted(presets)}, got {preset!r}')
    p = presets[preset]
    cfg.num_classes = p['num_classes']
    cfg.context.dilations = p['dilations']
    cfg.context.channel_multipliers = p.get('multipliers', ())
    cfg.context.padding = p.get('padding', 'same')
    cfg.upsample = p.get('upsample', 'zoom')
  return cfg


def build_model(cfg: ml_collections.ConfigDict, with_context: bool = True, mean_bgr=None) -> DilationNet:
  """A DilationNet from the model fields of a config; with_context=False or no dilations gives the front end alone.

  mean_bgr: the dataset mean the input is centred with (data/pipeline.py), which a DRN's input normalisation adds
  back; None (zeros) only where the numbers do not matter (shapes, benchmarks).
  """
  dtype = jnp.dtype(cfg.dtype)
  if cfg.backbone not in BACKBONES:
    raise InputError(f'model.backbone: expected one of {BACKBONES}, got {cfg.backbone!r}')
  if cfg.backbone == 'drn':
    if not isinstance(cfg.drn.width, (int, float)) or not cfg.drn.width > 0:
      raise InputError(f'model.drn.width: expected a positive scale of the channels, got {cfg.drn.width!r}')
    blocks = {'blocks': tuple(cfg.drn.blocks)} if tuple(cfg.drn.blocks) else {}
    # An unknown variant: one line naming it; a bad degridding field too, checked now rather than when first run.
    base = drn.drn(cfg.drn.variant, width=cfg.drn.width, dtype=dtype, dilations=tuple(cfg.drn.dilations),
                   residual_7_8=bool(cfg.drn.residual_7_8), **blocks)
    drn.check_drn(base.arch, base.block, base.blocks, base.dilations, base.residual_7_8, base.width)
    for field in ('norm_mean_rgb', 'norm_std_rgb'):
      value = tuple(cfg.drn[field])
      if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value) or (
          field == 'norm_std_rgb' and not all(v > 0 for v in value)):
        raise InputError(f'model.drn.{field}: expected 3 numbers (R, G, B){", each > 0" * (field == "norm_std_rgb")}'
                         f', got {value}')
    front_end = drn.DRNSeg(base, num_classes=cfg.num_classes, dtype=dtype,
                           mean_bgr=tuple(mean_bgr) if mean_bgr is not None else (0.0, 0.0, 0.0),
                           norm_mean_rgb=tuple(cfg.drn.norm_mean_rgb), norm_std_rgb=tuple(cfg.drn.norm_std_rgb))
  else:
    check_front_end(cfg.front_end)
    front_end = FrontEnd(num_classes=cfg.num_classes, dtype=dtype, **cfg.front_end.to_dict())
  context_module = None
  if cfg.context.dilations:  # checked for the front-end stage too: the next stage runs from the same config
    ctx.check_schedule(cfg.context.dilations, cfg.context.channel_multipliers, cfg.context.padding,
                       cfg.context.noise)
  if with_context and cfg.context.dilations:
    context_module = ContextModule(
        num_classes=cfg.num_classes, dilations=tuple(cfg.context.dilations),
        channel_multipliers=tuple(cfg.context.channel_multipliers), padding=cfg.context.padding,
        initialisation=cfg.context.initialisation, noise_std=cfg.context.noise_std, noise=cfg.context.noise,
        dtype=dtype)
  if cfg.upsample not in UPSAMPLINGS:
    raise InputError(f'model.upsample: expected one of {UPSAMPLINGS}, got {cfg.upsample!r}')
  return DilationNet(front_end, context_module)
