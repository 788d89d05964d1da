"""vlm_jax: LLaVA-1.5 in JAX/Flax for interleaved image-text pre-training and few-shot VQA evaluation."""

from vlm_jax.platforms import default_platforms as _default_platforms

__version__ = "0.1.0"

_default_platforms()  # libtpu installed on a machine without TPUs: run JAX on CPU quietly (vlm_jax.platforms)
