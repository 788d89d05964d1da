"""vlm_jax: LLaVA-1.5 in JAX/Flax for interleaved image-text pre-training and few-shot VQA evaluation."""

__version__ = "0.1.0"
