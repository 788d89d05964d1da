"""Model FLOPs per train step, for achieved TFLOP/s and MFU.

Counted as matmul FLOPs of what the model computes, padding included (2 FLOPs per multiply-add):
forward `2 * params_matmul * tokens` plus attention scores and mixing; the backward pass adds
2x the forward for a component whose weights train (weight and input gradients), 1x for a frozen
component that gradients still pass through (input gradients only: something upstream trains), 0x
for a frozen component with nothing trained upstream. Order: vision tower -> projector -> LM.
A fully trained LM thus costs the usual `6 * N * tokens` plus attention.
Causal LM attention counts half the score matrix; the vision tower attends over all positions.
"""
from __future__ import annotations

from typing import Sequence

from vlm_jax.models.config import Idefics2Config

# Dense bf16 peak FLOP/s per device, by `jax.Device.device_kind` prefix (vendor datasheets).
PEAK_FLOPS_BY_DEVICE_KIND = (
    ("TPU v6", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100", 989e12),
    ("NVIDIA A100", 312e12),
    ("NVIDIA L4", 121e12),
)


def peak_flops_per_device(device_kind: str, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: `override_tflops * 1e12` when > 0, else the table, else None (unknown)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    for prefix, peak in PEAK_FLOPS_BY_DEVICE_KIND:
        if device_kind.startswith(prefix):
            return peak
    return None


def _pass_multiplier(trained: bool, upstream_trained: bool) -> int:
    """Forward + backward cost in units of the forward cost."""
    return 3 if trained else (2 if upstream_trained else 1)


def _lm_forward(t, batch: int, seq_len: int) -> float:
    """Forward FLOPs of the decoder + LM head on `batch` rows of `seq_len` tokens (causal half of attention)."""
    tokens = batch * seq_len
    q_width, kv_width = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    lm_layer_params = (2 * t.hidden_size * q_width + 2 * t.hidden_size * kv_width
                       + 3 * t.hidden_size * t.intermediate_size)
    return (2 * tokens * (lm_layer_params * t.num_hidden_layers + t.hidden_size * t.vocab_size)
            + 0.5 * 4 * batch * seq_len * seq_len * q_width * t.num_hidden_layers)


def _vit_forward(v, images: int, patches: int, tokens: int, layers: int) -> float:
    """Forward FLOPs of a ViT on `images` images of `patches` patches and `tokens` tokens (patches + CLS) each:
    patch embedding + `layers` layers."""
    layer_params = 4 * v.hidden_size * v.hidden_size + 2 * v.hidden_size * v.intermediate_size
    return (2 * images * patches * v.num_channels * v.patch_size ** 2 * v.hidden_size
            + 2 * images * tokens * layer_params * layers + 4 * images * tokens * tokens * v.hidden_size * layers)


def train_step_flops(config, *, batch: int, seq_len: int, image_slots: int, frozen: Sequence[str],
                     image_size: int | None = None) -> float:
    """FLOPs of one optimizer step on `batch` rows of `seq_len` tokens and `image_slots` image slots
    per row (every slot is encoded, empty ones too), for a LlavaConfig or an Idefics2Config (whose images are
    padded to `image_size`², every patch of the padded grid counted)."""
    if isinstance(config, Idefics2Config):
        return _idefics2_step_flops(config, batch, seq_len, image_slots, frozen, image_size)
    v, t = config.vision_config, config.text_config
    frozen = set(frozen)
    vision_on = "vision_tower" not in frozen
    projector_on = "multi_modal_projector" not in frozen
    lm_on = "language_model" not in frozen

    images = batch * image_slots
    vision_fwd = _vit_forward(v, images, v.num_patches, v.num_positions, config.vision_layers_used)
    image_tokens = images * config.num_image_tokens
    if config.projector_type == "mlp2x_gelu":
        projector_params = v.hidden_size * t.hidden_size + t.hidden_size * t.hidden_size
    else:
        projector_params = v.hidden_size * t.hidden_size
    projector_fwd = 2 * image_tokens * projector_params
    lm_fwd = _lm_forward(t, batch, seq_len)
    return float(vision_fwd * _pass_multiplier(vision_on, False)
                 + projector_fwd * _pass_multiplier(projector_on, vision_on)
                 + lm_fwd * _pass_multiplier(lm_on, vision_on or projector_on))


def _idefics2_step_flops(config: Idefics2Config, batch: int, seq_len: int, image_slots: int, frozen: Sequence[str],
                         image_size: int | None) -> float:
    v, p, t = config.vision_config, config.perceiver_config, config.text_config
    frozen = set(frozen)
    vision_on, connector_on, lm_on = ("vision_model" not in frozen, "connector" not in frozen,
                                      "text_model" not in frozen)
    images = batch * image_slots
    patches = ((image_size or v.image_size) // v.patch_size) ** 2
    vision_fwd = _vit_forward(v, images, patches, patches, v.num_hidden_layers)
    d, latents = t.hidden_size, p.resampler_n_latents
    projection = 2 * images * patches * (2 * v.hidden_size * t.intermediate_size + t.intermediate_size * d)
    q_width, kv_width = p.resampler_n_heads * p.resampler_head_dim, p.num_key_value_heads * p.resampler_head_dim
    context = patches + latents
    perceiver_layer = (2 * latents * d * q_width + 2 * 2 * context * d * kv_width + 2 * latents * q_width * d
                       + 2 * latents * 3 * d * 4 * d + 4 * latents * context * q_width)
    connector_fwd = projection + images * perceiver_layer * p.resampler_depth
    return float(vision_fwd * _pass_multiplier(vision_on, False)
                 + connector_fwd * _pass_multiplier(connector_on, vision_on)
                 + _lm_forward(t, batch, seq_len) * _pass_multiplier(lm_on, vision_on or connector_on))
