"""Which TPU slices a train config fits, and with how many packed rows per chip: compile-time figures.

    JAX_PLATFORMS=cpu python benchmarks/compile_fit.py --config configs/llava_textbook_7b.py \
        --topologies v4-8,v5p-8,v5e-16,v5e-32,v6e-8

For each slice it compiles the config's train step (`vlm_jax.training.aot.compile_train_step`, libtpu's
compile-only devices) with 1 row per chip, then doubles the rows per chip while it fits and bisects
between the last fitting and the first failing count (global_batch_size = rows x data*fsdp,
grad_accum_steps = 1). Prints a table; the last line is one JSON object {slice: figures}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from vlm_jax import config_file  # noqa: E402
from vlm_jax.topology import parse_slice  # noqa: E402
from vlm_jax.training import aot  # noqa: E402
from vlm_jax.training.config import model_config  # noqa: E402


def compile_rows(config, tpu_slice, rows: int) -> dict:
    c = config.copy_and_resolve_references()
    batch_devices = tpu_slice.chips // (c.mesh.tensor if c.mesh.tensor > 0 else 1)
    c.global_batch_size = rows * batch_devices
    c.grad_accum_steps = 1
    report = aot.compile_train_step(c, model_config(c), tpu_slice)
    print(f"  {tpu_slice.name} rows/chip {rows}: {report['per_chip_gib']:.2f} GiB/chip "
          f"({'fits' if report['fits'] else 'does not fit'}; compile {report['compile_s']:.0f} s)", flush=True)
    return report


def most_rows(config, tpu_slice, max_rows: int) -> tuple[int, dict, dict]:
    """(most rows per chip that fit (0: none), the 1-row report, the report at the most rows)."""
    first = compile_rows(config, tpu_slice, 1)
    if not first["fits"]:
        return 0, first, first
    good, good_report, bad = 1, first, None
    while bad is None and good * 2 <= max_rows:
        report = compile_rows(config, tpu_slice, good * 2)
        if report["fits"]:
            good, good_report = good * 2, report
        else:
            bad = good * 2
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        report = compile_rows(config, tpu_slice, mid)
        if report["fits"]:
            good, good_report = mid, report
        else:
            bad = mid
    return good, first, good_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/llava_textbook_7b.py")
    parser.add_argument("--topologies", default="v4-8,v5p-8,v5e-16,v5e-32,v6e-8")
    parser.add_argument("--max_rows", type=int, default=16, help="stop doubling here")
    args = parser.parse_args(argv)
    config = config_file.load(args.config)
    results = {}
    for name in args.topologies.split(","):
        tpu_slice = parse_slice(name)
        rows, first, best = most_rows(config, tpu_slice, args.max_rows)
        results[name] = {"chips": tpu_slice.chips, "hbm_gib": tpu_slice.hbm_gib, "fits_1_row": first["fits"],
                         "per_chip_gib_1_row": round(first["per_chip_gib"], 2),
                         "arguments_gib": round(first["arguments_gib"], 2),
                         "temporaries_gib_1_row": round(first["temporaries_gib"], 2),
                         "most_rows_per_chip": rows, "per_chip_gib_at_most": round(best["per_chip_gib"], 2),
                         "compile_s_1_row": round(first["compile_s"], 1)}
    print(f"\n{args.config}: compile-time memory per chip (GiB), one {config.data.seq_len}-token row per chip")
    print("| slice | chips | usable HBM | fits 1 row | per chip, 1 row | state | temporaries | most rows/chip |")
    print("|---|--:|--:|---|--:|--:|--:|--:|")
    for name, r in results.items():
        print(f"| {name} | {r['chips']} | {r['hbm_gib']:.2f} | {'yes' if r['fits_1_row'] else 'no'} | "
              f"{r['per_chip_gib_1_row']:.1f} | {r['arguments_gib']:.1f} | {r['temporaries_gib_1_row']:.1f} | "
              f"{r['most_rows_per_chip']} |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
