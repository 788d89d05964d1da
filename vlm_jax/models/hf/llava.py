"""The LLaVA family's Hugging Face weight table: CLIP vision tower, projector, Llama — one place for every
weight name, read by the converter (`vlm_jax.convert`) and the tests.

`tensor_mappings(config, layout)` lists, for every leaf of our param tree, the HF key(s) it comes from (one
per layer for scanned stacks) and the transpose/reshape between them (`table.TensorMapping`), so a converter
can stream a checkpoint tensor by tensor. `params_from_hf_state_dict` / `hf_state_dict_from_params` apply it
to whole in-memory state dicts.

Layouts (key sets):
- "llava-hf":     `LlavaForConditionalGeneration.state_dict()` in transformers 5
                  (`model.vision_tower.…`, `model.multi_modal_projector.…`, `model.language_model.…`,
                  `lm_head.weight`). The converter's canonical names (`CANONICAL`).
- "llava-hf-hub": the same tensors as stored in llava-hf hub checkpoints (transformers 4 names:
                  `vision_tower.vision_model.…`, `multi_modal_projector.…`, `language_model.model.…`,
                  `language_model.lm_head.weight`); what `orbax-to-hf` writes (`HUB`).
- "clip-vision":  `CLIPVisionModel.state_dict()` in transformers 5 (no `vision_model.` prefix).
- "clip-vision-with-projection": `CLIPVisionModelWithProjection.state_dict()` (`vision_model.…`,
                  `visual_projection.weight`); also the vision half of an openai `CLIPModel` checkpoint.
- "llama":        `LlamaForCausalLM.state_dict()` (`model.…`, `lm_head.weight`).
Params are the plain tree under `variables["params"]` (apply with `{"params": params}`).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from vlm_jax.models.config import LlavaConfig, TextConfig, VisionConfig
from vlm_jax.models.hf.table import (TensorMapping, heads_bias, heads_in, heads_out, linear, params_from_state_dict,
                                     patch, same, state_dict_from_params)

CONFIG = LlavaConfig
CANONICAL = "llava-hf"
HUB = "llava-hf-hub"


def _vit_layer_mappings(v, lay: tuple, per_layer) -> list[TensorMapping]:
    """The stacked pre-LN ViT layers both towers share (`vlm_jax.models.vit`; HF `CLIPEncoderLayer`,
    `SiglipEncoderLayer`, `Idefics2EncoderLayer`); `per_layer(name)` gives the HF key of `name` in each layer."""
    d, h, hd, m = v.hidden_size, v.num_attention_heads, v.head_dim, v.intermediate_size
    out = []
    for norm in ("layer_norm1", "layer_norm2"):
        out += [same(lay + (norm, "scale"), per_layer(f"{norm}.weight"), True, (d,)),
                same(lay + (norm, "bias"), per_layer(f"{norm}.bias"), True, (d,))]
    for proj in ("q_proj", "k_proj", "v_proj"):
        out += [heads_in(lay + ("self_attn", proj, "kernel"), per_layer(f"self_attn.{proj}.weight"), True, d, h, hd),
                heads_bias(lay + ("self_attn", proj, "bias"), per_layer(f"self_attn.{proj}.bias"), True, h, hd)]
    return out + [
        heads_out(lay + ("self_attn", "out_proj", "kernel"), per_layer("self_attn.out_proj.weight"), True, h, hd, d),
        same(lay + ("self_attn", "out_proj", "bias"), per_layer("self_attn.out_proj.bias"), True, (d,)),
        linear(lay + ("mlp", "fc1", "kernel"), per_layer("mlp.fc1.weight"), True, d, m),
        same(lay + ("mlp", "fc1", "bias"), per_layer("mlp.fc1.bias"), True, (m,)),
        linear(lay + ("mlp", "fc2", "kernel"), per_layer("mlp.fc2.weight"), True, m, d),
        same(lay + ("mlp", "fc2", "bias"), per_layer("mlp.fc2.bias"), True, (d,)),
    ]


def _attention_mappings(lay: tuple, per_layer, d: int, heads: int, kv_heads: int, hd: int) -> list[TensorMapping]:
    """Bias-free grouped-query attention (`self_attn.{q,k,v,o}_proj`) of Llama/Mistral layers and of the
    perceiver resampler."""
    return [
        heads_in(lay + ("self_attn", "q_proj", "kernel"), per_layer("self_attn.q_proj.weight"), True, d, heads, hd),
        heads_in(lay + ("self_attn", "k_proj", "kernel"), per_layer("self_attn.k_proj.weight"), True, d, kv_heads, hd),
        heads_in(lay + ("self_attn", "v_proj", "kernel"), per_layer("self_attn.v_proj.weight"), True, d, kv_heads, hd),
        heads_out(lay + ("self_attn", "o_proj", "kernel"), per_layer("self_attn.o_proj.weight"), True, heads, hd, d),
    ]


def _swiglu_mappings(ours: tuple, keys, stacked: bool, d_in: int, d_mid: int, d_out: int) -> list[TensorMapping]:
    """gate/up/down projections of a SwiGLU MLP; `keys(name)` gives the HF key(s) of `name`."""
    return [linear(ours + ("gate_proj", "kernel"), keys("gate_proj.weight"), stacked, d_in, d_mid),
            linear(ours + ("up_proj", "kernel"), keys("up_proj.weight"), stacked, d_in, d_mid),
            linear(ours + ("down_proj", "kernel"), keys("down_proj.weight"), stacked, d_mid, d_out)]


def _clip_mappings(v: VisionConfig, ours: tuple, hf: str, projection_key: str | None) -> list[TensorMapping]:
    d = v.hidden_size

    def per_layer(name):
        return tuple(f"{hf}encoder.layers.{i}.{name}" for i in range(v.num_hidden_layers))

    out = [
        patch(ours + ("patch_embedding",), f"{hf}embeddings.patch_embedding.weight", v.patch_size,
               v.num_channels, d),
        same(ours + ("class_embedding",), (f"{hf}embeddings.class_embedding",), False, (d,)),
        same(ours + ("position_embedding",), (f"{hf}embeddings.position_embedding.weight",), False,
              (v.num_positions, d)),
    ]
    for norm in ("pre_layrnorm", "post_layernorm"):
        out += [same(ours + (norm, "scale"), (f"{hf}{norm}.weight",), False, (d,)),
                same(ours + (norm, "bias"), (f"{hf}{norm}.bias",), False, (d,))]
    out += _vit_layer_mappings(v, ours + ("layers",), per_layer)
    if v.has_projection:
        if projection_key is None:
            raise ValueError("hf weights: this layout has no visual_projection but VisionConfig.has_projection=True")
        out.append(linear(ours + ("visual_projection", "kernel"), (projection_key,), False, d, v.projection_dim))
    return out


def _llama_mappings(t: TextConfig, ours: tuple, hf: str, lm_head_key: str) -> list[TensorMapping]:
    d, m, n, hd = t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.head_dim

    def per_layer(name):
        return tuple(f"{hf}layers.{i}.{name}" for i in range(n))

    lay = ours + ("layers",)
    out = [
        same(ours + ("embed_tokens", "embedding"), (f"{hf}embed_tokens.weight",), False, (t.vocab_size, d)),
        same(lay + ("input_layernorm", "scale"), per_layer("input_layernorm.weight"), True, (d,)),
        *_attention_mappings(lay, per_layer, d, t.num_attention_heads, t.num_key_value_heads, hd),
        same(lay + ("post_attention_layernorm", "scale"), per_layer("post_attention_layernorm.weight"), True, (d,)),
        *_swiglu_mappings(lay + ("mlp",), lambda name: per_layer(f"mlp.{name}"), True, d, m, d),
        same(ours + ("norm", "scale"), (f"{hf}norm.weight",), False, (d,)),
    ]
    if not t.tie_word_embeddings:
        out.append(linear(ours + ("lm_head", "kernel"), (lm_head_key,), False, d, t.vocab_size))
    return out


def _projector_mappings(c: LlavaConfig, hf: str) -> list[TensorMapping]:
    if c.projector_type != "mlp2x_gelu":
        raise ValueError(f"hf weights: projector_type={c.projector_type!r} has no HF LLaVA weights")
    dv, d = c.vision_config.hidden_size, c.text_config.hidden_size
    ours = ("multi_modal_projector",)
    out = [linear(ours + ("linear_1", "kernel"), (f"{hf}linear_1.weight",), False, dv, d),
           linear(ours + ("linear_2", "kernel"), (f"{hf}linear_2.weight",), False, d, d)]
    if c.multimodal_projector_bias:
        out += [same(ours + ("linear_1", "bias"), (f"{hf}linear_1.bias",), False, (d,)),
                same(ours + ("linear_2", "bias"), (f"{hf}linear_2.bias",), False, (d,))]
    return out


LAYOUTS = {
    "llava-hf": LlavaConfig, "llava-hf-hub": LlavaConfig, "clip-vision": VisionConfig,
    "clip-vision-with-projection": VisionConfig, "llama": TextConfig,
}


def tensor_mappings(config, layout: str = "llava-hf") -> list[TensorMapping]:
    """Every leaf of the param tree for `config` (LlavaConfig / VisionConfig / TextConfig, per layout)
    with its HF key(s) and conversions; see the module docstring for the layouts."""
    if layout not in LAYOUTS:
        raise ValueError(f"hf weights: unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    if not isinstance(config, LAYOUTS[layout]):
        raise ValueError(f"hf weights: layout {layout!r} needs a {LAYOUTS[layout].__name__}, "
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


def params_from_hf_state_dict(config, state_dict: Mapping[str, np.ndarray], layout: str = CANONICAL,
                              strict: bool = True) -> dict:
    """HF tensors (numpy, any float dtype, kept as given) → our nested param dict.

    Raises ValueError naming the key on a missing tensor or a wrong shape; with `strict`, also on keys
    that are neither mapped nor known buffers (`position_ids`, `rotary_emb.inv_freq`, a tied LM head)."""
    return params_from_state_dict(tensor_mappings(config, layout), state_dict, where=f"hf weights ({layout})",
                                  ignorable=frozenset({_tied_head_key(config, layout)}), strict=strict)


def hf_state_dict_from_params(config, params: Mapping, layout: str = CANONICAL) -> dict[str, np.ndarray]:
    """Our param tree (plain or boxed arrays) → `{hf_key: np.ndarray}` with exactly the keys of the
    layout's `state_dict()` (a tied LM head is written as a copy of the embedding, as HF lists it)."""
    out = state_dict_from_params(tensor_mappings(config, layout), params, where=f"hf weights ({layout})")
    tied = _tied_head_key(config, layout)
    if tied is not None:
        prefix = {"llava-hf": "model.language_model.", "llava-hf-hub": "language_model.model.", "llama": "model."}
        out[tied] = out[prefix[layout] + "embed_tokens.weight"]
    return out
