"""The benchmark's analytic FLOP count, against XLA's own count of the same forward pass."""

import jax
import jax.numpy as jnp
import pytest

from dilated_jax import benchmark
from dilated_jax.models import build_model, model_config


@pytest.mark.parametrize('preset,stage', [('pascal_voc', 'joint'), ('pascal_voc', 'context'), ('camvid', 'joint')])
def test_analytic_flops_match_xla_cost_analysis(preset, stage):
  cfg = model_config(preset)
  cfg.front_end.width = 1 / 16
  model = build_model(cfg)
  x = jnp.zeros((1, 404, 420, 3))
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  if stage == 'context':
    scores = jax.eval_shape(lambda p: model.front_end.apply({'params': p['front_end']}, x), params)
    x = jnp.zeros(scores.shape)
    fn = lambda p, x: model.context_module.apply({'params': p['context_module']}, x)  # noqa: E731
    hw = scores.shape[1:3]
  else:
    fn = lambda p, x: model.apply({'params': p}, x)  # noqa: E731
    hw = x.shape[1:3]
  xla = jax.jit(fn).lower(params, x).compile().cost_analysis()['flops']
  analytic = benchmark.forward_flops(model, params, hw, stage)
  # XLA also counts biases, ReLUs and pooling, and skips the taps of a padding it folds into a convolution.
  assert abs(xla - analytic) <= 0.05 * analytic
