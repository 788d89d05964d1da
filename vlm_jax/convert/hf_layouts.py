"""Which Hugging Face checkpoint layout a folder holds, and how its tensor names map to one canonical naming.

Canonical names are those of transformers-5 `LlavaForConditionalGeneration.state_dict()`:
`model.vision_tower.<CLIPVisionModel name>`, `model.multi_modal_projector.linear_{1,2}.*`,
`model.language_model.<LlamaModel name>`, `lm_head.weight`.

Layouts read:
- `llava-hf`: `LlavaForConditionalGeneration`, with transformers-5 names (`model.language_model.*`, `lm_head`),
  transformers-4 hub names (`language_model.model.*`, `language_model.lm_head`, `vision_tower.vision_model.*`),
  or what transformers-5 `save_pretrained` writes (`language_model.model.*`, `vision_tower.*`).
- `llava-original`: haotian-liu/LLaVA `LlavaLlamaForCausalLM` (`model.layers.*`, `model.mm_projector.{0,2}`,
  vision tower inside as `model.vision_tower.vision_tower.vision_model.*` or in a separate CLIP folder).
- `clip`: `CLIPVisionModel` (bare or `vision_model.*` names) or a full `CLIPModel` (its text half is ignored).
- `llama`: `LlamaForCausalLM` (`model.*`, `lm_head`).
"""
from __future__ import annotations

import re

from vlm_jax.checkpoint import CheckpointError

LLAVA_HF = "llava-hf"
LLAVA_ORIGINAL = "llava-original"
CLIP = "clip"
LLAMA = "llama"

VISION = "model.vision_tower."
PROJECTOR = "model.multi_modal_projector."
LANGUAGE = "model.language_model."
LM_HEAD = "lm_head.weight"

# Buffers some checkpoints carry that are not parameters.
_BUFFERS = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")
# The parts of a full CLIPModel that the vision tower does not use.
_CLIP_UNUSED = re.compile(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)")
_CLIP_VISION = re.compile(r"^(embeddings|pre_layrnorm|encoder|post_layernorm)\.")

_LLAVA_HF_RULES = [
    (re.compile(r"^(?:model\.)?language_model\.lm_head\.(.*)$"), r"lm_head.\1"),
    (re.compile(r"^lm_head\.(.*)$"), r"lm_head.\1"),
    (re.compile(r"^(?:model\.language_model|language_model\.model)\.(.*)$"), LANGUAGE + r"\1"),
    (re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.*)$"), VISION + r"\1"),
    (re.compile(r"^(?:model\.)?multi_modal_projector\.(.*)$"), PROJECTOR + r"\1"),
]
_LLAVA_ORIGINAL_RULES = [
    (re.compile(r"^model\.vision_tower\.vision_tower\.vision_model\.(.*)$"), VISION + r"\1"),
    (re.compile(r"^model\.mm_projector\.0\.(.*)$"), PROJECTOR + r"linear_1.\1"),
    (re.compile(r"^model\.mm_projector\.2\.(.*)$"), PROJECTOR + r"linear_2.\1"),
    (re.compile(r"^lm_head\.(.*)$"), r"lm_head.\1"),
    (re.compile(r"^model\.(embed_tokens|layers|norm)\.(.*)$"), LANGUAGE + r"\1.\2"),
]
_CLIP_RULES = [
    (re.compile(r"^vision_model\.(.*)$"), VISION + r"\1"),
    (re.compile(r"^((?:embeddings|pre_layrnorm|encoder|post_layernorm)\..*)$"), VISION + r"\1"),
]
_LLAMA_RULES = [
    (re.compile(r"^lm_head\.(.*)$"), r"lm_head.\1"),
    (re.compile(r"^model\.(.*)$"), LANGUAGE + r"\1"),
]
_RULES = {LLAVA_HF: _LLAVA_HF_RULES, LLAVA_ORIGINAL: _LLAVA_ORIGINAL_RULES, CLIP: _CLIP_RULES, LLAMA: _LLAMA_RULES}


def detect_layout(keys: list[str], hf_config: dict, where: str) -> str:
    """Returns LLAVA_HF or LLAVA_ORIGINAL for a LLaVA checkpoint folder; one clear error otherwise."""
    archs = hf_config.get("architectures") or []
    if any(re.search(r"(^|\.)multi_modal_projector\.", k) for k in keys):
        return LLAVA_HF
    if any(k.startswith("model.mm_projector.") for k in keys) or "LlavaLlamaForCausalLM" in archs:
        return LLAVA_ORIGINAL
    if "LlavaForConditionalGeneration" in archs:
        return LLAVA_HF
    sample = sorted(keys)[:5]
    hint = ""
    if any(k.startswith("model.embed_tokens.") for k in keys):
        hint = " It looks like a language model alone: pass it as --llm DIR together with --clip DIR."
    elif any(k.startswith("vision_model.") or _CLIP_VISION.match(k) for k in keys):
        hint = " It looks like a CLIP model alone: pass it as --clip DIR together with --llm DIR."
    raise CheckpointError(
        f"{where}: unknown checkpoint layout (architectures={archs}, tensors e.g. {sample}). Expected llava-hf "
        "LlavaForConditionalGeneration (multi_modal_projector.*) or the original LLaVA LlavaLlamaForCausalLM "
        f"(model.mm_projector.*).{hint}"
    )


def check_component_layout(keys: list[str], layout: str, where: str) -> None:
    """Checks that a --clip folder holds CLIP vision weights and an --llm folder a LlamaForCausalLM."""
    if layout == CLIP and not any(k.startswith("vision_model.") or _CLIP_VISION.match(k) for k in keys):
        raise CheckpointError(
            f"{where}: not a CLIP checkpoint (no vision_model.* or embeddings.* tensors; e.g. {sorted(keys)[:5]})"
        )
    if layout == LLAMA and "model.embed_tokens.weight" not in keys:
        raise CheckpointError(
            f"{where}: not a LlamaForCausalLM checkpoint (no model.embed_tokens.weight; e.g. {sorted(keys)[:5]})"
        )


def canonical_name(layout: str, key: str, where: str) -> str | None:
    """Canonical (transformers-5 Llava) name of `key` in `layout`; None for buffers / unused CLIP text weights."""
    if _BUFFERS.search(key) or (layout == CLIP and _CLIP_UNUSED.match(key)):
        return None
    for pattern, repl in _RULES[layout]:
        if pattern.match(key):
            return pattern.sub(repl, key)
    raise CheckpointError(f"{where}: unexpected tensor {key!r} for the {layout} layout")


def canonical_names(layout: str, keys: list[str], where: str) -> dict[str, str]:
    """Maps canonical name -> stored key for every used tensor of a folder; rejects duplicates."""
    out: dict[str, str] = {}
    for key in keys:
        name = canonical_name(layout, key, where)
        if name is None:
            continue
        if name in out:
            raise CheckpointError(f"{where}: tensors {out[name]!r} and {key!r} both map to {name!r}")
        out[name] = key
    return out
