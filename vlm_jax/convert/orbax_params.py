"""The params checkpoint on disk: `CKPT_DIR/config.json` (`LlavaConfig.to_dict()`) + `CKPT_DIR/params/`
(an orbax PyTree checkpoint of the unboxed Llava params), written from and read into host numpy arrays.

Memory: orbax deep-copies host numpy arrays before writing by default (a second copy of the whole model);
we register a `NumpyHandler(deepcopy_host_arrays=False)` for our own saves, cap OCDBT data files at
`OCDBT_DATA_FILE_BYTES` (else the encoded chunks of the whole model wait in memory), and restore leaf by leaf with
`partial_restore` so an export never holds more than one (layer-stacked) leaf.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import type_handlers
from orbax.checkpoint._src.serialization import type_handler_registry

from vlm_jax.convert.param_map import get_path, iter_leaves
from vlm_jax.convert.safetensors_io import CheckpointError
from vlm_jax.models.config import LlavaConfig, VisionConfig, model_config_from_dict

CONFIG_NAME = "config.json"
# OCDBT buffers a data file's encoded chunks in memory until the file is written: with the default (one
# file per write) that is a second, compressed copy of the model (1.9x the model at peak, measured);
# 64 MiB files bound it (1.2x).
OCDBT_DATA_FILE_BYTES = 64 << 20
PARAMS_DIR = "params"


def _numpy_checkpointer() -> ocp.Checkpointer:
    registry = type_handler_registry.create_type_handler_registry(
        (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, type_handlers.ArrayHandler()))
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry))


def save_numpy_params(ckpt_dir: str | Path, params: dict, config: LlavaConfig) -> None:
    """Writes `params` (nested dict of numpy arrays, any float dtype incl. ml_dtypes.bfloat16) and config."""
    ckpt_dir = Path(ckpt_dir).absolute()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with _numpy_checkpointer() as checkpointer:
        checkpointer.save(ckpt_dir / PARAMS_DIR, args=ocp.args.PyTreeSave(
            params, ocdbt_target_data_file_size=OCDBT_DATA_FILE_BYTES))
    (ckpt_dir / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def read_config(ckpt_dir: str | Path) -> LlavaConfig:
    """The model config (LlavaConfig or Idefics2Config, by family) stored next to the params."""
    path = Path(ckpt_dir) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a vlm_jax params checkpoint (config.json + params/)")
    return model_config_from_dict(json.loads(path.read_text()))


def params_metadata(params_dir: str | Path) -> dict:
    """Nested dict of orbax ArrayMetadata (shape, dtype) of every stored param, read without loading data."""
    params_dir = Path(params_dir).absolute()
    if not params_dir.is_dir():
        raise CheckpointError(f"{params_dir} not found: no orbax params checkpoint there")
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        return checkpointer.metadata(params_dir).item_metadata.tree


def restore_numpy_leaf(params_dir: str | Path, path: tuple[str, ...], metadata: dict) -> np.ndarray:
    """Loads the single param at `path` as a host numpy array (partial restore: nothing else is read)."""
    item, restore_args = _nest(path, get_path(metadata, path)), _nest(path, ocp.RestoreArgs(restore_type=np.ndarray))
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        tree = checkpointer.restore(Path(params_dir).absolute(), args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
    return get_path(tree, path)


def restore_params(params_dir: str | Path, shardings=None) -> dict:
    """Loads every param as a jax.Array (on the default device, or with the given sharding tree)."""
    metadata = params_metadata(params_dir)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, metadata)
    target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), metadata, shardings)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(Path(params_dir).absolute(), target)


def _nest(path, value):
    for key in reversed(path):
        value = {key: value}
    return value


def load_vision_tower(ckpt_dir: str | Path) -> tuple[VisionConfig, dict]:
    """(vision config, `vision_tower` params as host numpy arrays) of a params checkpoint, reading only those
    leaves (partial restore: a 7B LLaVA checkpoint costs ~0.6 GB here). For RICES and corpus statistics."""
    config = read_config(ckpt_dir).vision_config
    params_dir = Path(ckpt_dir) / PARAMS_DIR
    metadata = params_metadata(params_dir)
    if "vision_tower" not in metadata:
        raise CheckpointError(f"{params_dir}: no 'vision_tower' params (top-level keys: {sorted(metadata)})")
    params: dict = {}
    for path, _ in iter_leaves(metadata["vision_tower"]):
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = restore_numpy_leaf(params_dir, ("vision_tower",) + tuple(path), metadata)
    return config, params
