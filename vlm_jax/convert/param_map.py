"""Tensor-by-tensor placement of canonical HF Llava tensors into the `Llava` param tree, and back.

`hf_weights.params_from_hf_state_dict` converts a whole state dict at once; a 7B conversion cannot afford
that (state dict + stacked tree twice in memory), so here each HF tensor is transformed on its own and
written into its slot of a preallocated, layer-stacked numpy tree (`[layers, ...]` leaves from `nn.scan`).

Transforms (torch layout -> flax layout; each has an exact inverse):
- `linear`: `nn.Linear.weight [out, in]` -> kernel `[in, out]`, then reshaped to the kernel's shape
  (`[D, heads, head_dim]` for q/k/v, `[heads, head_dim, D]` for o_proj / out_proj).
- `reshape`: plain reshape (biases `[heads * head_dim]` -> `[heads, head_dim]`, norms, embeddings).
- `patch`: conv weight `[D, C, p, p]` -> `[p * p * C, D]` flattened as (row, col, channel), the order
  in which `CLIPVisionTower` flattens image patches.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterator

import jax
import numpy as np

from vlm_jax.convert.hf_layouts import LANGUAGE, LM_HEAD, PROJECTOR, VISION
from vlm_jax.models.config import LlavaConfig

Path = tuple[str, ...]

_V, _T = VISION.replace(".", r"\."), LANGUAGE.replace(".", r"\.")
# (canonical-name regex, param path, transform); a `(\d+)` group is the layer index on the stacked axis.
_RULES: list[tuple[re.Pattern, Path, str]] = [(re.compile(p), tuple(path.split("/")), kind) for p, path, kind in [
    (_V + r"embeddings\.class_embedding", "vision_tower/class_embedding", "reshape"),
    (_V + r"embeddings\.patch_embedding\.weight", "vision_tower/patch_embedding", "patch"),
    (_V + r"embeddings\.position_embedding\.weight", "vision_tower/position_embedding", "reshape"),
    (_V + r"pre_layrnorm\.weight", "vision_tower/pre_layrnorm/scale", "reshape"),
    (_V + r"pre_layrnorm\.bias", "vision_tower/pre_layrnorm/bias", "reshape"),
    (_V + r"post_layernorm\.weight", "vision_tower/post_layernorm/scale", "reshape"),
    (_V + r"post_layernorm\.bias", "vision_tower/post_layernorm/bias", "reshape"),
    (_V + r"encoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.weight",
     "vision_tower/layers/self_attn/{1}/kernel", "linear"),
    (_V + r"encoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.bias",
     "vision_tower/layers/self_attn/{1}/bias", "reshape"),
    (_V + r"encoder\.layers\.(\d+)\.(layer_norm1|layer_norm2)\.weight", "vision_tower/layers/{1}/scale", "reshape"),
    (_V + r"encoder\.layers\.(\d+)\.(layer_norm1|layer_norm2)\.bias", "vision_tower/layers/{1}/bias", "reshape"),
    (_V + r"encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.weight", "vision_tower/layers/mlp/{1}/kernel", "linear"),
    (_V + r"encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.bias", "vision_tower/layers/mlp/{1}/bias", "reshape"),
    (PROJECTOR.replace(".", r"\.") + r"(linear_1|linear_2)\.weight", "multi_modal_projector/{0}/kernel", "linear"),
    (PROJECTOR.replace(".", r"\.") + r"(linear_1|linear_2)\.bias", "multi_modal_projector/{0}/bias", "reshape"),
    (_T + r"embed_tokens\.weight", "language_model/embed_tokens/embedding", "reshape"),
    (_T + r"norm\.weight", "language_model/norm/scale", "reshape"),
    (_T + r"layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight",
     "language_model/layers/self_attn/{1}/kernel", "linear"),
    (_T + r"layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight", "language_model/layers/mlp/{1}/kernel", "linear"),
    (_T + r"layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight",
     "language_model/layers/{1}/scale", "reshape"),
    (re.escape(LM_HEAD), "language_model/lm_head/kernel", "linear"),
]]
STACKED = ("vision_tower", "layers"), ("language_model", "layers")


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where a canonical HF tensor goes: `path` in the param tree, `layer` on the stacked axis (or None),
    the flax-side `shape` of that slot and the `transform` between the two layouts."""

    path: Path
    layer: int | None
    shape: tuple[int, ...]
    transform: str


def param_shapes(config: LlavaConfig) -> dict:
    """Nested dict of `jax.ShapeDtypeStruct` for every Llava param (no memory is allocated)."""
    from flax.linen import meta
    from vlm_jax.models.llava import init_variables

    boxed = jax.eval_shape(lambda: init_variables(config, jax.random.PRNGKey(0)))
    return meta.unbox(boxed)["params"]


def get_path(tree: dict, path: Path):
    for key in path:
        tree = tree[key]
    return tree


def slot_for(name: str, shapes: dict) -> Slot:
    """The Slot of canonical tensor `name` given the param shapes tree; KeyError if it has none."""
    for pattern, template, transform in _RULES:
        m = pattern.fullmatch(name)
        if not m:
            continue
        groups = m.groups()
        path = tuple(part.format(*groups) for part in template)
        stacked = path[:2] in STACKED
        layer = int(groups[0]) if stacked else None
        leaf = get_path(shapes, path)
        shape = tuple(leaf.shape[1:] if stacked else leaf.shape)
        return Slot(path, layer, shape, transform)
    raise KeyError(f"no Llava parameter for HF tensor {name!r}")


def to_flax(x: np.ndarray, slot: Slot) -> np.ndarray:
    """A torch-layout tensor -> its flax-layout slot value (a new array or a view)."""
    if slot.transform == "linear":
        return x.T.reshape(slot.shape)
    if slot.transform == "patch":
        return x.transpose(2, 3, 1, 0).reshape(slot.shape)
    return x.reshape(slot.shape)


def to_torch(y: np.ndarray, slot: Slot, hf_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `to_flax`: a flax-layout slot value -> the torch-layout tensor of shape `hf_shape`."""
    if slot.transform == "linear":
        return y.reshape(hf_shape[::-1]).T
    if slot.transform == "patch":
        d, c, p, _ = hf_shape
        return y.reshape(p, p, c, d).transpose(3, 2, 0, 1)
    return y.reshape(hf_shape)


def iter_leaves(tree: dict, prefix: Path = ()) -> Iterator[tuple[Path, object]]:
    """(path, leaf) pairs of a nested dict in sorted key order."""
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            yield from iter_leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value
