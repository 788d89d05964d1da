"""preprocess_image == transformers' PIL CLIPImageProcessor (+ LLaVA's pad-to-square), to 1e-5."""

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from data_testlib import image_bytes
from vlm_jax.data import image as image_lib
from vlm_jax.data.image import OPENAI_CLIP_MEAN, preprocess_image, processor_settings_from_hf


def _reference_pad(img: Image.Image, mean) -> Image.Image:
    """Independent pad-to-square: paste centred on a mean-coloured square canvas."""
    w, h = img.size
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), tuple(int(x * 255) for x in mean))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _hf(processor, img):
    return processor(img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)  # CHW -> HWC


@pytest.mark.parametrize("aspect", ["pad", "none"])
@pytest.mark.parametrize("size", [(500, 300), (201, 641), (37, 91), (336, 336), (1280, 20)])
def test_matches_hf_clip_336(size, aspect):
    img = Image.open(io.BytesIO(image_bytes(*size, seed=sum(size))))
    hf = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    ref = _hf(hf, _reference_pad(img.convert("RGB"), OPENAI_CLIP_MEAN) if aspect == "pad" else img)
    ours = preprocess_image(img, 336, aspect=aspect, max_aspect=None)  # 1280x20 is over the default 50:1 limit
    assert ours.dtype == np.float32 and ours.shape == (336, 336, 3)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK"])
def test_non_rgb_modes_follow_the_seed_convert(mode):
    """The seed converts with PIL `.convert("RGB")` before processing (alpha dropped, not composited)."""
    rgb = Image.open(io.BytesIO(image_bytes(90, 60, seed=3)))
    img = rgb.convert(mode)
    if mode == "RGBA":
        img.putalpha(Image.new("L", img.size, 40))
    hf = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    ref = _hf(hf, _reference_pad(img.convert("RGB"), OPENAI_CLIP_MEAN))
    np.testing.assert_allclose(preprocess_image(img, 64), ref, atol=1e-5, rtol=0)


def test_settings_from_hf_config_win():
    """A checkpoint's preprocessor config (non-CLIP mean/std, crop != size) drives the result."""
    config = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 36}, "image_mean": [0.5, 0.4, 0.3],
              "image_std": [0.2, 0.3, 0.25], "resample": 3, "do_resize": True, "do_center_crop": True}
    settings = processor_settings_from_hf(config)
    assert settings == {"image_size": 40, "crop_size": (32, 36), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25)}
    hf = CLIPImageProcessorPil(**config)
    for size in [(70, 50), (20, 90)]:
        img = Image.open(io.BytesIO(image_bytes(*size, seed=size[0])))
        for aspect in ("pad", "none"):
            ref = _hf(hf, _reference_pad(img, settings["mean"]) if aspect == "pad" else img)
            ours = preprocess_image(img, **settings, aspect=aspect)
            assert ours.shape == (32, 36, 3)
            np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_crop_larger_than_resized_image_pads_like_hf():
    config = {"size": {"shortest_edge": 20}, "crop_size": {"height": 30, "width": 30}}
    img = Image.open(io.BytesIO(image_bytes(50, 25, seed=9)))
    ref = _hf(CLIPImageProcessorPil(**config), img)
    np.testing.assert_allclose(preprocess_image(img, **processor_settings_from_hf(config), aspect="none"), ref, atol=1e-5)


def test_old_style_int_sizes_and_unsupported_settings():
    assert processor_settings_from_hf({"size": 336, "crop_size": 336})["crop_size"] == (336, 336)
    with pytest.raises(ValueError, match="resample"):
        processor_settings_from_hf({"size": 336, "resample": 2})
    with pytest.raises(ValueError, match="do_center_crop"):
        processor_settings_from_hf({"size": 336, "do_center_crop": False})
    with pytest.raises(ValueError, match="size"):
        processor_settings_from_hf({"size": {"height": 336, "width": 336}})
    with pytest.raises(ValueError, match="aspect"):
        preprocess_image(Image.new("RGB", (4, 4)), 4, aspect="crop")


def _canvas_pipeline(img: Image.Image, size: int, aspect: str) -> np.ndarray:
    """The pipeline as LLaVA writes it: the whole padded square, then the whole resize, then the crop."""
    img = img.convert("RGB")
    if aspect == "pad":
        img = _reference_pad(img, OPENAI_CLIP_MEAN)
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    arr = image_lib._center_crop(np.asarray(img.resize(new, resample=3)), size, size)
    arr = (arr.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
    return (arr - np.asarray(OPENAI_CLIP_MEAN, np.float32)) / np.asarray(image_lib.OPENAI_CLIP_STD, np.float32)


@pytest.mark.parametrize("aspect", ["pad", "none"])
@pytest.mark.parametrize("size", [(640, 360), (360, 640), (1000, 40), (40, 2000), (336, 336), (3000, 2000)])
def test_ordinary_images_unchanged_to_the_last_bit(size, aspect):
    img = Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, size[::-1] + (3,), dtype=np.uint8))
    assert np.array_equal(preprocess_image(img, 336, aspect=aspect), _canvas_pipeline(img, 336, aspect))


@pytest.mark.parametrize("size", [(30, 1500), (1500, 30), (200, 3000), (3000, 200), (1, 20000)])
def test_large_squares_and_resizes_are_never_built(size):
    """With a tiny exact-path limit the bounded paths run: no square over the limit is built, the resize is
    computed for the crop only (equal to the full resize within 1 level of 255), and padding shrinks first
    (within 6 levels at the image's edges, exact elsewhere)."""
    img = Image.fromarray(np.random.default_rng(size[0]).integers(0, 256, size[::-1] + (3,), dtype=np.uint8))
    w, h = size
    new = (64, int(64 * h / w)) if w <= h else (int(64 * w / h), 64)
    full = image_lib._center_crop(np.asarray(img.resize(new, resample=3)), 64, 64).astype(int)
    cropped = image_lib._resize_and_crop(img, 64, 64, 64, exact_side=32).astype(int)
    assert np.abs(full - cropped).max() <= 1
    background = tuple(int(x * 255) for x in OPENAI_CLIP_MEAN)
    square = image_lib.pad_to_square(img, background, exact_side=256)
    assert square.size == (256, 256)
    exact = np.asarray(_reference_pad(img, OPENAI_CLIP_MEAN).resize((64, 64), resample=3)).astype(int)
    bounded = np.asarray(square.resize((64, 64), resample=3)).astype(int)
    assert np.abs(exact - bounded).max() <= 6 and np.mean(exact != bounded) < 0.1


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("size, reason", [((1, 60000), "extreme_aspect_ratio"), ((60000, 1), "extreme_aspect_ratio"),
                                          ((8000, 7000), "image_too_large")])
def test_limits_refuse_from_the_header(size, reason):
    img = Image.open(io.BytesIO(_png(*size)))  # lazily opened: the limits must not decode it
    with pytest.raises(image_lib.ImageRejected, match="over the limit") as err:
        preprocess_image(img, 336)
    assert err.value.reason == reason
    assert img._im is None  # never decoded


def test_only_regular_files_are_read(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(_png(5, 4))
    assert image_lib.open_image_file(png).size == (5, 4)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = {}
    reader = threading.Thread(target=lambda: result.setdefault("error", _rejected(fifo)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and result["error"] == "not_regular_file"  # refused, never blocked
    assert _rejected(tmp_path) == "not_regular_file"
    with pytest.raises(FileNotFoundError):
        image_lib.open_image_file(tmp_path / "missing.png")


def _rejected(path) -> str | None:
    try:
        image_lib.open_image_file(path)
    except image_lib.ImageRejected as e:
        return e.reason
    return None
