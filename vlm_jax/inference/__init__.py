"""Inference: the batched KV-cache generation loop (`generation`), the model handle `load(ckpt) -> VLM` with
`generate(...)` on prompts and images (`model`), and the generate CLI (`cli`, `python -m vlm_jax.generate`)."""
from vlm_jax.inference.model import VLM, load

__all__ = ["VLM", "load"]
