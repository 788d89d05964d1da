"""Memory of writing one safetensors shard: the hand-written streaming writer vlm_jax used to have (kept here,
`streaming_write`) vs the `safetensors` package's `safetensors.numpy.save_file`, which
`convert.safetensors_io.write_sharded` uses since this measurement showed it needs no more memory.

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

WRITERS = ("hand-written", "safetensors")


def streaming_write(path: str, tensors: list, metadata: dict) -> None:
    """The former vlm_jax writer: header, then each array's bytes straight from its buffer."""
    import struct

    import ml_dtypes
    import numpy as np

    names = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype(ml_dtypes.bfloat16): "BF16"}
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, arr in tensors:
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, arr in tensors:
            f.write(memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def child(writer: str, out: str, shard_mb: int, tensors: int) -> None:
    import numpy as np
    from safetensors.numpy import save_file


    n = shard_mb * (1 << 20) // 4 // tensors
    arrays = [(f"layer.{i}.weight", np.full(n, i, np.float32)) for i in range(tensors)]
    before = _rss_mib()
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    if writer == "hand-written":
        streaming_write(os.path.join(out, "model.safetensors"), arrays, {"format": "pt"})
    else:
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
