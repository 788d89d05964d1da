"""RICES image encoders, all on the project's Flax CLIP tower.

- `hf_clip_embedder(folder)`: the original's encoder (open_clip ViT-L-14 with OpenAI weights, the same weights as
  the Hugging Face `openai/clip-vit-large-patch14` checkpoint): a Hugging Face CLIP folder (`config.json` +
  `*.safetensors`, `CLIPModel` or `CLIPVisionModelWithProjection`) read with its visual projection, images
  resized (shortest side, bicubic) and centre-cropped to the tower's size (224) WITHOUT padding to a square,
  the projected CLS (`image_embeds`, 768-d) as embedding.
- `checkpoint_embedder(ckpt)`: a vlm_jax params checkpoint's own tower (vlm_jax's "model" encoder): the projected
  CLS when the tower has a projection, else post_layernorm(CLS); images padded to a square as LLaVA does.
`rices.embed_images` L2-normalises the embeddings. Batches have one fixed size (the last one padded) so the
jitted tower compiles once; with a mesh they are split over its `data` axis.
"""
from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from jax.sharding import Mesh

from vlm_jax import paths
from vlm_jax.convert.hf_configs import vision_config_from_clip
from vlm_jax.checkpoint import CONFIG_FILE, load_vision_tower
from vlm_jax.data.image import checkpoint_image_settings
from vlm_jax.evaluate.pixels import load_pixels
from vlm_jax.evaluate.rices import EmbedFn
from vlm_jax.models.clip import image_feature_fn
from vlm_jax.models.config import VisionConfig
from vlm_jax.models.hf import params_from_hf_state_dict

HF_CLIP_LAYOUT = "clip-vision-with-projection"


def _model_id(folder, config_bytes: bytes, tag: str) -> str:
    """Cache key part naming the embedding model: folder name + digest of its absolute path (or URL), config
    and tag."""
    folder = paths.as_path(folder)
    digest = hashlib.sha256(str(folder).encode() + config_bytes + tag.encode()).hexdigest()[:12]
    return f"{folder.name}-{digest}"


def embedding_model_id(ckpt: str | Path) -> str:
    """The cache model id of a vlm_jax checkpoint's tower."""
    return _model_id(ckpt, (paths.as_path(ckpt) / CONFIG_FILE).read_bytes(), "model")


def clip_embedder(config: VisionConfig, params: dict, settings: dict, *, batch_size: int = 64,
                  aspect: str = "pad", mesh: Mesh | None = None) -> EmbedFn:
    """`embed(image_paths) -> float32 [n, D]`: CLIP image embeddings (unnormalised) of image files."""
    features = image_feature_fn(config, params, batch_size, mesh=mesh)

    def embed(paths: Sequence[str]) -> np.ndarray:
        # Decoded chunk by chunk: a 30k-image demonstration split never sits in memory as pixels all at once.
        chunks = [features(load_pixels(paths[start:start + batch_size], settings, aspect))
                  for start in range(0, len(paths), batch_size)]
        return np.concatenate(chunks) if chunks else features(
            np.zeros((0, config.image_size, config.image_size, 3), np.float32))

    return embed


def checkpoint_embedder(ckpt: str | Path, *, batch_size: int = 64, aspect: str = "pad",
                        mesh: Mesh | None = None) -> tuple[EmbedFn, str]:
    """(embed function, model id for the embedding cache) of a vlm_jax checkpoint's vision tower."""
    config, params = load_vision_tower(ckpt)
    embed = clip_embedder(config, params, checkpoint_image_settings(ckpt, config.image_size), batch_size=batch_size,
                          aspect=aspect, mesh=mesh)
    return embed, embedding_model_id(ckpt) + f"-{aspect}"


def load_hf_clip(folder: str | Path) -> tuple[VisionConfig, dict]:
    """(vision config with its projection, params) of a Hugging Face CLIP folder (`CLIPModel` or
    `CLIPVisionModelWithProjection`, safetensors); a ValueError naming the folder otherwise."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; config.rices.clip_path must be a Hugging Face CLIP "
                                "folder such as a download of openai/clip-vit-large-patch14")
    try:
        hf = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from e
    vision = vision_config_from_clip(hf, str(config_path))
    if hf.get("model_type") == "clip" and "projection_dim" in hf:  # CLIPModel: the projection is top-level
        vision["projection_dim"] = hf["projection_dim"]
    config = VisionConfig.from_hf(vision, has_projection=True)
    files = sorted(glob.glob(str(folder / "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    state: dict = {}
    for f in files:
        state.update(load_file(f))
    wanted = {k for k in state if k.startswith("vision_model.") or k == "visual_projection.weight"}
    params = params_from_hf_state_dict(config, {k: state[k] for k in wanted}, layout=HF_CLIP_LAYOUT)
    return config, params


def hf_clip_embedder(folder: str | Path, *, batch_size: int = 64, mesh: Mesh | None = None
                     ) -> tuple[EmbedFn, str]:
    """(embed function, model id) of the original's RICES encoder read from a Hugging Face CLIP folder:
    resize + centre crop to the tower's image size, CLIP normalisation, projected CLS."""
    config, params = load_hf_clip(folder)
    embed = clip_embedder(config, params, {"image_size": config.image_size}, batch_size=batch_size,
                          aspect="none", mesh=mesh)
    return embed, _model_id(Path(folder), (Path(folder) / "config.json").read_bytes(), "hf-clip-projected")
