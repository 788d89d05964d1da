"""Scaled dot-product attention with segment ids, causal offset and grouped-query heads.

One entry point, `attention(...)`, with three interchangeable implementations:
"xla" (einsum reference, any shape), "cudnn" (`jax.nn.dot_product_attention`, GPU only) and
"pallas" (`vlm_jax.kernels.flash_attention`, self-attention without offset; otherwise "xla").
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn", "pallas")


def attention_mask(q_len: int, kv_len: int, q_segment_ids, kv_segment_ids, *, causal: bool, q_offset=0):
    """Boolean visibility `[batch | 1, q_len, kv_len]`.

    Query i sits at slot `q_offset + i`, key j at slot j; key j is visible to query i iff the segment
    ids are equal and (not causal or j <= q_offset + i). `None` segment ids mean "all one segment".
    """
    mask = jnp.ones((1, q_len, kv_len), dtype=bool)
    if q_segment_ids is not None or kv_segment_ids is not None:
        if q_segment_ids is None or kv_segment_ids is None:
            raise ValueError("attention: give both q_segment_ids and kv_segment_ids, or neither")
        mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if causal:
        q_slot = q_offset + jnp.arange(q_len)[:, None]
        mask = mask & (jnp.arange(kv_len)[None, :] <= q_slot)[None]
    return mask


def _xla_attention(q, k, v, mask, scale):
    """Reference einsum attention; GQA by grouping query heads, fp32 softmax, empty rows → 0."""
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    qg = q.reshape(b, t, kv_heads, h // kv_heads, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    mask = mask[:, None, None]  # [b, 1, 1, t, s]
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v)
    return out.reshape(b, t, h, d)


def _cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, q_offset, scale):
    """cuDNN fused attention; rows with no visible key are zeroed to match the contract."""
    if jax.default_backend() != "gpu":
        raise ValueError(f"attention implementation 'cudnn' needs a GPU; the JAX backend is "
                         f"{jax.default_backend()!r} (use 'xla')")
    b, q_len = q.shape[:2]
    kv_len = k.shape[1]
    # cuDNN applies the causal rule itself when it is the plain lower triangle.
    plain_causal = causal and isinstance(q_offset, int) and q_offset == 0 and q_len == kv_len
    if q_segment_ids is None and (plain_causal or not causal):  # every query sees a key: no mask needed
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=plain_causal, implementation="cudnn")
    given = attention_mask(q_len, kv_len, q_segment_ids, kv_segment_ids,
                           causal=causal and not plain_causal, q_offset=q_offset)
    given = jnp.broadcast_to(given, (b, q_len, kv_len))
    out = jax.nn.dot_product_attention(q, k, v, mask=given[:, None], scale=scale, is_causal=plain_causal,
                                       implementation="cudnn")
    full = given & jnp.tril(jnp.ones((q_len, kv_len), bool))[None] if plain_causal else given
    return jnp.where(jnp.any(full, axis=-1)[:, :, None, None], out, 0).astype(q.dtype)


def _pallas_module():
    try:
        return importlib.import_module("vlm_jax.kernels.flash_attention")
    except ModuleNotFoundError as e:
        raise ValueError("attention implementation 'pallas' needs vlm_jax/kernels/flash_attention.py, "
                         f"which could not be imported ({e}); use 'xla' or 'cudnn'") from e


def attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, causal: bool = True, q_offset=0,
              scale: float | None = None, implementation: str = "xla"):
    """Attention of q `[batch, q_len, heads, head_dim]` over k, v `[batch, kv_len, kv_heads, head_dim]`.

    Segment ids are int `[batch, q_len]` / `[batch, kv_len]` (0 = padding / empty cache slot);
    `q_offset` (int or traced scalar) is the slot of query 0 for the causal rule. heads must be a
    multiple of kv_heads; k/v are never repeated. Returns `[batch, q_len, heads, head_dim]` in q's
    dtype; a query that sees no key returns zeros.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}: expected one of {IMPLEMENTATIONS}")
    b, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"attention: {heads} query heads is not a multiple of {kv_heads} kv heads")
    if scale is None:
        scale = head_dim ** -0.5
    static_zero_offset = isinstance(q_offset, int) and q_offset == 0

    if implementation == "pallas" and q_len == kv_len and static_zero_offset:
        ones = jnp.ones((b, q_len), jnp.int32)
        q_seg = ones if q_segment_ids is None else q_segment_ids
        kv_seg = ones if kv_segment_ids is None else kv_segment_ids
        return _pallas_module().flash_attention(q, k, v, q_seg, kv_seg, causal=causal, scale=scale)

    if implementation == "cudnn":
        return _cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, q_offset, scale)

    mask = attention_mask(q_len, kv_len, q_segment_ids, kv_segment_ids, causal=causal, q_offset=q_offset)
    return _xla_attention(q, k, v, mask, scale)
