"""Eight simulated CPU devices for the sharding tests, and the fast XLA CPU path, set before JAX starts."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()

from dilated_jax import cli  # noqa: E402  (after XLA_FLAGS: it adds the CPU convolution flag)

cli.configure_xla()
