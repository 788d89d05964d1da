"""Which memory-saving options a train step uses: the fastest rung of a ladder whose compiled step fits HBM.

Every rung gives the same loss and gradients as the config as written (tests/test_train_memory.py,
tests/test_train_loss_norm.py); each adds one option to the previous rung, cheapest in speed first:

0. the config as written (e.g. the 7B config: full remat, LM head + cross-entropy in 4096-position chunks);
1. `grad_accum_steps` raised so each device holds one row per microbatch (same FLOPs; only with
   `loss_normalization="global"`, where accumulation is exact);
2. `compute_dtype_grads=True`: the decoder layers' gradients kept in the compute dtype (bf16) until the
   update (the same values: each layer weight's gradient is a bf16 value before it is upcast; with
   `mlp_chunk` the chunks' float32 sum is rounded to bf16 once); only when it differs from the params' dtype
   and without accumulation (`make_train_step` does not apply it there);
3. `remat_policy="offload"`: each layer's saved input (one `[seq, hidden]` per layer and row, 8 GiB for a
   32k row of a 7B model) lives in host memory, copied back for the backward pass;
4. `mlp_chunk=MLP_CHUNK`: the MLP runs that many positions at a time (it recomputes the MLP forward once more);
5. with accumulation (and a compute dtype other than the params'): `compute_dtype_grads` inside it
   (`compute_dtype_grads_accum`: each microbatch's layer gradients in bf16, the same sums), after the
   rungs above because on v6e-8 it compiled to more memory than without it (README "Memory");
6. `optim.moment_dtype="bfloat16"`: Adam moments stored in bfloat16 (updates still computed in float32;
   the only rung that changes numerics, by the moments' rounding).

`config.memory = "auto"` takes the first rung whose compiled step fits the device's HBM (the train loop:
`compiled_bytes`, the HBM the compiled step needs, against the device's `bytes_limit`; `--compile_topology`:
against the slice's usable HBM); "fixed" uses the config as written. Devices that report no memory limit (CPU) use the
config as written.
"""
from __future__ import annotations

from typing import Any, Callable

import ml_collections

MEMORY_MODES = ("auto", "fixed")
MLP_CHUNK = 4096


def rungs(config: ml_collections.ConfigDict, batch_shards: int) -> list[tuple[str, ml_collections.ConfigDict]]:
    """[(description, config)] of the ladder's rungs for `config` on `batch_shards` devices along the batch
    axes, cumulative, skipping rungs that change nothing (e.g. accumulation at one row per device)."""
    out = [("as written", ml_collections.ConfigDict(config.to_dict()))]

    def add(name: str, **changes):
        c = ml_collections.ConfigDict(out[-1][1].to_dict())
        changed = False
        for key, value in changes.items():
            node = c
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            changed |= node[leaf] != value
            node[leaf] = value
        if changed:
            out.append((name, c))

    rows = config.global_batch_size // config.grad_accum_steps // max(batch_shards, 1)
    if rows > 1 and config.loss_normalization == "global":
        add(f"grad_accum_steps={config.grad_accum_steps * rows}", grad_accum_steps=config.grad_accum_steps * rows)
    if config.dtype != config.param_dtype and out[-1][1].grad_accum_steps == 1:  # not applied with accumulation
        add("compute_dtype_grads", compute_dtype_grads=True)
    add("remat_policy=offload", remat_policy="offload")
    if config.data.seq_len % MLP_CHUNK == 0 and config.data.seq_len > MLP_CHUNK:
        add(f"mlp_chunk={MLP_CHUNK}", mlp_chunk=MLP_CHUNK)
    if config.dtype != config.param_dtype and out[-1][1].grad_accum_steps > 1:
        add("compute_dtype_grads_accum", compute_dtype_grads=True, compute_dtype_grads_accum=True)
    add("optim.moment_dtype=bfloat16", **{"optim.moment_dtype": "bfloat16"})
    return out


def device_bytes(m) -> dict[str, int]:
    """Bytes per device of a compiled program's `memory_analysis()` `m`, in the device's own memory:
    arguments, outputs, aliased (outputs that reuse donated arguments), temporaries, code; host (the
    host-memory temporaries, e.g. `remat_policy="offload"`'s saved layer inputs, which XLA:TPU counts in
    `temp_size_in_bytes` too but which take no HBM); peak (XLA's `peak_memory_in_bytes`, the total of the
    program's buffers in the device's memory, what XLA:TPU checks against HBM); total (the larger of peak
    and arguments + outputs - aliased + temporaries + code)."""
    host = getattr(m, "host_temp_size_in_bytes", 0)
    out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes, "aliased": m.alias_size_in_bytes,
           "temporaries": m.temp_size_in_bytes - host, "code": m.generated_code_size_in_bytes, "host": host,
           "peak": getattr(m, "peak_memory_in_bytes", 0)}
    out["total"] = max(out["peak"], out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
                       + out["code"])
    return out


def compiled_bytes(compiled) -> int:
    """Device (HBM) bytes a compiled program needs: `device_bytes(...)["total"]`."""
    return device_bytes(compiled.memory_analysis())["total"]


def device_hbm_bytes(device) -> int | None:
    """The memory limit a device reports (`memory_stats()["bytes_limit"]`), None when it reports none."""
    try:
        stats = device.memory_stats()
    except Exception:  # CPU devices and compile-only topology devices report nothing
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def choose(config: ml_collections.ConfigDict, batch_shards: int, attempt: Callable[[ml_collections.ConfigDict], Any],
           fits: Callable[[Any], bool]) -> tuple[ml_collections.ConfigDict, Any, list[tuple[str, Any]]]:
    """(the config to use, its attempt's result, [(rung description, attempt result)] for every rung tried).

    `attempt(config)` compiles that config's step and returns anything `fits` judges. With
    `config.memory == "fixed"` only the config as written is attempted. When no rung fits, the last
    rung's config and result are returned (the caller reports the shortfall)."""
    mode = config.get("memory", "fixed")
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory={mode!r}: expected one of {MEMORY_MODES}")
    ladder = rungs(config, batch_shards) if mode == "auto" else [("as written", config)]
    tried = []
    for name, candidate in ladder:
        result = attempt(candidate)
        tried.append((name, result))
        if fits(result):
            break
    return candidate, result, tried
