"""Builds one llava-hf `config.json` dict for every supported source, and the tensor shapes it implies.

Every import path ends in a transformers `LlavaConfig`-style dict (`text_config` = LlamaConfig fields,
`vision_config` = CLIPVisionConfig fields, `image_token_index`, `vision_feature_layer`, ...), which
`LlavaConfig.from_hf` turns into our config; the family's weight table (`vlm_jax.models.hf.llava`) then
lists every tensor it implies, so a checkpoint that disagrees with its config.json fails naming the tensor.

Image token id for sources without one (original LLaVA, --clip/--llm): `image_token_index = vocab_size`,
with the embedding table left at `vocab_size` rows. Our model splices image features in place of those
positions before any embedding lookup, so the id is never looked up; it is outside the vocabulary, so it
can never collide with a text token nor be generated. (llava-hf instead grew the table to 32064 rows; on
export we pad to that form only because transformers looks the id up — see `orbax_to_hf`.)
"""
from __future__ import annotations

from vlm_jax.checkpoint import CheckpointError

# Vision configs of the CLIP towers LLaVA names in `mm_vision_tower`, used when the original-layout checkpoint
# carries the tower's weights but no --clip folder is given for its config.json.
_CLIP_L14 = dict(
    model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
    num_attention_heads=16, patch_size=14, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    projection_dim=768, attention_dropout=0.0,
)
KNOWN_VISION_TOWERS = {
    "openai/clip-vit-large-patch14-336": {**_CLIP_L14, "image_size": 336},
    "openai/clip-vit-large-patch14": {**_CLIP_L14, "image_size": 224},
}

# LlamaConfig fields copied from the flat config.json of an original-LLaVA checkpoint.
_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
    "rope_scaling", "rope_parameters", "attention_bias", "attention_dropout", "mlp_bias", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "pretraining_tp",
)
# LLaVA's mm_vision_select_feature -> llava-hf's vision_feature_select_strategy.
_SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}


def vision_config_from_clip(clip_config: dict, where: str) -> dict:
    """The CLIPVisionConfig dict of a CLIPVisionModel or CLIPModel config.json."""
    if clip_config.get("model_type") == "clip":
        vision = dict(clip_config.get("vision_config") or {})
    elif clip_config.get("model_type") == "clip_vision_model":
        vision = dict(clip_config)
    else:
        raise CheckpointError(
            f"{where}: model_type {clip_config.get('model_type')!r} is not a CLIP model (clip or clip_vision_model)"
        )
    for key in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        vision.pop(key, None)
    vision["model_type"] = "clip_vision_model"
    return vision


def text_config_from_llama(llm_config: dict, where: str) -> dict:
    """The LlamaConfig dict of a LlamaForCausalLM config.json (or the flat config of an original LLaVA)."""
    if llm_config.get("model_type") not in ("llama", "llava", "llava_llama"):
        raise CheckpointError(f"{where}: model_type {llm_config.get('model_type')!r} is not a Llama model")
    text = {k: llm_config[k] for k in _LLAMA_FIELDS if k in llm_config}
    text["model_type"] = "llama"
    return text


def num_image_tokens(vision: dict, strategy: str) -> int:
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    return patches + (1 if strategy == "full" else 0)


def llava_config(vision: dict, text: dict, *, vision_feature_layer: int = -2, strategy: str = "default") -> dict:
    """A llava-hf config dict joining a vision and a text config; image token id = text vocab size (see above)."""
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "vision_config": vision,
        "text_config": text,
        "image_token_index": text["vocab_size"],
        "image_seq_length": num_image_tokens(vision, strategy),
        "projector_hidden_act": "gelu",
        "vision_feature_layer": vision_feature_layer,
        "vision_feature_select_strategy": strategy,
        "multimodal_projector_bias": True,
        "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
    }


def llava_config_from_original(config: dict, vision: dict | None, where: str) -> dict:
    """The llava-hf config of an original-LLaVA (`LlavaLlamaForCausalLM`) config.json.

    `vision` is the CLIP vision config from --clip; without it the tower named by `mm_vision_tower` must be
    one of KNOWN_VISION_TOWERS.
    """
    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise CheckpointError(
            f"{where}/config.json: mm_projector_type={projector!r}; only LLaVA-1.5's 'mlp2x_gelu' projector is supported"
        )
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if config.get(flag):
            raise CheckpointError(f"{where}/config.json: {flag}=true (extra image tokens) is not supported")
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in _SELECT_FEATURE:
        raise CheckpointError(f"{where}/config.json: unknown mm_vision_select_feature={feature!r}")
    if vision is None:
        tower = config.get("mm_vision_tower")
        if tower not in KNOWN_VISION_TOWERS:
            raise CheckpointError(
                f"{where}/config.json: vision tower {tower!r} is not built in; pass its CLIP folder with --clip DIR"
            )
        vision = dict(KNOWN_VISION_TOWERS[tower])
    if "mm_hidden_size" in config and config["mm_hidden_size"] != vision["hidden_size"]:
        raise CheckpointError(
            f"{where}/config.json: mm_hidden_size={config['mm_hidden_size']} but the CLIP tower's "
            f"hidden_size is {vision['hidden_size']}"
        )
    return llava_config(
        vision,
        text_config_from_llama(config, where),
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        strategy=_SELECT_FEATURE[feature],
    )
