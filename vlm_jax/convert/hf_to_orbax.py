"""Hugging Face safetensors (llava-hf, original LLaVA, or CLIP + Llama) -> vlm_jax params checkpoint.

Streaming: headers are read first and checked against config.json; then tensors are read one at a time
(in file order), cast, re-laid out and written into a preallocated layer-stacked numpy tree, which orbax
writes without copying. Peak memory ≈ the params in the target dtype + a few of the largest tensors.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_dtypes
import numpy as np

from flax import traverse_util

from vlm_jax.convert import hf_configs, hf_layouts
from vlm_jax.checkpoint import SIDE_FILES, CheckpointError, copy_files, save_params
from vlm_jax.convert.safetensors_io import SafetensorsDir
from vlm_jax.models import hf
from vlm_jax.models.config import LlavaConfig
from vlm_jax.models.hf import table

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}


@dataclasses.dataclass(frozen=True)
class Source:
    """One canonical tensor's origin: stored `key` in folder `ckpt`, or (ckpt None) freshly initialised."""

    ckpt: SafetensorsDir | None
    key: str


@dataclasses.dataclass
class HFSource:
    """Everything an import reads: the llava-hf config dict, canonical name -> Source, side-file folders."""

    hf_config: dict
    tensors: dict[str, Source]
    side_dirs: list[Path]
    layout: str


def read_json(path: Path) -> dict:
    """A Hugging Face folder's JSON file (config.json, ...) as a dict; CheckpointError if missing or invalid."""
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from e


def _sources(ckpt: SafetensorsDir, layout: str) -> dict[str, Source]:
    names = hf_layouts.canonical_names(layout, ckpt.keys(), str(ckpt.directory))
    return {name: Source(ckpt, key) for name, key in names.items()}


def _clip_config(clip_dir: Path) -> dict:
    return hf_configs.vision_config_from_clip(read_json(clip_dir / "config.json"), str(clip_dir / "config.json"))


def _clip_tensors(clip_dir: Path) -> dict[str, Source]:
    ckpt = SafetensorsDir(clip_dir)
    hf_layouts.check_component_layout(ckpt.keys(), hf_layouts.CLIP, str(clip_dir))
    return _sources(ckpt, hf_layouts.CLIP)


def open_hf(hf: Path | None = None, clip: Path | None = None, llm: Path | None = None) -> HFSource:
    """Opens the source folders (headers only) for `--hf DIR [--clip DIR]` or `--clip DIR --llm DIR`."""
    if hf is not None:
        hf = Path(hf)
        config = read_json(hf / "config.json")
        ckpt = SafetensorsDir(hf)
        layout = hf_layouts.detect_layout(ckpt.keys(), config, str(hf))
        tensors = _sources(ckpt, layout)
        if layout == hf_layouts.LLAVA_HF:
            if clip is not None:
                raise CheckpointError(f"{hf} is a llava-hf checkpoint with its own vision tower; drop --clip")
            return HFSource(config, tensors, [hf], layout)
        vision, side = None, [hf]
        if clip is not None:
            vision = _clip_config(Path(clip))
            side.append(Path(clip))
            # A tower stored inside the LLaVA checkpoint (unfrozen during fine-tuning) wins over the CLIP folder's.
            if not any(n.startswith(hf_layouts.VISION) for n in tensors):
                tensors.update(_clip_tensors(Path(clip)))
        elif not any(n.startswith(hf_layouts.VISION) for n in tensors):
            raise CheckpointError(
                f"{hf}: original-LLaVA checkpoint without vision tower weights; pass the CLIP folder named by "
                f"mm_vision_tower ({config.get('mm_vision_tower')!r}) with --clip DIR")
        return HFSource(hf_configs.llava_config_from_original(config, vision, str(hf)), tensors, side, layout)
    if clip is None or llm is None:
        raise CheckpointError("give --hf DIR, or both --clip DIR and --llm DIR")
    vision, tensors = _clip_config(Path(clip)), _clip_tensors(Path(clip))
    llm_ckpt = SafetensorsDir(llm)
    hf_layouts.check_component_layout(llm_ckpt.keys(), hf_layouts.LLAMA, str(llm))
    text = hf_configs.text_config_from_llama(read_json(Path(llm) / "config.json"), str(Path(llm) / "config.json"))
    tensors.update(_sources(llm_ckpt, hf_layouts.LLAMA))
    hf_config = hf_configs.llava_config(vision, text)
    for name in ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"):
        tensors[hf_layouts.PROJECTOR + name] = Source(None, name)
    return HFSource(hf_config, tensors, [Path(llm), Path(clip)], "clip+llm")


def _where(source: Source) -> str:
    return f"tensor {source.key!r} in {source.ckpt.info(source.key).file}"


def check_against_config(src: HFSource, expected: dict[str, tuple[int, ...]]) -> None:
    """Every tensor the weight table expects for the config is present with its shape, and no other."""
    for name, source in sorted(src.tensors.items()):
        if name not in expected:
            raise CheckpointError(f"unexpected {_where(source)}: config.json implies no such tensor ({name})")
        if source.ckpt is not None and source.ckpt.info(source.key).shape != expected[name]:
            raise CheckpointError(
                f"{_where(source)} has shape {source.ckpt.info(source.key).shape} but config.json implies "
                f"{expected[name]}")
    missing = sorted(set(expected) - set(src.tensors))
    if missing:
        folders = sorted({str(s.ckpt.directory) for s in src.tensors.values() if s.ckpt is not None})
        raise CheckpointError(f"{folders}: missing tensor {missing[0]!r} (and {len(missing) - 1} more) "
                              "that config.json implies")


def widest_dtype(src: HFSource) -> np.dtype:
    """The 'auto' target dtype: the stored dtype when all tensors share bfloat16 or float16, else float32
    (which holds any mix of them exactly)."""
    stored = {s.ckpt.info(s.key).dtype for s in src.tensors.values() if s.ckpt is not None}
    for name in ("bfloat16", "float16"):
        if stored == {DTYPES[name]}:
            return DTYPES[name]
    return DTYPES["float32"]


def build_params(src: HFSource, config: LlavaConfig, dtype: np.dtype, seed: int) -> dict:
    """The layer-stacked numpy param tree, filled tensor by tensor (file by file) through the family's weight
    table (`vlm_jax.models.hf`)."""
    family = hf.family_of(config)
    mappings = family.tensor_mappings(config, family.CANONICAL)
    expected = table.expected_shapes(mappings)
    check_against_config(src, expected)
    slots = table.by_hf_key(mappings)
    flat = {m.path: np.empty(m.leaf_shape, dtype) for m in mappings}
    rng = np.random.default_rng(seed)

    def order(item):
        s = item[1]
        return (0, "", "") if s.ckpt is None else (1, str(s.ckpt.info(s.key).file), s.key)

    for name, source in sorted(src.tensors.items(), key=order):
        if source.ckpt is None:  # torch.nn.Linear's default init, which LLaVA's projector starts from
            fan_in = expected[name.replace(".bias", ".weight")][1]
            value = rng.uniform(-1 / np.sqrt(fan_in), 1 / np.sqrt(fan_in), size=expected[name]).astype(dtype)
        else:
            value = source.ckpt.read(source.key).astype(dtype, copy=False)
        mapping, layer = slots[name]
        if layer is None:
            flat[mapping.path][...] = mapping.to_ours(value)
        else:
            flat[mapping.path][layer] = mapping.to_ours(value)
        del value
    return traverse_util.unflatten_dict(flat)


def convert(out: Path, *, hf: Path | None = None, clip: Path | None = None, llm: Path | None = None,
            dtype: str = "auto", seed: int = 0) -> LlavaConfig:
    """`hf-to-orbax`: writes `out/{config.json, params/}` plus the tokenizer / preprocessor files. An Idefics2
    `hf` folder (by its config.json) is imported by `vlm_jax.convert.idefics2`."""
    if hf is not None and (Path(hf) / "config.json").is_file():
        from vlm_jax.convert import idefics2

        if idefics2.is_idefics2(read_json(Path(hf) / "config.json")):
            if clip is not None or llm is not None:
                raise CheckpointError(f"{hf} is an Idefics2 checkpoint with its own towers; drop --clip/--llm")
            return idefics2.import_hf(hf, out, dtype)
    src = open_hf(hf, clip, llm)
    np_dtype = widest_dtype(src) if dtype == "auto" else DTYPES[dtype]
    config = LlavaConfig.from_hf(src.hf_config, param_dtype=np_dtype.name)
    params = build_params(src, config, np_dtype, seed)
    out = Path(out)
    save_params(out, params, config)
    copy_files(src.side_dirs, out, SIDE_FILES)
    return config
