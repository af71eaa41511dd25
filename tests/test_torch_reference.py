"""PyTorch's network of the benchmarks is ours: the same outputs from the same weights, the same loss, the same SGD
update; and its per-pass functions compute the passes they are named after. Needs the bench extra (torch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dilated_jax import benchmark
from dilated_jax import config as config_lib
from dilated_jax.data.info import DATASETS
from dilated_jax.models import build_model
from dilated_jax.train import loss_and_metrics, optimizer

torch = pytest.importorskip('torch')
from dilated_jax import torch_reference  # noqa: E402  (after the skip: it imports torch)


def small_voc(stage='joint'):
  """pascal_voc (front end + Large with its padding once) at a 16th of the front end's channels, crop 404."""
  cfg = config_lib.base('pascal_voc')
  cfg.model.front_end.width = 1 / 16
  model = build_model(cfg.model, with_context=stage != 'frontend')
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 404, 404, 3)))['params']
  params = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.key(1), p.shape), params)  # biases != 0
  return cfg, model, params


def torch_network(model, params, hw, stage):
  convs = benchmark.conv_layers(model, params, hw, stage)
  net = torch_reference.Network(convs)
  with torch.no_grad():
    for layer, k, b in zip(convs, net.kernels, net.biases):
      p = params[layer['part']][layer['name']]
      k.copy_(torch.from_numpy(np.asarray(p['kernel']).transpose(3, 2, 0, 1).copy()))
      b.copy_(torch.from_numpy(np.array(p['bias'])))
  return net, convs


@pytest.mark.parametrize('stage', ['joint', 'context'])
def test_the_torch_network_computes_ours_from_the_same_weights(stage):
  cfg, model, params = small_voc(stage)
  rng = np.random.default_rng(0)
  if stage == 'context':
    x = rng.normal(size=(2, 6, 7, cfg.model.num_classes)).astype(np.float32)
    ours = model.context_module.apply({'params': params['context_module']}, x)
  else:
    x = rng.normal(size=(2, 406, 412, 3)).astype(np.float32)  # 406: odd maps at the second and third poolings
    ours = model.apply({'params': params}, x)
  net, convs = torch_network(model, params, x.shape[1:3], stage)
  assert tuple(convs[-1]['out_hw']) == ours.shape[1:3]
  theirs = net.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours), rtol=1e-4, atol=1e-4 * np.abs(ours).max())


@pytest.mark.parametrize('onednn', [True, False])
def test_the_torch_step_takes_our_loss_and_our_sgd_update(onednn):
  """Two steps of TrainStep from the same weights and batch (no dropout: eval mode) against ours in numpy terms:
  the same loss, and the same parameters after Caffe's SGD (lr in the momentum, biases at twice the lr, no decay);
  with its convolutions through oneDNN or not, the setting on while the step runs and as it was after."""
  cfg, model, params = small_voc('context')
  cfg.update(lr=0.1, momentum=0.9, weight_decay=0.01)  # large enough that a wrong update shows
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 6, cfg.model.num_classes)).astype(np.float32)
  labels = rng.integers(0, cfg.model.num_classes, (2, 6, 6)).astype(np.int32)
  labels[0, 0, :3] = 255  # ignored cells
  convs = benchmark.conv_layers(model, params, (6, 6), 'context')
  step = torch_reference.TrainStep(convs, cfg, DATASETS['pascal_voc'].mean_bgr, torch.device('cpu'), onednn=onednn)
  net, _ = torch_network(model, params, (6, 6), 'context')
  step.net.load_state_dict(net.state_dict())
  step.net.eval()
  seen = []
  step.net.register_forward_pre_hook(lambda *_: seen.append(torch.backends.mkldnn.enabled))
  t_batch = step.batch({'image': x, 'label': labels})

  tx = optimizer(cfg)
  p = params['context_module']
  opt_state = tx.init(p)
  forward = lambda p: loss_and_metrics(model.context_module.apply({'params': p}, x), labels, cfg.model.num_classes)[0]
  for _ in range(2):
    loss, grads = jax.value_and_grad(forward)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
    np.testing.assert_allclose(step(*t_batch).item(), float(loss), rtol=1e-5)
  assert seen == [onednn] * 2 and torch.backends.mkldnn.enabled
  for layer, k, b in zip(convs, step.net.kernels, step.net.biases):
    np.testing.assert_allclose(k.detach().numpy().transpose(2, 3, 1, 0), p[layer['name']]['kernel'], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(b.detach().numpy(), p[layer['name']]['bias'], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('padding', [((2, 2), (2, 2)), ((1, 2), (0, 3))])
def test_the_per_pass_functions_compute_the_passes_autograd_computes(padding):
  """conv_passes' forward, input gradient and kernel gradient are those of conv2d as a network runs it."""
  layer = dict(kernel=(3, 3, 4, 5), dilation=2, padding=padding, in_hw=(9, 8))
  (pt, pb), (pl, pr) = padding
  layer['out_hw'] = (9 + pt + pb - 4, 8 + pl + pr - 4)
  fns, (x, k, dy) = torch_reference.conv_passes(layer, 2, torch.device('cpu'))
  x, k = x.clone().requires_grad_(), k.clone().requires_grad_()
  # Unequal paddings: conv_passes' x is the map padded first, as Network does it.
  y = torch.nn.functional.conv2d(x, k, padding=(pt, pl) if (pt, pl) == (pb, pr) else 0, dilation=2)
  y.backward(dy)
  np.testing.assert_allclose(fns['forward']().numpy(), y.detach().numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fns['input_grad']()[0].numpy(), x.grad.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fns['kernel_grad']()[1].numpy(), k.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_the_layers_benchmark_writes_its_page_and_json_on_a_narrow_network(tmp_path):
  """`benchmark --layers` end to end at a 16th of the channels: every convolution of both stages in the JSON with
  each pass timed in both frameworks, and the page written from it (what experiments/gpu_benchmark.sh SMOKE=1 runs)."""
  import json
  import subprocess
  import sys

  out, page = tmp_path / 'b.json', tmp_path / 'b.md'
  r = subprocess.run([sys.executable, '-m', 'dilated_jax.benchmark', '--layers', '--width=0.0625', '--crop=404,404',
                      '--batch=1', '--context_crop=404,404', '--context_batch=1', '--runs=1', f'--output={out}',
                      f'--markdown={page}'], capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  (result,) = json.loads(out.read_text())
  joint, context = result['steps']
  assert (joint['stage'], context['stage']) == ('joint', 'context')
  cfg, model, params = small_voc()
  names = [layer['name'] for layer in benchmark.conv_layers(model, params, (404, 404), 'joint')]
  assert [row['name'] for row in joint['layers']] == names and len(names) == 16 + 8
  assert [row['name'] for row in context['layers']] == names[16:]
  for step in (joint, context):
    assert step['seconds']['ours'] > 0 and step['seconds']['torch'] > 0
    # On a CPU PyTorch's step is timed with and without oneDNN, and the faster is the one compared.
    both = step['seconds']['torch_onednn_on'], step['seconds']['torch_onednn_off']
    assert step['seconds']['torch'] == min(both) == both[not step['torch_onednn']]
    for i, row in enumerate(step['layers']):
      passes = {'forward', 'kernel_grad'} | ({'input_grad'} if i else set())  # no input gradient of the batch
      assert {k for k in row['seconds'] if k.startswith('torch_')} == {f'torch_{p}' for p in passes}
      assert all(v > 0 for v in row['seconds'].values())
  text = page.read_text()
  assert text.count('| **') >= 2 and all(f'| {name} |' in text for name in names)
  assert f"oneDNN {joint['seconds']['torch_onednn_on']:.2f} s, without" in text
  assert f"{result['peak_flops'] / 1e9:.0f} GFLOP/s, XLA's float32" in text
