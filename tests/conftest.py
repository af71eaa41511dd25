"""Eight simulated CPU devices for the sharding tests, and the fast XLA CPU path, set before JAX starts."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()

from dilated_jax import cli  # noqa: E402  (after XLA_FLAGS: it adds the CPU convolution flag)

cli.configure_xla()


def pytest_collection_modifyitems(items):
  """The benchmark's tests compile and time whole train steps of the paper's networks: all slow, whatever the file
  holds (README, "Tests")."""
  import pytest

  for item in items:
    if item.path.name == 'test_benchmark.py':
      item.add_marker(pytest.mark.slow)
