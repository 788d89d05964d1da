"""Which parameters train: split a params tree into trained and frozen parts and merge it back.

A LLaVA params tree has three top-level modules (`vision_tower`, `multi_modal_projector`,
`language_model`), an Idefics2 one `vision_model`, `connector`, `text_model`; freezing is by top-level module name. Gradients are taken with respect to the
trained part only, so frozen parameters get no gradient buffers and no optimizer state.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import jax
from flax import traverse_util

LLAVA_MODULES = ("vision_tower", "multi_modal_projector", "language_model")
IDEFICS2_MODULES = ("vision_model", "connector", "text_model")
MODULES = LLAVA_MODULES + IDEFICS2_MODULES  # a run's model family has one of the two sets
NO_DECAY_LEAVES = ("bias", "scale")  # biases and LayerNorm/RMSNorm scales, as HF Trainer excludes them


def parse_module_list(spec: str | Iterable[str]) -> tuple[str, ...]:
    """"vision_tower,language_model" (or a sequence of names) -> validated tuple of module names."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
    names = tuple(n for n in names if n)
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        raise ValueError(f"unknown module names {unknown} in {spec!r}; known: LLaVA {list(LLAVA_MODULES)}, "
                         f"Idefics2 {list(IDEFICS2_MODULES)}")
    return names


def split_params(params: Mapping[str, Any], frozen: Iterable[str]) -> tuple[dict, dict]:
    """`params` -> (trained, frozen) sub-dicts by top-level module name (leaves are shared, not copied)."""
    frozen = set(frozen)
    missing = frozen - set(params)
    if missing:
        raise ValueError(f"frozen modules {sorted(missing)} are not in the params tree {sorted(params)}")
    trained = {k: v for k, v in params.items() if k not in frozen}
    kept = {k: v for k, v in params.items() if k in frozen}
    return trained, kept


def merge_params(trained: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict:
    """Inverse of `split_params`."""
    overlap = set(trained) & set(frozen)
    if overlap:
        raise ValueError(f"modules {sorted(overlap)} are both trained and frozen")
    return {**trained, **frozen}


def weight_decay_mask(params: Mapping[str, Any]) -> dict:
    """Bool tree like `params`: True where AdamW applies weight decay (not biases or norm scales)."""
    flat = traverse_util.flatten_dict(params, keep_empty_nodes=False)
    return traverse_util.unflatten_dict({path: path[-1] not in NO_DECAY_LEAVES for path in flat})


def count_params(tree: Any) -> int:
    """Number of scalars in a tree of arrays (or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
