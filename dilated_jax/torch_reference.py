"""PyTorch's same network, the yardstick of the benchmarks: what a user would otherwise train, timed in the same run.

Needs the optional `bench` extra (torch). The network is built from `benchmark.conv_layers`, the list of this
project's convolutions in order with their ReLU, dropout and pooling, so both frameworks run the same layers, the
same loss (softmax cross-entropy over the labelled cells) and the same update (SGD with momentum, weight decay on
kernels, the biases' learning rate doubled). Defaults are PyTorch's: NCHW float32 eager, oneDNN's CPU convolutions;
`channels_last` and `autocast` (bfloat16) are what a GPU user would switch on, `onednn=False`
(torch.backends.mkldnn.enabled) what a CPU user whose oneDNN is slow would (docs/decisions.md).
"""

import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from dilated_jax.data.info import IGNORE_LABEL


def device_of(backend: str) -> torch.device:
  """The torch device beside a JAX backend: 'cuda' for JAX's gpu, else the CPU."""
  return torch.device('cuda' if backend == 'gpu' and torch.cuda.is_available() else 'cpu')


def synchronize(device: torch.device):
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


@contextlib.contextmanager
def onednn_convolutions(enabled: bool):
  """PyTorch's CPU convolutions through oneDNN (its default) or, disabled, through its own im2col and BLAS."""
  before = torch.backends.mkldnn.enabled
  torch.backends.mkldnn.enabled = enabled
  try:
    yield
  finally:
    torch.backends.mkldnn.enabled = before


def seconds(fn, device: torch.device) -> float:
  """Wall time of one call of fn, the device's queue drained before and after."""
  synchronize(device)
  t = time.perf_counter()
  fn()
  synchronize(device)
  return time.perf_counter() - t


class Network(torch.nn.Module):
  """The convolutions of `layers` (benchmark.conv_layers entries), each followed by what follows it in our model."""

  def __init__(self, layers: list[dict], seed: int = 0):
    super().__init__()
    self.layers = layers
    g = torch.Generator().manual_seed(seed)
    self.kernels = torch.nn.ParameterList()
    self.biases = torch.nn.ParameterList()
    for layer in layers:
      kh, kw, cin, cout = layer['kernel']
      std = (2.0 / (kh * kw * cin)) ** 0.5  # He normal, as ours; the values do not change the speed
      self.kernels.append(torch.nn.Parameter(torch.randn(cout, cin, kh, kw, generator=g) * std))
      self.biases.append(torch.nn.Parameter(torch.zeros(cout)))

  def forward(self, x):
    for layer, w, b in zip(self.layers, self.kernels, self.biases):
      if layer['pad_before']:
        x = F.pad(x, (layer['pad_before'],) * 4)
      (pt, pb), (pl, pr) = layer['padding']
      if pt == pb and pl == pr:
        x = F.conv2d(x, w, b, padding=(pt, pl), dilation=layer['dilation'])
      else:
        x = F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, dilation=layer['dilation'])
      if layer['relu']:
        x = F.relu(x)
      if layer['dropout'] and self.training:
        x = F.dropout(x, layer['dropout'])
      if layer['pool_after']:
        x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    return x


class TrainStep:
  """One SGD step of `Network(layers)` on a batch as our pipeline sends it (NHWC: uint8 RGB images, made BGR minus
  the mean on the device; or float32 score maps for the context stage) and labels at the output's resolution."""

  def __init__(self, layers, cfg, mean_bgr, device, channels_last=False, autocast=False, onednn=True, seed=0):
    self.device, self.channels_last, self.autocast, self.onednn = device, channels_last, autocast, onednn
    self.net = Network(layers, seed).to(device).train()
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.net.to(memory_format=self.memory_format)
    self.mean = torch.tensor(mean_bgr, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    self.optimizer = torch.optim.SGD([
        {'params': list(self.net.kernels), 'weight_decay': cfg.weight_decay},
        {'params': list(self.net.biases), 'lr': cfg.lr * cfg.bias_lr_mult, 'weight_decay': 0.0}],
        lr=cfg.lr, momentum=cfg.momentum)

  def batch(self, arrays: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch on the device: NHWC numpy arrays as our pipeline sends them."""
    x = torch.from_numpy(np.ascontiguousarray(arrays['image'])).to(self.device).permute(0, 3, 1, 2)
    return x, torch.from_numpy(arrays['label'].astype(np.int64)).to(self.device)

  def __call__(self, x, labels):
    if x.dtype == torch.uint8:
      x = x.flip(1).float() - self.mean  # RGB -> BGR minus the mean
    x = x.contiguous(memory_format=self.memory_format)
    with onednn_convolutions(self.onednn):
      with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
        logits = self.net(x)
      loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL)
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()
    return loss


def conv_passes(layer: dict, batch: int, device, dtype=torch.float32, channels_last=False, seed=0) -> dict:
  """{'forward', 'input_grad', 'kernel_grad'}: functions running that pass of the layer's convolution alone (no
  bias) on random tensors of the layer's shapes, as autograd would call it in training; and those tensors (x, kernel,
  output gradient)."""
  g = torch.Generator().manual_seed(seed)
  kh, kw, cin, cout = layer['kernel']
  (pt, pb), (pl, pr) = layer['padding']
  h, w = layer['in_hw']
  pad = [pt, pl]
  if pt != pb or pl != pr:  # padded first, as Network does
    h, w, pad = h + pt + pb, w + pl + pr, [0, 0]
  ho, wo = layer['out_hw']
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype).contiguous(memory_format=memory_format)
  x, k, dy = make(batch, cin, h, w), make(cout, cin, kh, kw), make(batch, cout, ho, wo)
  d = layer['dilation']

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(dy, x, k, None, [1, 1], pad, [d, d], False, [0, 0], 1, mask)

  return {'forward': lambda: F.conv2d(x, k, padding=pad, dilation=d), 'input_grad': backward([True, False, False]),
          'kernel_grad': backward([False, True, False])}, (x, k, dy)
