"""Checkpoints: the params format (the one home of its reader, writer, partial restore, tokenizer record and
error), and the resumable train checkpointer.

Params format (a directory), written by `save_params`, read by `load_config` / `load_params` /
`load_vision_tower` / `tokenizer_spec`:
    DIR/config.json          the model's architecture: `LlavaConfig.to_dict()` without the run-time fields
                             (`dtype`, `attention_impl`, `attention_block_q/k`, `remat_policy`), which the
                             reader applies as options (`load_config(DIR, dtype=...)`); `param_dtype` stays,
                             it describes the stored params
    DIR/params/              an Orbax PyTree checkpoint of the unboxed LLaVA params tree, as
                             `Llava(config).init(...)["params"]` produces it (top-level `vision_tower`,
                             `multi_modal_projector`, `language_model`)
    DIR/<tokenizer files>    the Hugging Face tokenizer the model was trained with (`tokenizer.json`, ...), or
    DIR/tokenizer_spec.json  `{"tokenizer": "byte"}` for a tokenizer that needs no files
    DIR/preprocessor_config.json  (optional) the image preprocessing, as Hugging Face writes it
`hf-to-orbax` writes this format; training reads it as `init_checkpoint` and writes it at the end of a run
(`WORKDIR/final/`); generation, evaluation, corpus statistics and `orbax-to-hf` read it.

Memory: orbax deep-copies host numpy arrays before writing by default (a second copy of the whole model);
`save_params` registers a `NumpyHandler(deepcopy_host_arrays=False)`, caps OCDBT data files at
`OCDBT_DATA_FILE_BYTES` (else the encoded chunks of the whole model wait in memory), and `restore_leaf` reads
one leaf at a time (partial restore) so an export never holds more than one (layer-stacked) leaf.

Train checkpoints (`WORKDIR/checkpoints/<step>/`, `TrainCheckpointer`): an Orbax `CheckpointManager` with two
items, `state` (the `TrainState`: step, params, optimizer state) and `data` (the Grain iterator's state, one
JSON file per data stream, `stream_<s>-of-<S>.json`, written by the process that serves the stream; see
`vlm_jax.data.loader`). Restoring on another process count reads the state with the new mesh's shardings
(Orbax reshards) and each process reads the files of the streams it now serves. Saves are asynchronous, every `save_every` steps and at the end, keeping the last
`keep`; Orbax writes to a temporary directory and renames it when complete, so a run killed mid-save leaves
the previous checkpoint as latest.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from orbax.checkpoint import type_handlers
from orbax.checkpoint._src.serialization import type_handler_registry

from vlm_jax import paths
from vlm_jax.cli import InputError
from vlm_jax.data.image import PREPROCESSOR_FILE
from vlm_jax.data.tokenizer import BYTE_SPEC, TOKENIZER_FILES
from vlm_jax.models.config import RUNTIME_FIELDS, Idefics2Config, LlavaConfig, VisionConfig, model_config_from_dict

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
TOKENIZER_SPEC_FILE = "tokenizer_spec.json"
RUN_CONFIG_FILE = "train_config.json"  # a training run directory's own config: {"train": ..., "model": ...}
# The files besides config.json and params/ that make a checkpoint usable (tokenizer, image preprocessing,
# generation defaults); they travel unchanged between a Hugging Face folder and a params checkpoint.
SIDE_FILES = TOKENIZER_FILES + (TOKENIZER_SPEC_FILE, PREPROCESSOR_FILE, "processor_config.json",
                                "generation_config.json")
# Run-time options a params checkpoint never stores (param_dtype does describe the stored params).
NOT_STORED = tuple(f for f in RUNTIME_FIELDS if f != "param_dtype")
ModelConfig = LlavaConfig | Idefics2Config
# OCDBT buffers a data file's encoded chunks in memory until the file is written: with the default (one
# file per write) that is a second, compressed copy of the model (1.9x the model at peak, measured);
# 64 MiB files bound it (1.2x).
OCDBT_DATA_FILE_BYTES = 64 << 20


class CheckpointError(InputError):
    """A checkpoint on disk is missing, malformed, or disagrees with its config; the message names the file/tensor
    (a bad input: exit 1 at the command line)."""


# --- config.json -------------------------------------------------------------------------------------------

def _strip_runtime(d: dict) -> dict:
    """`d` with the run-time options removed from each sub-config dict (vision_config, text_config, ...)."""
    return {k: ({f: x for f, x in v.items() if f not in NOT_STORED} if isinstance(v, dict) else v)
            for k, v in d.items()}


def architecture_dict(config: ModelConfig) -> dict:
    """`config.to_dict()` without the run-time options (`NOT_STORED`): what `config.json` holds."""
    return _strip_runtime(config.to_dict())


def config_from_dict(d: dict, **runtime) -> ModelConfig:
    """The model config (its family from the dict: LlavaConfig or Idefics2Config) of a stored architecture dict;
    stored run-time options (older checkpoints, run files) are dropped, `runtime` (dtype=..., ...) applied."""
    config = model_config_from_dict(_strip_runtime(dict(d)))
    return config.with_runtime(**runtime) if runtime else config


def load_config(directory: str | Path, **runtime) -> ModelConfig:
    """The model config stored beside the params, with the run-time options `runtime` (default: the model
    config's defaults, float32 / xla / no remat), never the ones of the run that wrote it."""
    path = paths.as_path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a vlm_jax params checkpoint ({CONFIG_FILE} + {PARAMS_DIR}/)")
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from e
    if isinstance(stored, dict) and ("architectures" in stored or "model_type" in stored):
        raise CheckpointError(f"{directory}: a Hugging Face checkpoint ({stored.get('model_type', 'model')}), not a "
                              f"vlm_jax one; convert it first: python -m vlm_jax.convert hf-to-orbax --hf {directory} "
                              "--out NEW_DIR")
    try:
        return config_from_dict(stored, **runtime)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a vlm_jax model config ({e})") from e


# --- tokenizer and image settings --------------------------------------------------------------------------

def record_tokenizer(directory: str | Path, spec: str | None) -> None:
    """Records the tokenizer of the checkpoint in `directory`: a tokenizer folder's files are copied in, a
    spec that needs no files (`"byte"`) goes to `tokenizer_spec.json`; None records nothing."""
    if not spec:
        return
    directory = paths.as_path(directory)
    if spec == BYTE_SPEC:
        (directory / TOKENIZER_SPEC_FILE).write_text(json.dumps({"tokenizer": spec}) + "\n")
        return
    copied = copy_files([spec], directory, TOKENIZER_FILES)
    if not copied:
        raise CheckpointError(f"tokenizer {spec!r}: neither {BYTE_SPEC!r} nor a folder with tokenizer files "
                              f"({', '.join(TOKENIZER_FILES)})")


def tokenizer_spec(directory: str | Path) -> str | None:
    """The tokenizer spec a checkpoint records (`vlm_jax.data.tokenizer.make_tokenizer` takes it): the
    folder itself when it holds tokenizer files (a local copy of them for a remote checkpoint), the spec in
    `tokenizer_spec.json`, else None."""
    directory = paths.as_path(directory)
    if any((directory / name).is_file() for name in TOKENIZER_FILES):
        return paths.local_copy(directory, TOKENIZER_FILES)
    path = directory / TOKENIZER_SPEC_FILE
    if path.is_file():
        try:
            return str(json.loads(path.read_text())["tokenizer"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: expected {{\"tokenizer\": SPEC}} ({e})") from e
    return None


def copy_files(sources: list, dst, names: tuple[str, ...]) -> dict[str, str]:
    """Copies each of `names` from the first folder in `sources` that has it into `dst` (skipping a file onto
    itself); returns name -> source file. Any folder may be remote (`vlm_jax.paths`)."""
    copied: dict[str, str] = {}
    for name in names:
        for src in sources:
            source, target = paths.join(src, name), paths.join(dst, name)
            if paths.isfile(source):
                if not _same_file(source, target):
                    paths.copy_file(source, target)
                copied[name] = source
                break
    return copied


def _same_file(a: str, b: str) -> bool:
    a, b = paths.resolve(a), paths.resolve(b)
    if paths.is_remote(a) or paths.is_remote(b):
        return a == b
    return os.path.exists(b) and os.path.samefile(a, b)


# --- params ------------------------------------------------------------------------------------------------

def _checkpointer() -> ocp.Checkpointer:
    registry = type_handler_registry.create_type_handler_registry(
        (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, type_handlers.ArrayHandler()))
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry))


def save_params(directory: str | Path, params: Any, config: ModelConfig, *, tokenizer: str | None = None,
                preprocessor_config: str | Path | None = None) -> None:
    """Writes `params` (a tree of jax arrays with any sharding, or host numpy arrays of any float dtype incl.
    ml_dtypes.bfloat16), the architecture of `config`, and the tokenizer record (`record_tokenizer`) and
    `preprocessor_config` file when given, in the params format (blocking)."""
    paths.makedirs(directory)
    directory = paths.as_path(directory)
    with _checkpointer() as checkpointer:
        checkpointer.save(directory / PARAMS_DIR, args=ocp.args.PyTreeSave(
            params, ocdbt_target_data_file_size=OCDBT_DATA_FILE_BYTES), force=True)
    if jax.process_index() == 0:
        (directory / CONFIG_FILE).write_text(json.dumps(architecture_dict(config), indent=2) + "\n")
        record_tokenizer(directory, tokenizer)
        if preprocessor_config:
            paths.copy_file(preprocessor_config, directory / PREPROCESSOR_FILE)


def _params_dir(directory: str | Path) -> Path:
    path = paths.as_path(directory) / PARAMS_DIR
    if not path.is_dir():
        raise CheckpointError(f"{path} not found: no params in this checkpoint directory")
    return path


def tree_metadata(orbax_dir: str | Path) -> dict:
    """Nested dict of orbax ArrayMetadata (shape, dtype) of every array of an orbax PyTree checkpoint
    (`DIR/params`, or a train checkpoint's `state`), read without loading data."""
    orbax_dir = paths.as_path(orbax_dir)
    if not orbax_dir.is_dir():
        raise CheckpointError(f"{orbax_dir} not found: no orbax checkpoint there")
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        return checkpointer.metadata(orbax_dir).item_metadata.tree


def restore_leaf(orbax_dir: str | Path, path: tuple[str, ...], metadata: dict) -> np.ndarray:
    """The single array at key `path` of an orbax PyTree checkpoint as a host numpy array (partial restore:
    nothing else is read). `metadata` is `tree_metadata(orbax_dir)`."""
    flat_meta = traverse_util.flatten_dict(metadata)
    if path not in flat_meta:
        raise CheckpointError(f"{orbax_dir}: no array {'/'.join(path)}")
    item = traverse_util.unflatten_dict({path: flat_meta[path]})
    restore_args = traverse_util.unflatten_dict({path: ocp.RestoreArgs(restore_type=np.ndarray)})
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        tree = checkpointer.restore(paths.as_path(orbax_dir), args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
    return traverse_util.flatten_dict(tree)[path]


def _check_shapes(stored: Any, target: Any, where: Path) -> None:
    """Raises CheckpointError naming the first param whose presence or shape differs."""
    stored_flat = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(stored)}
    target_flat = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(target)}
    for key in sorted(set(stored_flat) | set(target_flat)):
        if key not in stored_flat:
            raise CheckpointError(f"{where}: param {key} is missing from the checkpoint")
        if key not in target_flat:
            raise CheckpointError(f"{where}: checkpoint has param {key} that the model does not")
        if stored_flat[key] != target_flat[key]:
            raise CheckpointError(f"{where}: param {key} has shape {stored_flat[key]} in the checkpoint, "
                                  f"the model expects {target_flat[key]}")


def load_params(directory: str | Path, target: Any | None = None, *,
                sharding: jax.sharding.Sharding | None = None) -> Any:
    """Reads the params of a params-format directory.

    target: a tree of `jax.ShapeDtypeStruct` with shardings (e.g. the abstract params of a sharded train
    state): each array is read straight into its shards and cast to the target dtype; shapes are checked
    first. Else with `sharding` (one sharding for every leaf, e.g. replicated over a mesh, or one device):
    jax arrays in the stored dtypes. Neither: numpy arrays on the host, as stored.
    """
    path = _params_dir(directory)
    stored = tree_metadata(path)
    if target is None and sharding is None:
        restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), stored)
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
            return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    if target is None:
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), stored)
    _check_shapes(stored, target, path)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, target)


def load_vision_tower(directory: str | Path) -> tuple[VisionConfig, dict]:
    """(vision config, `vision_tower` params as host numpy arrays) of a params checkpoint, reading only those
    leaves (partial restore: a 7B LLaVA checkpoint costs ~0.6 GB here). For RICES and corpus statistics."""
    config = load_config(directory).vision_config
    params_dir = _params_dir(directory)
    metadata = tree_metadata(params_dir)
    if "vision_tower" not in metadata:
        raise CheckpointError(f"{params_dir}: no 'vision_tower' params (top-level keys: {sorted(metadata)})")
    flat = {path: restore_leaf(params_dir, ("vision_tower",) + path, metadata)
            for path in traverse_util.flatten_dict(metadata["vision_tower"])}
    return config, traverse_util.unflatten_dict(flat)


# --- train checkpoints -------------------------------------------------------------------------------------

class DataStreamsHandler:
    """Orbax handler for a `vlm_jax.data.loader.StreamsIterator`: one JSON file per stream it serves, so a
    checkpoint written by P processes is read back by any process count that divides the streams."""

    @staticmethod
    def _name(stream: int, count: int) -> str:
        return f"stream_{stream}-of-{count}.json"

    def save(self, directory, item=None, args=None):
        it = item or args.item
        state = it.get_state()["streams"]
        for s in it.stream_ids:
            (directory / self._name(s, it.stream_count)).write_text(json.dumps(state[str(s)], indent=1))

    def restore(self, directory, item=None, args=None):
        it = item or args.item
        states = {}
        for s in it.stream_ids:
            path = directory / self._name(s, it.stream_count)
            if not path.exists():
                found = sorted(p.name for p in directory.iterdir())
                raise CheckpointError(f"{path} not found: the checkpoint's data state is {found}, this run reads "
                                      f"{it.stream_count} data streams (keep data.streams as in the run that saved "
                                      "it; the default is that run's process count)")
            states[str(s)] = json.loads(path.read_text())
        it.set_state({"streams": states})
        it.start_prefetch()
        return it

    def structure(self, directory):
        return None

    def metadata(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass

    @classmethod
    def typestr(cls):
        return f"{cls.__module__}.{cls.__qualname__}"


@ocp.args.register_with_handler(DataStreamsHandler, for_save=True)
@dataclasses.dataclass
class DataStreamsSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataStreamsHandler, for_restore=True)
@dataclasses.dataclass
class DataStreamsRestore(ocp.args.CheckpointArgs):
    item: Any


def saved_stream_count(directory) -> int | None:
    """The data streams of a train checkpoint's `data` item (from its file names); None if it has none."""
    counts = {int(p.name.rsplit("-of-", 1)[1].split(".")[0]) for p in epath.Path(directory).glob("stream_*-of-*.json")}
    if len(counts) > 1:
        raise CheckpointError(f"{directory}: data state files of different stream counts {sorted(counts)}")
    return counts.pop() if counts else None


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
            paths.resolve(directory), options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": DataStreamsHandler()})

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether `step` is a checkpoint step (a multiple of `save_every`, not yet saved)."""
        return self._manager.should_save(step)

    def save(self, step: int, state: Any, data_iterator: Any, force: bool = False) -> bool:
        """Starts saving when `step` is due (or `force`); returns whether it did. The data iterator
        state is taken now, synchronously; the arrays are written in the background."""
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=DataStreamsSave(data_iterator)), force=force)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        """The state of checkpoint `step`, laid out as `abstract_state` (ShapeDtypeStructs with
        shardings); `data_iterator` is set to continue after that step's last batch."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=DataStreamsRestore(data_iterator)))
        return restored["state"]

    def stream_count(self, step: int) -> int | None:
        """The data streams the checkpoint of `step` was saved with."""
        return saved_stream_count(self._manager.directory / str(step) / "data")

    def wait(self) -> None:
        """Blocks until the background save (if any) is complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
