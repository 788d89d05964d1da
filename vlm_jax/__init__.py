"""vlm_jax: LLaVA-1.5 in JAX/Flax for interleaved image-text pre-training and few-shot VQA evaluation.

`vlm_jax.load(ckpt)` returns the inference handle (`vlm_jax.inference.VLM`); it is imported on first use, so
`import vlm_jax` stays light for tools that need no JAX model.
"""

from vlm_jax.platforms import default_platforms as _default_platforms

__version__ = "0.1.0"

_default_platforms()  # libtpu installed on a machine without TPUs: run JAX on CPU quietly (vlm_jax.platforms)
__all__ = ["load"]


def __getattr__(name: str):
    if name == "load":
        from vlm_jax.inference.model import load

        return load
    raise AttributeError(f"module 'vlm_jax' has no attribute {name!r}")
