"""dilated_jax: Yu & Koltun dilated convolutions for semantic segmentation in JAX/Flax."""


class InputError(ValueError):
  """Bad input or settings (a file, a config field, a flag): the entry points print it as one line and exit with 2.
  Any other exception is a bug and keeps its traceback."""
