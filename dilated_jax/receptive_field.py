"""Analytic receptive fields and output sizes, layer by layer (arXiv 1511.07122 section 2)."""

import dataclasses
import math
from typing import Sequence

from dilated_jax import InputError


@dataclasses.dataclass(frozen=True)
class Layer:
  """One spatial layer: a convolution (kernel, dilation) or a 2x2 stride-2 ceil-mode max pooling."""

  name: str
  kernel: int
  dilation: int = 1
  stride: int = 1
  pool: bool = False


def table(layers: Sequence[Layer]) -> list[dict]:
  """Per layer: receptive field (pixels of the network's input) and jump (input pixels per output cell) after it."""
  rf, jump, rows = 1, 1, []
  for layer in layers:
    rf += layer.dilation * (layer.kernel - 1) * jump
    jump *= layer.stride
    rows.append(dict(name=layer.name, kernel=layer.kernel, dilation=layer.dilation, stride=layer.stride,
                     receptive_field=rf, jump=jump))
  return rows


def receptive_field(layers: Sequence[Layer]) -> tuple[int, int]:
  """(receptive field, jump) of a stack of layers; the context module's 67 is in feature cells, the front end's 380
  in pixels."""
  rows = table(layers)
  return (rows[-1]['receptive_field'], rows[-1]['jump']) if rows else (1, 1)


def output_size(n: int, layers: Sequence[Layer], padding: str) -> int:
  """Output side for an input side n: 'VALID' convolutions shrink by d (k - 1), 'SAME' keep n; pools round up, and
  so do strided 'SAME' convolutions (symmetric padding d (k - 1) / 2, as the DRNs')."""
  for layer in layers:
    if layer.pool:
      n = math.ceil(n / layer.stride)
    else:
      lost = layer.dilation * (layer.kernel - 1) if padding.upper() == 'VALID' else 0
      n = (n - lost - 1) // layer.stride + 1
    if n < 1:
      raise InputError(f'input too small: nothing is left after layer {layer.name}')
  return n


def shrinkage(layers: Sequence[Layer]) -> int:
  """Input pixels lost by unpadded convolutions (372 for the paper's front end, so the margin is 186)."""
  total, jump = 0, 1
  for layer in layers:
    if not layer.pool:
      total += layer.dilation * (layer.kernel - 1) * jump
    jump *= layer.stride
  return total
