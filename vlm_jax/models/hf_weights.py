"""Hugging Face weight names ↔ vlm_jax param trees (the table in docs/params.md, as code).

`tensor_mappings(config, layout)` lists, for every leaf of our param tree, the HF key(s) it comes
from (one per layer for scanned stacks) and the transpose/reshape between them, so a converter can
stream a checkpoint tensor by tensor. `params_from_hf_state_dict` / `hf_state_dict_from_params`
apply it to whole in-memory state dicts.

Layouts (key sets):
- "llava-hf":     `LlavaForConditionalGeneration.state_dict()` in transformers 5
                  (`model.vision_tower.…`, `model.multi_modal_projector.…`, `model.language_model.…`, `lm_head.weight`).
- "llava-hf-hub": the same tensors as stored in llava-hf hub checkpoints (transformers 4 names:
                  `vision_tower.vision_model.…`, `multi_modal_projector.…`, `language_model.model.…`,
                  `language_model.lm_head.weight`).
- "clip-vision":  `CLIPVisionModel.state_dict()` in transformers 5 (no `vision_model.` prefix).
- "clip-vision-with-projection": `CLIPVisionModelWithProjection.state_dict()` (`vision_model.…`,
                  `visual_projection.weight`); also the vision half of an openai `CLIPModel` checkpoint.
- "llama":        `LlamaForCausalLM.state_dict()` (`model.…`, `lm_head.weight`).
Params are the plain tree under `variables["params"]` (apply with `{"params": params}`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

import numpy as np

from vlm_jax.models.config import LlavaConfig, TextConfig, VisionConfig

# Buffers some checkpoints carry that are not weights.
_BUFFER_KEYS = re.compile(r"(\.position_ids|rotary_emb\.inv_freq)$")


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One leaf of our tree. `hf_keys` has one key, or one per layer when `stacked` (our leaf is then
    `np.stack([to_ours(hf[k]) for k in hf_keys])`). Shapes are per tensor (per layer)."""

    path: tuple[str, ...]
    hf_keys: tuple[str, ...]
    stacked: bool
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _same(path, keys, stacked, shape):
    return TensorMapping(path, keys, stacked, shape, shape, lambda w: w, lambda w: w)


def _linear(path, keys, stacked, d_in, d_out):
    """torch Linear weight `[out, in]` ↔ kernel `[in, out]`."""
    return TensorMapping(path, keys, stacked, (d_out, d_in), (d_in, d_out), lambda w: w.T, lambda k: k.T)


def _heads_in(path, keys, stacked, d, heads, head_dim):
    """q/k/v weight `[heads*head_dim, d]` ↔ kernel `[d, heads, head_dim]`."""
    return TensorMapping(path, keys, stacked, (heads * head_dim, d), (d, heads, head_dim),
                         lambda w: w.T.reshape(d, heads, head_dim), lambda k: k.reshape(d, heads * head_dim).T)


def _heads_bias(path, keys, stacked, heads, head_dim):
    """q/k/v bias `[heads*head_dim]` ↔ `[heads, head_dim]`."""
    return TensorMapping(path, keys, stacked, (heads * head_dim,), (heads, head_dim),
                         lambda b: b.reshape(heads, head_dim), lambda b: b.reshape(heads * head_dim))


def _heads_out(path, keys, stacked, heads, head_dim, d):
    """o/out weight `[d, heads*head_dim]` ↔ kernel `[heads, head_dim, d]`."""
    return TensorMapping(path, keys, stacked, (d, heads * head_dim), (heads, head_dim, d),
                         lambda w: w.T.reshape(heads, head_dim, d), lambda k: k.reshape(heads * head_dim, d).T)


def _patch(path, key, p, c, d):
    """Conv weight `[d, c, p, p]` ↔ kernel `[p*p*c, d]` over patches flattened as (row, col, channel)."""
    return TensorMapping(path, (key,), False, (d, c, p, p), (p * p * c, d),
                         lambda w: w.transpose(2, 3, 1, 0).reshape(p * p * c, d),
                         lambda k: k.reshape(p, p, c, d).transpose(3, 2, 0, 1))


def _clip_mappings(v: VisionConfig, ours: tuple, hf: str, projection_key: str | None) -> list[TensorMapping]:
    d, h, hd, m, n = v.hidden_size, v.num_attention_heads, v.head_dim, v.intermediate_size, v.num_hidden_layers

    def per_layer(name):
        return tuple(f"{hf}encoder.layers.{i}.{name}" for i in range(n))

    out = [
        _patch(ours + ("patch_embedding",), f"{hf}embeddings.patch_embedding.weight", v.patch_size,
               v.num_channels, d),
        _same(ours + ("class_embedding",), (f"{hf}embeddings.class_embedding",), False, (d,)),
        _same(ours + ("position_embedding",), (f"{hf}embeddings.position_embedding.weight",), False,
              (v.num_positions, d)),
    ]
    for norm in ("pre_layrnorm", "post_layernorm"):
        out += [_same(ours + (norm, "scale"), (f"{hf}{norm}.weight",), False, (d,)),
                _same(ours + (norm, "bias"), (f"{hf}{norm}.bias",), False, (d,))]
    lay = ours + ("layers",)
    for norm in ("layer_norm1", "layer_norm2"):
        out += [_same(lay + (norm, "scale"), per_layer(f"{norm}.weight"), True, (d,)),
                _same(lay + (norm, "bias"), per_layer(f"{norm}.bias"), True, (d,))]
    for proj in ("q_proj", "k_proj", "v_proj"):
        out += [_heads_in(lay + ("self_attn", proj, "kernel"), per_layer(f"self_attn.{proj}.weight"), True, d, h, hd),
                _heads_bias(lay + ("self_attn", proj, "bias"), per_layer(f"self_attn.{proj}.bias"), True, h, hd)]
    out += [
        _heads_out(lay + ("self_attn", "out_proj", "kernel"), per_layer("self_attn.out_proj.weight"), True, h, hd, d),
        _same(lay + ("self_attn", "out_proj", "bias"), per_layer("self_attn.out_proj.bias"), True, (d,)),
        _linear(lay + ("mlp", "fc1", "kernel"), per_layer("mlp.fc1.weight"), True, d, m),
        _same(lay + ("mlp", "fc1", "bias"), per_layer("mlp.fc1.bias"), True, (m,)),
        _linear(lay + ("mlp", "fc2", "kernel"), per_layer("mlp.fc2.weight"), True, m, d),
        _same(lay + ("mlp", "fc2", "bias"), per_layer("mlp.fc2.bias"), True, (d,)),
    ]
    if v.has_projection:
        if projection_key is None:
            raise ValueError("hf_weights: this layout has no visual_projection but VisionConfig.has_projection=True")
        out.append(_linear(ours + ("visual_projection", "kernel"), (projection_key,), False, d, v.projection_dim))
    return out


def _llama_mappings(t: TextConfig, ours: tuple, hf: str, lm_head_key: str) -> list[TensorMapping]:
    d, m, n, hd = t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.head_dim

    def per_layer(name):
        return tuple(f"{hf}layers.{i}.{name}" for i in range(n))

    lay = ours + ("layers",)
    out = [
        _same(ours + ("embed_tokens", "embedding"), (f"{hf}embed_tokens.weight",), False, (t.vocab_size, d)),
        _same(lay + ("input_layernorm", "scale"), per_layer("input_layernorm.weight"), True, (d,)),
        _heads_in(lay + ("self_attn", "q_proj", "kernel"), per_layer("self_attn.q_proj.weight"), True,
                  d, t.num_attention_heads, hd),
        _heads_in(lay + ("self_attn", "k_proj", "kernel"), per_layer("self_attn.k_proj.weight"), True,
                  d, t.num_key_value_heads, hd),
        _heads_in(lay + ("self_attn", "v_proj", "kernel"), per_layer("self_attn.v_proj.weight"), True,
                  d, t.num_key_value_heads, hd),
        _heads_out(lay + ("self_attn", "o_proj", "kernel"), per_layer("self_attn.o_proj.weight"), True,
                   t.num_attention_heads, hd, d),
        _same(lay + ("post_attention_layernorm", "scale"), per_layer("post_attention_layernorm.weight"), True, (d,)),
        _linear(lay + ("mlp", "gate_proj", "kernel"), per_layer("mlp.gate_proj.weight"), True, d, m),
        _linear(lay + ("mlp", "up_proj", "kernel"), per_layer("mlp.up_proj.weight"), True, d, m),
        _linear(lay + ("mlp", "down_proj", "kernel"), per_layer("mlp.down_proj.weight"), True, m, d),
        _same(ours + ("norm", "scale"), (f"{hf}norm.weight",), False, (d,)),
    ]
    if not t.tie_word_embeddings:
        out.append(_linear(ours + ("lm_head", "kernel"), (lm_head_key,), False, d, t.vocab_size))
    return out


def _projector_mappings(c: LlavaConfig, hf: str) -> list[TensorMapping]:
    if c.projector_type != "mlp2x_gelu":
        raise ValueError(f"hf_weights: projector_type={c.projector_type!r} has no HF LLaVA weights")
    dv, d = c.vision_config.hidden_size, c.text_config.hidden_size
    ours = ("multi_modal_projector",)
    out = [_linear(ours + ("linear_1", "kernel"), (f"{hf}linear_1.weight",), False, dv, d),
           _linear(ours + ("linear_2", "kernel"), (f"{hf}linear_2.weight",), False, d, d)]
    if c.multimodal_projector_bias:
        out += [_same(ours + ("linear_1", "bias"), (f"{hf}linear_1.bias",), False, (d,)),
                _same(ours + ("linear_2", "bias"), (f"{hf}linear_2.bias",), False, (d,))]
    return out


LAYOUTS = {
    "llava-hf": LlavaConfig, "llava-hf-hub": LlavaConfig, "clip-vision": VisionConfig,
    "clip-vision-with-projection": VisionConfig, "llama": TextConfig,
}


def tensor_mappings(config, layout: str = "llava-hf") -> list[TensorMapping]:
    """Every leaf of the param tree for `config` (LlavaConfig / VisionConfig / TextConfig, per layout)
    with its HF key(s) and conversions; see the module docstring for the layouts."""
    if layout not in LAYOUTS:
        raise ValueError(f"hf_weights: unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    if not isinstance(config, LAYOUTS[layout]):
        raise ValueError(f"hf_weights: layout {layout!r} needs a {LAYOUTS[layout].__name__}, "
                         f"got {type(config).__name__}")
    if layout == "llava-hf":
        return (_clip_mappings(config.vision_config, ("vision_tower",), "model.vision_tower.", None)
                + _projector_mappings(config, "model.multi_modal_projector.")
                + _llama_mappings(config.text_config, ("language_model",), "model.language_model.", "lm_head.weight"))
    if layout == "llava-hf-hub":
        return (_clip_mappings(config.vision_config, ("vision_tower",), "vision_tower.vision_model.", None)
                + _projector_mappings(config, "multi_modal_projector.")
                + _llama_mappings(config.text_config, ("language_model",), "language_model.model.",
                                  "language_model.lm_head.weight"))
    if layout == "clip-vision":
        return _clip_mappings(config, (), "", None)
    if layout == "clip-vision-with-projection":
        return _clip_mappings(config, (), "vision_model.", "visual_projection.weight")
    return _llama_mappings(config, (), "model.", "lm_head.weight")


def _tied_head_key(config, layout: str) -> str | None:
    """HF key of a tied LM head (present in `state_dict()` but the same tensor as the embedding)."""
    text = config.text_config if isinstance(config, LlavaConfig) else config
    if not isinstance(text, TextConfig) or not text.tie_word_embeddings:
        return None
    return {"llava-hf": "lm_head.weight", "llava-hf-hub": "language_model.lm_head.weight",
            "llama": "lm_head.weight"}[layout]


def params_from_hf_state_dict(config, state_dict: Mapping[str, np.ndarray], layout: str = "llava-hf",
                              strict: bool = True) -> dict:
    """HF tensors (numpy, any float dtype, kept as given) → our nested param dict.

    Raises ValueError naming the key on a missing tensor or a wrong shape; with `strict`, also on keys
    that are neither mapped nor known buffers (`position_ids`, `rotary_emb.inv_freq`, a tied LM head)."""
    mappings = tensor_mappings(config, layout)
    params: dict = {}
    used = set()
    for m in mappings:
        tensors = []
        for key in m.hf_keys:
            if key not in state_dict:
                raise ValueError(f"hf_weights ({layout}): state dict has no tensor {key!r}")
            w = np.asarray(state_dict[key])
            if tuple(w.shape) != m.hf_shape:
                raise ValueError(f"hf_weights ({layout}): {key!r} has shape {tuple(w.shape)}, "
                                 f"the config expects {m.hf_shape}")
            tensors.append(m.to_ours(w))
            used.add(key)
        node = params
        for name in m.path[:-1]:
            node = node.setdefault(name, {})
        node[m.path[-1]] = np.stack(tensors) if m.stacked else tensors[0]
    if strict:
        ignorable = {_tied_head_key(config, layout)}
        extra = sorted(k for k in state_dict if k not in used and k not in ignorable and not _BUFFER_KEYS.search(k))
        if extra:
            raise ValueError(f"hf_weights ({layout}): {len(extra)} unexpected tensors, e.g. {extra[:5]} "
                             "(pass strict=False to ignore them)")
    return params


def hf_state_dict_from_params(config, params: Mapping, layout: str = "llava-hf") -> dict[str, np.ndarray]:
    """Our param tree (plain or boxed arrays) → `{hf_key: np.ndarray}` with exactly the keys of the
    layout's `state_dict()` (a tied LM head is written as a copy of the embedding, as HF lists it)."""
    out: dict[str, np.ndarray] = {}
    for m in tensor_mappings(config, layout):
        node = params
        for name in m.path:
            if name not in node:
                raise ValueError(f"hf_weights ({layout}): params have no {'/'.join(m.path)}")
            node = node[name]
        arr = np.asarray(getattr(node, "value", node))
        want = ((len(m.hf_keys),) if m.stacked else ()) + m.shape
        if arr.shape != want:
            raise ValueError(f"hf_weights ({layout}): {'/'.join(m.path)} has shape {arr.shape}, expected {want}")
        for i, key in enumerate(m.hf_keys):
            out[key] = np.ascontiguousarray(m.to_hf(arr[i] if m.stacked else arr))
    tied = _tied_head_key(config, layout)
    if tied is not None:
        prefix = {"llava-hf": "model.language_model.", "llava-hf-hub": "language_model.model.", "llama": "model."}
        out[tied] = out[prefix[layout] + "embed_tokens.weight"]
    return out
