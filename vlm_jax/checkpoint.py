"""Checkpoints: the params format shared with conversion/evaluation, and resumable train checkpoints.

Params format (a directory), written by `save_params`, read by `load_config` / `load_params`:
    DIR/config.json   `LlavaConfig.to_dict()` (architecture and run-time fields)
    DIR/params/       an Orbax PyTree checkpoint of the LLaVA params tree, unboxed, as
                      `Llava(config).init(...)["params"]` produces it (top-level `vision_tower`,
                      `multi_modal_projector`, `language_model`)
`hf-to-orbax` conversion writes this format; training reads it as `init_checkpoint` and writes
it at the end of a run (`WORKDIR/final/`).

Train checkpoints (`WORKDIR/checkpoints/<step>/`, `TrainCheckpointer`): an Orbax
`CheckpointManager` with two items, `state` (the `TrainState`: step, params, optimizer state) and
`data` (the Grain iterator's state, one JSON file per process). Saves are asynchronous, every
`save_every` steps and at the end, keeping the last `keep`; Orbax writes to a temporary directory
and renames it when complete, so a run killed mid-save leaves the previous checkpoint as latest.
"""
from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from vlm_jax.models.config import LlavaConfig

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_params(directory: str, params: Any, config: LlavaConfig) -> None:
    """Writes `params` (a tree of arrays, any sharding) and `config` in the params format (blocking)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, PARAMS_DIR), params, force=True)
        checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            json.dump(config.to_dict(), f, indent=2)


def load_config(directory: str) -> LlavaConfig:
    """The `LlavaConfig` stored beside the params."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not a vlm_jax params checkpoint (no {CONFIG_FILE})")
    with open(path) as f:
        return LlavaConfig.from_dict(json.load(f))


def _check_shapes(stored: Any, target: Any, where: str) -> None:
    """Raises ValueError naming the first param whose presence or shape differs."""
    stored_flat = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(stored)}
    target_flat = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(target)}
    for key in sorted(set(stored_flat) | set(target_flat)):
        if key not in stored_flat:
            raise ValueError(f"{where}: param {key} is missing from the checkpoint")
        if key not in target_flat:
            raise ValueError(f"{where}: checkpoint has param {key} that the model does not")
        if stored_flat[key] != target_flat[key]:
            raise ValueError(f"{where}: param {key} has shape {stored_flat[key]} in the checkpoint, "
                             f"the model expects {target_flat[key]}")


def load_params(directory: str, target: Any | None = None) -> Any:
    """Reads the params of a params-format directory.

    target: a tree of `jax.ShapeDtypeStruct` with shardings (e.g. the abstract params of a sharded
    train state): each array is read straight into its shards and cast to the target dtype; shapes
    are checked first. None: numpy arrays on the host, as stored.
    """
    path = os.path.join(os.path.abspath(directory), PARAMS_DIR)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no params in this checkpoint directory")
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.metadata(path).item_metadata
        if target is None:
            restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), stored)
            return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
        _check_shapes(stored, target, path)
        return checkpointer.restore(path, target)


class TrainCheckpointer:
    """Saves and restores (train state, data iterator state) with an Orbax `CheckpointManager`."""

    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory), options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether `step` is a checkpoint step (a multiple of `save_every`, not yet saved)."""
        return self._manager.should_save(step)

    def save(self, step: int, state: Any, data_iterator: Any, force: bool = False) -> bool:
        """Starts saving when `step` is due (or `force`); returns whether it did. The data iterator
        state is taken now, synchronously; the arrays are written in the background."""
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        """The state of checkpoint `step`, laid out as `abstract_state` (ShapeDtypeStructs with
        shardings); `data_iterator` is set to continue after that step's last batch."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return restored["state"]

    def wait(self) -> None:
        """Blocks until the background save (if any) is complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
