"""Which memory-saving options a train step uses: the fastest rung of a ladder whose compiled step fits HBM.

Every rung gives the same loss and gradients (tests/test_train_memory.py); later rungs trade speed or
optimizer-state precision for memory:

0. the config as written (e.g. the 7B config: full remat, chunked LM head + cross-entropy);
1. `remat_policy="offload"`: each layer's saved input (one `[seq, hidden]` per layer and row) lives in
   host memory, copied back for the backward pass;
2. + `mlp_chunk`: the MLP runs `MLP_CHUNK` positions at a time (recomputes the MLP forward once more);
3. + `optim.moment_dtype="bfloat16"`: Adam moments stored in bfloat16 (updates still computed in float32).

`config.memory = "auto"` picks the first rung whose compiled step's memory (arguments + outputs not
aliased + temporaries, `compiled.memory_analysis()`) is at most the device's HBM; "fixed" uses the
config as written. Devices that report no memory limit (CPU) use the config as written.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import ml_collections

MEMORY_MODES = ("auto", "fixed")
MLP_CHUNK = 4096
LADDER: tuple[dict[str, Any], ...] = (
    {},
    {"remat_policy": "offload"},
    {"remat_policy": "offload", "mlp_chunk": MLP_CHUNK},
    {"remat_policy": "offload", "mlp_chunk": MLP_CHUNK, "optim.moment_dtype": "bfloat16"},
)


def apply_rung(config: ml_collections.ConfigDict, rung: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with a ladder rung's fields (dotted names) set; `mlp_chunk` only where it
    divides `data.seq_len` (else left as it is)."""
    out = ml_collections.ConfigDict(config.to_dict())
    for key, value in rung.items():
        if key == "mlp_chunk" and config.data.seq_len % value:
            continue
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return out


def compiled_bytes(compiled) -> int:
    """Device bytes a compiled program needs: arguments + outputs not aliased to them + temporaries
    + generated code (`compiled.memory_analysis()`)."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
            + m.generated_code_size_in_bytes)


def device_hbm_bytes(device) -> int | None:
    """The memory limit a device reports (`memory_stats()["bytes_limit"]`), None when it reports none."""
    try:
        stats = device.memory_stats()
    except Exception:  # CPU devices and topology-only devices report nothing
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def choose(config: ml_collections.ConfigDict, hbm_bytes: int | None,
           compile_bytes: Callable[[ml_collections.ConfigDict], int],
           ladder: Sequence[dict[str, Any]] = LADDER) -> tuple[ml_collections.ConfigDict, list[dict[str, Any]]]:
    """(the config to train with, one record per rung tried: {"rung", "options", "bytes", "fits"}).

    `compile_bytes(config)` compiles that config's train step and returns `compiled_bytes`. With
    `config.memory == "fixed"` or no known `hbm_bytes`, `config` is returned untried. When no rung fits,
    the last rung's config is returned (its compile or run then reports the shortfall)."""
    if config.get("memory", "fixed") not in MEMORY_MODES:
        raise ValueError(f"memory={config.memory!r}: expected one of {MEMORY_MODES}")
    if config.get("memory", "fixed") == "fixed" or hbm_bytes is None:
        return config, []
    tried = []
    candidate = config
    for i, rung in enumerate(ladder):
        candidate = apply_rung(config, rung)
        need = compile_bytes(candidate)
        tried.append({"rung": i, "options": dict(rung), "bytes": need, "fits": need <= hbm_bytes})
        if need <= hbm_bytes:
            break
    return candidate, tried
