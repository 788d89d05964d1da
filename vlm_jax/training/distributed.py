"""Multi-process plumbing: joining a multi-host job, and turning each host's rows into one global batch.

With several processes `jax.distributed.initialize()` runs first (`maybe_initialize_distributed`),
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

CLUSTER_ENV_MARKERS = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed() -> None:
    """Calls `jax.distributed.initialize()` when the environment describes a multi-process job
    (JAX's cluster auto-detection: an explicit coordinator address, SLURM, Open MPI, TPU pods)."""
    if any(os.environ.get(m) for m in CLUSTER_ENV_MARKERS) and not jax.distributed.is_initialized():
        jax.distributed.initialize()


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
