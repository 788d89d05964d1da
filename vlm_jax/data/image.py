"""Image preprocessing shared by the training loader, the generation CLI and evaluation.

LLaVA-1.5 feeds CLIP ViT-L/14-336 with images that were first padded to a square with the CLIP mean
colour (`expand2square`, `image_aspect_ratio="pad"`) and then run through `CLIPImageProcessor`:
resize the shortest side with PIL bicubic, center crop, rescale by 1/255, normalise with mean/std.
This module is a NumPy/PIL re-implementation of exactly that (it matches transformers'
PIL-backend `CLIPImageProcessorPil` to float32 rounding), producing channels-last arrays as the
vision tower expects (`[H, W, 3]`).

Memory stays bounded whatever the shape. `check_image_size` refuses images over `MAX_IMAGE_PIXELS` or
`MAX_ASPECT_RATIO` from the header alone (nothing decoded); `open_image_file` reads only regular files
(a FIFO, device or socket is refused without blocking). Where the padded square (or, without padding, the
resized image) would be large, the same result is computed without building it: the image is first
shrunk so the square has `EXACT_CANVAS_SIDE` pixels a side, and only the center crop of a huge resize is
resampled (PIL's `box`). Ordinary images (padded square at most twice the image, or at most
`EXACT_CANVAS_SIDE`**2 pixels) take the exact LLaVA path, unchanged to the last bit.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from vlm_jax import paths

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ASPECT_MODES = ("pad", "none")
PREPROCESSOR_FILE = "preprocessor_config.json"  # a Hugging Face image processor's settings file
_PIL_BICUBIC = 3  # PILImageResampling.BICUBIC, the only resampling CLIP checkpoints use.
MAX_IMAGE_PIXELS = 50_000_000  # width x height; ~150 MB decoded RGB (Pillow warns at 89M, refuses at 179M)
MAX_ASPECT_RATIO = 50.0  # long side / short side; a 1 x 60000 strip would pad to a 60000^2 square
MAX_IMAGE_BYTES = 256 << 20  # an encoded image file
EXACT_CANVAS_SIDE = 4096  # squares up to this side (or twice the image) are built as LLaVA does


class ImageRejected(ValueError):
    """An image refused before decoding; `reason` is "image_too_large", "extreme_aspect_ratio" or
    "not_regular_file" (the loader and the converter count skips by it)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_image_size(width: int, height: int, max_pixels: int | None = MAX_IMAGE_PIXELS,
                     max_aspect: float | None = MAX_ASPECT_RATIO) -> None:
    """Raises `ImageRejected` for a `width x height` image over the pixel or aspect-ratio limit (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageRejected("image_too_large", f"{width}x{height} = {width * height:,} pixels is over the limit of "
                                               f"{max_pixels:,}; downscale it")
    if width < 1 or height < 1:
        raise ImageRejected("image_too_large", f"{width}x{height}: an image needs at least one pixel")
    if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
        raise ImageRejected("extreme_aspect_ratio", f"{width}x{height} has aspect ratio "
                                                    f"{max(width, height) / min(width, height):.0f}:1, over the "
                                                    f"limit of {max_aspect:g}:1; crop it")


def read_image_file(path: str | os.PathLike, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an image file. Only regular files are read: a FIFO, device or socket raises
    `ImageRejected("not_regular_file")` without blocking; a file over `max_bytes` raises
    `ImageRejected("image_too_large")`; a missing file raises FileNotFoundError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait for a writer
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRejected("not_regular_file", f"{path} is not a regular file (named pipe, device, socket "
                                                    "or folder)")
        if info.st_size > max_bytes:
            raise ImageRejected("image_too_large", f"{path}: a file of {info.st_size:,} bytes is over the limit of "
                                                   f"{max_bytes:,}")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read(max_bytes + 1)


def open_image_bytes(data: bytes) -> Image.Image:
    """A lazily opened PIL image (header read, pixels not decoded); Pillow's decompression-bomb refusal
    becomes `ImageRejected("image_too_large")`."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own limit (above ours): the header is enough to refuse
        raise ImageRejected("image_too_large", str(e)) from e


def open_image_file(path: str | os.PathLike, max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
    """`open_image_bytes(read_image_file(path))`: a regular file opened lazily."""
    return open_image_bytes(read_image_file(path, max_bytes))


def expand_to_square(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pads `img` to a square, centred, filled with `background` (LLaVA's `expand2square`)."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), background)
    result.paste(img, ((side - width) // 2, (side - height) // 2))
    return result


def pad_to_square(img: Image.Image, background: tuple[int, ...],
                  exact_side: int = EXACT_CANVAS_SIDE) -> Image.Image:
    """`expand_to_square`, without building a huge square: when the square would be larger than both
    `exact_side`**2 pixels and twice the image, the image is first shrunk (bicubic) so that the square's
    side is `exact_side`. Ordinary images take `expand_to_square` itself (bit-identical)."""
    width, height = img.size
    side = max(width, height)
    if side * side <= max(exact_side * exact_side, 2 * width * height):
        return expand_to_square(img, background)
    scale = exact_side / side
    small = img.resize((max(1, round(width * scale)), max(1, round(height * scale))), resample=_PIL_BICUBIC)
    return expand_to_square(small, background)


def _resized_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """The size after resizing the shorter side to `shortest_edge` (longer side truncated to int, as HF)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)


def _resize_and_crop(img: Image.Image, shortest_edge: int, crop_h: int, crop_w: int,
                     exact_side: int = EXACT_CANVAS_SIDE) -> np.ndarray:
    """Resize the shorter side to `shortest_edge` (PIL bicubic), then `_center_crop` -> `uint8 [crop_h, crop_w, 3]`.
    A resized image over `exact_side`**2 pixels is never built: only its center crop is resampled (PIL's
    `box` selects the source region; the filter still sees the pixels around it)."""
    width, height = img.size
    new_w, new_h = _resized_size(width, height, shortest_edge)
    if new_w * new_h <= exact_side * exact_side:
        return _center_crop(np.asarray(img.resize((new_w, new_h), resample=_PIL_BICUBIC)), crop_h, crop_w)
    top, left = max(0, (new_h - crop_h) // 2), max(0, (new_w - crop_w) // 2)
    bottom, right = min(new_h, top + crop_h), min(new_w, left + crop_w)
    region = _resize_region(img, new_w, new_h, (left, top, right, bottom))
    # The region is the crop where it fits; where the crop is larger than the resized image, this pads like HF.
    return _center_crop(np.asarray(region), crop_h, crop_w)


def _resize_region(img: Image.Image, new_w: int, new_h: int, region: tuple[int, int, int, int]) -> Image.Image:
    """`img.resize((new_w, new_h), BICUBIC).crop(region)` without building the full resize: PIL's two passes
    (horizontal, then vertical, as PIL orders them) on only the source rows and output columns the region needs."""
    width, height = img.size
    left, top, right, bottom = region
    sx, sy = width / new_w, height / new_h
    margin = 2 * max(sy, 1.0) + 2  # the bicubic filter's support in source rows, plus rounding
    r0, r1 = max(0, int(top * sy - margin)), min(height, int(bottom * sy + margin) + 1)
    rows = img.crop((0, r0, width, r1))
    rows = rows.resize((right - left, r1 - r0), resample=_PIL_BICUBIC, box=(left * sx, 0, right * sx, r1 - r0))
    return rows.resize((right - left, bottom - top), resample=_PIL_BICUBIC,
                       box=(0, top * sy - r0, right - left, bottom * sy - r0))


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
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    max_aspect: float | None = MAX_ASPECT_RATIO,
) -> np.ndarray:
    """Turns a PIL image into normalised CLIP input `float32 [crop_h, crop_w, 3]` (channels-last).

    Steps (the seed's LLaVA pipeline): `convert("RGB")` (alpha dropped, as `Image.open().convert`);
    if `aspect == "pad"`, pad to a square with the mean colour `tuple(int(x * 255) for x in mean)`;
    resize the shortest side to `image_size` (PIL bicubic); center crop to `crop_size` (default
    `image_size`, int or (height, width)); rescale by 1/255; normalise with `mean`/`std`.
    Images over `max_pixels` or `max_aspect` raise `ImageRejected` before any pixel is decoded; memory
    stays bounded for any shape (module docstring).
    """
    if aspect not in ASPECT_MODES:
        raise ValueError(f"aspect must be one of {ASPECT_MODES}, got {aspect!r}")
    check_image_size(*img.size, max_pixels, max_aspect)
    img = img.convert("RGB")
    if aspect == "pad":
        img = pad_to_square(img, tuple(int(x * 255) for x in mean))
    crop_h, crop_w = _as_hw(crop_size, int(image_size))
    arr = _resize_and_crop(img, int(image_size), crop_h, crop_w)
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
        config = json.loads(paths.read_text(path))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the image preprocessor config ({e})") from e
    try:
        return processor_settings_from_hf(config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def checkpoint_image_settings(directory: str | os.PathLike, image_size: int) -> dict:
    """`preprocess_image` keyword arguments for a checkpoint folder: its `preprocessor_config.json` when it has
    one, else CLIP's defaults at the tower's `image_size`."""
    path = paths.join(directory, PREPROCESSOR_FILE)
    return read_processor_settings(path) if paths.isfile(path) else {"image_size": image_size}
