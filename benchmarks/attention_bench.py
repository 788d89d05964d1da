"""Causal attention forward / forward+backward timings: XLA, cuDNN, JAX's Pallas kernels and ours.

    python benchmarks/attention_bench.py                 # GPU/TPU: seq 1k..32k, 32 heads, d=128, bf16
    python benchmarks/attention_bench.py --kv-heads 8    # GQA variant
    python benchmarks/attention_bench.py --cpu-smoke     # CPU: tiny sizes, Pallas interpret mode (CI)

Prints one row per (sequence length, implementation): median milliseconds, TFLOP/s and speed
relative to XLA. Causal FLOPs: forward 0.5 * 4 * b * h * s^2 * d, backward 2.5x forward. An
implementation that is unsupported on this backend or runs out of memory prints "n/a" with the
reason. JAX's reference kernels have no GQA, so for them k/v are repeated to all heads (marked *).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vlm_jax.kernels.flash_attention import flash_attention  # noqa: E402
from vlm_jax.models.attention import attention  # noqa: E402


def repeat_kv(q, k, v):
  group = q.shape[2] // k.shape[2]
  return jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)


def implementations(platform: str, interpret: bool, block_q: int | None, block_k: int | None):
  """name -> (attention fn(q, k, v, scale) or a reason string it cannot run here)."""
  impls = {"xla": lambda q, k, v, scale: attention(q, k, v, causal=True, scale=scale, implementation="xla")}
  if platform == "gpu":
    impls["cudnn"] = lambda q, k, v, scale: jax.nn.dot_product_attention(
        q, k, v, scale=scale, is_causal=True, implementation="cudnn")
  else:
    impls["cudnn"] = "needs an NVIDIA GPU"
  if platform == "gpu":
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    def jax_pallas_gpu(q, k, v, scale):
      k, v = repeat_kv(q, k, v)
      return gpu_attention.mha(q, k, v, None, sm_scale=scale, causal=True)
    impls["jax-pallas-gpu*"] = jax_pallas_gpu
  else:
    impls["jax-pallas-gpu*"] = "needs a GPU"
  if platform == "tpu":
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_attention

    def jax_pallas_tpu(q, k, v, scale):
      k, v = repeat_kv(q, k, v)
      t = lambda x: x.transpose(0, 2, 1, 3)
      return t(tpu_attention.flash_attention(t(q), t(k), t(v), causal=True, sm_scale=scale))
    impls["jax-pallas-tpu*"] = jax_pallas_tpu
  else:
    impls["jax-pallas-tpu*"] = "needs a TPU"
  impls["ours"] = lambda q, k, v, scale: flash_attention(
      q, k, v, causal=True, scale=scale, block_q=block_q, block_k=block_k, interpret=interpret or None)
  return impls


def median_ms(fn, args, warmup: int, iters: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def time_impl(attend, q, k, v, scale, warmup, iters):
  """(forward ms, forward+backward ms) of one implementation; raises on failure."""
  fwd = jax.jit(lambda q, k, v: attend(q, k, v, scale))
  ct = jnp.ones(q.shape, q.dtype)

  def loss(q, k, v):
    return jnp.sum(attend(q, k, v, scale).astype(jnp.float32) * ct)
  fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  return median_ms(fwd, (q, k, v), warmup, iters), median_ms(fwd_bwd, (q, k, v), warmup, iters)


def short_reason(err: Exception) -> str:
  text = f"{type(err).__name__}: {err}"
  if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
    return "OOM"
  return " ".join(text.split())[:90]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu-smoke", action="store_true",
                      help="tiny sizes in Pallas interpret mode, so the script runs (and is tested) on CPU")
  parser.add_argument("--seqs", type=int, nargs="*", default=None)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=None)
  parser.add_argument("--kv-heads", type=int, default=None)
  parser.add_argument("--head-dim", type=int, default=None)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--block-q", type=int, default=None, help="our kernel's query tile (default: per backend)")
  parser.add_argument("--block-k", type=int, default=None, help="our kernel's key tile (default: per backend)")
  parser.add_argument("--warmup", type=int, default=None)
  parser.add_argument("--iters", type=int, default=None)
  args = parser.parse_args(argv)

  platform = jax.default_backend()
  smoke = args.cpu_smoke
  interpret = smoke or platform == "cpu"
  seqs = args.seqs or ([48, 64] if smoke else [1024, 4096, 16384, 32768])
  heads = args.heads or (2 if smoke else 32)
  kv_heads = args.kv_heads or heads
  head_dim = args.head_dim or (32 if smoke else 128)
  warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
  iters = args.iters if args.iters is not None else (2 if smoke else 10)
  dtype = jnp.dtype(args.dtype)
  print(f"device: {jax.devices()[0].device_kind} ({platform}); batch {args.batch}, heads {heads}, "
        f"kv_heads {kv_heads}, head_dim {head_dim}, {dtype.name}, causal"
        f"{'; Pallas interpret mode (timings are not kernel performance)' if interpret else ''}")
  header = (f"{'seq':>6}  {'impl':<16} {'fwd ms':>9} {'TFLOP/s':>8} {'vs xla':>7}   "
            f"{'fwd+bwd ms':>10} {'TFLOP/s':>8} {'vs xla':>7}")
  print(header)
  print("-" * len(header))
  impls = implementations(platform, interpret, args.block_q, args.block_k)
  figures = {"device": jax.devices()[0].device_kind, "platform": platform, "interpret": interpret,
             "dtype": dtype.name, "batch": args.batch, "heads": heads, "kv_heads": kv_heads,
             "head_dim": head_dim, "rows": []}
  for seq in seqs:
    key = jax.random.PRNGKey(seq)
    kq, kk, kv = jax.random.split(key, 3)
    q = jax.random.normal(kq, (args.batch, seq, heads, head_dim), dtype)
    k = jax.random.normal(kk, (args.batch, seq, kv_heads, head_dim), dtype)
    v = jax.random.normal(kv, (args.batch, seq, kv_heads, head_dim), dtype)
    scale = head_dim ** -0.5
    fwd_flops = 0.5 * 4 * args.batch * heads * seq * seq * head_dim
    baseline = None
    for name, attend in impls.items():
      if isinstance(attend, str):
        print(f"{seq:>6}  {name:<16} n/a ({attend})")
        figures["rows"].append({"seq": seq, "impl": name, "unavailable": attend})
        continue
      try:
        fwd_ms, both_ms = time_impl(attend, q, k, v, scale, warmup, iters)
      except Exception as err:  # noqa: BLE001 - report and continue with the next implementation
        print(f"{seq:>6}  {name:<16} n/a ({short_reason(err)})")
        figures["rows"].append({"seq": seq, "impl": name, "unavailable": short_reason(err)})
        continue
      if name == "xla":
        baseline = (fwd_ms, both_ms)
      ratio = lambda ms, i: f"{baseline[i] / ms:6.2f}x" if baseline else "    n/a"
      print(f"{seq:>6}  {name:<16} {fwd_ms:9.3f} {fwd_flops / fwd_ms / 1e9:8.2f} {ratio(fwd_ms, 0)}   "
            f"{both_ms:10.3f} {3.5 * fwd_flops / both_ms / 1e9:8.2f} {ratio(both_ms, 1)}")
      figures["rows"].append({
          "seq": seq, "impl": name, "fwd_ms": fwd_ms, "fwd_tflops": fwd_flops / fwd_ms / 1e9,
          "fwd_bwd_ms": both_ms, "fwd_bwd_tflops": 3.5 * fwd_flops / both_ms / 1e9,
          "fwd_vs_xla": baseline[0] / fwd_ms if baseline else None,
          "fwd_bwd_vs_xla": baseline[1] / both_ms if baseline else None})
  print(json.dumps(figures))


if __name__ == "__main__":
  main()
