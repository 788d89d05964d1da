"""Idefics2 (HF `Idefics2ForConditionalGeneration`): SigLIP tower → connector → Mistral decoder.

Connector: modality projection (SwiGLU MLP, vision width → text `intermediate_size` → text width) then the
perceiver resampler: `resampler_n_latents` learned latents, `resampler_depth` × (RMSNorm latents, RMSNorm
context; GQA attention of the latents over [context; latents] without RoPE, context padding masked →
residual; RMSNorm → SwiGLU MLP (4× width) → residual) → RMSNorm: `[n, 64, D]` per image.

`input_ids` carry each image as `<fake_token_around_image>` + 64 × `image_token_id` + `<fake_token_around_image>`
(the processor's expanded form); the k-th image block of a row takes the k-th real image slot of that row
(the splice is LLaVA's). The decoder is `Llama` with the Mistral settings of `text_config` (sliding window).
"""
from __future__ import annotations

import dataclasses
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.attention import attention
from vlm_jax.models.config import Idefics2Config
from vlm_jax.models.layers import DenseGeneral, RMSNorm, normal_init, ones_init, stacked
from vlm_jax.models.llama import Llama, LlamaMLP
from vlm_jax.models.llava import splice_image_features
from vlm_jax.models.siglip import SiglipVisionTower, patch_attention_mask


class PerceiverAttention(nn.Module):
    config: Idefics2Config

    @nn.compact
    def __call__(self, latents, context, kv_segment_ids):
        p, t = self.config.perceiver_config, self.config.text_config
        dtype, pdtype = jnp.dtype(t.dtype), jnp.dtype(t.param_dtype)
        proj = partial(DenseGeneral, use_bias=False, dtype=dtype, param_dtype=pdtype)
        hd = p.resampler_head_dim
        q = proj((p.resampler_n_heads, hd), name="q_proj",
                 kernel_init=normal_init(p.initializer_range, ("embed", "heads", "head_dim")))(latents)
        both = jnp.concatenate([context, latents], axis=1)
        k = proj((p.num_key_value_heads, hd), name="k_proj",
                 kernel_init=normal_init(p.initializer_range, ("embed", "kv_heads", "head_dim")))(both)
        v = proj((p.num_key_value_heads, hd), name="v_proj",
                 kernel_init=normal_init(p.initializer_range, ("embed", "kv_heads", "head_dim")))(both)
        q_seg = jnp.ones(latents.shape[:2], jnp.int32)
        out = attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_segment_ids, causal=False,
                        implementation=t.attention_impl, block_q=t.attention_block_q, block_k=t.attention_block_k)
        return proj(t.hidden_size, axis=(-2, -1), name="o_proj",
                    kernel_init=normal_init(p.initializer_range, ("heads", "head_dim", "embed")))(out)


class PerceiverLayer(nn.Module):
    """Scan body `(latents, context, kv_segment_ids) -> (latents, None)`."""

    config: Idefics2Config

    @nn.compact
    def __call__(self, latents, context, kv_segment_ids):
        p, t = self.config.perceiver_config, self.config.text_config
        norm = partial(RMSNorm, p.rms_norm_eps, jnp.dtype(t.dtype), jnp.dtype(t.param_dtype))
        h = PerceiverAttention(self.config, name="self_attn")(
            norm(name="input_latents_norm")(latents), norm(name="input_context_norm")(context), kv_segment_ids)
        latents = latents + h
        mlp_config = dataclasses.replace(t, intermediate_size=4 * t.hidden_size, initializer_range=p.initializer_range)
        latents = latents + LlamaMLP(mlp_config, name="mlp")(norm(name="post_attention_layernorm")(latents))
        return latents, None


class PerceiverResampler(nn.Module):
    """context `[n, T, D]` + valid bool `[n, T]` → `[n, resampler_n_latents, D]`."""

    config: Idefics2Config

    @nn.compact
    def __call__(self, context, valid):
        p, t = self.config.perceiver_config, self.config.text_config
        dtype, pdtype = jnp.dtype(t.dtype), jnp.dtype(t.param_dtype)
        latents = self.param("latents", ones_init((None, "embed")), (p.resampler_n_latents, t.hidden_size), pdtype)
        n = context.shape[0]
        latents = jnp.broadcast_to(latents.astype(dtype), (n,) + latents.shape)
        kv_segment_ids = jnp.concatenate([valid.astype(jnp.int32), jnp.ones((n, p.resampler_n_latents), jnp.int32)],
                                         axis=1)
        layers = stacked(PerceiverLayer, length=p.resampler_depth, remat_policy=t.remat_policy,
                         in_axes=(nn.broadcast, nn.broadcast))
        latents, _ = layers(self.config, name="layers")(latents, context.astype(dtype), kv_segment_ids)
        return RMSNorm(p.rms_norm_eps, dtype, pdtype, name="norm")(latents)


class Connector(nn.Module):
    """Vision features `[n, T, Dv]` + valid patches bool `[n, T]` → image tokens `[n, 64, D]`."""

    config: Idefics2Config

    @nn.compact
    def __call__(self, features, valid):
        c = self.config
        projected = LlamaMLP(c.text_config, in_features=c.vision_config.hidden_size,
                             name="modality_projection")(features)
        return PerceiverResampler(c, name="perceiver_resampler")(projected, valid)


class Idefics2(nn.Module):
    """Idefics2ForConditionalGeneration. `__call__(input_ids [b, s], pixel_values [b, n_img, H, W, 3] | None,
    image_mask [b, n_img] | None, positions [b, s], segment_ids [b, s], cache=None, cache_index=None,
    last_logits_only=False, pixel_attention_mask=None [b, n_img, H, W], hidden_only=False, layer_params=None) ->
    (logits [b, s or 1, vocab], cache)` (`hidden_only`: final-norm hidden states instead of logits; `layer_params`:
    per-layer params for the unrolled decode; see `Llama`).
    `pixel_attention_mask` None means every pixel of every image is valid (images of one size)."""

    config: Idefics2Config

    def setup(self):
        c = self.config
        self.vision_model = SiglipVisionTower(c.vision_config)
        self.connector = Connector(c)
        self.text_model = Llama(c.text_config)

    def image_features(self, pixel_values, pixel_attention_mask=None):
        """Images `[n, H, W, 3]` (+ pixel mask bool `[n, H, W]`) → image tokens `[n, num_image_tokens, D]`.
        Rows / columns past the last whole patch are dropped (HF's stride-p convolution and mask unfolding)."""
        p = self.config.vision_config.patch_size
        n, h, w = pixel_values.shape[:3]
        h, w = h - h % p, w - w % p
        pixel_values = pixel_values[:, :h, :w]
        if pixel_attention_mask is None:
            pixel_attention_mask = jnp.ones((n, h, w), bool)
        patch_mask = patch_attention_mask(pixel_attention_mask[:, :h, :w].astype(bool), p)
        hidden = self.vision_model(pixel_values, patch_mask)
        return self.connector(hidden, patch_mask.reshape(n, -1))

    def embed(self, input_ids, pixel_values=None, image_mask=None, pixel_attention_mask=None):
        """Token embeddings `[b, s, D]` with image tokens spliced in (text only when no pixels)."""
        c = self.config
        is_image = input_ids == c.image_token_id
        # Every id keeps its own embedding first (HF: `<image>` is in the vocabulary), so an `<image>` token
        # generated during decoding is embedded as transformers embeds it; image positions are then replaced.
        embeddings = self.text_model.embed(input_ids)
        if pixel_values is None:
            return embeddings
        if image_mask is None:
            raise ValueError("Idefics2: pixel_values given without image_mask")
        b, n_img = pixel_values.shape[:2]
        flat = pixel_values.reshape((b * n_img,) + pixel_values.shape[2:])
        flat_mask = (None if pixel_attention_mask is None
                     else pixel_attention_mask.reshape((b * n_img,) + pixel_attention_mask.shape[2:]))
        feats = self.image_features(flat, flat_mask)
        feats = feats.reshape((b, n_img) + feats.shape[1:])
        return splice_image_features(embeddings, is_image, feats, image_mask)

    def __call__(self, input_ids, pixel_values, image_mask, positions, segment_ids, cache=None, cache_index=None,
                 last_logits_only=False, pixel_attention_mask=None, hidden_only=False, layer_params=None):
        embeddings = self.embed(input_ids, pixel_values, image_mask, pixel_attention_mask)
        return self.text_model(embeddings, positions, segment_ids, cache=cache, cache_index=cache_index,
                               last_logits_only=last_logits_only, hidden_only=hidden_only,
                               layer_params=layer_params)


def init_variables(config: Idefics2Config, rng: jax.Array) -> dict:
    """Boxed (`nn.LogicallyPartitioned`) variables `{"params": ...}` of an Idefics2 (every tensor)."""
    v = config.vision_config
    n = config.num_image_tokens
    ids = jnp.full((1, n), config.image_token_id, jnp.int32)
    pixels = jnp.zeros((1, 1, v.patch_size, v.patch_size, v.num_channels), jnp.float32)
    positions = jnp.arange(n, dtype=jnp.int32)[None]
    return Idefics2(config).init(rng, ids, pixels, jnp.ones((1, 1), bool), positions, jnp.ones_like(ids))
