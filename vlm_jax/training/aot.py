"""Compile-and-fit check: compile the real train step for a TPU slice on a machine without one.

    JAX_PLATFORMS=cpu python -m vlm_jax.train --config configs/llava_textbook_7b.py --compile_topology v5p-8

The train state (params, optimizer moments) and one global batch are described as
`jax.ShapeDtypeStruct`s with their real shapes, dtypes and shardings on a mesh of the slice's
compile-only TPU devices (`vlm_jax.topology`); the same jitted train step that `vlm_jax.train` runs
(Pallas kernels through Mosaic) is lowered and compiled by XLA:TPU, and the compiled program's
`memory_analysis()` gives what each chip must hold. These are compile-time figures: the program's
buffers per chip, not run-time measurements (runtime and fragmentation add a little).

Per chip = the larger of XLA's peak (`peak_memory_in_bytes`) and arguments + outputs - outputs aliased to
(donated) arguments + temporaries + code, all in HBM: host-memory temporaries (`remat_policy="offload"`'s
saved layer inputs), which `temp_size_in_bytes` also counts, are reported apart (`host_gib`)
(`vlm_jax.training.memory.device_bytes`). When XLA:TPU rejects the program for lack of HBM it reports only
the total; arguments are then counted from the shards and temporaries are the rest (outputs, aliased,
code and host show as nan).
FLOPs are the analytic model count (`vlm_jax.training.flops`): `compiled.cost_analysis()` counts a
scanned layer body once.
"""
from __future__ import annotations

import math
import re
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from vlm_jax.data.packing import row_spec
from vlm_jax.models.config import LlavaConfig
from vlm_jax.models.init import model_for
from vlm_jax.sharding import DEFAULT_RULES, batch_sharding, make_mesh
from vlm_jax.topology import DEVICE_KIND, Slice, compile_only_devices
from vlm_jax.training.distributed import batch_divisor
from vlm_jax.training.flops import train_step_flops
from vlm_jax.training.memory import device_bytes
from vlm_jax.training.optimizer import make_optimizer, make_schedule
from vlm_jax.training.config import batch_images
from vlm_jax.training.params import parse_module_list
from vlm_jax.training.state import abstract_train_state
from vlm_jax.training.step import jit_train_step, train_step_for

GIB = 2.0 ** 30


def abstract_batch(config: ml_collections.ConfigDict, model_config, *, sharding) -> dict[str, jax.ShapeDtypeStruct]:
    """A global train batch of `config` (the loader's row layout for the model's family, `[global_batch_size,
    ...]`) as sharded ShapeDtypeStructs."""
    image_size, pixel_mask = batch_images(config, model_config)
    spec = row_spec(config.data.seq_len, config.data.max_images_per_row, image_size, pixel_mask)
    batch = config.global_batch_size
    return {k: jax.ShapeDtypeStruct((batch,) + shape, dtype, sharding=sharding) for k, (shape, dtype) in spec.items()}


def memory_figures(compiled) -> dict[str, float]:
    """GiB per device of a compiled program (`vlm_jax.training.memory.device_bytes`): arguments, outputs,
    aliased, temporaries (in HBM), code, host (host-memory temporaries, not in HBM), peak (XLA's), and
    per_chip (what must fit the chip's HBM)."""
    figures = {f"{k}_gib" if k != "total" else "per_chip_gib": v / GIB
               for k, v in device_bytes(compiled.memory_analysis()).items()}
    return figures


# XLA:TPU's compile-time out-of-HBM messages, each with the GiB the program needed per chip in group 1: the
# temporaries check, and the allocator's "Ran out of memory in memory space hbm. Used 31.27G of 31.25G hbm."
_OUT_OF_HBM = (re.compile(r"required for HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)"),
               re.compile(r"Ran out of memory in memory space hbm\. Used ([\d.]+)G of ([\d.]+)G hbm"))


def hbm_refusal_gib(message: str) -> float | None:
    """GiB per chip that XLA:TPU said a program needs when its compile error `message` is a refusal for lack
    of HBM (RESOURCE_EXHAUSTED, either message form in `_OUT_OF_HBM`); None for any other error."""
    if "RESOURCE_EXHAUSTED" not in message:
        return None
    for pattern in _OUT_OF_HBM:
        match = pattern.search(message)
        if match:
            return float(match.group(1))
    return None


def per_device_gib(tree: Any) -> float:
    """GiB one device holds of a tree of sharded `ShapeDtypeStruct`s (the largest shard of each leaf)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total / GIB


def compile_or_measure(lowered, arguments: Any) -> tuple[Any, dict[str, float]]:
    """`(compiled, memory_figures)`; when XLA:TPU refuses the program for lack of HBM (RESOURCE_EXHAUSTED)
    `(None, figures)` with per_chip_gib = the total it reported and arguments_gib computed from
    `arguments`' shards (temporaries = the rest)."""
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        total = hbm_refusal_gib(str(e))
        if total is None:
            raise
        args = per_device_gib(arguments)
        return None, {"arguments_gib": args, "outputs_gib": float("nan"), "aliased_gib": float("nan"),
                      "temporaries_gib": max(total - args, 0.0), "code_gib": float("nan"), "host_gib": float("nan"),
                      "peak_gib": total, "per_chip_gib": total}
    return compiled, memory_figures(compiled)


def fit_verdict(figures: dict[str, float], tpu_slice: Slice, *, rows_per_chip: float, remat_policy: str,
                attention_impl: str) -> str:
    """"" when the program fits one chip's HBM, else a one-line reason with what would make it fit."""
    hbm = tpu_slice.hbm_gib
    need = figures["per_chip_gib"]
    if need <= hbm:
        return ""
    head = f"needs {need:.1f} GiB per chip > {hbm:.2f} GiB usable HBM of {DEVICE_KIND[tpu_slice.generation]}"
    if figures["arguments_gib"] >= hbm:
        return (f"{head}: the state alone (params + optimizer moments) is {figures['arguments_gib']:.1f} GiB "
                f"per chip; shard it over more chips (a larger slice, mesh.fsdp) or freeze more modules")
    advice = [f"fewer rows per chip (now {rows_per_chip:g}: lower global_batch_size or raise grad_accum_steps)",
              "more chips"]
    if remat_policy not in ("full", "offload"):  # "offload" is full remat with the layer inputs on the host
        advice.insert(0, "remat_policy=full")
    if attention_impl != "pallas":
        advice.insert(0, "attention_impl=pallas (no [seq, seq] scores in memory)")
    return (f"{head}: activations/temporaries take {figures['temporaries_gib']:.1f} GiB next to "
            f"{figures['arguments_gib']:.1f} GiB of state; try " + ", or ".join(advice))


def batch_shards(config: ml_collections.ConfigDict, tpu_slice: Slice) -> int:
    """Devices along the batch axes (data x fsdp) of `config.mesh` on `tpu_slice` (no devices needed)."""
    sizes = {k: config.mesh[k] for k in ("data", "fsdp", "tensor")}
    known = math.prod(v for v in sizes.values() if v != -1)
    sizes = {k: (tpu_slice.chips // known if v == -1 else v) for k, v in sizes.items()}
    return sizes["data"] * sizes["fsdp"]


def compile_train_step(config: ml_collections.ConfigDict, model_config: LlavaConfig,
                       tpu_slice: Slice) -> dict[str, Any]:
    """Lowers and compiles `vlm_jax.train`'s step for `tpu_slice`; returns the report (see `report_row`)."""
    devices = compile_only_devices(tpu_slice)
    mesh = make_mesh(**config.mesh, devices=devices)
    divisor = batch_divisor(mesh) * config.grad_accum_steps
    if config.global_batch_size % divisor:
        raise ValueError(f"global_batch_size {config.global_batch_size} must be a multiple of data*fsdp "
                         f"({batch_divisor(mesh)}) x grad_accum_steps ({config.grad_accum_steps}) on {tpu_slice.name}")
    frozen = parse_module_list(config.frozen)
    model = model_for(model_config)
    schedule_steps = config.schedule_steps if config.schedule_steps > 0 else max(config.num_train_steps, 1)
    schedule = make_schedule(config.optim, schedule_steps)
    tx = make_optimizer(config.optim, schedule)
    start = time.perf_counter()
    state, shardings = abstract_train_state(model_config, frozen, tx, mesh, DEFAULT_RULES)
    batch = abstract_batch(config, model_config, sharding=batch_sharding(mesh))
    step = jit_train_step(train_step_for(config, model, tx, schedule, frozen=frozen, batch_shards=batch_divisor(mesh)),
                          shardings, batch_sharding(mesh))
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):  # as vlm_jax.train runs it
        compiled, figures = compile_or_measure(step.lower(state, batch), (state, batch))
    compile_s = time.perf_counter() - start
    # Pallas kernels compiled through Mosaic appear as tpu_custom_call ops (0 with attention_impl="xla").
    mosaic_calls = compiled.as_text().count("custom_call_target=\"tpu_custom_call\"") if compiled else None
    rows_per_chip = config.global_batch_size / config.grad_accum_steps / batch_divisor(mesh)
    flops = train_step_flops(model_config, batch=config.global_batch_size, seq_len=config.data.seq_len,
                             image_slots=config.data.max_images_per_row, frozen=frozen,
                             image_size=batch_images(config, model_config)[0])
    reason = fit_verdict(figures, tpu_slice, rows_per_chip=rows_per_chip, remat_policy=config.remat_policy,
                         attention_impl=config.attention_impl)
    return {"program": "train_step", "topology": tpu_slice.name, "libtpu_topology": tpu_slice.topology_name,
            "num_slices": tpu_slice.num_slices, "chips": tpu_slice.chips, "mesh": dict(mesh.shape),
            "rows_per_chip": rows_per_chip, "memory_options": "as written", "fits": not reason, "reason": reason,
            "hbm_gib": tpu_slice.hbm_gib,
            **figures, "tokens_per_step": config.global_batch_size * config.data.seq_len,
            "model_tflops_per_step": flops / 1e12, "mosaic_calls": mosaic_calls, "compile_s": compile_s}


def compile_generation(model_config: LlavaConfig, tpu_slice: Slice, *, batch_size: int, prompt_len: int,
                       max_images: int, max_new_tokens: int) -> dict[str, Any]:
    """Lowers and compiles the evaluation's generation program (`vlm_jax.inference.generation.generate` with a mesh:
    data-parallel prefill + KV-cache decode, params replicated on every chip) for `tpu_slice`, for one
    batch of `batch_size` rows (rounded up to a multiple of the chips) of prompts left-padded to
    `bucket_length(prompt_len)` with `max_images` image slots; returns the report (see `format_table`)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from vlm_jax.inference.generation import _generate_data_parallel, bucket_length
    from vlm_jax.models.init import abstract_params

    devices = compile_only_devices(tpu_slice)
    mesh = Mesh(np.asarray(devices), ("data",))
    rows = -(-batch_size // mesh.size) * mesh.size
    length = bucket_length(prompt_len)
    row_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    replicated = NamedSharding(mesh, PartitionSpec())
    params = nn.meta.unbox(abstract_params(model_config))["params"]
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), params)
    size = model_config.vision_config.image_size

    def arg(shape, dtype, sharding=row_sharding):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    args = (arg((rows, length), np.int32), arg((rows, length), np.int32),
            arg((rows, max_images, size, size, 3), np.float32), arg((rows, max_images), np.bool_),
            arg((2,), np.uint32, replicated), arg((), np.float32, replicated), arg((), np.float32, replicated),
            arg((), np.int32, replicated), arg((), np.int32, replicated))
    start = time.perf_counter()
    lowered = _generate_data_parallel.lower(model_for(model_config), params, *args, max_new_tokens=max_new_tokens,
                                            mesh=mesh)
    _, figures = compile_or_measure(lowered, (params, args))
    compile_s = time.perf_counter() - start
    reason = ""
    if figures["per_chip_gib"] > tpu_slice.hbm_gib:
        reason = (f"needs {figures['per_chip_gib']:.1f} GiB per chip > {tpu_slice.hbm_gib:.2f} GiB usable HBM of "
                  f"{DEVICE_KIND[tpu_slice.generation]} (params replicated: {figures['arguments_gib']:.1f} GiB; "
                  f"KV cache and activations: {figures['temporaries_gib']:.1f} GiB); lower batch_size "
                  f"(now {rows // mesh.size} rows per chip) or max_new_tokens")
    return {"program": "generation", "topology": tpu_slice.name, "libtpu_topology": tpu_slice.topology_name,
            "num_slices": tpu_slice.num_slices, "chips": tpu_slice.chips, "mesh": dict(mesh.shape),
            "rows_per_chip": rows / mesh.size, "prompt_len": length, "max_new_tokens": max_new_tokens,
            "fits": not reason, "reason": reason, "hbm_gib": tpu_slice.hbm_gib, **figures,
            "tokens_per_step": rows * (length + max_new_tokens), "model_tflops_per_step": None,
            "compile_s": compile_s}


REPORT_KEYS = ("topology", "chips", "fits", "per_chip_gib", "hbm_gib", "arguments_gib", "temporaries_gib", "host_gib",
               "rows_per_chip",
               "memory_options",
               "tokens_per_step", "model_tflops_per_step", "compile_s")


def format_table(report: dict[str, Any]) -> str:
    """A human-readable table of a `compile_*` report."""
    rows = [("program", report["program"]), ("topology", f"{report['topology']} ({report['libtpu_topology']}"
                                                         + (f" x {report['num_slices']} slices" if report["num_slices"] > 1 else "") + ")"),
            ("chips", report["chips"]), ("mesh", report["mesh"])]
    if "rows_per_chip" in report:
        rows.append(("rows per chip", f"{report['rows_per_chip']:g}"))
    if "memory_options" in report:
        rows.append(("memory options (memory=auto)", report["memory_options"]))
    for key in ("arguments_gib", "outputs_gib", "aliased_gib", "temporaries_gib", "code_gib", "peak_gib",
                "per_chip_gib", "host_gib"):
        if key in report:
            rows.append((key.replace("_gib", " (GiB/chip)").replace("host", "host memory").replace("peak", "XLA peak"),
                         f"{report[key]:.2f}"))
    rows += [("usable HBM (GiB/chip)", f"{report['hbm_gib']:.2f}"), ("fits", "yes" if report["fits"] else "NO"),
             ("tokens per step", report["tokens_per_step"])]
    if report.get("model_tflops_per_step") is not None:
        rows.append(("model TFLOP per step", f"{report['model_tflops_per_step']:.1f}"))
    if report.get("mosaic_calls") is not None:
        rows.append(("Pallas (Mosaic) kernel calls", report["mosaic_calls"]))
    rows.append(("compile s", f"{report['compile_s']:.1f}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def summary_json(report: dict[str, Any]) -> dict[str, Any]:
    """The last-line JSON object: `REPORT_KEYS` (GiB rounded to 0.01)."""
    return {k: round(report[k], 3) if isinstance(report[k], float) else report[k] for k in REPORT_KEYS if k in report}
