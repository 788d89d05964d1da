"""preprocess_image == transformers' PIL CLIPImageProcessor (+ LLaVA's pad-to-square), to 1e-5."""

import io

import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from data_testlib import image_bytes
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
    ours = preprocess_image(img, 336, aspect=aspect)
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
