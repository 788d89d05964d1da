"""Tiny random Hugging Face reference models (PyTorch CPU, fp32, eager attention) and their configs,
built once per test session."""
import dataclasses
import functools

import numpy as np
import torch

from vlm_jax.models import config as config_lib

# Larger than HF's 0.02 so attention is peaked and RoPE / masking mistakes show in the logits.
STD = 0.1


def vision_config(**kw) -> config_lib.VisionConfig:
    return config_lib.VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                   image_size=28, patch_size=14, projection_dim=16, initializer_range=STD, **kw)


def text_config(**kw) -> config_lib.TextConfig:
    """GQA (4 heads / 2 kv heads) with Llama-3 RoPE scaling that changes the low frequencies."""
    return config_lib.TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=STD,
        rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8),
        **kw)


def llava_config() -> config_lib.LlavaConfig:
    tiny = config_lib.preset("tiny")
    return dataclasses.replace(tiny, vision_config=dataclasses.replace(tiny.vision_config, initializer_range=STD),
                               text_config=dataclasses.replace(tiny.text_config, initializer_range=STD))


def state_dict_numpy(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@functools.cache
def hf_clip(with_projection: bool):
    from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
    return cls(CLIPVisionConfig(**vision_config().to_hf(), attn_implementation="eager")).eval()


@functools.cache
def hf_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = text_config(tie_word_embeddings=tied)
    return LlamaForCausalLM(LlamaConfig(**cfg.to_hf(), attn_implementation="eager")).eval()


@functools.cache
def hf_llava():
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(2)
    return LlavaForConditionalGeneration(LlavaConfig(**llava_config().to_hf(), attn_implementation="eager")).eval()


def pixels_nchw(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32))


def to_nhwc(pixels: torch.Tensor) -> np.ndarray:
    return pixels.numpy().transpose(0, 2, 3, 1)


def idefics2_config() -> config_lib.Idefics2Config:
    """Tiny Idefics2: SigLIP 56 px / patch 14 (4×4 position grid), perceiver 8 latents (GQA 4/2), Mistral with
    GQA and a sliding window of 8 slots (shorter than the test sequences, so the window matters)."""
    text = config_lib.TextConfig.from_hf(dict(
        model_type="mistral", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=8, rms_norm_eps=1e-5, initializer_range=STD,
        pad_token_id=0, max_position_embeddings=128))
    return config_lib.Idefics2Config(
        vision_config=config_lib.SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                    num_attention_heads=4, image_size=56, patch_size=14,
                                                    initializer_range=STD),
        perceiver_config=config_lib.PerceiverConfig(resampler_n_latents=8, resampler_depth=2, resampler_n_heads=4,
                                                    resampler_head_dim=8, num_key_value_heads=2, rms_norm_eps=1e-5,
                                                    initializer_range=STD),
        text_config=text, image_token_id=127)


IDEFICS2_FAKE_TOKEN = 126  # <fake_token_around_image> of the tiny configs' made-up vocabulary


@functools.cache
def hf_idefics2():
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration

    torch.manual_seed(3)
    model = Idefics2ForConditionalGeneration(Idefics2Config(**idefics2_config().to_hf(), attn_implementation="eager"))
    with torch.no_grad():  # HF initialises latents to ones and norms to ones: randomise so the test sees them
        for name, p in model.named_parameters():
            if "latents" in name or "norm" in name:
                p.add_(torch.randn_like(p) * STD)
    return model.eval()
