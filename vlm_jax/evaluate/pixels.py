"""Image files → normalised CLIP pixels with given preprocessing settings (`vlm_jax.data.image`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vlm_jax.data.image import ImageRejected, open_image_file, preprocess_image
from vlm_jax.evaluate.examples import BenchmarkFileError


def load_pixels(paths: Sequence[str], settings: dict, aspect: str = "pad") -> np.ndarray:
    """float32 `[len(paths), H, W, 3]`; a missing, unreadable, non-regular (FIFO, device) or oversized image is
    an error naming the file (`vlm_jax.data.image` limits, checked before decoding)."""
    out = []
    for path in paths:
        try:
            with open_image_file(path) as img:
                out.append(preprocess_image(img, aspect=aspect, **settings))
        except ImageRejected as e:
            raise BenchmarkFileError(f"image {path}: {e}") from e
        except (FileNotFoundError, OSError) as e:
            raise BenchmarkFileError(f"image {path}: cannot be read ({e})") from e
    return np.stack(out)
