"""Pallas flash attention (interpret mode on CPU) against a float64 NumPy reference.

Covers the DESIGN.md attention contract (segment equality + index causality, empty rows -> 0),
GQA, ragged lengths, bf16, forward and dq/dk/dv; that masked blocks are really skipped; and that
both the Triton (GPU) and Mosaic (TPU) variants lower for their platforms. Tests reuse a few
shape configurations so the jitted interpret-mode kernels compile once per configuration.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.kernels.flash_attention import FlashConfig, block_ranges, flash_attention


def reference_attention(q, k, v, q_seg, kv_seg, do, *, causal, scale, window=None):
  """Float64 NumPy attention and its VJP: (out, dq, dk, dv). Shapes as flash_attention."""
  q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
  b, s, h, d = q.shape
  kvh = k.shape[2]
  group = h // kvh
  kr, vr = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
  visible = np.ones((b, 1, s, s), bool)
  if q_seg is not None:
    visible = visible & (np.asarray(q_seg)[:, None, :, None] == np.asarray(kv_seg)[:, None, None, :])
  if causal:
    visible = visible & np.tril(np.ones((s, s), bool))[None, None]
  if window is not None:
    visible = visible & (np.arange(s)[None, :] > np.arange(s)[:, None] - window)[None, None]
  logits = np.where(visible, np.einsum("bqhd,bkhd->bhqk", q, kr) * scale, -np.inf)
  row_max = logits.max(-1, keepdims=True)
  row_max = np.where(np.isfinite(row_max), row_max, 0.0)
  p = np.where(visible, np.exp(logits - row_max), 0.0)
  total = p.sum(-1, keepdims=True)
  p = p / np.where(total == 0, 1.0, total)
  out = np.einsum("bhqk,bkhd->bqhd", p, vr)
  dp = np.einsum("bqhd,bkhd->bhqk", do, vr)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", ds, kr) * scale
  per_head = lambda x: x.reshape(b, s, kvh, group, d).sum(3)
  dk = per_head(np.einsum("bhqk,bqhd->bkhd", ds, q) * scale)
  dv = per_head(np.einsum("bhqk,bqhd->bkhd", p, do))
  return out, dq, dk, dv


def packed_segments(seq, lengths_per_row):
  """``[rows, seq]`` segment ids 1, 2, ... for documents of the given lengths, then 0 padding."""
  out = np.zeros((len(lengths_per_row), seq), np.int32)
  for row, lengths in enumerate(lengths_per_row):
    out[row, :sum(lengths)] = np.concatenate([np.full(n, i, np.int32)
                                              for i, n in enumerate(lengths, 1)])
  return out


@functools.partial(jax.jit, static_argnames=("causal", "scale", "block_q", "block_k", "backend"))
def flash_with_vjp(q, k, v, q_seg, kv_seg, do, *, causal, scale, block_q, block_k, backend):
  """(out, dq, dk, dv) of flash_attention in interpret mode."""
  def attend(q, k, v):
    return flash_attention(q, k, v, q_seg, kv_seg, causal=causal, scale=scale, block_q=block_q,
                           block_k=block_k, backend=backend, interpret=True)
  out, vjp = jax.vjp(attend, q, k, v)
  return (out, *vjp(do))


# Shape configurations; each compiles once (tests sharing one only change values).
CONFIGS = {
    "causal-segments-gqa-ragged": dict(batch=2, seq=45, heads=4, kv_heads=2, head_dim=16,
                                       causal=True, segments=True, block_q=16, block_k=32),
    "full-mha": dict(batch=2, seq=64, heads=2, kv_heads=2, head_dim=32,
                     causal=False, segments=False, block_q=16, block_k=16),
    "causal-mqa-ragged": dict(batch=2, seq=70, heads=4, kv_heads=1, head_dim=16,
                              causal=True, segments=False, block_q=32, block_k=16),
    "segments-gqa-ragged": dict(batch=2, seq=50, heads=4, kv_heads=2, head_dim=16,
                                causal=False, segments=True, block_q=32, block_k=16),
    "causal-gqa-hd64": dict(batch=1, seq=40, heads=4, kv_heads=2, head_dim=64,
                            causal=True, segments=False, block_q=16, block_k=16),
    "tpu-causal-segments-gqa-ragged": dict(batch=1, seq=130, heads=4, kv_heads=2, head_dim=16,
                                           causal=True, segments=True, block_q=32, block_k=128,
                                           backend="tpu"),
}


def make_inputs(name, seed=0, dtype=jnp.float32):
  """(q, k, v, do, kwargs for flash_with_vjp) of a named configuration."""
  c = CONFIGS[name]
  rng = np.random.default_rng(seed)
  make = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32), dtype)
  b, s, h, kvh, d = c["batch"], c["seq"], c["heads"], c["kv_heads"], c["head_dim"]
  kwargs = dict(causal=c["causal"], scale=None, block_q=c["block_q"], block_k=c["block_k"],
                backend=c.get("backend", "gpu"))
  return make(b, s, h, d), make(b, s, kvh, d), make(b, s, kvh, d), make(b, s, h, d), kwargs


def assert_matches_reference(got, q, k, v, q_seg, kv_seg, do, *, causal, atol=2e-5, rtol=1e-5,
                             rows=slice(None)):
  """Compare (out, dq, dk, dv) with the float64 reference on the given sequence rows."""
  want = reference_attention(q, k, v, q_seg, kv_seg, do, causal=causal, scale=q.shape[-1] ** -0.5)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(np.asarray(g, np.float64)[:, rows], w[:, rows], atol=atol,
                               rtol=rtol, err_msg=name)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_reference(name):
  q, k, v, do, kwargs = make_inputs(name)
  s = q.shape[1]
  seg = packed_segments(s, [[20, 15], [7, s - 12]][:q.shape[0]]) if CONFIGS[name]["segments"] else None
  got = flash_with_vjp(q, k, v, seg, seg, do, **kwargs)
  assert all(x.dtype == jnp.float32 for x in got)
  assert_matches_reference(got, q, k, v, seg, seg, do, causal=kwargs["causal"])


def test_explicit_scale():
  q, k, v, do, kwargs = make_inputs("full-mha", seed=1)
  # scale = 0.5 / sqrt(d) on q is the default scale on 0.5 * q (whose gradient is twice as large)
  got = flash_with_vjp(q * 0.5, k, v, None, None, do, **kwargs)
  want = flash_with_vjp(q, k, v, None, None, do, **{**kwargs, "scale": 0.5 * q.shape[-1] ** -0.5})
  np.testing.assert_allclose(got[0], want[0], atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(got[1] * 0.5, want[1], atol=1e-6, rtol=1e-5)


def test_bf16_inputs_accumulate_in_fp32():
  q, k, v, do, kwargs = make_inputs("causal-segments-gqa-ragged", seed=2, dtype=jnp.bfloat16)
  seg = packed_segments(q.shape[1], [[30, 15], [10, 35]])
  got = flash_with_vjp(q, k, v, seg, seg, do, **kwargs)
  assert all(x.dtype == jnp.bfloat16 for x in got)
  # The reference sees the same bf16-rounded inputs; the kernel rounds p / ds to bf16 for the MXU.
  assert_matches_reference(got, q, k, v, seg, seg, do, causal=True, atol=3e-2, rtol=3e-2)


def test_packed_batch_equals_documents_alone():
  """Three documents packed in one row == each document attended alone (stacked on batch)."""
  n_docs, n, d = 3, 21, 16
  q, k, v, do = (jnp.asarray(np.random.default_rng(3).standard_normal((1, n_docs * n, h, d)),
                             jnp.float32) for h in (2, 1, 1, 2))
  seg = packed_segments(n_docs * n, [[n] * n_docs])
  kwargs = dict(causal=True, scale=None, block_q=16, block_k=16, backend="gpu")
  packed = flash_with_vjp(q, k, v, seg, seg, do, **kwargs)
  per_doc = lambda x: x.reshape(n_docs, n, *x.shape[2:])
  alone = flash_with_vjp(*(per_doc(x) for x in (q, k, v)), None, None, per_doc(do), **kwargs)
  for name, p, a in zip(("out", "dq", "dk", "dv"), packed, alone):
    np.testing.assert_allclose(per_doc(p), a, atol=2e-6, rtol=1e-5, err_msg=name)


def test_query_without_visible_key_returns_zero():
  q, k, v, do, kwargs = make_inputs("segments-gqa-ragged", seed=4)
  kv_seg = packed_segments(50, [[25, 25], [50]])
  q_seg = kv_seg.copy()
  q_seg[:, 40:] = 7  # segment 7 has no keys
  got = flash_with_vjp(q, k, v, q_seg, kv_seg, do, **kwargs)
  np.testing.assert_array_equal(np.asarray(got[0][:, 40:]), 0.0)
  np.testing.assert_array_equal(np.asarray(got[1][:, 40:]), 0.0)
  assert_matches_reference(got, q, k, v, q_seg, kv_seg, do, causal=False)


def brute_force_visible_blocks(seg, bq, bk, causal):
  """[b, nq, nk]: does tile (i, j) hold any visible (query, key) pair of real tokens?"""
  b, s = seg.shape
  visible = (seg[:, :, None] == seg[:, None, :]) & (np.tril(np.ones((s, s), bool)) if causal else True)
  nq, nk = -(-s // bq), -(-s // bk)
  padded = np.zeros((b, nq * bq, nk * bk), bool)
  padded[:, :s, :s] = visible
  return padded.reshape(b, nq, bq, nk, bk).any((2, 4))


def block_ranges_for(seg, causal, bq, bk, padded):
  ids = jnp.pad(seg, ((0, 0), (0, padded - seg.shape[1])))
  return block_ranges(ids, ids, causal=causal, seq_len=seg.shape[1], padded_len=padded,
                      block_q=bq, block_k=bk)


@pytest.mark.parametrize("causal", [True, False])
def test_block_ranges_visit_exactly_the_visible_blocks(causal):
  """Packed documents (non-decreasing ids): each loop range is exactly the visible blocks."""
  bq, bk, padded = 16, 32, 128
  seg = packed_segments(103, [[40, 33, 30], [90, 13]])  # padded to 128
  kv_lo, kv_hi, q_lo, q_hi = block_ranges_for(seg, causal, bq, bk, padded)
  vis = brute_force_visible_blocks(seg, bq, bk, causal)
  for bi in range(2):
    for i in range(vis.shape[1]):
      cols = np.flatnonzero(vis[bi, i])
      assert (kv_lo[bi, i], kv_hi[bi, i]) == (cols[0], cols[-1] + 1), (bi, i)
    for j in range(vis.shape[2]):
      rows = np.flatnonzero(vis[bi, :, j])
      assert (q_lo[bi, j], q_hi[bi, j]) == (rows[0], rows[-1] + 1), (bi, j)
  np.testing.assert_array_equal(kv_hi[:, vis.shape[1]:], kv_lo[:, vis.shape[1]:])  # all padding
  visited = int(np.sum(kv_hi - kv_lo))
  assert visited == int(vis.sum()) < vis.size / (2 if causal else 1)


def test_block_ranges_cover_every_visible_block_for_arbitrary_ids():
  rng = np.random.default_rng(0)
  seg = rng.integers(0, 4, size=(2, 75)).astype(np.int32)
  seg[:, 30:50] = 9  # one long run so some blocks are skippable
  kv_lo, kv_hi, q_lo, q_hi = block_ranges_for(seg, True, 16, 16, 80)
  vis = brute_force_visible_blocks(seg, 16, 16, True)
  b, i, j = np.nonzero(vis)
  assert np.all((kv_lo[b, i] <= j) & (j < kv_hi[b, i]))
  assert np.all((q_lo[b, j] <= i) & (i < q_hi[b, j]))
  assert np.sum(kv_hi - kv_lo) < vis.size


def test_causal_block_ranges_without_segments():
  kv_lo, kv_hi, q_lo, q_hi = block_ranges(None, None, causal=True, seq_len=100, padded_len=128,
                                          block_q=16, block_k=32)
  np.testing.assert_array_equal(kv_lo, 0)
  np.testing.assert_array_equal(kv_hi[0], [-(-(i + 1) * 16 // 32) for i in range(8)])
  np.testing.assert_array_equal(q_lo[0], [j * 32 // 16 for j in range(4)])
  np.testing.assert_array_equal(q_hi, 8)


@pytest.mark.parametrize("name, split", [("causal-mqa-ragged", 32),
                                         ("tpu-causal-segments-gqa-ragged", 128)])
def test_causally_skipped_blocks_are_never_read(name, split):
  """NaN in blocks a query block may not see must not reach it: a visited-but-masked block would
  turn 0 * NaN into NaN, so finite results prove those blocks were skipped. ``split`` is a
  multiple of both blocks: queries before it cannot see keys after it."""
  q, k, v, do, kwargs = make_inputs(name, seed=5)
  seg = np.ones(q.shape[:2], np.int32) if CONFIGS[name]["segments"] else None
  k_bad, v_bad = k.at[:, split:].set(jnp.nan), v.at[:, split:].set(jnp.nan)
  got = flash_with_vjp(q, k_bad, v_bad, seg, seg, do, **kwargs)
  want = reference_attention(q[:, :split], k[:, :split], v[:, :split], None, None, do[:, :split],
                             causal=True, scale=q.shape[-1] ** -0.5)
  for g, w in zip(got[:2], want[:2]):  # out and dq of the early queries
    np.testing.assert_allclose(g[:, :split], w, atol=2e-5, rtol=1e-5)
  # Poisoned early queries: the dk / dv kernel must not read them for the late key blocks.
  q_bad, do_bad = q.at[:, :split].set(jnp.nan), do.at[:, :split].set(jnp.nan)
  _, _, dk, dv = flash_with_vjp(q_bad, k, v, seg, seg, do_bad, **kwargs)
  assert np.isfinite(np.asarray(dk[:, split:])).all() and np.isfinite(np.asarray(dv[:, split:])).all()
  assert np.isnan(np.asarray(dk[:, :split])).any()  # the poison is real where blocks are visible


def test_segment_skipped_blocks_are_never_read():
  """Non-causal: with a document boundary on a query-block boundary, poison in document 2 never
  reaches document 1."""
  q, k, v, do, kwargs = make_inputs("segments-gqa-ragged", seed=6)
  seg = packed_segments(50, [[32, 18], [32, 18]])
  k_bad, v_bad = k.at[:, 32:].set(jnp.nan), v.at[:, 32:].set(jnp.nan)
  got = flash_with_vjp(q, k_bad, v_bad, seg, seg, do, **kwargs)
  want = reference_attention(q[:, :32], k[:, :32], v[:, :32], None, None, do[:, :32],
                             causal=False, scale=q.shape[-1] ** -0.5)
  for g, w in zip(got[:2], want[:2]):
    np.testing.assert_allclose(g[:, :32], w, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend, platform, marker", [
    ("gpu", "cuda", "__gpu$xla.gpu.triton"),
    ("tpu", "tpu", "tpu_custom_call"),
])
def test_lowers_to_platform_kernels(backend, platform, marker):
  """Forward + backward go through the real Pallas Triton / Mosaic TPU lowerings (block specs,
  kernel bodies, compiler params) at model-like shapes: bf16, head_dim 128, GQA, ragged, segments.
  (The device compilers behind them, Triton->PTX and Mosaic->TPU, need the hardware.)"""
  b, s, h, kvh, d = 1, 1000, 8, 2, 128
  q = jax.ShapeDtypeStruct((b, s, h, d), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((b, s, kvh, d), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((b, s), jnp.int32)

  def loss(q, k, v, seg):
    out = flash_attention(q, k, v, seg, seg, causal=True, backend=backend, interpret=False)
    return out.astype(jnp.float32).sum()

  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv, seg).lower(
      lowering_platforms=(platform,))
  assert lowered.as_text().count(marker) == 3  # forward, dq and dk/dv kernels


def test_rejects_bad_inputs():
  q = jnp.zeros((1, 32, 4, 16))
  k = jnp.zeros((1, 32, 2, 16))
  seg = np.ones((1, 32), np.int32)
  with pytest.raises(ValueError, match="kv_len == q_len"):
    flash_attention(q, k[:, :16], k[:, :16])
  with pytest.raises(ValueError, match="not a multiple of kv_heads"):
    flash_attention(q[:, :, :3], k, k)
  with pytest.raises(ValueError, match="both q_segment_ids and kv_segment_ids"):
    flash_attention(q, k, k, seg, None)
  with pytest.raises(ValueError, match="q_segment_ids must be"):
    flash_attention(q, k, k, seg[:, :8], seg)
  with pytest.raises(ValueError, match="TPU needs block_k % 128"):
    flash_attention(q, k, k, backend="tpu", block_k=64, config=FlashConfig())
  with pytest.raises(ValueError, match="backend must be one of"):
    flash_attention(q, k, k, backend="cuda")
