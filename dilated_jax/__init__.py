"""dilated_jax: Yu & Koltun dilated convolutions for semantic segmentation in JAX/Flax."""
