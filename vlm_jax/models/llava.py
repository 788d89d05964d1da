"""LLaVA-1.5: CLIP vision tower → projector → features spliced into the Llama token embeddings.

`input_ids` carry `image_token_id` repeated `num_image_tokens` times per image (llava-hf's expanded
form). The k-th image-token position of a row (counted left to right) takes feature k of that row's
real images, flattened in slot order: the first block gets the first real `image_mask` slot.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models.clip import CLIPVisionTower, VisionOutput
from vlm_jax.models.config import LlavaConfig
from vlm_jax.models.layers import normal_init, zeros_init
from vlm_jax.models.llama import Llama


class Projector(nn.Module):
    """Vision features `[n, T, Dv]` → text embeddings `[n, T, D]`.
    "mlp2x_gelu": linear_1 → GELU (exact erf) → linear_2; "linear": one `linear`."""

    config: LlavaConfig

    @nn.compact
    def __call__(self, x):
        c, t = self.config, self.config.text_config
        dense = lambda names, name: nn.Dense(  # noqa: E731
            t.hidden_size, use_bias=c.multimodal_projector_bias, dtype=jnp.dtype(t.dtype),
            param_dtype=jnp.dtype(t.param_dtype), kernel_init=normal_init(t.initializer_range, names),
            bias_init=zeros_init(names[1:]), name=name)
        if c.projector_type == "linear":
            return dense(("vision_embed", "embed"), "linear")(x)
        h = nn.gelu(dense(("vision_embed", "mlp"), "linear_1")(x), approximate=False)
        return dense(("mlp", "embed"), "linear_2")(h)


def splice_image_features(text_embeddings, is_image_token, image_features, image_mask):
    """Put image features at the image-token positions.

    text_embeddings `[b, s, D]`, is_image_token bool `[b, s]`, image_features `[b, n_img, T, D]`,
    image_mask bool `[b, n_img]` → `[b, s, D]`. Real slots are compacted to the front (stable), so the
    k-th image-token position of a row takes row-feature k of the k // T-th real image.
    Static shapes; counts are checked outside jit by `check_image_tokens`.
    """
    b, n_img, t, d = image_features.shape
    order = jnp.argsort(jnp.logical_not(image_mask).astype(jnp.int32), axis=1, stable=True)
    real_first = jnp.take_along_axis(image_features, order[:, :, None, None], axis=1).reshape(b, n_img * t, d)
    index = jnp.clip(jnp.cumsum(is_image_token, axis=1) - 1, 0, n_img * t - 1)
    gathered = jnp.take_along_axis(real_first, index[:, :, None], axis=1)
    return jnp.where(is_image_token[:, :, None], gathered.astype(text_embeddings.dtype), text_embeddings)


def check_image_tokens(input_ids, image_mask, image_token_id: int, num_image_tokens: int,
                       where: str = "batch") -> None:
    """Validate (numpy, outside jit) that each row of `input_ids [b, s]` holds exactly
    `num_image_tokens` image tokens per real `image_mask [b, n_img]` slot, in whole contiguous blocks.
    Raises ValueError naming `where`, the row and the counts."""
    input_ids, image_mask = np.asarray(input_ids), np.asarray(image_mask, bool)
    if input_ids.ndim != 2 or image_mask.ndim != 2 or input_ids.shape[0] != image_mask.shape[0]:
        raise ValueError(f"{where}: input_ids {input_ids.shape} and image_mask {image_mask.shape} "
                         "must be [batch, seq] and [batch, max_images]")
    for row, (ids, mask) in enumerate(zip(input_ids, image_mask)):
        is_img = ids == image_token_id
        want = int(mask.sum()) * num_image_tokens
        if int(is_img.sum()) != want:
            raise ValueError(f"{where}: row {row} has {int(is_img.sum())} image tokens (id {image_token_id}) but "
                             f"{int(mask.sum())} real images x {num_image_tokens} tokens = {want}")
        edges = np.flatnonzero(np.diff(np.concatenate([[0], is_img.astype(np.int8), [0]])))
        runs = edges[1::2] - edges[0::2]
        if np.any(runs % num_image_tokens):
            raise ValueError(f"{where}: row {row} has an image-token run of length {runs[runs % num_image_tokens][0]}, "
                             f"not a multiple of {num_image_tokens} (a split image block)")


class Llava(nn.Module):
    """LlavaForConditionalGeneration. `__call__(input_ids [b, s], pixel_values [b, n_img, H, W, 3] | None,
    image_mask [b, n_img] | None, positions [b, s], segment_ids [b, s], cache=None, cache_index=None,
    last_logits_only=False, hidden_only=False, layer_params=None) -> (logits [b, s or 1, vocab] float32, cache)`
    (`hidden_only`: final-norm hidden states `[b, s, D]` instead of logits; `layer_params`: per-layer params
    for the unrolled decode; see `Llama`)."""

    config: LlavaConfig

    def setup(self):
        c = self.config
        self.vision_tower = CLIPVisionTower(c.vision_config)
        self.multi_modal_projector = Projector(c)
        self.language_model = Llama(c.text_config)

    def vision_outputs(self, pixel_values, all_hidden_states: bool = False) -> VisionOutput:
        """The full CLIP tower on `[n, H, W, 3]` (all layers): pooled = post_layernorm(CLS) `[n, Dv]`,
        `image_embeds` with `has_projection`; for retrieval-style evaluation."""
        return self.vision_tower(pixel_values, all_hidden_states=all_hidden_states)

    def encode_images(self, pixel_values):
        """Projected image features `[n, num_image_tokens, D]` for pixels `[n, H, W, 3]`: the tower runs
        `vision_layers_used` layers only; strategy "default" drops CLS."""
        c = self.config
        feats = self.vision_tower(pixel_values, num_layers=c.vision_layers_used).hidden_state
        if c.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        return self.multi_modal_projector(feats)

    def embed(self, input_ids, pixel_values=None, image_mask=None):
        """Token embeddings `[b, s, D]` with image features spliced in (text only when no pixels)."""
        c = self.config
        is_image = input_ids == c.image_token_id
        # Every id keeps its own embedding row (llava-hf: `<image>` is in the vocabulary), so an `<image>` token
        # generated during decoding is embedded as transformers embeds it; image positions are then replaced.
        embeddings = self.language_model.embed(input_ids)
        if pixel_values is None:
            return embeddings
        b, n_img = pixel_values.shape[:2]
        if image_mask is None:
            raise ValueError("Llava: pixel_values given without image_mask")
        feats = self.encode_images(pixel_values.reshape((b * n_img,) + pixel_values.shape[2:]))
        feats = feats.reshape((b, n_img) + feats.shape[1:])
        return splice_image_features(embeddings, is_image, feats, image_mask)

    def __call__(self, input_ids, pixel_values, image_mask, positions, segment_ids, cache=None, cache_index=None,
                 last_logits_only=False, hidden_only=False, layer_params=None):
        embeddings = self.embed(input_ids, pixel_values, image_mask)
        return self.language_model(embeddings, positions, segment_ids, cache=cache, cache_index=cache_index,
                                   last_logits_only=last_logits_only, hidden_only=hidden_only,
                                   layer_params=layer_params)


def init_variables(config: LlavaConfig, rng: jax.Array) -> dict:
    """Boxed (`nn.LogicallyPartitioned`) variables `{"params": ...}` of a Llava (every tensor)."""
    v = config.vision_config
    ids = jnp.full((1, config.num_image_tokens), config.image_token_id, jnp.int32)
    pixels = jnp.zeros((1, 1, v.image_size, v.image_size, v.num_channels), jnp.float32)
    positions = jnp.arange(config.num_image_tokens, dtype=jnp.int32)[None]
    return Llava(config).init(rng, ids, pixels, jnp.ones((1, 1), bool), positions, jnp.ones_like(ids))
