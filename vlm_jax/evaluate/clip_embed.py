"""RICES image embeddings from the project's Flax CLIP tower, taken from any vlm_jax params checkpoint
(a converted CLIP+Llama or LLaVA checkpoint: `CKPT/config.json` + `CKPT/params/vision_tower`).

The embedding is OpenFlamingo's `encode_image`: the tower's projected CLS (`image_embeds`) when the checkpoint
has a visual projection, else post_layernorm(CLS) (`pooled`); `rices.embed_images` L2-normalises it.
Batches have one fixed size (the last one padded) so the jitted tower compiles once; with a mesh they are
split over its `data` axis.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
from jax.sharding import Mesh

from vlm_jax.checkpoint import CONFIG_FILE, load_vision_tower
from vlm_jax.data.image import checkpoint_image_settings
from vlm_jax.evaluate.pixels import load_pixels
from vlm_jax.evaluate.rices import EmbedFn
from vlm_jax.models.clip import image_feature_fn
from vlm_jax.models.config import VisionConfig


def embedding_model_id(ckpt: str | Path) -> str:
    """Cache key part naming the embedding model: the checkpoint folder name + a digest of its absolute path
    and config (a re-converted or different checkpoint at the same place gets a new key through the config)."""
    ckpt = Path(ckpt).absolute()
    digest = hashlib.sha256(str(ckpt).encode() + (ckpt / CONFIG_FILE).read_bytes()).hexdigest()[:12]
    return f"{ckpt.name}-{digest}"


def clip_embedder(config: VisionConfig, params: dict, settings: dict, *, batch_size: int = 64,
                  aspect: str = "pad", mesh: Mesh | None = None) -> EmbedFn:
    """`embed(image_paths) -> float32 [n, D]`: CLIP image embeddings (unnormalised) of image files."""
    features = image_feature_fn(config, params, batch_size, mesh=mesh)

    def embed(paths: Sequence[str]) -> np.ndarray:
        # Decoded chunk by chunk: a 2048-image query set never sits in memory as pixels all at once.
        chunks = [features(load_pixels(paths[start:start + batch_size], settings, aspect))
                  for start in range(0, len(paths), batch_size)]
        return np.concatenate(chunks) if chunks else features(
            np.zeros((0, config.image_size, config.image_size, 3), np.float32))

    return embed


def checkpoint_embedder(ckpt: str | Path, *, batch_size: int = 64, aspect: str = "pad",
                        mesh: Mesh | None = None) -> tuple[EmbedFn, str]:
    """(embed function, model id for the embedding cache) of a checkpoint's vision tower."""
    config, params = load_vision_tower(ckpt)
    embed = clip_embedder(config, params, checkpoint_image_settings(ckpt, config.image_size), batch_size=batch_size,
                          aspect=aspect, mesh=mesh)
    return embed, embedding_model_id(ckpt)
