"""CLIP ViT vision tower (HF `CLIPVisionModel`, openai/clip-vit-large-patch14-336).

pixels `[n, H, W, 3]` → patch embedding (+CLS, +positions) → pre_layrnorm → L × (LN → attention →
residual; LN → quick-GELU MLP → residual) → post_layernorm(CLS) = pooled → optional projection.
The encoder can stop after any number of layers; LLaVA needs L-1 and the last one is not computed.
"""
from __future__ import annotations


import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vlm_jax.models.config import VisionConfig
from vlm_jax.models.layers import first_layers, layer_norm, normal_init, stacked
from vlm_jax.models.vit import ViTEncoderLayer


@flax.struct.dataclass
class VisionOutput:
    """What the tower returns. `hidden_state`: `[n, 1 + patches, D]` after the layers run;
    `hidden_states`: `[layers_run + 1, n, 1 + patches, D]` (embeddings first, as HF's tuple) or None;
    `pooled`: post_layernorm(CLS) `[n, D]` and `image_embeds`: `[n, projection_dim]`, only when all
    layers ran (image_embeds only with `has_projection`)."""

    hidden_state: jax.Array
    hidden_states: jax.Array | None = None
    pooled: jax.Array | None = None
    image_embeds: jax.Array | None = None


class CLIPVisionTower(nn.Module):
    """HF CLIPVisionModel(+WithProjection) on channels-last pixels `[n, H, W, 3]` (already normalised)."""

    config: VisionConfig

    def _patch_embed(self, pixel_values):
        """`[n, H, W, C]` → `[n, 1 + patches, D]`: non-overlapping patches flattened as (row, col, channel)
        times a `[p*p*C, D]` kernel (= HF's bias-free stride-p conv), CLS prepended, positions added."""
        c = self.config
        n, h, w, ch = pixel_values.shape
        if (h, w, ch) != (c.image_size, c.image_size, c.num_channels):
            raise ValueError(f"CLIPVisionTower: pixel_values {pixel_values.shape} do not match "
                             f"[n, {c.image_size}, {c.image_size}, {c.num_channels}] from VisionConfig")
        p, g = c.patch_size, c.image_size // c.patch_size
        patches = pixel_values.reshape(n, g, p, g, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, p * p * ch)
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        kernel = self.param("patch_embedding", normal_init(c.initializer_range, ("patch", "vision_embed")),
                            (p * p * ch, c.hidden_size), pdtype)
        cls = self.param("class_embedding", normal_init(c.initializer_range, ("vision_embed",)),
                         (c.hidden_size,), pdtype)
        pos = self.param("position_embedding", normal_init(c.initializer_range, (None, "vision_embed")),
                         (c.num_positions, c.hidden_size), pdtype)
        x = jnp.einsum("npk,kd->npd", patches.astype(dtype), kernel.astype(dtype))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (n, 1, c.hidden_size)), x], axis=1)
        return x + pos.astype(dtype)[None]

    @nn.compact
    def __call__(self, pixel_values, *, num_layers: int | None = None, all_hidden_states: bool = False):
        """Run the first `num_layers` encoder layers (all by default); see `VisionOutput`."""
        c = self.config
        total = c.num_hidden_layers
        n_run = total if num_layers is None else num_layers
        if not 0 <= n_run <= total:
            raise ValueError(f"CLIPVisionTower: num_layers={num_layers} outside [0, {total}]")
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)

        x = self._patch_embed(pixel_values)
        x = layer_norm(c.layer_norm_eps, dtype, pdtype, "pre_layrnorm")(x)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        embeddings = x

        initializing = self.is_initializing()  # init creates every layer and head, whatever is asked
        collect = all_hidden_states or (initializing and n_run < total)
        run_all = initializing or n_run == total
        ys = None
        if run_all or n_run > 0:
            layers = stacked(ViTEncoderLayer, length=total if run_all else n_run,
                             remat_policy=c.remat_policy, in_axes=nn.broadcast)
            if not run_all:
                layers = first_layers(layers, n_run)
            x, ys = layers(c, collect, name="layers")(x, None)
        final = x
        if run_all and n_run < total:
            x = ys[n_run - 1] if n_run > 0 else embeddings

        hidden_states = None
        if all_hidden_states:
            hidden_states = (embeddings[None] if n_run == 0
                             else jnp.concatenate([embeddings[None], ys[:n_run]], axis=0))
        if not run_all:
            return VisionOutput(hidden_state=x, hidden_states=hidden_states)

        pooled = layer_norm(c.layer_norm_eps, dtype, pdtype, "post_layernorm")(final[:, 0])
        image_embeds = None
        if c.has_projection:
            image_embeds = nn.Dense(c.projection_dim, use_bias=False, dtype=dtype, param_dtype=pdtype,
                                    kernel_init=normal_init(c.initializer_range, ("vision_embed", None)),
                                    name="visual_projection")(pooled)
        if n_run < total:  # only while initializing: the heads exist but were not asked for
            pooled = image_embeds = None
        return VisionOutput(hidden_state=x, hidden_states=hidden_states, pooled=pooled, image_embeds=image_embeds)


def init_variables(config: VisionConfig, rng: jax.Array) -> dict:
    """Boxed (`nn.LogicallyPartitioned`) variables `{"params": ...}` of a CLIPVisionTower."""
    pixels = jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
    return CLIPVisionTower(config).init(rng, pixels)


def image_feature_fn(config: VisionConfig, params: dict, batch_size: int, *, mesh=None):
    """`features(pixels float32 [n, S, S, 3]) -> float32 [n, D]`: the tower's `image_embeds` when it has a
    projection, else `pooled` (post-layernorm CLS) — OpenFlamingo's `encode_image`, used by RICES and the
    in-sample similarity. Inputs go through one jitted forward of `batch_size` rows (the last chunk padded),
    so it compiles once; with a `mesh`, `batch_size` is rounded up to a multiple of its size and the rows are
    split over all its devices (params replicated)."""
    model = CLIPVisionTower(config)
    if mesh is not None:
        batch_size = -(-batch_size // mesh.size) * mesh.size
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        rows = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    else:
        params, rows = jax.device_put(params), None

    @jax.jit
    def forward(params, pixels):
        out = model.apply({"params": params}, pixels)
        return (out.image_embeds if config.has_projection else out.pooled).astype(jnp.float32)

    def features(pixels: np.ndarray) -> np.ndarray:
        chunks = []
        for start in range(0, len(pixels), batch_size):
            chunk = np.asarray(pixels[start:start + batch_size], np.float32)
            padded = np.zeros((batch_size,) + chunk.shape[1:], np.float32)
            padded[:len(chunk)] = chunk
            chunks.append(np.asarray(forward(params, padded if rows is None else jax.device_put(padded, rows)))[:len(chunk)])
        dim = config.projection_dim if config.has_projection else config.hidden_size
        return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)

    return features
