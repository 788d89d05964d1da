"""Image files → normalised CLIP pixels with a checkpoint's own preprocessing settings (`vlm_jax.data.image`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from vlm_jax.data.image import preprocess_image, processor_settings_from_hf

PREPROCESSOR_CONFIG = "preprocessor_config.json"


def pixel_settings(ckpt: str | Path, image_size: int) -> dict:
    """`preprocess_image` keyword arguments from the checkpoint's `preprocessor_config.json` when it has one,
    else CLIP's defaults at the tower's `image_size`."""
    path = Path(ckpt) / PREPROCESSOR_CONFIG
    if path.is_file():
        return processor_settings_from_hf(json.loads(path.read_text()))
    return {"image_size": image_size}


def load_pixels(paths: Sequence[str], settings: dict, aspect: str = "pad") -> np.ndarray:
    """float32 `[len(paths), H, W, 3]`; a missing or unreadable image is an error naming the file."""
    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                out.append(preprocess_image(img, aspect=aspect, **settings))
        except (FileNotFoundError, OSError) as e:
            raise FileNotFoundError(f"image {path}: cannot be read ({e})") from e
    return np.stack(out)
