"""Hugging Face weight tables, one module per model family; `table` holds the part they share.

Each family module defines `CONFIG` (its top-level config class), `LAYOUTS` (layout name -> the config class a
layout's table is built from), `CANONICAL` (the layout the converter checks imports against), `HUB` (the layout
`orbax-to-hf` writes), `tensor_mappings(config, layout)`, `params_from_hf_state_dict` and
`hf_state_dict_from_params`. A new family is one new module and one entry in `FAMILIES`.
"""
from __future__ import annotations

from types import ModuleType

from vlm_jax.models.hf import idefics2, llava

FAMILIES: dict[str, ModuleType] = {"llava": llava, "idefics2": idefics2}


def family_for_layout(layout: str) -> ModuleType:
    """The family module whose table has `layout`; ValueError listing the known layouts otherwise."""
    for family in FAMILIES.values():
        if layout in family.LAYOUTS:
            return family
    known = sorted(name for family in FAMILIES.values() for name in family.LAYOUTS)
    raise ValueError(f"hf weights: unknown layout {layout!r}; expected one of {known}")


def family_of(config) -> ModuleType:
    """The family module of a top-level model config (e.g. a LlavaConfig)."""
    for family in FAMILIES.values():
        if isinstance(config, family.CONFIG):
            return family
    raise ValueError(f"hf weights: no family for {type(config).__name__}")


def tensor_mappings(config, layout: str):
    """Every leaf of the param tree for `config` in `layout`, with its HF key(s) and conversions."""
    return family_for_layout(layout).tensor_mappings(config, layout)


def params_from_hf_state_dict(config, state_dict, layout: str, strict: bool = True) -> dict:
    """HF state dict (numpy) in `layout` → our nested param dict (see the family module)."""
    return family_for_layout(layout).params_from_hf_state_dict(config, state_dict, layout, strict=strict)


def hf_state_dict_from_params(config, params, layout: str) -> dict:
    """Our param tree → HF state dict in `layout` (see the family module)."""
    return family_for_layout(layout).hf_state_dict_from_params(config, params, layout)
