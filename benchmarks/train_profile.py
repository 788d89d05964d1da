"""Where the vlm_jax train step's time goes: a `jax.profiler` trace of `--steps` steps of a train_bench config,
XLA op times summed per step, each op named by the JAX operation it came from (compiled HLO metadata).

    python benchmarks/train_profile.py [--size small|large] [--top 25] [--out DIR]

Prints the top ops (ms per step, share of the step, output shape, source operation), the analytic FLOPs
per step against the measured step time, and, last, one JSON object of the figures.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

_HLO_LINE = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = (\S+) .*?op_name="([^"]*)"')


def analytic_flops(config, batch: int, seq: int) -> float:
    """Matmul FLOPs of one step: 6 x trained text-side parameters (layers + head) per token, attention
    scores and values (forward 4·b·h·s²·d per layer, x3 with backward, causal half not skipped) and the
    frozen tower's forward (2 x its layer parameters per patch token)."""
    t, v = config.text_config, config.vision_config
    per_layer = (t.hidden_size * t.head_dim * (t.num_attention_heads * 2 + t.num_key_value_heads * 2)
                 + 3 * t.hidden_size * t.intermediate_size)
    dense = t.num_hidden_layers * per_layer + t.hidden_size * t.vocab_size
    attention = 3 * t.num_hidden_layers * 4 * batch * t.num_attention_heads * seq * seq * t.head_dim
    patches = (v.image_size // v.patch_size) ** 2 + 1
    tower = 2 * batch * patches * v.num_hidden_layers * 12 * v.hidden_size ** 2
    return 6 * batch * seq * dense + attention + tower


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(train_bench.CONFIGS), default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=None, help="trace folder (default: a temporary one)")
    args = parser.parse_args(argv)

    config = train_bench.CONFIGS[args.size]()
    batch = train_bench.make_batch(config, args.batch, args.seq)
    step, compiled_text = train_bench.jax_step_fn(config, batch, with_hlo=True)
    step(), step()  # compile, warm up
    names = {}
    for line in compiled_text.splitlines():
        match = _HLO_LINE.match(line)
        if match:
            names.setdefault(match.group(1), (match.group(2), match.group(3)))
    out = args.out or tempfile.mkdtemp(prefix="train_profile_")
    start = time.perf_counter()
    with jax.profiler.trace(out, create_perfetto_trace=True):
        for _ in range(args.steps):
            step()
    wall = (time.perf_counter() - start) / args.steps
    trace = json.load(gzip.open(glob.glob(f"{out}/**/*perfetto_trace.json.gz", recursive=True)[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_op = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in names:
            per_op[event["name"]] += event["dur"] / 1e3 / args.steps
    flops = analytic_flops(config, args.batch, args.seq)
    print(f"{args.size} config, batch {args.batch} x {args.seq}; step {wall * 1e3:,.0f} ms under the profiler "
          f"({args.steps} steps); XLA ops account for {sum(per_op.values()):,.0f} ms/step")
    print(f"analytic {flops / 1e9:,.0f} GFLOP/step -> {flops / wall / 1e9:,.1f} GFLOP/s achieved")
    print("| op | ms/step | share | shape | from |")
    print("|---|--:|--:|---|---|")
    rows = []
    for name, ms in per_op.most_common(args.top):
        shape, source = names[name]
        source = source.replace("jit(train_step)/", "").replace("while/body/closed_call/", "")
        rows.append({"op": name, "ms_per_step": ms, "share": ms / (wall * 1e3), "shape": shape, "from": source})
        print(f"| {name} | {ms:,.1f} | {ms / wall / 10:.1f} % | {shape} | {source[:90]} |")
    figures = {"size": args.size, "step_ms": wall * 1e3, "analytic_gflop": flops / 1e9,
               "achieved_gflops": flops / wall / 1e9, "top_ops": rows}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
