"""Idefics2 checkpoints ↔ vlm_jax params, driven by the family's weight table (`vlm_jax.models.hf.idefics2`).

- `import_hf`: an `Idefics2ForConditionalGeneration` folder (config.json + safetensors) → params checkpoint.
- `assemble`: the original's from-scratch model (`training_idefics/training/random_inefics2_from_mistral.py`):
  an Idefics2 config (default idefics2-8b-base's) filled with Mistral LM weights (rows `[:vocab]` of the
  embedding and LM head; the extra rows stay random) and SigLIP vision weights, the position table
  bicubically interpolated (27 × 27 → 70 × 70, `F.interpolate(scale_factor=…, mode="bicubic")`); the
  connector stays random. The original copies only the SigLIP `.weight` tensors, so every vision bias
  (q/k/v/out, fc1/fc2, layer norms, patch embedding, post_layernorm) keeps its zero init: that is the default
  here; `vision_biases=True` copies them too.
- `export`: params checkpoint → folder `Idefics2ForConditionalGeneration.from_pretrained` loads.

Tensors stream one at a time (per layer for stacked leaves) into a preallocated numpy tree; the export restores
one stored leaf at a time.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from vlm_jax.convert.hf_to_orbax import DTYPES, read_json
from vlm_jax.checkpoint import (PARAMS_DIR, SIDE_FILES, CheckpointError, copy_files, load_config, restore_leaf,
                                save_params, tree_metadata)
from vlm_jax.convert.safetensors_io import SafetensorsDir, parse_size, write_sharded
from vlm_jax.models.hf import llava as hf_llava
from vlm_jax.models.hf import idefics2 as hf_idefics2
from vlm_jax.models.hf.table import BUFFER_KEYS
from vlm_jax.models.config import Idefics2Config, SiglipVisionConfig, TextConfig, preset
from vlm_jax.models.init import abstract_params

ARCHITECTURE = "Idefics2ForConditionalGeneration"


def is_idefics2(hf_config: dict) -> bool:
    """Whether an HF config.json dict describes an Idefics2 checkpoint."""
    return hf_config.get("model_type") == "idefics2" or ARCHITECTURE in (hf_config.get("architectures") or [])


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def _auto_dtype(ckpts: list[SafetensorsDir], keys_per_ckpt: list[list[str]]) -> np.dtype:
    stored = {c.info(k).dtype for c, keys in zip(ckpts, keys_per_ckpt) for k in keys}
    for name in ("bfloat16", "float16"):
        if stored == {DTYPES[name]}:
            return DTYPES[name]
    return DTYPES["float32"]


def _check_keys(ckpt: SafetensorsDir, mappings, where: str, ignore=lambda key: False) -> None:
    """Every table key present with its HF shape, and no other tensor (buffers, tied heads, `ignore` aside)."""
    expected = {key: m.hf_shape for m in mappings for key in m.hf_keys}
    for key in ckpt.keys():
        if key in expected:
            if ckpt.info(key).shape != expected[key]:
                raise CheckpointError(f"{where}: tensor {key!r} in {ckpt.info(key).file.name} has shape "
                                      f"{ckpt.info(key).shape}, config.json implies {expected[key]}")
        elif not (ignore(key) or BUFFER_KEYS.search(key)):
            raise CheckpointError(f"{where}: unexpected tensor {key!r} in {ckpt.info(key).file.name} "
                                  "(config.json implies no such tensor)")
    missing = sorted(set(expected) - set(ckpt.keys()))
    if missing:
        raise CheckpointError(f"{where}: missing tensor {missing[0]!r} (and {len(missing) - 1} more) that "
                              "config.json implies")


def _fill(tree: dict, mappings, ckpt: SafetensorsDir, dtype: np.dtype, transform=None) -> None:
    """Reads each mapping's tensors (layer by layer) into `tree` (allocating leaves that are missing).
    `transform(mapping, key, array)` may replace a tensor before it is laid out."""
    for m in mappings:
        shape = ((len(m.hf_keys),) if m.stacked else ()) + m.shape
        try:
            leaf = _get(tree, m.path)
        except KeyError:
            leaf = np.empty(shape, dtype)
            _set(tree, m.path, leaf)
        for i, key in enumerate(m.hf_keys):
            value = ckpt.read(key)
            if transform is not None:
                value = transform(m, key, value)
            value = m.to_ours(value).astype(dtype, copy=False)
            if m.stacked:
                leaf[i] = value
            else:
                leaf[...] = value


def import_hf(hf: Path, out: Path, dtype: str = "auto") -> Idefics2Config:
    """`hf-to-orbax --hf DIR` for an Idefics2 folder: writes `out/{config.json, params/}` + tokenizer files."""
    hf, out = Path(hf), Path(out)
    hf_config = read_json(hf / "config.json")
    try:
        config = Idefics2Config.from_hf(hf_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{hf / 'config.json'}: {e}") from e
    ckpt = SafetensorsDir(hf)
    mappings = hf_idefics2.tensor_mappings(config)
    tied = config.text_config.tie_word_embeddings
    _check_keys(ckpt, mappings, str(hf), ignore=lambda key: tied and key == "lm_head.weight")
    np_dtype = (_auto_dtype([ckpt], [[k for m in mappings for k in m.hf_keys]]) if dtype == "auto"
                else DTYPES[dtype])
    config = config.with_runtime(param_dtype=np_dtype.name)
    params: dict = {}
    _fill(params, mappings, ckpt, np_dtype)
    save_params(out, params, config)
    copy_files([hf], out, SIDE_FILES)
    return config


# ---------------------------------------------------------------------------------------------------------
# From-scratch assembly (Mistral + SigLIP + random connector).


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """PyTorch's bicubic convolution weights `[..., 4]` for taps at offsets -1, 0, 1, 2 of fraction `t`."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _resize_axis(x: np.ndarray, axis: int, scale_factor: float) -> np.ndarray:
    """1-D bicubic resize along `axis` as `F.interpolate(scale_factor=, mode="bicubic", align_corners=False)`."""
    n_in = x.shape[axis]
    n_out = int(math.floor(n_in * scale_factor))
    ratio = np.float32(1.0 / scale_factor)  # torch passes the given scale, not n_in / n_out
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * ratio - np.float32(0.5)
    base = np.floor(src).astype(np.int64)
    weights = _cubic_weights((src - base).astype(np.float32)).astype(np.float32)  # [n_out, 4]
    taps = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)  # [n_out, 4]
    moved = np.moveaxis(x, axis, 0).astype(np.float32)
    expand = (slice(None),) + (None,) * (moved.ndim - 1)
    out = moved[taps[:, 0]] * weights[:, 0][expand]
    for k in range(1, 4):  # torch's accumulation order: tap by tap
        out = out + moved[taps[:, k]] * weights[:, k][expand]
    return np.moveaxis(out, 0, axis)


def interpolate_positions(table: np.ndarray, side: int) -> np.ndarray:
    """Position table `[s*s, D]` (an s × s grid) → `[side*side, D]`, bicubic as the original's
    `interpolate_pos_embedding` (`F.interpolate(scale_factor=(side/s, side/s), mode="bicubic",
    align_corners=False)`, computed in float32)."""
    s = math.isqrt(table.shape[0])
    if s * s != table.shape[0]:
        raise CheckpointError(f"SigLIP position table has {table.shape[0]} rows, not a square grid")
    scale = side / s
    grid = table.astype(np.float32).reshape(s, s, -1)
    grid = _resize_axis(_resize_axis(grid, 1, scale), 0, scale)  # width taps innermost, as torch sums them
    if grid.shape[:2] != (side, side):
        raise CheckpointError(f"interpolating a {s}x{s} position grid by {scale} gives {grid.shape[:2]}, "
                              f"not {side}x{side}")
    return grid.reshape(side * side, -1)


def _siglip_vision_config(d: dict, where: str) -> SiglipVisionConfig:
    """A SiglipVisionConfig from a `SiglipModel` (vision_config inside) or `SiglipVisionModel` config.json."""
    vision = d.get("vision_config", d) if d.get("model_type") == "siglip" else d
    act = vision.get("hidden_act", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise CheckpointError(f"{where}: SigLIP hidden_act {act!r} is not supported (only gelu_pytorch_tanh)")
    return SiglipVisionConfig.from_hf({**vision, "hidden_act": act})


def _same_shape(a, b, fields, what: str, where: str) -> None:
    for f in fields:
        if getattr(a, f) != getattr(b, f):
            raise CheckpointError(f"{where}: {what} {f}={getattr(a, f)} but the Idefics2 config has {getattr(b, f)}")


def _random_params(config: Idefics2Config, dtype: np.dtype, seed: int) -> dict:
    """HF Idefics2's init, drawn in numpy: N(0, text initializer_range²) weights and embeddings, zero biases,
    unit norms, latents of ones (`Idefics2PreTrainedModel._init_weights` in transformers 4.40)."""
    import flax.linen as nn
    import jax

    rng = np.random.default_rng(seed)
    std = config.text_config.initializer_range

    def draw(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        if names[-1] == "scale" or names[-1] == "latents":
            return np.ones(leaf.shape, dtype)
        if names[-1] == "bias":
            return np.zeros(leaf.shape, dtype)
        return rng.normal(0.0, std, leaf.shape).astype(dtype)

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract_params(config))["params"])


def assemble(vision: Path, llm: Path, out: Path, *, config: Idefics2Config | None = None, dtype: str = "float32",
             seed: int = 0, vision_biases: bool = False) -> Idefics2Config:
    """`hf-to-orbax --family idefics2 --vision SIGLIP_DIR --llm MISTRAL_DIR`: the original's from-scratch model
    (see the module docstring). `config`: the Idefics2 architecture (default idefics2-8b-base's); the SigLIP and
    Mistral folders must match its towers except the vision image size and the (larger) vocabulary."""
    vision, llm, out = Path(vision), Path(llm), Path(out)
    config = preset("idefics2-8b-base") if config is None else config
    np_dtype = DTYPES[dtype]
    config = config.with_runtime(param_dtype=np_dtype.name)
    v_cfg = _siglip_vision_config(read_json(vision / "config.json"), str(vision / "config.json"))
    _same_shape(v_cfg, config.vision_config, ("hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "num_channels", "patch_size"),
                "SigLIP", str(vision))
    t_dict = read_json(llm / "config.json")
    t_cfg = TextConfig.from_hf(t_dict)
    _same_shape(t_cfg, config.text_config, ("hidden_size", "intermediate_size", "num_hidden_layers",
                                            "num_attention_heads", "num_key_value_heads", "head_dim"),
                "Mistral", str(llm))
    if t_cfg.vocab_size > config.text_config.vocab_size:
        raise CheckpointError(f"{llm}: vocab_size {t_cfg.vocab_size} exceeds the Idefics2 config's "
                              f"{config.text_config.vocab_size}")

    params = _random_params(config, np_dtype, seed)
    # Mistral: every tensor, the embedding and LM head into their first vocab rows.
    llm_ckpt = SafetensorsDir(llm)
    llm_maps = hf_llava.tensor_mappings(t_cfg, "llama")
    _check_keys(llm_ckpt, llm_maps, str(llm), ignore=lambda k: t_cfg.tie_word_embeddings and k == "lm_head.weight")
    text: dict = {}
    _fill(text, llm_maps, llm_ckpt, np_dtype)
    ours = params["text_model"]
    for path, leaf in _leaves(text):
        target = _get(ours, path)
        if path == ("embed_tokens", "embedding"):
            target[:t_cfg.vocab_size] = leaf
        elif path == ("lm_head", "kernel"):
            target[:, :t_cfg.vocab_size] = leaf
        else:
            target[...] = leaf
    # SigLIP: weights (and, if asked, biases); the position grid interpolated to the config's.
    vis_ckpt = SafetensorsDir(vision)
    vis_maps = [m for m in hf_idefics2.tensor_mappings(v_cfg, "siglip-vision")
                if vision_biases or m.path[-1] != "bias"]
    _check_keys(vis_ckpt, hf_idefics2.tensor_mappings(v_cfg, "siglip-vision"), str(vision),
                ignore=lambda k: not k.startswith("vision_model.") or k.startswith("vision_model.head."))
    side = config.vision_config.num_patches_per_side

    def positions(m, key, value):
        return interpolate_positions(value, side) if m.path == ("position_embedding",) else value

    target_maps = hf_idefics2.tensor_mappings(config.vision_config, "siglip-vision")
    by_path = {m.path: m for m in target_maps}
    for m in vis_maps:
        m_out = by_path[m.path]  # same leaf in the target config (only the position table differs)
        _fill(params["vision_model"], [m_out if m.path == ("position_embedding",) else m], vis_ckpt, np_dtype,
              transform=positions)
    save_params(out, params, config)
    copy_files([llm], out, SIDE_FILES)
    return config


def _leaves(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


# ---------------------------------------------------------------------------------------------------------
# Export.


def export(ckpt: Path, out: Path, *, dtype: str | None = None, max_shard_size: str = "2GB") -> dict:
    """`orbax-to-hf` for an Idefics2 params checkpoint: `out/{config.json, generation_config.json,
    model*.safetensors}` + tokenizer files. Returns the HF config dict written."""
    ckpt, out = Path(ckpt), Path(out)
    config = load_config(ckpt)
    if not isinstance(config, Idefics2Config):
        raise CheckpointError(f"{ckpt}: not an Idefics2 checkpoint")
    params_dir = ckpt / PARAMS_DIR
    metadata = tree_metadata(params_dir)
    np_dtype = DTYPES[dtype] if dtype else None
    mappings = hf_idefics2.tensor_mappings(config)

    def tensors():
        for m in mappings:
            leaf = restore_leaf(params_dir, m.path, metadata)
            want = ((len(m.hf_keys),) if m.stacked else ()) + m.shape
            if leaf.shape != want:
                raise CheckpointError(f"{params_dir}: param {'/'.join(m.path)} has shape {leaf.shape}, "
                                      f"config.json implies {want}")
            for i, key in enumerate(m.hf_keys):
                value = m.to_hf(leaf[i] if m.stacked else leaf)
                yield key, np.ascontiguousarray(value, dtype=np_dtype or value.dtype)
            del leaf

    out.mkdir(parents=True, exist_ok=True)
    write_sharded(tensors(), out, parse_size(max_shard_size))
    stored = np_dtype or np.dtype(_get(metadata, ("text_model", "embed_tokens", "embedding")).dtype)
    hf_out = {"architectures": [ARCHITECTURE], **config.to_hf(), "dtype": stored.name}
    (out / "config.json").write_text(json.dumps(hf_out, indent=2) + "\n")
    copy_files([ckpt], out, SIDE_FILES)
    gen_path = out / "generation_config.json"
    if not gen_path.is_file():
        t = config.text_config
        gen = {k: v for k, v in (("bos_token_id", t.bos_token_id), ("eos_token_id", t.eos_token_id),
                                 ("pad_token_id", t.pad_token_id)) if v is not None}
        gen_path.write_text(json.dumps(gen, indent=2) + "\n")
    return hf_out
