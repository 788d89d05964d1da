"""Scaled dot-product attention with segment ids, causal offset and grouped-query heads.

One entry point, `attention(...)`, with three interchangeable implementations:
"xla" (einsum reference, any shape), "cudnn" (`jax.nn.dot_product_attention`, GPU only) and
"pallas" (our flash kernel `vlm_jax.kernels.flash_attention`; see `attention` for how cache
prefills are mapped onto it and when it falls back to "xla").
"""
from __future__ import annotations

import math
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from vlm_jax.kernels.flash_attention import flash_attention

IMPLEMENTATIONS = ("xla", "cudnn", "pallas")
# "xla": queries per block of the causal block skipping (`_xla_causal_blocks`) when `block_q` is None. On
# the train-bench attention (XLA:CPU) 64 / 96 / 128 ran within noise of each other, 256 slower, one block
# 1.8x slower; 128 has the fewest ops of the fast ones (README "Train-step speed against PyTorch").
XLA_BLOCK_Q = 128
# ... and at most this many blocks (longer queries get longer blocks): each block is its own ops in the
# program, and 8 blocks already skip 7/16 of the work (the most is 1/2).
XLA_MAX_BLOCKS = 8

# Segment ids of the rows / slots the "pallas" route pads in; they match nothing, so padded queries
# see no key (zero rows, sliced off) and padded keys are seen by no query.
_PAD_QUERY_SEGMENT = -1
_PAD_KEY_SEGMENT = -2


def attention_mask(q_len: int, kv_len: int, q_segment_ids, kv_segment_ids, *, causal: bool, q_offset=0,
                   sliding_window: int | None = None):
    """Boolean visibility `[batch | 1, q_len, kv_len]`.

    Query i sits at slot `q_offset + i`, key j at slot j; key j is visible to query i iff the segment
    ids are equal and (not causal or j <= q_offset + i) and (no `sliding_window` or
    j > q_offset + i - sliding_window). `None` segment ids mean "all one segment".
    """
    mask = jnp.ones((1, q_len, kv_len), dtype=bool)
    if q_segment_ids is not None or kv_segment_ids is not None:
        if q_segment_ids is None or kv_segment_ids is None:
            raise ValueError("attention: give both q_segment_ids and kv_segment_ids, or neither")
        mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    q_slot = q_offset + jnp.arange(q_len)[:, None]
    if causal:
        mask = mask & (jnp.arange(kv_len)[None, :] <= q_slot)[None]
    if sliding_window is not None:
        mask = mask & (jnp.arange(kv_len)[None, :] > q_slot - sliding_window)[None]
    return mask


@jax.custom_vjp
def _softmax(logits):
    """Softmax over the last axis whose backward pass keeps only its output `y`:
    d logits = y * (g - sum(y * g)). (`jax.nn.softmax`'s default autodiff keeps the `exp` and the output
    and differentiates the division, i.e. two more score-sized float32 buffers per layer in training.)"""
    return jax.nn.softmax(logits, axis=-1)


def _softmax_fwd(logits):
    y = jax.nn.softmax(logits, axis=-1)
    return y, y


def _softmax_bwd(y, g):
    return (y * (g - jnp.sum(y * g, axis=-1, keepdims=True)),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _xla_attention(q, k, v, mask, scale):
    """`_xla_attention_kt` with k, v `[b, s, kv_heads, d]`."""
    return _xla_attention_kt(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask, scale)


def _xla_attention_kt(q, k, v, mask, scale):
    """Reference einsum attention on 4-D operands: GQA by folding each kv head's group of query heads into
    the query axis (scores `[b, kv_heads, groups * t, s]`, k/v never repeated), fp32 softmax. Hidden keys
    get an additive `finfo.min` bias `[b | 1, groups * t, s]` (the same as a `where` with `finfo.min`: a
    float32 logit vanishes against it), whose gradient is the identity, and `_softmax` keeps only its
    output for the backward pass: a layer saves one score-sized buffer (the probabilities) for training,
    not also a boolean mask broadcast to the scores' shape, the masked logits and the `exp`. A row that
    sees no key gets zeros through a per-row factor on the output rather than a second full-size pass
    over the probabilities. (The earlier 5-D `[b, kv_heads, groups, t, s]` form with a masked softmax
    output ran the train step's attention about 1.5-2x slower on XLA:CPU; its softmax backward was the
    step's largest op.)"""
    b, t, h, d = q.shape
    kv_heads = k.shape[1]
    groups = h // kv_heads
    qf = q.reshape(b, t, kv_heads, groups, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, groups * t, d)
    logits = jnp.einsum("bkqd,bksd->bkqs", qf, k, preferred_element_type=jnp.float32) * scale
    rows = mask if groups == 1 else jnp.tile(mask, (1, groups, 1))  # [b | 1, groups * t, s], row = (group, query)
    bias = jnp.where(rows, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    probs = _softmax(logits + bias[:, None])
    out = jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), v)
    out = out.reshape(b, kv_heads, groups, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
    return out * jnp.any(mask, axis=-1)[:, :, None, None].astype(out.dtype)


def _cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, q_offset, scale, sliding_window=None):
    """cuDNN fused attention; rows with no visible key are zeroed to match the contract."""
    if jax.default_backend() != "gpu":
        raise ValueError(f"attention implementation 'cudnn' needs a GPU; the JAX backend is "
                         f"{jax.default_backend()!r} (use 'xla')")
    b, q_len = q.shape[:2]
    kv_len = k.shape[1]
    # cuDNN applies the causal rule itself when it is the plain lower triangle.
    plain_causal = causal and isinstance(q_offset, int) and q_offset == 0 and q_len == kv_len
    if q_segment_ids is None and sliding_window is None and (plain_causal or not causal):
        # every query sees a key: no mask needed
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=plain_causal, implementation="cudnn")
    given = attention_mask(q_len, kv_len, q_segment_ids, kv_segment_ids,
                           causal=causal and not plain_causal, q_offset=q_offset, sliding_window=sliding_window)
    given = jnp.broadcast_to(given, (b, q_len, kv_len))
    out = jax.nn.dot_product_attention(q, k, v, mask=given[:, None], scale=scale, is_causal=plain_causal,
                                       implementation="cudnn")
    full = given & jnp.tril(jnp.ones((q_len, kv_len), bool))[None] if plain_causal else given
    return jnp.where(jnp.any(full, axis=-1)[:, :, None, None], out, 0).astype(q.dtype)


def _is_static_offset(q_offset) -> bool:
    return isinstance(q_offset, numbers.Integral) and not isinstance(q_offset, bool)


def _pad_rows(x, before: int, after: int):
    """Zero-pad the sequence axis (1) of `x` `[batch, seq, ...]`."""
    if before == after == 0:
        return x
    return jnp.pad(x, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))


def _pad_ids(ids, length: int, before: int, after: int, fill: int):
    """Segment ids `[batch, length]` (all 1 when `ids` is None) padded with `fill` on the sequence axis."""
    ids = jnp.ones((1, length), jnp.int32) if ids is None else ids.astype(jnp.int32)
    return jnp.pad(ids, [(0, 0), (before, after)], constant_values=fill)


def _pallas_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, q_offset: int, scale,
                      block_q, block_k, sliding_window=None):
    """The flash kernel (square, diagonal-aligned problems) on any static-offset problem.

    Causal: keys after slot `q_offset + q_len - 1` are invisible to every query, so they are cut;
    the queries are padded in front by `q_offset` rows so query i sits on the kernel's row
    `q_offset + i`, which makes the kernel's `j <= row` the contract's `j <= q_offset + i`.
    Both sides are then padded at the end to one length (a sliding window is in slots, so it
    carries over unchanged). Padded rows / slots get segment ids that match nothing. Training and plain prefill (q_len == kv_len, offset 0) need no padding at all.
    """
    b, q_len = q.shape[:2]
    if causal:
        keep = min(k.shape[1], q_offset + q_len)
        k, v = k[:, :keep], v[:, :keep]
        kv_segment_ids = None if kv_segment_ids is None else kv_segment_ids[:, :keep]
        lead = q_offset
    else:
        lead = 0
    kv_len = k.shape[1]
    length = max(lead + q_len, kv_len)
    q_tail, kv_tail = length - lead - q_len, length - kv_len
    if lead or q_tail or kv_tail:
        q_segment_ids = jnp.broadcast_to(_pad_ids(q_segment_ids, q_len, lead, q_tail, _PAD_QUERY_SEGMENT),
                                         (b, length))
        kv_segment_ids = jnp.broadcast_to(_pad_ids(kv_segment_ids, kv_len, 0, kv_tail, _PAD_KEY_SEGMENT),
                                          (b, length))
        q, k, v = _pad_rows(q, lead, q_tail), _pad_rows(k, 0, kv_tail), _pad_rows(v, 0, kv_tail)
    kernel = lambda q, k, v, q_seg, kv_seg: flash_attention(  # noqa: E731
        q, k, v, q_seg, kv_seg, causal=causal, scale=scale, block_q=block_q, block_k=block_k,
        window=sliding_window)
    out = _per_shard(kernel, q, k, v, q_segment_ids, kv_segment_ids)
    return out[:, lead:lead + q_len]


def _mesh_axes(logical: str, dim: int, mesh) -> str | tuple[str, ...] | None:
    """Mesh axes the active flax logical rules give `logical`, if they divide `dim` (else None)."""
    axes = nn.logical_to_mesh_axes((logical,))[0]
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    names = tuple(a for a in names if a in mesh.shape)
    if not names or dim % math.prod(mesh.shape[a] for a in names):
        return None
    return names[0] if len(names) == 1 else names


def _per_shard(kernel, q, k, v, q_segment_ids, kv_segment_ids):
    """Run `kernel(q, k, v, q_seg, kv_seg)` on each device's shard when a mesh is set (`jax.set_mesh`).

    A Pallas call has no SPMD partitioning rule, so under a mesh XLA would gather every operand and
    compute all of it on each device. Instead it runs in `shard_map`: batch split like
    `activation_batch`, heads like `activation_heads` / `activation_kv_heads` (flax logical rules in
    effect), whole sequences per device. kv heads are split only together with the query heads, so
    each device's query heads find their kv group locally.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q, k, v, q_segment_ids, kv_segment_ids)
    batch = _mesh_axes("activation_batch", q.shape[0], mesh)
    heads = _mesh_axes("activation_heads", q.shape[2], mesh)
    if heads is None or heads != _mesh_axes("activation_kv_heads", k.shape[2], mesh):
        heads = None
    qkv = PartitionSpec(batch, None, heads, None)
    seg = None if q_segment_ids is None else PartitionSpec(batch, None)
    return jax.shard_map(kernel, in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv, check_vma=False)(
        q, k, v, q_segment_ids, kv_segment_ids)


def decode_attention(q, k_cache, v_cache, q_segment_ids, kv_segment_ids, q_offset, scale: float | None = None,
                     sliding_window: int | None = None):
    """One query row per sequence over a KV cache in cache layout (the decode steps of generation).

    q `[batch, 1, heads, head_dim]`; k_cache / v_cache `[batch, kv_heads, max_len, head_dim]` (the
    `vlm_jax.models.llama` cache layout, read as it is: no transpose of the cache); segment ids int
    `[batch, 1]` / `[batch, max_len]`; `q_offset` (may be traced) the query's slot. Same contract as
    `attention(..., causal=True)`: key j is visible iff its segment equals the query's and j <= q_offset
    (and j > q_offset - sliding_window when given); fp32 scores and softmax; a query that sees no key returns zeros. Returns `[batch, 1, heads, head_dim]`.
    """
    b, q_len, heads, head_dim = q.shape
    kv_heads, max_len = k_cache.shape[1], k_cache.shape[2]
    if q_len != 1:
        raise ValueError(f"decode_attention: expected one query per row, got q_len={q_len}")
    if heads % kv_heads:
        raise ValueError(f"decode_attention: {heads} query heads is not a multiple of {kv_heads} kv heads")
    scale = head_dim ** -0.5 if scale is None else scale
    qg = q.reshape(b, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("bkgd,bksd->bkgs", qg, k_cache, preferred_element_type=jnp.float32) * scale
    slots = jnp.arange(max_len)[None, :]
    visible = (kv_segment_ids == q_segment_ids) & (slots <= q_offset)  # [b, max_len]
    if sliding_window is not None:
        visible = visible & (slots > q_offset - sliding_window)
    visible = visible[:, None, None, :]
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    probs = jnp.where(visible, jax.nn.softmax(scores, axis=-1), 0.0)
    out = jnp.einsum("bkgs,bksd->bkgd", probs.astype(v_cache.dtype), v_cache)
    return out.reshape(b, 1, heads, head_dim)


def attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, causal: bool = True, q_offset=0,
              scale: float | None = None, implementation: str = "xla", block_q: int | None = None,
              block_k: int | None = None, sliding_window: int | None = None):
    """Attention of q `[batch, q_len, heads, head_dim]` over k, v `[batch, kv_len, kv_heads, head_dim]`.

    Segment ids are int `[batch, q_len]` / `[batch, kv_len]` (0 = padding / empty cache slot);
    `q_offset` (int or traced scalar) is the slot of query 0 for the causal rule; `sliding_window` (Mistral)
    also hides key j from query i when j <= q_offset + i - sliding_window. heads must be a
    multiple of kv_heads; k/v are never repeated. Returns `[batch, q_len, heads, head_dim]` in q's
    dtype; a query that sees no key returns zeros.

    `implementation`:
    - "xla": einsum + mask reference, any shape. With `causal` and a static `q_offset` it runs `block_q`
      queries at a time (None = `XLA_BLOCK_Q`), each block over the keys it can see only
      (`_xla_causal_blocks`): the same result without the hidden triangle's work.
    - "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`; GPU only (a ValueError
      elsewhere); cuDNN itself takes bf16 / fp16 inputs.
    - "pallas": the project's flash kernel, with `block_q` / `block_k` sequence tiles (None = the
      kernel's defaults); in Pallas interpret mode when the default device is neither GPU nor TPU.
      Training / prefill (q_len == kv_len, q_offset 0) maps onto it directly; any other *static*
      (Python int) `q_offset` — a prefill written into a longer KV cache, a chunked prefill — is
      padded onto it exactly (see `_pallas_attention`). It falls back to "xla" only for a *traced*
      `q_offset`, i.e. the one-token decode steps of `lax.while_loop` generation: the kernel needs
      the offset at trace time to lay out its grid, and a single query row has nothing to tile.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}: expected one of {IMPLEMENTATIONS}")
    b, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"attention: {heads} query heads is not a multiple of {kv_heads} kv heads")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("attention: give both q_segment_ids and kv_segment_ids, or neither")
    if scale is None:
        scale = head_dim ** -0.5
    if sliding_window is not None and (not isinstance(sliding_window, int) or sliding_window < 1):
        raise ValueError(f"attention: sliding_window={sliding_window!r} must be None or an int >= 1")

    if _is_static_offset(q_offset) and q_offset < 0:
        raise ValueError(f"attention: q_offset={q_offset} must be >= 0")
    if implementation == "pallas" and _is_static_offset(q_offset):
        return _pallas_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, int(q_offset), scale,
                                 block_q, block_k, sliding_window)

    if implementation == "cudnn":
        return _cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, q_offset, scale, sliding_window)

    mask = attention_mask(q_len, kv_len, q_segment_ids, kv_segment_ids, causal=causal, q_offset=q_offset,
                          sliding_window=sliding_window)
    if not (causal and _is_static_offset(q_offset)):
        return _xla_attention(q, k, v, mask, scale)
    return _xla_causal_blocks(q, k, v, mask, scale, int(q_offset), block_q or XLA_BLOCK_Q, sliding_window)


def _xla_causal_blocks(q, k, v, mask, scale, q_offset: int, block_q: int, sliding_window):
    """`_xla_attention` one block of `block_q` queries at a time (at most `XLA_MAX_BLOCKS` blocks: longer
    blocks for longer queries), each over only the keys the causal rule
    (and `sliding_window`) can show it: query rows [r0, r1) see keys below `q_offset + r1` (and from
    `q_offset + r0 - sliding_window + 1`), so the scores of the hidden upper triangle are neither computed
    nor kept for the backward pass ((n + 1) / 2n of one block's work with n blocks: 5/8 at 4, 9/16 at 8).
    Every key a row can see is inside its block's slice, so the result is the full computation's."""
    q_len, kv_len = q.shape[1], k.shape[1]
    block_q = max(block_q, -(-q_len // XLA_MAX_BLOCKS))
    kt, vt = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [b, kv_heads, s, d], sliced per block
    outs = []
    for r0 in range(0, q_len, block_q):
        r1 = min(q_len, r0 + block_q)
        k1 = min(kv_len, q_offset + r1)
        k0 = 0 if sliding_window is None else min(k1, max(0, q_offset + r0 - sliding_window + 1))
        if k1 <= k0:  # no key visible to any row of this block: zeros, as `_xla_attention` gives
            outs.append(jnp.zeros((q.shape[0], r1 - r0) + q.shape[2:], q.dtype))
            continue
        outs.append(_xla_attention_kt(q[:, r0:r1], kt[:, :, k0:k1], vt[:, :, k0:k1], mask[:, r0:r1, k0:k1], scale))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
