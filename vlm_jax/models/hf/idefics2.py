"""The Idefics2 family's Hugging Face weight table: SigLIP vision tower, connector (modality projection +
perceiver resampler), Mistral decoder — every weight name of the family, read by the converter and the tests.

Layout "idefics2": `Idefics2ForConditionalGeneration.state_dict()` (`model.vision_model.…`, `model.connector.…`,
`model.text_model.…`, `lm_head.weight`); the same names in transformers 4.40+ (hub checkpoints) and 5.
Also "siglip-vision" (`SiglipVisionModel`, `vision_model.…`, for the from-scratch assembly; its attention-pooling
`head.…` is not part of Idefics2). A `MistralForCausalLM` is the llava family's "llama" layout.
Params are the plain tree under `variables["params"]`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from vlm_jax.models.config import Idefics2Config, SiglipVisionConfig, TextConfig
from vlm_jax.models.hf.llava import _attention_mappings, _llama_mappings, _swiglu_mappings, _vit_layer_mappings
from vlm_jax.models.hf.table import TensorMapping, params_from_state_dict, patch, same, state_dict_from_params

CONFIG = Idefics2Config
CANONICAL = HUB = "idefics2"
LAYOUTS = {"idefics2": Idefics2Config, "siglip-vision": SiglipVisionConfig}


def _siglip_mappings(v: SiglipVisionConfig, ours: tuple, hf: str) -> list[TensorMapping]:
    """The SigLIP tower (`Idefics2VisionTransformer` / `SiglipVisionTransformer` under `hf`)."""
    d = v.hidden_size

    def per_layer(name):
        return tuple(f"{hf}encoder.layers.{i}.{name}" for i in range(v.num_hidden_layers))

    out = [
        patch(ours + ("patch_embedding", "kernel"), f"{hf}embeddings.patch_embedding.weight", v.patch_size,
               v.num_channels, d),
        same(ours + ("patch_embedding", "bias"), (f"{hf}embeddings.patch_embedding.bias",), False, (d,)),
        same(ours + ("position_embedding",), (f"{hf}embeddings.position_embedding.weight",), False,
              (v.num_positions, d)),
        same(ours + ("post_layernorm", "scale"), (f"{hf}post_layernorm.weight",), False, (d,)),
        same(ours + ("post_layernorm", "bias"), (f"{hf}post_layernorm.bias",), False, (d,)),
    ]
    return out + _vit_layer_mappings(v, ours + ("layers",), per_layer)


def _connector_mappings(c: Idefics2Config, ours: tuple, hf: str) -> list[TensorMapping]:
    """Modality projection + perceiver resampler (`Idefics2Connector` under `hf`)."""
    p, t = c.perceiver_config, c.text_config
    d, hd = t.hidden_size, p.resampler_head_dim
    res, lay = f"{hf}perceiver_resampler.", ours + ("perceiver_resampler", "layers")

    def per_layer(name):
        return tuple(f"{res}layers.{i}.{name}" for i in range(p.resampler_depth))

    out = _swiglu_mappings(ours + ("modality_projection",), lambda name: (f"{hf}modality_projection.{name}",),
                           False, c.vision_config.hidden_size, t.intermediate_size, d)
    out += [same(ours + ("perceiver_resampler", "latents"), (f"{res}latents",), False, (p.resampler_n_latents, d)),
            same(ours + ("perceiver_resampler", "norm", "scale"), (f"{res}norm.weight",), False, (d,))]
    for norm in ("input_latents_norm", "input_context_norm", "post_attention_layernorm"):
        out.append(same(lay + (norm, "scale"), per_layer(f"{norm}.weight"), True, (d,)))
    out += _attention_mappings(lay, per_layer, d, p.resampler_n_heads, p.num_key_value_heads, hd)
    return out + _swiglu_mappings(lay + ("mlp",), lambda name: per_layer(f"mlp.{name}"), True, d, 4 * d, d)


def tensor_mappings(config, layout: str = CANONICAL) -> list[TensorMapping]:
    """Every leaf of the param tree for `config` (per layout) with its HF key(s) and conversions."""
    if layout not in LAYOUTS:
        raise ValueError(f"hf weights: unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    if not isinstance(config, LAYOUTS[layout]):
        raise ValueError(f"hf weights: layout {layout!r} needs a {LAYOUTS[layout].__name__}, "
                         f"got {type(config).__name__}")
    if layout == "idefics2":
        return (_siglip_mappings(config.vision_config, ("vision_model",), "model.vision_model.")
                + _connector_mappings(config, ("connector",), "model.connector.")
                + _llama_mappings(config.text_config, ("text_model",), "model.text_model.", "lm_head.weight"))
    return _siglip_mappings(config, (), "vision_model.")


def params_from_hf_state_dict(config, state_dict: Mapping[str, np.ndarray], layout: str = CANONICAL,
                              strict: bool = True) -> dict:
    """HF tensors (numpy, kept in their dtype) → our nested param dict; ValueError naming the key on a missing
    tensor, a wrong shape or (with `strict`) an unmapped key (a SigLIP checkpoint's `head.…` and text tower
    are ignored for "siglip-vision")."""
    if layout == "siglip-vision":
        state_dict = {k: v for k, v in state_dict.items() if k.startswith("vision_model.")
                      and not k.startswith("vision_model.head.")}
    return params_from_state_dict(tensor_mappings(config, layout), state_dict, where=f"hf weights ({layout})",
                                  ignorable=frozenset(_tied_keys(config, layout)), strict=strict)


def _tied_keys(config, layout: str) -> set:
    text = config.text_config if isinstance(config, Idefics2Config) else config
    return {"lm_head.weight"} if isinstance(text, TextConfig) and text.tie_word_embeddings else set()


def hf_state_dict_from_params(config, params: Mapping, layout: str = CANONICAL) -> dict[str, np.ndarray]:
    """Our param tree → `{hf_key: np.ndarray}` with exactly the keys of the layout's `state_dict()`."""
    out = state_dict_from_params(tensor_mappings(config, layout), params, where=f"hf weights ({layout})")
    if _tied_keys(config, layout):
        out["lm_head.weight"] = out[("model.text_model." if layout == "idefics2" else "model.") + "embed_tokens.weight"]
    return out
