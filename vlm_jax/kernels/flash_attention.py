"""Flash attention in Pallas: tiled online-softmax forward, dq and dk/dv backward kernels.

The training / prefill hot path of vlm_jax (32k-token packed, interleaved image-text sequences).
Semantics follow the attention contract in docs/DESIGN.md with q_len == kv_len and q_offset == 0:
key j is visible to query i iff ``q_segment_ids[i] == kv_segment_ids[j]`` (when given) and
(not causal or ``j <= i``) and (no ``window`` or ``j > i - window``); a query that sees no key
returns zeros.

One block-level kernel body (``_fwd_block`` / ``_bwd_block`` + ``_visibility``) is shared by two
drivers that differ only in how tiles reach it:

* ``"gpu"`` (Pallas Triton, also the CPU interpret default): grid over (q block, batch, head); the
  kernel keeps K/V of its head in global memory and runs a ``fori_loop`` over kv blocks whose
  bounds come from a per-block range table, so fully masked blocks are never visited. Row
  statistics are vectors ``[block]``.
* ``"tpu"`` (Pallas Mosaic TPU): the kv loop is a grid axis (``"arbitrary"``) with VMEM scratch
  accumulators; the same range table arrives by scalar prefetch, skipped steps do no work
  (``pl.when``) and their index maps repeat the previous block so no DMA is issued. Row statistics
  are lane-replicated ``[block, 128]`` tiles (the layout Mosaic handles natively).

Residuals for the backward pass are only ``out`` and the log-sum-exp; ``delta = rowsum(dO * O)`` is a
plain XLA pre-pass. GQA maps q head h to kv head ``h // (heads // kv_heads)`` in the index maps; the
dk/dv kernel accumulates over the q heads of its group. Lengths that are not a multiple of the
blocks are padded internally and the padded keys masked by position.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

BACKENDS = ("gpu", "tpu")
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: keeps exp2(m_prev - m_next) NaN-free
_LOG2E = math.log2(math.e)
_TPU_LANES = 128
_TPU_SUBLANES = 8
_NT = (((1,), (1,)), ((), ()))  # contract the last dims: a @ b.T


@dataclasses.dataclass(frozen=True)
class FlashConfig:
  """Tile sizes (sequence axis) of the three kernels, plus Triton launch parameters.

  The padded sequence length is a multiple of every block, so use powers of two (the defaults).
  On TPU ``block_k*`` must be multiples of 128 and ``block_q*`` multiples of 8.
  """

  block_q: int = 128
  block_k: int = 64
  block_q_dq: int = 64
  block_k_dq: int = 64
  block_q_dkv: int = 64
  block_k_dkv: int = 64
  num_warps: int | None = None  # Triton only; None -> 4 for head_dim <= 64 else 8
  num_stages: int = 2  # Triton only

  @classmethod
  def default(cls, backend: str, head_dim: int) -> "FlashConfig":
    """Per-backend defaults (untuned starting points; see benchmarks/attention_bench.py)."""
    if backend == "tpu":
      return cls(block_q=512, block_k=512, block_q_dq=256, block_k_dq=256,
                 block_q_dkv=256, block_k_dkv=256)
    return cls(num_warps=4 if head_dim <= 64 else 8)

  def with_blocks(self, block_q: int | None, block_k: int | None) -> "FlashConfig":
    """Use ``block_q`` / ``block_k`` (when given) for all three kernels."""
    bq = {} if block_q is None else dict(block_q=block_q, block_q_dq=block_q, block_q_dkv=block_q)
    bk = {} if block_k is None else dict(block_k=block_k, block_k_dq=block_k, block_k_dkv=block_k)
    return dataclasses.replace(self, **bq, **bk)

  def fit(self, seq_len: int, min_block: int) -> "FlashConfig":
    """Shrink blocks longer than the (power-of-two rounded) sequence, so short inputs are not
    padded to a whole default block."""
    cap = max(min_block, pl.next_power_of_2(seq_len))
    names = ("block_q", "block_k", "block_q_dq", "block_k_dq", "block_q_dkv", "block_k_dkv")
    return dataclasses.replace(self, **{n: min(getattr(self, n), cap) for n in names})

  @property
  def blocks(self) -> tuple[int, ...]:
    return (self.block_q, self.block_k, self.block_q_dq, self.block_k_dq,
            self.block_q_dkv, self.block_k_dkv)


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything static about one flash_attention call (hashable: custom_vjp nondiff arg)."""

  causal: bool
  scale: float
  backend: str
  interpret: bool | pltpu.InterpretParams
  config: FlashConfig
  seq_len: int  # unpadded
  padded_len: int
  head_dim: int  # unpadded
  window: int | None = None  # sliding window: key j visible to query i only if j > i - window

  @property
  def scale_log2(self) -> float:
    return self.scale * _LOG2E

  def kv_len_mask(self) -> int | None:
    """Key-position bound to mask by, or None when no key is padding."""
    return None if self.padded_len == self.seq_len else self.seq_len


# ----------------------------------------------------------------------------------------------
# Block-level kernel body, shared by both drivers.


@dataclasses.dataclass(frozen=True)
class _RowLayout:
  """How a per-query-row statistic (max, sum, lse, delta, q segment id) is held in a tile.

  ``lanes=None``: a vector ``[rows]`` (Triton/interpret). ``lanes=128``: a lane-replicated
  ``[rows, 128]`` tile (Mosaic TPU, where 1-D row vectors do not lay out well).
  """

  lanes: int | None

  def full(self, rows: int, value, dtype=jnp.float32):
    shape = (rows,) if self.lanes is None else (rows, self.lanes)
    return jnp.full(shape, value, dtype)

  def row_max(self, x):
    m = jnp.max(x, axis=-1)
    return m if self.lanes is None else m[:, None]  # [rows,1] broadcasts against [rows,lanes]

  def row_sum(self, x):
    s = jnp.sum(x, axis=-1)
    return s if self.lanes is None else lax.broadcast_in_dim(s, (x.shape[0], self.lanes), (0,))

  def expand(self, stat, n: int):
    """Broadcast a row statistic against an ``[rows, n]`` tile."""
    if self.lanes is None:
      return stat[:, None]
    return jnp.tile(stat, (1, pl.cdiv(n, self.lanes)))[:, :n]


_VECTOR_ROWS = _RowLayout(None)
_LANE_ROWS = _RowLayout(_TPU_LANES)


def _visibility(q_start, k_start, shape, *, causal: bool, kv_len: int | None, q_seg=None,
                kv_seg=None, window: int | None = None):
  """Visibility of a ``[block_q, block_k]`` tile whose first query / key sit at the given slots.

  ``q_seg`` broadcasts as ``[block_q, 1 or block_k]`` and ``kv_seg`` as ``[1, block_k]``; with a
  sliding ``window``, key j is visible to query i only if ``j > i - window``.
  Returns a bool tile, or None when every entry is visible.
  """
  mask = None if q_seg is None else q_seg == kv_seg
  if causal or kv_len is not None or window is not None:
    k_pos = k_start + lax.broadcasted_iota(jnp.int32, shape, 1)
    if causal or window is not None:
      q_pos = q_start + lax.broadcasted_iota(jnp.int32, shape, 0)
    if causal:
      mask = _and(mask, k_pos <= q_pos)
    if window is not None:
      mask = _and(mask, k_pos > q_pos - window)
    if kv_len is not None:
      mask = _and(mask, k_pos < kv_len)
  return mask


def _and(a, b):
  return b if a is None else jnp.logical_and(a, b)


def _fwd_block(q, k, v, m, l, acc, mask, *, scale_log2: float, rows: _RowLayout):
  """One online-softmax step over a kv tile (base-2 exponentials, fp32 statistics).

  q ``[bq, d]``, k/v ``[bk, d]``; m/l row statistics; acc ``[bq, d]`` fp32 (unnormalised output).
  """
  s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale_log2
  if mask is not None:
    s = jnp.where(mask, s, _MASK_VALUE)
  m_next = jnp.maximum(m, rows.row_max(s))
  p = jnp.exp2(s - rows.expand(m_next, s.shape[1]))
  if mask is not None:
    p = jnp.where(mask, p, 0.0)  # rows with nothing visible yet keep l == 0
  alpha = jnp.exp2(m - m_next)
  l_next = alpha * l + rows.row_sum(p)
  pv = lax.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  acc_next = rows.expand(alpha, acc.shape[1]) * acc + pv
  return m_next, l_next, acc_next


def _fwd_finish(m, l, acc, *, rows: _RowLayout):
  """Normalised output ``[bq, d]`` and base-2 log-sum-exp (+inf for rows that saw no key)."""
  empty = l == 0.0
  inv_l = 1.0 / jnp.where(empty, 1.0, l)
  out = acc * rows.expand(inv_l, acc.shape[1])  # acc is 0 on empty rows
  lse2 = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)) * _LOG2E)
  return out, lse2


def _bwd_block(q, k, v, do, lse2, delta, mask, *, scale_log2: float, rows: _RowLayout):
  """Probabilities ``p`` and logit gradients ``ds = p * (dO V^T - delta)`` of one tile (fp32).

  The returned ds is w.r.t. the unscaled logits q.k; callers multiply the sums by ``scale``.
  """
  s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale_log2
  p = jnp.exp2(s - rows.expand(lse2, s.shape[1]))
  if mask is not None:
    p = jnp.where(mask, p, 0.0)
  dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
  ds = p * (dp - rows.expand(delta, dp.shape[1]))
  return p, ds


def _dot_tn(a, b):
  """``a.T @ b`` with ``a`` fp32 cast to ``b``'s dtype, fp32 accumulation."""
  return lax.dot(a.T.astype(b.dtype), b, preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------------------------
# Block-skipping ranges.


@functools.partial(jax.jit, static_argnames=("causal", "seq_len", "padded_len", "block_q", "block_k", "window"))
def block_ranges(q_segment_ids, kv_segment_ids, *, causal: bool, seq_len: int, padded_len: int,
                 block_q: int, block_k: int, window: int | None = None):
  """Which tiles of the ``[padded_len, padded_len]`` score matrix can hold a visible entry.

  A tile (query block i, key block j) is visited iff the causal bound allows it
  (``j * block_k <= (i + 1) * block_q - 1``), the sliding window allows it (``window`` given:
  ``(j + 1) * block_k - 1 > i * block_q - window``) and the segment-id intervals of its real (unpadded)
  tokens overlap — a necessary condition for any equal pair, so skipping is exact for any ids and
  tight for packed (contiguous) documents. Returns int32 ``(kv_lo, kv_hi)`` of shape
  ``[batch, n_q_blocks]`` (the kv-block loop range of each query block) and ``(q_lo, q_hi)`` of
  shape ``[batch, n_k_blocks]`` (the query-block loop range of each key block). An empty range has
  ``lo == hi``. Segment ids ``[batch, padded_len]`` or None (batch 1).
  """
  nq, nk = padded_len // block_q, padded_len // block_k
  qi = jnp.arange(nq)[:, None]
  kj = jnp.arange(nk)[None, :]
  visible = jnp.ones((1, nq, nk), bool)
  if causal:
    visible = visible & (kj * block_k <= (qi + 1) * block_q - 1)[None]
  if window is not None:
    visible = visible & ((kj + 1) * block_k - 1 > qi * block_q - window)[None]
  if q_segment_ids is not None:
    q_min, q_max = _block_min_max(q_segment_ids, seq_len, block_q)
    k_min, k_max = _block_min_max(kv_segment_ids, seq_len, block_k)
    visible = visible & (q_min[:, :, None] <= k_max[:, None, :]) & (k_min[:, None, :] <= q_max[:, :, None])
  kv_lo, kv_hi = _first_last(visible)
  q_lo, q_hi = _first_last(jnp.swapaxes(visible, 1, 2))
  return kv_lo, kv_hi, q_lo, q_hi


def _block_min_max(segment_ids, seq_len: int, block: int):
  """Per-block min / max segment id over real tokens; an all-padding block gets an empty interval."""
  b, n = segment_ids.shape
  real = (jnp.arange(n) < seq_len)[None, :]
  big = jnp.iinfo(jnp.int32).max
  seg = segment_ids.astype(jnp.int32)
  lo = jnp.where(real, seg, big).reshape(b, n // block, block).min(-1)
  hi = jnp.where(real, seg, -big).reshape(b, n // block, block).max(-1)
  return lo, hi


def _first_last(visible):
  """``[b, rows, cols]`` bool -> (first true col, last true col + 1) per row; (0, 0) if none."""
  cols = visible.shape[-1]
  idx = jnp.arange(cols, dtype=jnp.int32)
  any_ = visible.any(-1)
  lo = jnp.where(any_, jnp.min(jnp.where(visible, idx, cols), -1), 0)
  hi = jnp.where(any_, jnp.max(jnp.where(visible, idx, -1), -1) + 1, 0)
  return lo.astype(jnp.int32), hi.astype(jnp.int32)


def _unmasked_kv_end(qi, lo, hi, st: _Static, block_q: int, block_k: int, has_segments: bool):
  """For query block qi: kv blocks in ``[lo, end)`` need no mask (all visible), ``[end, hi)`` do."""
  if has_segments or st.window is not None:
    return lo
  end = hi
  if st.causal:  # key block j is fully below the diagonal iff (j+1)*bk - 1 <= qi*bq
    end = jnp.minimum(end, lax.div(qi * block_q + 1, block_k))
  if st.kv_len_mask() is not None:  # the last key block holds padding
    end = jnp.minimum(end, st.padded_len // block_k - 1)
  return jnp.clip(end, lo, hi)


def _unmasked_q_start(kj, lo, hi, st: _Static, block_q: int, block_k: int, has_segments: bool):
  """For key block kj: query blocks in ``[lo, start)`` need a mask, ``[start, hi)`` do not."""
  if has_segments or st.window is not None:
    return hi
  start = lo
  if st.causal:  # query block i is fully above the diagonal iff i*bq >= (kj+1)*bk - 1
    start = jnp.maximum(start, lax.div((kj + 1) * block_k - 1 + block_q - 1, block_q))
  if st.kv_len_mask() is not None:
    start = jnp.where(kj == st.padded_len // block_k - 1, hi, start)
  return jnp.clip(start, lo, hi)


# ----------------------------------------------------------------------------------------------
# GPU (Pallas Triton) driver: grid (q block, batch, head), kv loop inside the kernel.
# Layout [batch, seq, heads, head_dim] as given; lse / delta [batch, heads, seq].


def _gpu_fwd_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, o_ref, lse_ref, *,
                    st: _Static):
  cfg, rows = st.config, _VECTOR_ROWS
  bq, bk = cfg.block_q, cfg.block_k
  qi = _gpu_q_block(st, bq)
  has_seg = qseg_ref is not None
  q = q_ref[...]
  q_seg = rows.expand(qseg_ref[...], bk) if has_seg else None
  lo, hi = lo_ref[()], hi_ref[()]

  def step(masked):
    def body(j, carry):
      k = k_ref[pl.ds(j * bk, bk), :]
      v = v_ref[pl.ds(j * bk, bk), :]
      mask = None
      if masked:
        kv_seg = kvseg_ref[pl.ds(j * bk, bk)][None, :] if has_seg else None
        mask = _visibility(qi * bq, j * bk, (bq, bk), causal=st.causal, kv_len=st.kv_len_mask(),
                           window=st.window,
                           q_seg=q_seg, kv_seg=kv_seg)
      return _fwd_block(q, k, v, *carry, mask, scale_log2=st.scale_log2, rows=rows)
    return body

  carry = (rows.full(bq, _MASK_VALUE), rows.full(bq, 0.0), jnp.zeros(q.shape, jnp.float32))
  mid = _unmasked_kv_end(qi, lo, hi, st, bq, bk, has_seg)
  carry = lax.fori_loop(lo, mid, step(False), carry)
  carry = lax.fori_loop(mid, hi, step(True), carry)
  out, lse2 = _fwd_finish(*carry, rows=rows)
  o_ref[...] = out.astype(o_ref.dtype)
  lse_ref[...] = lse2


def _gpu_dq_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, do_ref, lse_ref,
                   delta_ref, dq_ref, *, st: _Static):
  cfg, rows = st.config, _VECTOR_ROWS
  bq, bk = cfg.block_q_dq, cfg.block_k_dq
  qi = _gpu_q_block(st, bq)
  has_seg = qseg_ref is not None
  q, do, lse2, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  q_seg = rows.expand(qseg_ref[...], bk) if has_seg else None
  lo, hi = lo_ref[()], hi_ref[()]

  def step(masked):
    def body(j, dq):
      k = k_ref[pl.ds(j * bk, bk), :]
      v = v_ref[pl.ds(j * bk, bk), :]
      mask = None
      if masked:
        kv_seg = kvseg_ref[pl.ds(j * bk, bk)][None, :] if has_seg else None
        mask = _visibility(qi * bq, j * bk, (bq, bk), causal=st.causal, kv_len=st.kv_len_mask(),
                           window=st.window,
                           q_seg=q_seg, kv_seg=kv_seg)
      _, ds = _bwd_block(q, k, v, do, lse2, delta, mask, scale_log2=st.scale_log2, rows=rows)
      return dq + lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
    return body

  dq = jnp.zeros(q.shape, jnp.float32)
  mid = _unmasked_kv_end(qi, lo, hi, st, bq, bk, has_seg)
  dq = lax.fori_loop(lo, mid, step(False), dq)
  dq = lax.fori_loop(mid, hi, step(True), dq)
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


def _gpu_dkv_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, do_ref, lse_ref,
                    delta_ref, dk_ref, dv_ref, *, st: _Static, group: int):
  cfg, rows = st.config, _VECTOR_ROWS
  bq, bk = cfg.block_q_dkv, cfg.block_k_dkv
  kj = pl.program_id(0)
  has_seg = qseg_ref is not None
  k, v = k_ref[...], v_ref[...]
  kv_seg = kvseg_ref[...][None, :] if has_seg else None
  lo, hi = lo_ref[()], hi_ref[()]

  def step(masked, g):
    def body(i, carry):
      dk, dv = carry
      rows_i = pl.ds(i * bq, bq)
      q = q_ref[rows_i, g, :]
      do = do_ref[rows_i, g, :]
      lse2, delta = lse_ref[g, rows_i], delta_ref[g, rows_i]
      mask = None
      if masked:
        q_seg = rows.expand(qseg_ref[rows_i], bk) if has_seg else None
        mask = _visibility(i * bq, kj * bk, (bq, bk), causal=st.causal, kv_len=st.kv_len_mask(),
                           window=st.window,
                           q_seg=q_seg, kv_seg=kv_seg)
      p, ds = _bwd_block(q, k, v, do, lse2, delta, mask, scale_log2=st.scale_log2, rows=rows)
      return dk + _dot_tn(ds, q), dv + _dot_tn(p, do)
    return body

  mid = _unmasked_q_start(kj, lo, hi, st, bq, bk, has_seg)

  def head(g, carry):  # the q heads sharing this kv head
    carry = lax.fori_loop(lo, mid, step(True, g), carry)
    return lax.fori_loop(mid, hi, step(False, g), carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, group, head, (zeros, zeros))
  dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _gpu_q_block(st: _Static, block_q: int):
  """Query block of this program; causal runs the (costlier) last blocks first."""
  i = pl.program_id(0)
  return st.padded_len // block_q - 1 - i if st.causal else i


def _gpu_q_index(st: _Static, block_q: int):
  nq = st.padded_len // block_q
  return (lambda i: nq - 1 - i) if st.causal else (lambda i: i)


def _gpu_params(st: _Static):
  cfg = st.config
  warps = cfg.num_warps or (4 if st.head_dim <= 64 else 8)
  return pltriton.CompilerParams(num_warps=warps, num_stages=cfg.num_stages)


def _gpu_forward(q, k, v, qseg, kvseg, kv_lo, kv_hi, st: _Static):
  b, s, h, d = q.shape
  group = h // k.shape[2]
  bq = st.config.block_q
  qidx = _gpu_q_index(st, bq)
  seg = qseg is not None
  in_specs = [
      pl.BlockSpec((None, None), lambda i, bi, hi: (bi, qidx(i))),
      pl.BlockSpec((None, None), lambda i, bi, hi: (bi, qidx(i))),
      pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, qidx(i), hi, 0)),
      pl.BlockSpec((None, s, None, d), lambda i, bi, hi: (bi, 0, lax.div(hi, group), 0)),
      pl.BlockSpec((None, s, None, d), lambda i, bi, hi: (bi, 0, lax.div(hi, group), 0)),
      pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, qidx(i))) if seg else None,
      pl.BlockSpec((None, s), lambda i, bi, hi: (bi, 0)) if seg else None,
  ]
  out_specs = [
      pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, qidx(i), hi, 0)),
      pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, qidx(i))),
  ]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, s), jnp.float32)]
  return pl.pallas_call(
      functools.partial(_gpu_fwd_kernel, st=st), grid=(s // bq, b, h), in_specs=in_specs,
      out_specs=out_specs, out_shape=out_shape, compiler_params=_gpu_params(st),
      interpret=bool(st.interpret), name="vlm_flash_fwd",
  )(kv_lo, kv_hi, q, k, v, qseg, kvseg)


def _gpu_backward(q, k, v, qseg, kvseg, do, lse2, delta, ranges_dq, ranges_dkv, st: _Static):
  b, s, h, d = q.shape
  kvh = k.shape[2]
  group = h // kvh
  cfg = st.config
  seg = qseg is not None

  bq, bk = cfg.block_q_dq, cfg.block_k_dq
  qidx = _gpu_q_index(st, bq)
  q_spec = pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, qidx(i), hi, 0))
  kv_spec = pl.BlockSpec((None, s, None, d), lambda i, bi, hi: (bi, 0, lax.div(hi, group), 0))
  row_spec = pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, qidx(i)))
  range_spec = pl.BlockSpec((None, None), lambda i, bi, hi: (bi, qidx(i)))
  dq = pl.pallas_call(
      functools.partial(_gpu_dq_kernel, st=st), grid=(s // bq, b, h),
      in_specs=[range_spec, range_spec, q_spec, kv_spec, kv_spec,
                pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, qidx(i))) if seg else None,
                pl.BlockSpec((None, s), lambda i, bi, hi: (bi, 0)) if seg else None,
                q_spec, row_spec, row_spec],
      out_specs=q_spec, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_gpu_params(st), interpret=bool(st.interpret), name="vlm_flash_dq",
  )(*ranges_dq, q, k, v, qseg, kvseg, do, lse2, delta)

  bq, bk = cfg.block_q_dkv, cfg.block_k_dkv
  qg_spec = pl.BlockSpec((None, s, group, d), lambda j, bi, g: (bi, 0, g, 0))
  kv_spec = pl.BlockSpec((None, bk, None, d), lambda j, bi, g: (bi, j, g, 0))
  row_spec = pl.BlockSpec((None, group, s), lambda j, bi, g: (bi, g, 0))
  range_spec = pl.BlockSpec((None, None), lambda j, bi, g: (bi, j))
  dk, dv = pl.pallas_call(
      functools.partial(_gpu_dkv_kernel, st=st, group=group), grid=(s // bk, b, kvh),
      in_specs=[range_spec, range_spec, qg_spec, kv_spec, kv_spec,
                pl.BlockSpec((None, s), lambda j, bi, g: (bi, 0)) if seg else None,
                pl.BlockSpec((None, bk), lambda j, bi, g: (bi, j)) if seg else None,
                qg_spec, row_spec, row_spec],
      out_specs=[kv_spec, kv_spec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=_gpu_params(st), interpret=bool(st.interpret), name="vlm_flash_dkv",
  )(*ranges_dkv, q, k, v, qseg, kvseg, do, lse2, delta)
  return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# TPU (Pallas Mosaic) driver: kv (or q) blocks on an "arbitrary" grid axis, VMEM scratch
# accumulators, ranges by scalar prefetch. Layout [batch, heads, seq, head_dim]; row statistics
# [batch, heads, seq, 128]; q segment ids [batch, seq, 128], kv segment ids [batch, 8, seq].


def _clamp(idx, lo_ref, hi_ref, bi, row):
  """Block index to fetch at grid step ``idx``: outside the visited range repeat a neighbour so
  the pipeline issues no new DMA for skipped steps."""
  lo, hi = lo_ref[bi, row], hi_ref[bi, row]
  return jnp.maximum(jnp.minimum(jnp.maximum(idx, lo), hi - 1), 0)


def _tpu_fwd_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, o_ref, lse_ref,
                    m_sc, l_sc, acc_sc, *, st: _Static):
  cfg, rows = st.config, _LANE_ROWS
  bq, bk = cfg.block_q, cfg.block_k
  bi, qi, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  lo, hi = lo_ref[bi, qi], hi_ref[bi, qi]

  @pl.when(j == 0)
  def _init():
    m_sc[...] = rows.full(bq, _MASK_VALUE)
    l_sc[...] = rows.full(bq, 0.0)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  def run(masked):
    mask = None
    if masked:
      has_seg = qseg_ref is not None
      mask = _visibility(qi * bq, j * bk, (bq, bk), causal=st.causal, kv_len=st.kv_len_mask(),
                         window=st.window,
                         q_seg=rows.expand(qseg_ref[...], bk) if has_seg else None,
                         kv_seg=kvseg_ref[:1, :] if has_seg else None)
    m, l, acc = _fwd_block(q_ref[...], k_ref[...], v_ref[...], m_sc[...], l_sc[...], acc_sc[...],
                           mask, scale_log2=st.scale_log2, rows=rows)
    m_sc[...], l_sc[...], acc_sc[...] = m, l, acc

  mid = _unmasked_kv_end(qi, lo, hi, st, bq, bk, qseg_ref is not None)
  pl.when((j >= lo) & (j < mid))(lambda: run(False))
  pl.when((j >= mid) & (j < hi))(lambda: run(True))

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    out, lse2 = _fwd_finish(m_sc[...], l_sc[...], acc_sc[...], rows=rows)
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = lse2


def _tpu_dq_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, do_ref, lse_ref,
                   delta_ref, dq_ref, dq_sc, *, st: _Static):
  cfg, rows = st.config, _LANE_ROWS
  bq, bk = cfg.block_q_dq, cfg.block_k_dq
  bi, qi, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  lo, hi = lo_ref[bi, qi], hi_ref[bi, qi]

  @pl.when(j == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  def run(masked):
    mask = None
    if masked:
      has_seg = qseg_ref is not None
      mask = _visibility(qi * bq, j * bk, (bq, bk), causal=st.causal, kv_len=st.kv_len_mask(),
                         window=st.window,
                         q_seg=rows.expand(qseg_ref[...], bk) if has_seg else None,
                         kv_seg=kvseg_ref[:1, :] if has_seg else None)
    k = k_ref[...]
    _, ds = _bwd_block(q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], delta_ref[...], mask,
                       scale_log2=st.scale_log2, rows=rows)
    dq_sc[...] += lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  mid = _unmasked_kv_end(qi, lo, hi, st, bq, bk, qseg_ref is not None)
  pl.when((j >= lo) & (j < mid))(lambda: run(False))
  pl.when((j >= mid) & (j < hi))(lambda: run(True))

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = (dq_sc[...] * st.scale).astype(dq_ref.dtype)


def _tpu_dkv_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, do_ref, lse_ref,
                    delta_ref, dk_ref, dv_ref, dk_sc, dv_sc, *, st: _Static):
  cfg, rows = st.config, _LANE_ROWS
  bq, bk = cfg.block_q_dkv, cfg.block_k_dkv
  bi, kj, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  lo, hi = lo_ref[bi, kj], hi_ref[bi, kj]

  @pl.when((g == 0) & (i == 0))
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  def run(masked):
    mask = None
    if masked:
      has_seg = qseg_ref is not None
      mask = _visibility(i * bq, kj * bk, (bq, bk), causal=st.causal, kv_len=st.kv_len_mask(),
                         window=st.window,
                         q_seg=rows.expand(qseg_ref[...], bk) if has_seg else None,
                         kv_seg=kvseg_ref[:1, :] if has_seg else None)
    q, do = q_ref[...], do_ref[...]
    p, ds = _bwd_block(q, k_ref[...], v_ref[...], do, lse_ref[...], delta_ref[...], mask,
                       scale_log2=st.scale_log2, rows=rows)
    dk_sc[...] += _dot_tn(ds, q)
    dv_sc[...] += _dot_tn(p, do)

  mid = _unmasked_q_start(kj, lo, hi, st, bq, bk, qseg_ref is not None)
  pl.when((i >= lo) & (i < mid))(lambda: run(True))
  pl.when((i >= mid) & (i < hi))(lambda: run(False))

  @pl.when((g == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
  def _finish():
    dk_ref[...] = (dk_sc[...] * st.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)




def _tpu_seg_inputs(qseg, kvseg):
  """Segment ids in Mosaic-friendly tiles: q ``[b, s, 128]``, kv ``[b, 8, s]``."""
  if qseg is None:
    return None, None
  b, s = qseg.shape
  return (lax.broadcast_in_dim(qseg, (b, s, _TPU_LANES), (0, 1)),
          lax.broadcast_in_dim(kvseg, (b, _TPU_SUBLANES, s), (0, 2)))


def _lanes(x):
  """``[b, h, s]`` -> lane-replicated ``[b, h, s, 128]``."""
  return jnp.broadcast_to(x[..., None], (*x.shape, _TPU_LANES))


def _tpu_q_major_specs(group: int, bq: int, bk: int, d: int, seg: bool):
  """BlockSpecs of the q-major TPU grid ``(batch, head, q block, kv block)`` shared by the forward and
  dq passes: (q / out spec, per-row [lse, delta] spec, in_specs for q, k, v, q segments, kv segments).
  kv blocks outside a q block's visible range are clamped so no DMA fetches a fully masked block."""

  def kv_map(bi, hi, qi, j, lo_ref, hi_ref):
    return (bi, lax.div(hi, group), _clamp(j, lo_ref, hi_ref, bi, qi), 0)

  def kvseg_map(bi, hi, qi, j, lo_ref, hi_ref):
    return (bi, 0, _clamp(j, lo_ref, hi_ref, bi, qi))

  q_spec = pl.BlockSpec((None, None, bq, d), lambda bi, hi, qi, j, *_: (bi, hi, qi, 0))
  row_spec = pl.BlockSpec((None, None, bq, _TPU_LANES), lambda bi, hi, qi, j, *_: (bi, hi, qi, 0))
  in_specs = [q_spec, pl.BlockSpec((None, None, bk, d), kv_map), pl.BlockSpec((None, None, bk, d), kv_map),
              pl.BlockSpec((None, bq, _TPU_LANES), lambda bi, hi, qi, j, *_: (bi, qi, 0)) if seg else None,
              pl.BlockSpec((None, _TPU_SUBLANES, bk), kvseg_map) if seg else None]
  return q_spec, row_spec, in_specs


def _tpu_forward(q, k, v, qseg, kvseg, kv_lo, kv_hi, st: _Static):
  """q ``[b, h, s, d]``, k/v ``[b, kvh, s, d]`` -> out ``[b, h, s, d]``, lse2 ``[b, h, s]``."""
  b, h, s, d = q.shape
  group = h // k.shape[1]
  bq, bk = st.config.block_q, st.config.block_k
  qseg, kvseg = _tpu_seg_inputs(qseg, kvseg)
  seg = qseg is not None

  q_spec, row_spec, in_specs = _tpu_q_major_specs(group, bq, bk, d, seg)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(b, h, s // bq, s // bk), in_specs=in_specs,
      out_specs=[q_spec, row_spec],
      scratch_shapes=[pltpu.VMEM((bq, _TPU_LANES), jnp.float32),
                      pltpu.VMEM((bq, _TPU_LANES), jnp.float32),
                      pltpu.VMEM((bq, d), jnp.float32)])
  out, lse2 = pl.pallas_call(
      functools.partial(_tpu_fwd_kernel, st=st), grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, s, _TPU_LANES), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=st.interpret, name="vlm_flash_fwd",
  )(kv_lo, kv_hi, q, k, v, qseg, kvseg)
  return out, lse2[..., 0]


def _tpu_backward(q, k, v, qseg, kvseg, do, lse2, delta, ranges_dq, ranges_dkv, st: _Static):
  """All in ``[b, heads, s, d]`` layout; lse2 / delta ``[b, h, s]``."""
  b, h, s, d = q.shape
  kvh = k.shape[1]
  group = h // kvh
  cfg = st.config
  qseg, kvseg = _tpu_seg_inputs(qseg, kvseg)
  seg = qseg is not None
  lse2, delta = _lanes(lse2), _lanes(delta)

  bq, bk = cfg.block_q_dq, cfg.block_k_dq

  q_spec, row_spec, in_specs = _tpu_q_major_specs(group, bq, bk, d, seg)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(b, h, s // bq, s // bk),
      in_specs=in_specs + [q_spec, row_spec, row_spec],
      out_specs=q_spec, scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)])
  dq = pl.pallas_call(
      functools.partial(_tpu_dq_kernel, st=st), grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=st.interpret, name="vlm_flash_dq",
  )(*ranges_dq, q, k, v, qseg, kvseg, do, lse2, delta)

  bq, bk = cfg.block_q_dkv, cfg.block_k_dkv

  def q_map(bi, gi, kj, g, i, lo_ref, hi_ref):
    return (bi, gi * group + g, _clamp(i, lo_ref, hi_ref, bi, kj), 0)

  def qseg_map(bi, gi, kj, g, i, lo_ref, hi_ref):
    return (bi, _clamp(i, lo_ref, hi_ref, bi, kj), 0)

  kv_spec = pl.BlockSpec((None, None, bk, d), lambda bi, gi, kj, g, i, *_: (bi, gi, kj, 0))
  q_spec = pl.BlockSpec((None, None, bq, d), q_map)
  row_spec = pl.BlockSpec((None, None, bq, _TPU_LANES), q_map)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(b, kvh, s // bk, group, s // bq),
      in_specs=[q_spec, kv_spec, kv_spec,
                pl.BlockSpec((None, bq, _TPU_LANES), qseg_map) if seg else None,
                pl.BlockSpec((None, _TPU_SUBLANES, bk),
                             lambda bi, gi, kj, g, i, *_: (bi, 0, kj)) if seg else None,
                q_spec, row_spec, row_spec],
      out_specs=[kv_spec, kv_spec],
      scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)])
  dk, dv = pl.pallas_call(
      functools.partial(_tpu_dkv_kernel, st=st), grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
      interpret=st.interpret, name="vlm_flash_dkv",
  )(*ranges_dkv, q, k, v, qseg, kvseg, do, lse2, delta)
  return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Padding, layout and the custom VJP.


def _pad_seq(x, st: _Static, axis: int = 1, value=0):
  extra = st.padded_len - st.seq_len
  if extra == 0 or x is None:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def _pad_head_dim(x, head_dim_padded: int):
  extra = head_dim_padded - x.shape[-1]
  return x if extra == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def _segments(q_segment_ids, kv_segment_ids, st: _Static):
  if q_segment_ids is None:
    return None, None
  return (_pad_seq(q_segment_ids.astype(jnp.int32), st),
          _pad_seq(kv_segment_ids.astype(jnp.int32), st))


def _ranges(qseg, kvseg, block_q: int, block_k: int, st: _Static, batch: int):
  """block_ranges of the padded problem, broadcast to ``[batch, n_blocks]``."""
  r = block_ranges(qseg, kvseg, causal=st.causal, seq_len=st.seq_len, padded_len=st.padded_len,
                   block_q=block_q, block_k=block_k, window=st.window)
  return tuple(jnp.broadcast_to(x, (batch, x.shape[1])) for x in r)


def _forward(q, k, v, q_segment_ids, kv_segment_ids, st: _Static):
  """Unpadded ``[b, s, h, d]`` in -> (out ``[b, s, h, d]``, lse2 ``[b, h, padded_len]``)."""
  batch = q.shape[0]
  qseg, kvseg = _segments(q_segment_ids, kv_segment_ids, st)
  cfg = st.config
  kv_lo, kv_hi, _, _ = _ranges(qseg, kvseg, cfg.block_q, cfg.block_k, st, batch)
  qp, kp, vp = (_pad_seq(x, st) for x in (q, k, v))
  if st.backend == "tpu":
    out, lse2 = _tpu_forward(*(x.transpose(0, 2, 1, 3) for x in (qp, kp, vp)), qseg, kvseg,
                             kv_lo, kv_hi, st)
    out = out.transpose(0, 2, 1, 3)
  else:
    out, lse2 = _gpu_forward(qp, kp, vp, qseg, kvseg, kv_lo, kv_hi, st)
  return out[:, :st.seq_len], lse2


def _backward(q, k, v, q_segment_ids, kv_segment_ids, out, lse2, do, st: _Static):
  batch = q.shape[0]
  qseg, kvseg = _segments(q_segment_ids, kv_segment_ids, st)
  cfg = st.config
  ranges_dq = _ranges(qseg, kvseg, cfg.block_q_dq, cfg.block_k_dq, st, batch)[:2]
  ranges_dkv = _ranges(qseg, kvseg, cfg.block_q_dkv, cfg.block_k_dkv, st, batch)[2:]
  delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)  # [b, s, h]
  delta = _pad_seq(delta.transpose(0, 2, 1), st, axis=2)
  qp, kp, vp, dop = (_pad_seq(x, st) for x in (q, k, v, do))
  if st.backend == "tpu":
    t = lambda x: x.transpose(0, 2, 1, 3)
    dq, dk, dv = _tpu_backward(t(qp), t(kp), t(vp), qseg, kvseg, t(dop), lse2, delta,
                               ranges_dq, ranges_dkv, st)
    dq, dk, dv = t(dq), t(dk), t(dv)
  else:
    dq, dk, dv = _gpu_backward(qp, kp, vp, qseg, kvseg, dop, lse2, delta, ranges_dq, ranges_dkv, st)
  s = st.seq_len
  return dq[:, :s], dk[:, :s], dv[:, :s]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_segment_ids, kv_segment_ids, st: _Static):
  return _forward(q, k, v, q_segment_ids, kv_segment_ids, st)[0]


def _flash_fwd(q, k, v, q_segment_ids, kv_segment_ids, st: _Static):
  out, lse2 = _forward(q, k, v, q_segment_ids, kv_segment_ids, st)
  return out, (q, k, v, q_segment_ids, kv_segment_ids, out, lse2)


def _flash_bwd(st: _Static, res, do):
  q, k, v, q_segment_ids, kv_segment_ids, out, lse2 = res
  dq, dk, dv = _backward(q, k, v, q_segment_ids, kv_segment_ids, out, lse2, do, st)
  return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def target_platform() -> str:
  """The platform the kernel is compiled for: that of the mesh set with `jax.set_mesh` (e.g. TPU
  devices of a compile-only topology, `vlm_jax.topology`), else JAX's default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


def default_backend() -> str:
  """Kernel variant for the target platform: TPU -> "tpu" (Mosaic), else "gpu" (Triton; on
  CPU it runs in interpret mode)."""
  return "tpu" if target_platform() == "tpu" else "gpu"


def flash_attention(q, k, v, q_segment_ids=None, kv_segment_ids=None, *, causal: bool = True,
                    scale: float | None = None, block_q: int | None = None,
                    block_k: int | None = None, backend: str | None = None,
                    interpret: bool | pltpu.InterpretParams | None = None,
                    config: FlashConfig | None = None, window: int | None = None):
  """Memory-efficient exact attention for training / prefill (q_len == kv_len), differentiable.

  Args:
    q: ``[batch, seq, heads, head_dim]``.
    k, v: ``[batch, seq, kv_heads, head_dim]``; ``heads % kv_heads == 0`` (GQA, never repeated).
    q_segment_ids, kv_segment_ids: int ``[batch, seq]`` or None (both or neither). Key j is visible
      to query i iff the ids are equal (0 = padding by convention, compared like any other id).
    causal: additionally require ``j <= i``.
    window: sliding window (Mistral): additionally require ``j > i - window``; tiles entirely outside
      the window are skipped, so the work grows with ``seq * window`` instead of ``seq²``.
    scale: logit scale, default ``head_dim ** -0.5``.
    block_q, block_k: sequence tile sizes for all kernels (None -> per-backend defaults).
    backend: ``"gpu"`` (Pallas Triton) or ``"tpu"`` (Pallas Mosaic); None -> from ``target_platform()``.
    interpret: run the Pallas kernels in Pallas' interpret mode (e.g. on CPU); None -> True unless
      the target platform (``target_platform()``) matches ``backend``. A ``pltpu.InterpretParams`` runs the TPU variant in
      the (slower, stricter) TPU interpreter: NaN-filled scratch, out-of-bounds checks.
    config: full :class:`FlashConfig` (block_q / block_k still override its blocks).

  Returns:
    ``[batch, seq, heads, head_dim]`` in q's dtype; rows that see no key are zero.
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"flash_attention: q, k, v must be [batch, seq, heads, head_dim]; got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  b, s, h, d = q.shape
  if k.shape != v.shape or k.shape[0] != b or k.shape[1] != s or k.shape[3] != d:
    raise ValueError(f"flash_attention: k/v must be [batch={b}, seq={s}, kv_heads, head_dim={d}] "
                     f"(training/prefill path: kv_len == q_len); got k {k.shape}, v {v.shape}")
  if h % k.shape[2]:
    raise ValueError(f"flash_attention: heads={h} is not a multiple of kv_heads={k.shape[2]}")
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("flash_attention: pass both q_segment_ids and kv_segment_ids, or neither")
  for name, ids in (("q_segment_ids", q_segment_ids), ("kv_segment_ids", kv_segment_ids)):
    if ids is not None and tuple(ids.shape) != (b, s):
      raise ValueError(f"flash_attention: {name} must be [batch={b}, seq={s}]; got {ids.shape}")
  backend = default_backend() if backend is None else backend
  if backend not in BACKENDS:
    raise ValueError(f"flash_attention: backend must be one of {BACKENDS}; got {backend!r}")
  if interpret is None:
    interpret = target_platform() != backend
  elif not isinstance(interpret, pltpu.InterpretParams):
    interpret = bool(interpret)
  scale = float(d ** -0.5 if scale is None else scale)
  if window is not None and (not isinstance(window, int) or window < 1):
    raise ValueError(f"flash_attention: window must be None or an int >= 1; got {window!r}")

  cfg = (config or FlashConfig.default(backend, d)).with_blocks(block_q, block_k)
  cfg = cfg.fit(s, _TPU_LANES if backend == "tpu" else 16)
  if backend == "tpu":
    bad = [x for x in (cfg.block_k, cfg.block_k_dq, cfg.block_k_dkv) if x % _TPU_LANES] + \
          [x for x in (cfg.block_q, cfg.block_q_dq, cfg.block_q_dkv) if x % _TPU_SUBLANES]
    if bad:
      raise ValueError(f"flash_attention: TPU needs block_k % 128 == 0 and block_q % 8 == 0; "
                       f"got {cfg}")
  multiple = math.lcm(*cfg.blocks)
  padded_len = -(-s // multiple) * multiple
  head_dim = d
  if backend == "gpu":  # Triton tiles need power-of-two sizes: zero-pad head_dim
    d_pad = pl.next_power_of_2(d)
    q, k, v = (_pad_head_dim(x, d_pad) for x in (q, k, v))
  st = _Static(causal=bool(causal), scale=scale, backend=backend, interpret=interpret, config=cfg,
               seq_len=s, padded_len=padded_len, head_dim=head_dim, window=window)
  out = _flash(q, k, v, q_segment_ids, kv_segment_ids, st)
  return out[..., :d]
