"""Sliding-window attention (Mistral) in the Pallas flash kernel, interpret mode on CPU: forward and
dq/dk/dv equal the float64 reference for the Triton and Mosaic TPU variants; the block ranges visit
exactly the tiles that hold a visible pair; tiles outside the window are never read."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_flash_attention import packed_segments, reference_attention
from vlm_jax.kernels.flash_attention import block_ranges, flash_attention
from vlm_jax.models.attention import attention


def flash_vjp(q, k, v, seg, do, *, window, block_q, block_k, backend, causal=True):
  def attend(q, k, v):
    return flash_attention(q, k, v, seg, seg, causal=causal, block_q=block_q, block_k=block_k,
                           backend=backend, interpret=True, window=window)
  out, vjp = jax.vjp(attend, q, k, v)
  return (out, *vjp(do))


def inputs(b, s, h, kvh, d, seed=0):
  rng = np.random.default_rng(seed)
  make = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
  return make(b, s, h, d), make(b, s, kvh, d), make(b, s, kvh, d), make(b, s, h, d)


@pytest.mark.parametrize("backend, s, block_q, block_k, window, segments", [
    ("gpu", 70, 16, 16, 20, False),
    ("gpu", 61, 16, 32, 9, True),
    ("tpu", 150, 32, 128, 40, True),
])
def test_window_matches_float64_reference(backend, s, block_q, block_k, window, segments):
  q, k, v, do = inputs(2, s, 4, 2, 16)
  seg = packed_segments(s, [[30, s - 40], [s - 5]]) if segments else None
  got = jax.jit(lambda *a: flash_vjp(*a, window=window, block_q=block_q, block_k=block_k,
                                     backend=backend))(q, k, v, seg, do)
  want = reference_attention(q, k, v, seg, seg, do, causal=True, scale=16 ** -0.5, window=window)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(np.asarray(g, np.float64), w, atol=2e-5, rtol=1e-5, err_msg=name)
  unwindowed = reference_attention(q, k, v, seg, seg, do, causal=True, scale=16 ** -0.5)
  assert np.max(np.abs(np.asarray(got[0]) - unwindowed[0])) > 1e-2  # the window changed the result


def test_window_block_ranges_visit_exactly_the_visible_blocks():
  s, bq, bk, window = 128, 16, 16, 24
  kv_lo, kv_hi, q_lo, q_hi = block_ranges(None, None, causal=True, seq_len=s, padded_len=s,
                                          block_q=bq, block_k=bk, window=window)
  i, j = np.arange(s)[:, None], np.arange(s)[None, :]
  vis = ((j <= i) & (j > i - window)).reshape(s // bq, bq, s // bk, bk).any((1, 3))
  for qi in range(s // bq):
    cols = np.flatnonzero(vis[qi])
    assert (kv_lo[0, qi], kv_hi[0, qi]) == (cols[0], cols[-1] + 1)
  for kj in range(s // bk):
    rows = np.flatnonzero(vis[:, kj])
    assert (q_lo[0, kj], q_hi[0, kj]) == (rows[0], rows[-1] + 1)
  assert int(np.sum(kv_hi - kv_lo)) == int(vis.sum()) <= 3 * (s // bq)  # O(seq * window), not O(seq²)


def test_blocks_outside_the_window_are_never_read():
  """NaN keys/values far behind a query block (outside every query's window) must not reach it."""
  s, window = 96, 16
  q, k, v, do = inputs(1, s, 2, 1, 16, seed=1)
  k_bad, v_bad = k.at[:, :32].set(jnp.nan), v.at[:, :32].set(jnp.nan)  # queries >= 64 cannot see keys < 48
  out, dq, _, _ = flash_vjp(q, k_bad, v_bad, None, do, window=window, block_q=16, block_k=16, backend="gpu")
  want = reference_attention(q, k, v, None, None, do, causal=True, scale=16 ** -0.5, window=window)
  np.testing.assert_allclose(np.asarray(out)[:, 64:], want[0][:, 64:], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(dq)[:, 64:], want[1][:, 64:], atol=2e-5, rtol=1e-5)


def test_attention_switch_pallas_equals_xla_with_window_and_cache_offset():
  """`attention(..., sliding_window=)`: a chunk written at a static cache offset (the Pallas route pads it
  onto the kernel) equals the XLA reference."""
  q, k, v, _ = inputs(2, 40, 4, 2, 16, seed=2)
  seg = jnp.asarray(packed_segments(40, [[40], [33]]))
  for offset, q_len in ((24, 16),):
    qc, qs = q[:, offset:offset + q_len], seg[:, offset:offset + q_len]
    kw = dict(q_segment_ids=qs, kv_segment_ids=seg, causal=True, q_offset=offset, sliding_window=7)
    want = attention(qc, k, v, implementation="xla", **kw)
    got = attention(qc, k, v, implementation="pallas", block_q=16, block_k=16, **kw)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
