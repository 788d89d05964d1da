"""attention(): the "xla" path against a plain numpy loop over (batch, head, query), which applies the
DESIGN.md visibility rule literally and repeats k/v per query head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models.attention import attention


def reference(q, k, v, q_seg, kv_seg, causal, q_offset, scale):
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            kh = hi // (h // kv_heads)
            for i in range(t):
                vis = [j for j in range(k.shape[1])
                       if q_seg[bi, i] == kv_seg[bi, j] and (not causal or j <= q_offset + i)]
                if not vis:
                    continue
                logits = np.array([q[bi, i, hi] @ k[bi, j, kh] for j in vis]) * scale
                p = np.exp(logits - logits.max())
                p /= p.sum()
                out[bi, i, hi] = sum(pj * v[bi, j, kh] for pj, j in zip(p, vis))
    return out


def _inputs(b, t, s, h, kv, d, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for shape in ((b, t, h, d), (b, s, kv, d), (b, s, kv, d))]


@pytest.mark.parametrize("causal", [True, False])
def test_xla_matches_reference_with_gqa_segments_and_padding(causal):
    q, k, v = _inputs(2, 7, 7, 6, 2, 8)
    seg = np.array([[1, 1, 1, 2, 2, 0, 0], [0, 0, 1, 1, 1, 1, 1]], np.int32)  # packed + right pad; left pad
    out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), q_segment_ids=jnp.asarray(seg),
                    kv_segment_ids=jnp.asarray(seg), causal=causal)
    ref = reference(q, k, v, seg, seg, causal, 0, 8 ** -0.5)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_xla_offset_into_a_cache_and_empty_rows_are_zero():
    # 3 queries written at slots 4..6 of a 9-slot cache; slots 7, 8 are still empty (segment 0).
    q, k, v = _inputs(2, 3, 9, 4, 4, 8, seed=1)
    kv_seg = np.array([[1, 1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1, 0, 0]], np.int32)
    q_seg = np.array([[1, 1, 1], [1, 1, 3]], np.int32)  # segment 3 has no key → zeros
    offset = 4
    ref = reference(q, k, v, q_seg, kv_seg, True, offset, 0.3)
    args = (jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    kw = dict(q_segment_ids=jnp.asarray(q_seg), kv_segment_ids=jnp.asarray(kv_seg), causal=True, scale=0.3)
    np.testing.assert_allclose(np.asarray(attention(*args, q_offset=offset, **kw)), ref, atol=1e-5)
    traced = jax.jit(lambda o: attention(*args, q_offset=o, **kw))(jnp.int32(offset))
    np.testing.assert_allclose(np.asarray(traced), ref, atol=1e-5)
    assert np.all(np.asarray(traced)[1, 2] == 0)


def test_xla_gradients_match_torch_sdpa_with_gqa_segments_and_keyless_rows():
    """Gradients of the "xla" path (its own softmax backward, additive mask bias) against PyTorch's
    `scaled_dot_product_attention` autograd with the same boolean mask (kv heads repeated per group). Rows
    that see no key are zero in vlm_jax and get no gradient; torch returns NaN there, so they are compared
    apart: their output is 0 and they contribute nothing to dq, dk, dv."""
    import torch

    q, k, v = _inputs(2, 7, 7, 6, 2, 8, seed=3)
    seg = np.array([[1, 1, 1, 2, 2, 0, 0], [0, 0, 1, 1, 1, 1, 1]], np.int32)
    q_seg = seg.copy()
    q_seg[0, 6] = 5  # a query whose segment has no key: a key-less row
    w = np.random.default_rng(4).normal(size=(2, 7, 6, 8)).astype(np.float32)  # weights of the scalar loss

    def loss(q, k, v):
        out = attention(q, k, v, q_segment_ids=jnp.asarray(q_seg), kv_segment_ids=jnp.asarray(seg), causal=True)
        return jnp.sum(out * w)

    grads = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    mask = (q_seg[:, :, None] == seg[:, None, :]) & np.tril(np.ones((7, 7), bool))[None]
    keyed = mask.any(-1)  # [b, t]
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(
        tq.transpose(1, 2), tk.repeat_interleave(3, dim=2).transpose(1, 2),
        tv.repeat_interleave(3, dim=2).transpose(1, 2), attn_mask=torch.tensor(mask)[:, None]).transpose(1, 2)
    torch.sum(torch.where(torch.tensor(keyed)[:, :, None, None], out, 0) * torch.tensor(w)).backward()
    for got, want in zip(grads, (tq.grad, tk.grad, tv.grad)):
        np.testing.assert_allclose(np.asarray(got), np.nan_to_num(want.numpy()), atol=1e-5)
    assert np.all(np.asarray(grads[0])[~keyed] == 0)


def test_no_segment_ids_is_plain_causal():
    q, k, v = _inputs(1, 5, 5, 2, 1, 4, seed=2)
    ones = np.ones((1, 5), np.int32)
    out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    np.testing.assert_allclose(np.asarray(out), reference(q, k, v, ones, ones, True, 0, 0.5), atol=1e-5)


def test_bad_arguments_raise_clear_errors():
    q, k, v = (jnp.asarray(a) for a in _inputs(1, 2, 2, 3, 2, 4))
    with pytest.raises(ValueError, match="not a multiple"):
        attention(q, k, v)
    q, k, v = (jnp.asarray(a) for a in _inputs(1, 2, 2, 2, 1, 4))
    with pytest.raises(ValueError, match="implementation 'flash'"):
        attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="both"):
        attention(q, k, v, q_segment_ids=jnp.ones((1, 2), jnp.int32))
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="needs a GPU"):
            attention(q, k, v, implementation="cudnn")


# "pallas" route (interpret mode on CPU) against the same numpy loop: training shape, a prefill written
# into a longer cache, a chunk at a static offset into a partly filled cache, and non-causal
# attention over unequal lengths (the last three are padded onto the square kernel).
PALLAS_CASES = {
    "self-packed-gqa": dict(t=13, s=13, offset=0, causal=True,
                            q_seg=[[1] * 6 + [2] * 5 + [0] * 2, [0] * 3 + [1] * 10]),
    "prefill-into-cache": dict(t=9, s=16, offset=0, causal=True,
                               q_seg=[[1] * 9, [0] * 2 + [1] * 7], kv_seg=[[1] * 9 + [0] * 7, [0] * 2 + [1] * 7 + [0] * 7]),
    "chunk-at-offset": dict(t=5, s=16, offset=6, causal=True,
                            q_seg=[[1] * 5, [1] * 4 + [3]], kv_seg=[[1] * 11 + [0] * 5, [0] * 3 + [1] * 8 + [0] * 5]),
    "cross-unequal": dict(t=7, s=11, offset=0, causal=False,
                          q_seg=[[1] * 7, [1] * 4 + [2] * 3], kv_seg=[[1] * 11, [2] * 5 + [1] * 6]),
}


@pytest.mark.parametrize("name", list(PALLAS_CASES))
def test_pallas_route_matches_reference(name):
    c = PALLAS_CASES[name]
    q, k, v = _inputs(2, c["t"], c["s"], 4, 2, 16, seed=3)
    q_seg = np.array(c["q_seg"], np.int32)
    kv_seg = np.array(c.get("kv_seg", c["q_seg"]), np.int32)
    out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), q_segment_ids=jnp.asarray(q_seg),
                    kv_segment_ids=jnp.asarray(kv_seg), causal=c["causal"], q_offset=c["offset"],
                    implementation="pallas", block_q=16, block_k=16)
    ref = reference(q, k, v, q_seg, kv_seg, c["causal"], c["offset"], 16 ** -0.5)
    assert out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5)


def test_pallas_route_without_segment_ids_and_traced_offset_fallback():
    q, k, v = (jnp.asarray(a) for a in _inputs(1, 6, 6, 2, 1, 16, seed=4))
    ones = np.ones((1, 6), np.int32)
    for causal in (True, False):
        out = attention(q, k, v, causal=causal, implementation="pallas")
        ref = reference(*(np.asarray(a) for a in (q, k, v)), ones, ones, causal, 0, 0.25)
        np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5)
    # A traced offset (generation's decode step) takes the "xla" path and still follows the contract.
    step = jax.jit(lambda o: attention(q[:, :1], k, v, q_offset=o, implementation="pallas"))(jnp.int32(3))
    np.testing.assert_allclose(np.asarray(step), reference(*(np.asarray(a) for a in (q[:, :1], k, v)),
                                                           ones[:, :1], ones, True, 3, 0.25), atol=2e-5)
    with pytest.raises(ValueError, match="q_offset=-1"):
        attention(q, k, v, q_offset=-1, implementation="pallas")


@pytest.mark.parametrize("window", [None, 5])
def test_xla_causal_blocks_equal_one_block_forward_and_gradients(window):
    """The "xla" path's causal block skipping (`block_q` queries at a time, each over only the keys it can
    see; partial last block) against the same attention computed as one block (`block_q` >= q_len), with
    GQA, packed segments, padding, a key-less row and a sliding window: outputs and dq/dk/dv; and against
    the float64 loop above for the forward."""
    q, k, v = _inputs(2, 11, 11, 6, 2, 8, seed=5)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 2, 2, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    q_seg = seg.copy()
    q_seg[0, 8] = 7  # no key in its segment: a key-less row
    w = np.random.default_rng(6).normal(size=q.shape).astype(np.float32)

    def run(block_q):
        def loss(q, k, v):
            out = attention(q, k, v, q_segment_ids=jnp.asarray(q_seg), kv_segment_ids=jnp.asarray(seg),
                            causal=True, block_q=block_q, sliding_window=window)
            return jnp.sum(out * w), out
        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(*map(jnp.asarray, (q, k, v)))
        return (out,) + grads

    one, blocked = run(64), run(3)
    for name, a, b in zip(("out", "dq", "dk", "dv"), blocked, one):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=name)
    if window is None:
        np.testing.assert_allclose(np.asarray(blocked[0]), reference(q, k, v, q_seg, seg, True, 0, 8 ** -0.5),
                                   atol=1e-5)
    assert np.all(np.asarray(blocked[0])[0, 8] == 0)


def test_xla_causal_blocks_into_a_cache_at_an_offset():
    """Queries written at slots 5..10 of a 16-slot cache, 2 at a time: each block sees the cache up to its
    own last slot only; equals the float64 loop (and the one-block computation with a window)."""
    q, k, v = _inputs(2, 6, 16, 4, 2, 8, seed=7)
    kv_seg = np.array([[1] * 11 + [0] * 5, [0, 0, 0] + [1] * 8 + [0] * 5], np.int32)
    q_seg = np.ones((2, 6), np.int32)
    args = tuple(map(jnp.asarray, (q, k, v)))
    kw = dict(q_segment_ids=jnp.asarray(q_seg), kv_segment_ids=jnp.asarray(kv_seg), causal=True, q_offset=5)
    np.testing.assert_allclose(np.asarray(attention(*args, block_q=2, **kw)),
                               reference(q, k, v, q_seg, kv_seg, True, 5, 8 ** -0.5), atol=1e-5)
    np.testing.assert_allclose(np.asarray(attention(*args, block_q=2, sliding_window=3, **kw)),
                               np.asarray(attention(*args, block_q=64, sliding_window=3, **kw)), atol=1e-6)
