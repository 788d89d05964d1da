"""Image files → normalised CLIP pixels with given preprocessing settings (`vlm_jax.data.image`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from vlm_jax.data.image import preprocess_image


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
