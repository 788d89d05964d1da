"""SigLIP vision tower of Idefics2 (HF `Idefics2VisionTransformer`), at variable resolution (NaViT-style).

pixels `[n, H, W, 3]` (channels-last, normalised, each image zero-padded bottom/right to the batch's H × W,
multiples of the patch size) + pixel mask `[n, H, W]` → patch embedding (+ bucketed positions) →
L × (LN → bidirectional attention over the image's valid patches → residual; LN → tanh-GELU MLP →
residual) → post_layernorm → `[n, (H/p)·(W/p), D]`.

Positions: the learned table is a `side × side` grid (70 × 70 for 980/14); an image of `h × w` valid patches
takes, for patch (r, c), the grid cell (bucket(r / h), bucket(c / w)) — HF's `torch.bucketize` rule, computed
here in float32 the same way. Padded patches take position 0 and are seen by no query (as keys); their own
outputs are computed (from the valid patches) but never used downstream.
"""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models.config import SiglipVisionConfig
from vlm_jax.models.layers import layer_norm, normal_init, stacked, zeros_init
from vlm_jax.models.vit import ViTEncoderLayer


def patch_attention_mask(pixel_attention_mask, patch_size: int):
    """Pixel mask bool `[n, H, W]` → patch mask bool `[n, H/p, W/p]`: a patch is valid iff all its pixels are
    (HF `Idefics2Model.get_image_features`)."""
    n, h, w = pixel_attention_mask.shape
    p = patch_size
    return pixel_attention_mask.reshape(n, h // p, p, w // p, p).all(axis=(2, 4))


def _bucket_boundaries(side: int) -> np.ndarray:
    """`torch.arange(1/side, 1.0, 1/side)` in float32 (computed in float64, as torch does on CPU)."""
    return np.arange(1.0 / side, 1.0, 1.0 / side, dtype=np.float64).astype(np.float32)


def bucket_position_ids(patch_mask, side: int):
    """Position ids int32 `[n, gh·gw]` of a patch mask bool `[n, gh, gw]` on a `side × side` table
    (HF `Idefics2VisionEmbeddings.forward`): valid patch (r, c) of an image with h × w valid patches gets
    `bucket(r·(1/h)) · side + bucket(c·(1/w))`, bucket(x) = #boundaries <= x; padding gets 0."""
    n, gh, gw = patch_mask.shape
    boundaries = jnp.asarray(_bucket_boundaries(side))
    clamp = np.float32(1.0 - 1e-6)

    def buckets(count, length):
        step = jnp.float32(1.0) / count.astype(jnp.float32)  # [n]
        frac = jnp.minimum(jnp.arange(length, dtype=jnp.float32)[None, :] * step[:, None], clamp)
        return jnp.sum(boundaries[None, None, :] <= frac[:, :, None], axis=-1).astype(jnp.int32)

    rows = buckets(patch_mask[:, :, 0].sum(axis=1), gh)  # [n, gh]
    cols = buckets(patch_mask[:, 0, :].sum(axis=1), gw)  # [n, gw]
    ids = rows[:, :, None] * side + cols[:, None, :]
    return jnp.where(patch_mask, ids, 0).reshape(n, gh * gw)


class SiglipVisionTower(nn.Module):
    """`__call__(pixel_values [n, H, W, C], patch_mask bool [n, H/p, W/p] | None) -> [n, (H/p)·(W/p), D]`
    (post_layernorm output; HF `last_hidden_state`). `patch_mask` None = every patch valid."""

    config: SiglipVisionConfig

    @nn.compact
    def __call__(self, pixel_values, patch_mask=None):
        c = self.config
        n, h, w, ch = pixel_values.shape
        p = c.patch_size
        if h % p or w % p or ch != c.num_channels:
            raise ValueError(f"SiglipVisionTower: pixel_values {pixel_values.shape} must be [n, H, W, "
                             f"{c.num_channels}] with H, W multiples of patch_size {p}")
        gh, gw = h // p, w // p
        if patch_mask is None:
            patch_mask = jnp.ones((n, gh, gw), bool)
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        patches = pixel_values.reshape(n, gh, p, gw, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, p * p * ch)
        x = nn.Dense(c.hidden_size, dtype=dtype, param_dtype=pdtype,
                     kernel_init=normal_init(c.initializer_range, ("patch", "vision_embed")),
                     bias_init=zeros_init(("vision_embed",)), name="patch_embedding")(patches.astype(dtype))
        table = self.param("position_embedding", normal_init(c.initializer_range, (None, "vision_embed")),
                           (c.num_positions, c.hidden_size), pdtype)
        x = x + jnp.take(table, bucket_position_ids(patch_mask, c.num_patches_per_side), axis=0).astype(dtype)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        kv_segment_ids = patch_mask.reshape(n, gh * gw).astype(jnp.int32)
        layers = stacked(ViTEncoderLayer, length=c.num_hidden_layers, remat_policy=c.remat_policy,
                         in_axes=nn.broadcast)
        x, _ = layers(c, name="layers")(x, kv_segment_ids)
        return layer_norm(c.layer_norm_eps, dtype, pdtype, "post_layernorm")(x)


def init_variables(config: SiglipVisionConfig, rng: jax.Array) -> dict:
    """Boxed (`nn.LogicallyPartitioned`) variables `{"params": ...}` of a SiglipVisionTower."""
    p = config.patch_size
    return SiglipVisionTower(config).init(rng, jnp.zeros((1, p, p, config.num_channels), jnp.float32))
