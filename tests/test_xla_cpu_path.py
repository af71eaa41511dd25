"""The fast XLA CPU path (YNNPACK convolutions off) computes what the plain lax.conv_general_dilated path does."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dilated_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A narrow paper front end and a Basic context module, unpadded and dilated, forward and gradient.
SCRIPT = r'''
import sys
import jax, jax.numpy as jnp, numpy as np
from dilated_jax.models import build_model, model_config
cfg = model_config('camvid')
cfg.front_end.width = 1 / 16
net = build_model(cfg)
x = jax.random.normal(jax.random.key(1), (1, 388, 396, 3)) * 50
params = jax.jit(net.init)(jax.random.key(0), x)['params']  # jitted: op by op, init and grad took 29 s each
out = jax.jit(net.apply)({'params': params}, x)
grad = jax.jit(jax.grad(lambda p: jnp.sum(net.apply({'params': p}, x) ** 2)))(params)['front_end']['fc6']['kernel']
np.savez(sys.argv[1], out=out, grad=grad)
'''


def run(path, xla_flags):
  env = dict(os.environ, XLA_FLAGS=xla_flags, PYTHONPATH=ROOT, DILATED_JAX_KEEP_YNN='1')
  r = subprocess.run([sys.executable, '-c', SCRIPT, str(path)], env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return np.load(path)


@pytest.mark.slow
def test_fast_cpu_path_gives_the_same_outputs(tmp_path):
  """On every jaxlib of the pinned sets: where configure_xla sets the flag (0.10), it must not change a result; where
  it does not (0.11, XLA's default kept), a user who sets it by hand gets the same results too."""
  plain = run(tmp_path / 'plain.npz', '')
  fast = run(tmp_path / 'fast.npz', cli._NO_YNN_CONV)
  assert plain['out'].shape == (1, 2, 3, 11)
  np.testing.assert_allclose(fast['out'], plain['out'], rtol=1e-4, atol=1e-4 * np.abs(plain['out']).max())
  np.testing.assert_allclose(fast['grad'], plain['grad'], rtol=1e-3, atol=1e-4 * np.abs(plain['grad']).max())


def test_configure_xla_adds_the_flag_once(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  monkeypatch.delenv('DILATED_JAX_KEEP_YNN', raising=False)
  cli.configure_xla()
  cli.configure_xla()
  flags = os.environ['XLA_FLAGS']
  import jaxlib
  if jaxlib.__version__.startswith(cli._CHECKED_JAXLIB):
    assert flags.count('ynn_fusion_type') == 1 and flags.startswith('--xla_force_host_platform_device_count=2')
  else:
    assert 'ynn' not in flags
