"""Image preprocessing shared by the training loader, the generation CLI and evaluation.

LLaVA-1.5 feeds CLIP ViT-L/14-336 with images that were first padded to a square with the CLIP mean
colour (`expand2square`, `image_aspect_ratio="pad"`) and then run through `CLIPImageProcessor`:
resize the shortest side with PIL bicubic, center crop, rescale by 1/255, normalise with mean/std.
This module is a NumPy/PIL re-implementation of exactly that (it matches transformers'
PIL-backend `CLIPImageProcessorPil` to float32 rounding), producing channels-last arrays as the
vision tower expects (`[H, W, 3]`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ASPECT_MODES = ("pad", "none")
PREPROCESSOR_FILE = "preprocessor_config.json"  # a Hugging Face image processor's settings file
_PIL_BICUBIC = 3  # PILImageResampling.BICUBIC, the only resampling CLIP checkpoints use.


def expand_to_square(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pads `img` to a square, centred, filled with `background` (LLaVA's `expand2square`)."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), background)
    result.paste(img, ((side - width) // 2, (side - height) // 2))
    return result


def _resize_shortest_edge(img: Image.Image, shortest_edge: int) -> Image.Image:
    """Resizes so the shorter side is `shortest_edge` (longer side truncated to int, as HF does)."""
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    new_w, new_h = (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)
    return img.resize((new_w, new_h), resample=_PIL_BICUBIC)


def _center_crop(arr: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """Center-crops `arr` `[H, W, C]`, zero-padding first where the crop is larger (HF semantics)."""
    height, width = arr.shape[:2]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= height and left + crop_w <= width:
        return arr[top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros((new_h, new_w) + arr.shape[2:], dtype=arr.dtype)
    top_pad, left_pad = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
    padded[top_pad : top_pad + height, left_pad : left_pad + width] = arr
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]


def _as_hw(size: int | Sequence[int] | None, default: int) -> tuple[int, int]:
    if size is None:
        return default, default
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def preprocess_image(
    img: Image.Image,
    image_size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    aspect: str = "pad",
    crop_size: int | Sequence[int] | None = None,
) -> np.ndarray:
    """Turns a PIL image into normalised CLIP input `float32 [crop_h, crop_w, 3]` (channels-last).

    Steps (the seed's LLaVA pipeline): `convert("RGB")` (alpha dropped, as `Image.open().convert`);
    if `aspect == "pad"`, pad to a square with the mean colour `tuple(int(x * 255) for x in mean)`;
    resize the shortest side to `image_size` (PIL bicubic); center crop to `crop_size` (default
    `image_size`, int or (height, width)); rescale by 1/255; normalise with `mean`/`std`.
    """
    if aspect not in ASPECT_MODES:
        raise ValueError(f"aspect must be one of {ASPECT_MODES}, got {aspect!r}")
    img = img.convert("RGB")
    if aspect == "pad":
        img = expand_to_square(img, tuple(int(x * 255) for x in mean))
    img = _resize_shortest_edge(img, int(image_size))
    crop_h, crop_w = _as_hw(crop_size, int(image_size))
    arr = _center_crop(np.asarray(img), crop_h, crop_w)
    arr = (arr.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
    return (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _hf_size_to_shortest_edge(size: int | Mapping[str, int]) -> int:
    if isinstance(size, int):
        return size
    if "shortest_edge" in size and size.get("longest_edge") is None:
        return int(size["shortest_edge"])
    raise ValueError(f"unsupported preprocessor_config.size {dict(size)!r}: need an int or {{'shortest_edge': n}}")


def processor_settings_from_hf(config: Mapping) -> dict:
    """Reads a checkpoint's `preprocessor_config.json` dict into `preprocess_image` keyword args.

    Returns `{"image_size", "crop_size", "mean", "std"}` so a checkpoint's own settings win over
    defaults. Raises ValueError naming the field for settings this pipeline does not implement
    (non-bicubic resampling, disabled resize/crop/rescale/normalise, rescale factor != 1/255).
    """
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        if not config.get(flag, True):
            raise ValueError(f"preprocessor_config.{flag}=False is not supported")
    if int(config.get("resample", _PIL_BICUBIC)) != _PIL_BICUBIC:
        raise ValueError(f"preprocessor_config.resample={config['resample']} is not supported (need 3, bicubic)")
    if abs(float(config.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise ValueError(f"preprocessor_config.rescale_factor={config['rescale_factor']} is not supported")
    if "size" not in config:
        raise ValueError("preprocessor_config has no `size`")
    image_size = _hf_size_to_shortest_edge(config["size"])
    crop = config.get("crop_size", image_size)
    crop_size = (crop, crop) if isinstance(crop, int) else (int(crop["height"]), int(crop["width"]))
    return {
        "image_size": image_size,
        "crop_size": crop_size,
        "mean": tuple(float(x) for x in config.get("image_mean", OPENAI_CLIP_MEAN)),
        "std": tuple(float(x) for x in config.get("image_std", OPENAI_CLIP_STD)),
    }


def read_processor_settings(path: str | os.PathLike) -> dict:
    """`processor_settings_from_hf` of a `preprocessor_config.json` file; ValueError names the file."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the image preprocessor config ({e})") from e
    try:
        return processor_settings_from_hf(config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def checkpoint_image_settings(directory: str | os.PathLike, image_size: int) -> dict:
    """`preprocess_image` keyword arguments for a checkpoint folder: its `preprocessor_config.json` when it has
    one, else CLIP's defaults at the tower's `image_size`."""
    path = os.path.join(directory, PREPROCESSOR_FILE)
    return read_processor_settings(path) if os.path.isfile(path) else {"image_size": image_size}
