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

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlm_jax.convert.orbax_params import CONFIG_NAME, PARAMS_DIR, params_metadata, read_config, restore_numpy_leaf
from vlm_jax.convert.param_map import iter_leaves
from vlm_jax.evaluate.pixels import load_pixels, pixel_settings
from vlm_jax.evaluate.rices import EmbedFn
from vlm_jax.models.clip import CLIPVisionTower
from vlm_jax.models.config import VisionConfig

VISION_TOWER = "vision_tower"


def load_vision_tower(ckpt: str | Path) -> tuple[VisionConfig, dict]:
    """(vision config, vision-tower params as host numpy arrays) of a checkpoint, reading only those leaves."""
    config = read_config(ckpt).vision_config
    params_dir = Path(ckpt) / PARAMS_DIR
    metadata = params_metadata(params_dir)
    if VISION_TOWER not in metadata:
        raise ValueError(f"{params_dir}: no {VISION_TOWER!r} params to embed images with")
    params: dict = {}
    for path, _ in iter_leaves(metadata[VISION_TOWER]):
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = restore_numpy_leaf(params_dir, (VISION_TOWER,) + tuple(path), metadata)
    return config, params


def embedding_model_id(ckpt: str | Path) -> str:
    """Cache key part naming the embedding model: the checkpoint folder name + a digest of its absolute path
    and config (a re-converted or different checkpoint at the same place gets a new key through the config)."""
    ckpt = Path(ckpt).absolute()
    digest = hashlib.sha256(str(ckpt).encode() + (ckpt / CONFIG_NAME).read_bytes()).hexdigest()[:12]
    return f"{ckpt.name}-{digest}"


def clip_embedder(config: VisionConfig, params: dict, settings: dict, *, batch_size: int = 64,
                  aspect: str = "pad", mesh: Mesh | None = None) -> EmbedFn:
    """`embed(image_paths) -> float32 [n, D]`: CLIP image embeddings (unnormalised) of image files."""
    model = CLIPVisionTower(config)
    if mesh is not None:
        batch_size = -(-batch_size // mesh.size) * mesh.size
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        rows = NamedSharding(mesh, PartitionSpec("data"))
    else:
        params = jax.device_put(params)

    @jax.jit
    def embed_batch(params, pixels):
        out = model.apply({"params": params}, pixels)
        return (out.image_embeds if out.image_embeds is not None else out.pooled).astype(jnp.float32)

    def embed(paths: Sequence[str]) -> np.ndarray:
        chunks = []
        for start in range(0, len(paths), batch_size):
            pixels = load_pixels(paths[start:start + batch_size], settings, aspect)
            n = len(pixels)
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch_size - n, axis=0)])
            pixels = jax.device_put(pixels, rows) if mesh is not None else pixels
            chunks.append(np.asarray(embed_batch(params, pixels))[:n])
        return np.concatenate(chunks)

    return embed


def checkpoint_embedder(ckpt: str | Path, *, batch_size: int = 64, aspect: str = "pad",
                        mesh: Mesh | None = None) -> tuple[EmbedFn, str]:
    """(embed function, model id for the embedding cache) of a checkpoint's vision tower."""
    config, params = load_vision_tower(ckpt)
    embed = clip_embedder(config, params, pixel_settings(ckpt, config.image_size), batch_size=batch_size,
                          aspect=aspect, mesh=mesh)
    return embed, embedding_model_id(ckpt)
