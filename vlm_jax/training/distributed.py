"""Multi-process plumbing: joining a multi-host job, and turning each host's rows into one global batch.

With several processes `jax.distributed.initialize()` runs first (`maybe_initialize_distributed`; how a job
is detected is documented there),
each process loads its `1 / process_count` share of the global batch, and `global_batch` stitches
the shares into one `jax.Array` sharded over `data x fsdp` on the batch dimension
(`vlm_jax.sharding.batch_sharding`). On one process the same calls are plain device transfers.
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from vlm_jax.sharding import batch_sharding

CLUSTER_ENV_MARKERS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")  # clusters JAX detects on its own
DISTRIBUTED_MODES = ("auto", "off")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from e


def maybe_initialize_distributed(mode: str = "auto") -> bool:
    """Joins a multi-process job with `jax.distributed.initialize()` when one is described; returns whether
    it did (or already had). `mode="off"` never does (one process, e.g. for debugging on one TPU host).

    "auto", in order: `JAX_COORDINATOR_ADDRESS` (+ `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) starts it with those
    values (any machine, e.g. several processes on one host); SLURM / Open MPI environments start it with
    JAX's cluster detection; on a Cloud TPU VM (TPU chips on this host, `vlm_jax.platforms.has_tpu_chips`)
    it starts with JAX's own Cloud TPU detection, which finds every host of the slice (or of all slices,
    multislice) from the VM's metadata, with no environment set up. Anything else is one process.
    """
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"distributed={mode!r}: expected one of {DISTRIBUTED_MODES}")
    if jax.distributed.is_initialized():
        return True
    if mode == "off":
        return False
    from vlm_jax.platforms import has_tpu_chips

    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=_env_int("JAX_NUM_PROCESSES"), process_id=_env_int("JAX_PROCESS_ID"))
    elif any(os.environ.get(m) for m in CLUSTER_ENV_MARKERS) or (
            has_tpu_chips() and os.environ.get("JAX_PLATFORMS", "tpu") != "cpu"):
        jax.distributed.initialize()
    else:
        return False
    return True


def host_line() -> str:
    """One line naming this process and its devices (every host logs it at start-up)."""
    local = jax.local_devices()
    ids = ",".join(str(d.id) for d in local)
    return (f"process {jax.process_index()}/{jax.process_count()}: {len(local)} local {local[0].device_kind} "
            f"device(s) [{ids}] of {jax.device_count()}")


def batch_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this: devices along the batch axes (`data x fsdp`)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows `[local_batch, ...]` -> global arrays `[local_batch * process_count, ...]`
    sharded over `data x fsdp` (`jax.make_array_from_process_local_data`)."""
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        out[key] = jax.make_array_from_process_local_data(
            sharding, value, (value.shape[0] * jax.process_count(),) + value.shape[1:])
    return out
