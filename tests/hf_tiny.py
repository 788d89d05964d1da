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
