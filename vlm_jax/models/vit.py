"""The pre-LN ViT encoder layer both vision towers are made of: CLIP's (LLaVA) and SigLIP's (Idefics2).

x `[n, patches, D]` → x + attention(LN1(x)) → x + MLP(LN2(x)), with HF's parameter names (`self_attn.{q,k,v,
out}_proj`, `mlp.fc1/fc2`, `layer_norm1/2`, all with biases), so both towers convert to and from HF with the
same weight names. What differs between the towers is data: the MLP's activation (`config.hidden_act`) and
whether padded patches are hidden from attention (SigLIP's variable resolution passes `kv_segment_ids`).
"""
from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.attention import attention
from vlm_jax.models.layers import DenseGeneral, layer_norm, normal_init, zeros_init


def quick_gelu(x):
    """CLIP's activation, `x * sigmoid(1.702 x)`."""
    return x * jax.nn.sigmoid(1.702 * x)


# config.hidden_act -> the function (HF's names)
ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu_pytorch_tanh": partial(nn.gelu, approximate=True)}


class ViTAttention(nn.Module):
    """Bidirectional multi-head attention with biased q/k/v/out projections; `kv_segment_ids` int
    `[n, patches]` (0 = padded patch, seen by no query) or None (every patch visible)."""

    config: object

    @nn.compact
    def __call__(self, x, kv_segment_ids=None):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        proj = partial(DenseGeneral, features=(c.num_attention_heads, c.head_dim), use_bias=True, dtype=dtype,
                       param_dtype=jnp.dtype(c.param_dtype),
                       kernel_init=normal_init(c.initializer_range, ("vision_embed", "vision_heads", "head_dim")),
                       bias_init=zeros_init(("vision_heads", "head_dim")))
        q, k, v = proj(name="q_proj")(x), proj(name="k_proj")(x), proj(name="v_proj")(x)
        q_segment_ids = None if kv_segment_ids is None else jnp.ones_like(kv_segment_ids)
        out = attention(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, causal=False,
                        implementation=c.attention_impl, block_q=c.attention_block_q, block_k=c.attention_block_k)
        return DenseGeneral(c.hidden_size, axis=(-2, -1), use_bias=True, dtype=dtype,
                            param_dtype=jnp.dtype(c.param_dtype),
                            kernel_init=normal_init(c.initializer_range, ("vision_heads", "head_dim", "vision_embed")),
                            bias_init=zeros_init(("vision_embed",)), name="out_proj")(out)


class ViTMLP(nn.Module):
    """fc1 → `config.hidden_act` → fc2, both biased."""

    config: object

    @nn.compact
    def __call__(self, x):
        c = self.config
        dense = partial(nn.Dense, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        h = dense(c.intermediate_size, kernel_init=normal_init(c.initializer_range, ("vision_embed", "vision_mlp")),
                  bias_init=zeros_init(("vision_mlp",)), name="fc1")(x)
        h = nn.with_logical_constraint(ACTIVATIONS[c.hidden_act](h),
                                       ("activation_batch", "activation_length", "activation_mlp"))
        return dense(c.hidden_size, kernel_init=normal_init(c.initializer_range, ("vision_mlp", "vision_embed")),
                     bias_init=zeros_init(("vision_embed",)), name="fc2")(h)


class ViTEncoderLayer(nn.Module):
    """One pre-LN layer; scan body `(x [n, patches, D], kv_segment_ids | None) -> (x, x if collect else None)`
    (`collect`: CLIP's all-hidden-states output)."""

    config: object
    collect: bool = False

    @nn.compact
    def __call__(self, x, kv_segment_ids):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        x = x + ViTAttention(c, name="self_attn")(layer_norm(c.layer_norm_eps, dtype, pdtype, "layer_norm1")(x),
                                                  kv_segment_ids)
        x = x + ViTMLP(c, name="mlp")(layer_norm(c.layer_norm_eps, dtype, pdtype, "layer_norm2")(x))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return x, (x if self.collect else None)
