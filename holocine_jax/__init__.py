"""holocine-jax: HoloCine multi-shot video generation in JAX/Flax."""
