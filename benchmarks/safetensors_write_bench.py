"""Memory of writing one safetensors shard: vlm_jax's streaming writer (`convert.safetensors_io.write_sharded`)
vs the `safetensors` package's `safetensors.numpy.save_file`.

    python benchmarks/safetensors_write_bench.py [--shard-mb 1024] [--tensors 8]

Each writer runs in a fresh process that first builds the shard's tensors (float32, the same for both), then
writes them; the figure is the peak RSS above the tensors themselves (the writer's own extra memory), as a
multiple of the shard size. Both files are checked to hold the same tensors. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WRITERS = ("vlm_jax", "safetensors")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def child(writer: str, out: str, shard_mb: int, tensors: int) -> None:
    import numpy as np

    n = shard_mb * (1 << 20) // 4 // tensors
    arrays = [(f"layer.{i}.weight", np.full(n, i, np.float32)) for i in range(tensors)]
    before = _rss_mib()
    start = time.perf_counter()
    if writer == "vlm_jax":
        from vlm_jax.convert.safetensors_io import write_sharded

        write_sharded(iter(arrays), out, max_shard_bytes=1 << 62)
    else:
        from safetensors.numpy import save_file

        os.makedirs(out, exist_ok=True)
        save_file(dict(arrays), os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"extra_mib": peak - before, "tensors_mib": before, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-mb", type=int, default=1024)
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))
    from safetensors.numpy import load_file

    results = {}
    with tempfile.TemporaryDirectory(prefix="stbench") as tmp:
        for writer in WRITERS:
            out = os.path.join(tmp, writer)
            proc = subprocess.run([sys.executable, __file__, "--child", writer, out, str(args.shard_mb),
                                   str(args.tensors)], capture_output=True, text=True, check=True,
                                  env={**os.environ, "PYTHONPATH": ROOT})
            results[writer] = json.loads(proc.stdout.strip().splitlines()[-1])
        a, b = (load_file(os.path.join(tmp, w, "model.safetensors")) for w in WRITERS)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    print(f"one {args.shard_mb} MiB shard of {args.tensors} float32 tensors; peak RSS above the tensors")
    print("| writer | extra MiB | x shard | seconds |")
    print("|---|--:|--:|--:|")
    for writer, r in results.items():
        print(f"| {writer} | {r['extra_mib']:.0f} | {r['extra_mib'] / args.shard_mb:.2f} | {r['seconds']:.2f} |")
    print(json.dumps({"shard_mib": args.shard_mb, **{w: {"extra_mib": round(r["extra_mib"]),
                                                        "x_shard": round(r["extra_mib"] / args.shard_mb, 3),
                                                        "seconds": round(r["seconds"], 2)}
                                                    for w, r in results.items()}}))


if __name__ == "__main__":
    main()
