"""Eight simulated CPU devices for the sharding tests, the fast XLA CPU path and a compilation cache shared by the
session, set before JAX starts."""

import os
import shutil
import tempfile

_EIGHT_DEVICES = '--xla_force_host_platform_device_count=8'
if _EIGHT_DEVICES not in os.environ.get('XLA_FLAGS', '').split():  # xdist workers inherit it; last given wins
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_EIGHT_DEVICES}".strip()
# Most of the suite's time is XLA compiling the same small networks again: in the many train, evaluate and predict
# subprocesses and xdist workers (which inherit this environment) and in tests that build the same model anew. A
# persistent cache for the session compiles each program once; a cached executable is the one a fresh compilation
# gives, so bitwise comparisons hold. JAX_COMPILATION_CACHE_DIR set by the caller is used as is (and kept).
_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWN_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='dilated_jax_test_xla_cache.')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

from dilated_jax import cli  # noqa: E402  (after XLA_FLAGS: it adds the CPU convolution flag)

cli.configure_xla()


def pytest_collection_modifyitems(items):
  """The benchmark's tests compile and time whole train steps of the paper's networks: all slow, whatever the file
  holds (README, "Tests")."""
  import pytest

  for item in items:
    if item.path.name == 'test_benchmark.py':
      item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
