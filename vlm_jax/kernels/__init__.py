"""Pallas kernels for the hot paths of vlm_jax."""
