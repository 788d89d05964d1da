"""vlm_jax params checkpoint -> Hugging Face llava-hf folder (`LlavaForConditionalGeneration.from_pretrained`).

Tensor names are the llava-hf hub ones (`language_model.model.*`, `language_model.lm_head.weight`,
`vision_tower.vision_model.*`, `multi_modal_projector.*`), which transformers 4 loads as they are and
transformers 5 renames on load. Params are restored one (layer-stacked) leaf at a time and written as
shards, so memory stays near one leaf + one shard.

Out-of-vocabulary image token (imports from original LLaVA or --clip/--llm, see `hf_configs`):
transformers looks `image_token_index` up in the embedding table before replacing it, so the table must
contain it. The export then pads `embed_tokens` and `lm_head` with zero rows up to a multiple of 64 past the
image token id (the shape llava-hf uses, 32064 for Vicuna) and lists the padded ids in
`generation_config.json` `suppress_tokens`, so `generate` can never emit them and greedy output equals ours.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
from flax import traverse_util

from vlm_jax.convert.hf_to_orbax import DTYPES
from vlm_jax.checkpoint import (PARAMS_DIR, RUN_CONFIG_FILE, SIDE_FILES, CheckpointError, config_from_dict, copy_files,
                                load_config, record_tokenizer, restore_leaf, tokenizer_spec, tree_metadata)
from vlm_jax.convert.safetensors_io import parse_size, write_sharded
from vlm_jax.models import hf
from vlm_jax.models.config import Idefics2Config, LlavaConfig

# The leaves whose rows are token ids: padded past an out-of-vocabulary image token id on export.
_VOCAB_ROWS = (("language_model", "embed_tokens", "embedding"), ("language_model", "lm_head", "kernel"))


def padded_vocab(vocab_size: int, image_token_id: int) -> int:
    """Rows the exported embedding needs so transformers can look the image token up."""
    if image_token_id < vocab_size:
        return vocab_size
    return -(-(image_token_id + 1) // 64) * 64


def _hf_tensors(params_dir: Path, metadata: dict, config: LlavaConfig, rows: int, dtype: np.dtype | None,
                prefix: tuple[str, ...] = ()):
    """Yields (hub name, torch-layout array) leaf by leaf from the orbax params (at `prefix` inside the
    stored tree: `("params",)` for a training state), through the family's weight table."""
    family = hf.family_of(config)
    mappings = {m.path: m for m in family.tensor_mappings(config, family.HUB)}
    stored = traverse_util.flatten_dict(functools.reduce(lambda tree, key: tree[key], prefix, metadata))
    for path in sorted(set(stored) - set(mappings)):
        raise CheckpointError(f"{params_dir}: param {'/'.join(path)} has no Hugging Face tensor")
    for path in sorted(set(mappings) - set(stored)):
        raise CheckpointError(f"{params_dir}: no param {'/'.join(path)}, which config.json implies")
    for path, mapping in sorted(mappings.items()):
        leaf = restore_leaf(params_dir, prefix + path, metadata)
        if leaf.shape != mapping.leaf_shape:
            raise CheckpointError(f"{params_dir}: param {'/'.join(path)} has shape {leaf.shape}, "
                                  f"config.json implies {mapping.leaf_shape}")
        for i, name in enumerate(mapping.hf_keys):
            value = leaf[i] if mapping.stacked else leaf
            tensor = np.ascontiguousarray(mapping.to_hf(value), dtype=dtype or value.dtype)
            if path in _VOCAB_ROWS and rows > tensor.shape[0]:
                tensor = np.concatenate([tensor, np.zeros((rows - tensor.shape[0],) + tensor.shape[1:], tensor.dtype)])
            yield name, tensor
        del leaf


@dataclasses.dataclass(frozen=True)
class ParamsSource:
    """Where a checkpoint's params live: the orbax folder, the key path of the params inside its tree,
    the model config, the folders whose tokenizer / preprocessor files go with it, and the tokenizer spec of
    a training run (recorded in the export when those folders hold none)."""

    params_dir: Path
    prefix: tuple[str, ...]
    config: LlavaConfig
    side_file_dirs: list[Path]
    tokenizer: str | None = None


def training_steps(checkpoints: Path) -> list[int]:
    """Completed steps of a training run's `checkpoints/` folder (orbax renames a step folder to its number
    only once the save is complete; temporary folders are ignored)."""
    return sorted(int(d.name) for d in checkpoints.iterdir() if d.name.isdigit() and (d / "state").is_dir())


def params_source(ckpt: Path, step: int | None) -> ParamsSource:
    """Resolves `--ckpt` (and `--step`): a params checkpoint (`config.json` + `params/`, e.g. `hf-to-orbax`
    output or a run's `final/`) or a training workdir (`train_config.json` + `checkpoints/<step>/state`,
    default the latest step)."""
    if (ckpt / PARAMS_DIR).is_dir():
        if step is not None:
            raise CheckpointError(f"{ckpt}: --step applies to training workdirs only (this is a params checkpoint)")
        return ParamsSource(ckpt / PARAMS_DIR, (), load_config(ckpt), [ckpt])
    checkpoints = ckpt / "checkpoints"
    if not checkpoints.is_dir():
        raise CheckpointError(f"{ckpt}: neither a params checkpoint ({PARAMS_DIR}/ + config.json) nor a training "
                              f"workdir (checkpoints/ + {RUN_CONFIG_FILE})")
    steps = training_steps(checkpoints)
    if not steps:
        raise CheckpointError(f"{checkpoints}: no completed training checkpoint")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"{checkpoints}: no checkpoint for step {step} (have {steps})")
    run_config = ckpt / RUN_CONFIG_FILE
    if not run_config.is_file():
        raise CheckpointError(f"{run_config} not found: the training run's config (it names the model)")
    run = json.loads(run_config.read_text())
    if "model" not in run:
        raise CheckpointError(f"{run_config}: no 'model' entry (not written by vlm_jax.train)")
    data = (run.get("train") or {}).get("data", {})
    preprocessor = data.get("preprocessor_config")
    side = [Path(preprocessor).parent] if preprocessor and Path(preprocessor).is_file() else []
    return ParamsSource(checkpoints / str(step) / "state", ("params",), config_from_dict(run["model"]), side,
                        data.get("tokenizer") or None)


def export(ckpt: Path, out: Path, *, dtype: str | None = None, step: int | None = None,
           max_shard_size: str = "2GB") -> dict:
    """`orbax-to-hf`: writes `out/{config.json, generation_config.json, model*.safetensors[, index]}` and the
    tokenizer / preprocessor files found next to the checkpoint. Returns the HF config dict written."""
    ckpt, out = Path(ckpt), Path(out)
    if (ckpt / PARAMS_DIR).is_dir() and isinstance(load_config(ckpt), Idefics2Config):
        if step is not None:
            raise CheckpointError(f"{ckpt}: --step applies to training workdirs only (this is a params checkpoint)")
        from vlm_jax.convert import idefics2

        return idefics2.export(ckpt, out, dtype=dtype, max_shard_size=max_shard_size)
    source = params_source(ckpt, step)
    config, params_dir = source.config, source.params_dir
    np_dtype = DTYPES[dtype] if dtype else None
    hf_config = config.to_hf()
    vocab = config.text_config.vocab_size
    rows = padded_vocab(vocab, config.image_token_id)
    metadata = tree_metadata(params_dir)
    for key in source.prefix:
        if key not in metadata:
            raise CheckpointError(f"{params_dir}: no '{key}' in the stored tree")
    out.mkdir(parents=True, exist_ok=True)
    write_sharded(_hf_tensors(params_dir, metadata, config, rows, np_dtype, source.prefix), out,
                  parse_size(max_shard_size))
    params_metadata_tree = metadata
    for key in source.prefix:
        params_metadata_tree = params_metadata_tree[key]
    stored = np_dtype or np.dtype(params_metadata_tree["language_model"]["embed_tokens"]["embedding"].dtype)
    hf_out = {"architectures": ["LlavaForConditionalGeneration"], **hf_config, "dtype": stored.name}
    hf_out["text_config"] = {**hf_config["text_config"], "vocab_size": rows}
    (out / "config.json").write_text(json.dumps(hf_out, indent=2) + "\n")
    copy_files(source.side_file_dirs, out, SIDE_FILES)
    if source.tokenizer and tokenizer_spec(out) is None:
        record_tokenizer(out, source.tokenizer)
    _write_generation_config(out, config, vocab, rows)
    return hf_out


def _write_generation_config(out: Path, config, vocab: int, rows: int) -> None:
    path = out / "generation_config.json"
    gen = json.loads(path.read_text()) if path.is_file() else {
        k: v for k, v in (("bos_token_id", config.text_config.bos_token_id),
                          ("eos_token_id", config.text_config.eos_token_id),
                          ("pad_token_id", config.pad_token_id)) if v is not None}
    if rows > vocab:
        gen["suppress_tokens"] = sorted(set(gen.get("suppress_tokens") or []) | set(range(vocab, rows)))
    path.write_text(json.dumps(gen, indent=2) + "\n")
