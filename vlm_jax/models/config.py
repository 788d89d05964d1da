"""Model configs as frozen, hashable data: CLIP vision tower, Llama text model, and LLaVA on top.

Field names follow Hugging Face's `CLIPVisionConfig`, `LlamaConfig` and `LlavaConfig` so that
`from_hf`/`to_hf` are plain renames. Defaults are HF's defaults, so a partial HF `config.json`
(as stored on the hub) resolves to the same values it does in transformers.

Besides the architecture, each sub-config carries run-time choices that do not change the weights:
`dtype` (compute), `param_dtype` (storage), `attention_impl` ("xla" | "cudnn" | "pallas"),
`attention_block_q` / `attention_block_k` (sequence tiles of the "pallas" kernel; None = the kernel's
per-backend defaults; `attention_block_q` is also the query block of "xla"'s causal block skipping),
`remat_policy` (see `vlm_jax.models.layers.REMAT_POLICIES`) and `mlp_chunk` (positions per chunk of the
Llama MLP, 0 = all at once; see `vlm_jax.models.llama.LlamaMLP`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

ATTENTION_IMPLS = ("xla", "cudnn", "pallas")
REMAT_POLICY_NAMES = ("none", "full", "offload", "dots_saveable", "dots_with_no_batch_dims_saveable")
DTYPES = ("float32", "bfloat16", "float16")
PROJECTOR_TYPES = ("mlp2x_gelu", "linear")
FEATURE_STRATEGIES = ("default", "full")


def _check_choice(cls_name: str, field: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{cls_name}.{field}={value!r}: expected one of {choices}")


def _check_positive(cfg: Any) -> None:
    """Every size/count field (int-typed `*_size`, `num_*`, `head_dim`) is an integer >= 1."""
    for field in dataclasses.fields(cfg):
        name = field.name
        if name.endswith("_size") or name.startswith("num_") or name in ("head_dim", "max_position_embeddings",
                                                                           "projection_dim"):
            value = getattr(cfg, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{type(cfg).__name__}.{name}={value!r}: expected an integer >= 1")


def _check_runtime(cfg: Any) -> None:
    name = type(cfg).__name__
    _check_choice(name, "dtype", cfg.dtype, DTYPES)
    _check_choice(name, "param_dtype", cfg.param_dtype, DTYPES)
    _check_choice(name, "attention_impl", cfg.attention_impl, ATTENTION_IMPLS)
    _check_choice(name, "remat_policy", cfg.remat_policy, REMAT_POLICY_NAMES)
    if not isinstance(cfg.mlp_chunk, int) or cfg.mlp_chunk < 0:
        raise ValueError(f"{name}.mlp_chunk={cfg.mlp_chunk!r}: expected an int >= 0")
    for field in ("attention_block_q", "attention_block_k"):
        block = getattr(cfg, field)
        if block is not None and (not isinstance(block, int) or block < 16 or block & (block - 1)):
            raise ValueError(f"{name}.{field}={block!r}: expected None or a power of two >= 16")


@dataclasses.dataclass(frozen=True)
class RuntimeFields:
    """The run-time choices both towers carry (they do not change the weights); see the module docstring."""

    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "xla"
    attention_block_q: int | None = None
    attention_block_k: int | None = None
    remat_policy: str = "none"
    mlp_chunk: int = 0


RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(RuntimeFields))


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: Llama-3's (HF `rope_type="llama3"`), or dynamic NTK (HF `rope_type="dynamic"`:
    only `factor` is used, the base grows with the sequence past `max_position_embeddings`)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    rope_type: str = "llama3"

    def __post_init__(self):
        _check_choice("RopeScaling", "rope_type", self.rope_type, ("llama3", "dynamic"))

    def to_hf(self) -> dict:
        if self.rope_type == "dynamic":
            return {"rope_type": "dynamic", "factor": self.factor}
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class VisionConfig(RuntimeFields):
    """CLIP ViT vision tower. Defaults = HF `CLIPVisionConfig()` (ViT-B/32 at 224 px)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512
    has_projection: bool = False  # adds `visual_projection` (CLIPVisionModelWithProjection)
    initializer_range: float = 0.02

    def __post_init__(self):
        _check_choice("VisionConfig", "hidden_act", self.hidden_act, ("quick_gelu",))
        _check_positive(self)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"VisionConfig: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VisionConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        _check_runtime(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        """Patches plus the CLS token."""
        return self.num_patches + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VisionConfig":
        return cls(**d)

    def to_hf(self) -> dict:
        """HF `CLIPVisionConfig` dict (run-time fields and `has_projection` are ours only)."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS + ("has_projection",)}
        d["model_type"] = "clip_vision_model"
        return d

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], has_projection: bool = False, **runtime) -> "VisionConfig":
        """From an HF `CLIPVisionConfig` dict; missing fields take HF's defaults."""
        names = {f.name for f in dataclasses.fields(cls)} - set(RUNTIME_FIELDS) - {"has_projection"}
        return cls(**{k: d[k] for k in names if k in d}, has_projection=has_projection, **runtime)


# HF `MistralConfig()` defaults that differ from `LlamaConfig()` (Mistral-7B shape), for partial hub dicts.
MISTRAL_DEFAULTS = {"intermediate_size": 14336, "num_key_value_heads": 8, "max_position_embeddings": 4096 * 32,
                    "sliding_window": 4096}


@dataclasses.dataclass(frozen=True)
class TextConfig(RuntimeFields):
    """Llama decoder. Defaults = HF `LlamaConfig()` (Llama-7B shape).

    `num_key_value_heads` and `head_dim` default to `num_attention_heads` and
    `hidden_size // num_attention_heads`, as in HF; `rope_scaling` accepts a `RopeScaling` or its dict.
    `sliding_window` (None for Llama) makes it a Mistral decoder: a query sees the last `sliding_window`
    slots, itself included (HF `MistralConfig.sliding_window`).
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    initializer_range: float = 0.02
    sliding_window: int | None = None

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        _check_choice("TextConfig", "hidden_act", self.hidden_act, ("silu",))
        _check_positive(self)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"TextConfig: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ValueError(f"TextConfig.sliding_window={self.sliding_window!r}: expected None or an int >= 1")
        _check_runtime(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TextConfig":
        return cls(**d)

    def to_hf(self) -> dict:
        """HF `LlamaConfig` dict in transformers-5 form (`rope_parameters` holds theta and scaling); an HF
        `MistralConfig` dict when `sliding_window` is set."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS + ("rope_theta", "rope_scaling")}
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope.update(self.rope_scaling.to_hf())
        d.update(rope_parameters=rope)
        if self.sliding_window is None:
            del d["sliding_window"]
            d.update(model_type="llama", attention_bias=False, mlp_bias=False)
        else:
            d.update(model_type="mistral")
        return d

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **runtime) -> "TextConfig":
        """From an HF `LlamaConfig` or `MistralConfig` dict (by `model_type`), either transformers-5
        (`rope_parameters`) or older (`rope_theta` + `rope_scaling`) form; missing fields take the HF
        defaults of that model type."""
        if d.get("model_type") == "mistral":
            d = {**MISTRAL_DEFAULTS, **d}
        for flag in ("attention_bias", "mlp_bias"):
            if d.get(flag):
                raise ValueError(f"LlamaConfig.{flag}=True is not supported by vlm_jax's Llama")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise ValueError(f"LlamaConfig.pretraining_tp={d['pretraining_tp']} is not supported")
        names = {f.name for f in dataclasses.fields(cls)} - set(RUNTIME_FIELDS) - {"rope_theta", "rope_scaling"}
        kwargs = {k: d[k] for k in names if k in d}
        if isinstance(kwargs.get("eos_token_id"), list):
            raise ValueError(f"LlamaConfig.eos_token_id={d['eos_token_id']}: a list is not supported")
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        if rope_type == "llama3":
            rope.setdefault("original_max_position_embeddings", kwargs.get("max_position_embeddings", 2048))
            scaling = RopeScaling(**rope)
        elif rope_type == "dynamic":
            scaling = RopeScaling(rope_type="dynamic", factor=float(rope["factor"]))
        elif rope_type == "default":
            scaling = None
        else:
            raise ValueError(f"LlamaConfig rope_type={rope_type!r} is not supported (only 'default', 'llama3', "
                             "'dynamic')")
        return cls(**kwargs, rope_theta=float(theta), rope_scaling=scaling, **runtime)


def _llava_default_vision() -> VisionConfig:
    """The vision tower HF `LlavaConfig()` builds when no `vision_config` is given (CLIP-L/14-336)."""
    return VisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                        num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """LLaVA: CLIP tower → projector → Llama. Defaults = HF `LlavaConfig()`.

    `image_token_id` is HF's `image_token_index`. `vision_feature_layer` indexes HF's
    `hidden_states` tuple (embeddings, layer 1, …, layer L); -2 means "after L-1 layers".
    """

    vision_config: VisionConfig = dataclasses.field(default_factory=_llava_default_vision)
    text_config: TextConfig = dataclasses.field(default_factory=TextConfig)
    image_token_id: int = 32000
    projector_type: str = "mlp2x_gelu"
    multimodal_projector_bias: bool = True
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    pad_token_id: int | None = None

    def __post_init__(self):
        if isinstance(self.vision_config, Mapping):
            object.__setattr__(self, "vision_config", VisionConfig.from_dict(self.vision_config))
        if isinstance(self.text_config, Mapping):
            object.__setattr__(self, "text_config", TextConfig.from_dict(self.text_config))
        _check_choice("LlavaConfig", "projector_type", self.projector_type, PROJECTOR_TYPES)
        _check_choice("LlavaConfig", "vision_feature_select_strategy",
                      self.vision_feature_select_strategy, FEATURE_STRATEGIES)
        if not isinstance(self.vision_feature_layer, int):
            raise ValueError(f"LlavaConfig.vision_feature_layer={self.vision_feature_layer!r}: "
                             "only a single int layer is supported")
        self.vision_layers_used  # validates the range

    @property
    def vision_layers_used(self) -> int:
        """How many CLIP encoder layers LLaVA runs (23 of 24 for `vision_feature_layer=-2`)."""
        n_states = self.vision_config.num_hidden_layers + 1
        layer = self.vision_feature_layer
        if not -n_states <= layer < n_states:
            raise ValueError(f"LlavaConfig.vision_feature_layer={layer} is out of range for a "
                             f"{self.vision_config.num_hidden_layers}-layer vision tower")
        return layer % n_states

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image in `input_ids`: patches, plus CLS for strategy "full" (576 for 336/14)."""
        extra = 1 if self.vision_feature_select_strategy == "full" else 0
        return self.vision_config.num_patches + extra

    def with_runtime(self, **runtime) -> "LlavaConfig":
        """Same model with run-time fields (`dtype`, `param_dtype`, `attention_impl`,
        `attention_block_q`, `attention_block_k`, `remat_policy`, `mlp_chunk`) replaced in both towers."""
        unknown = set(runtime) - set(RUNTIME_FIELDS)
        if unknown:
            raise ValueError(f"LlavaConfig.with_runtime: unknown fields {sorted(unknown)}; expected {RUNTIME_FIELDS}")
        return dataclasses.replace(
            self,
            vision_config=dataclasses.replace(self.vision_config, **runtime),
            text_config=dataclasses.replace(self.text_config, **runtime),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LlavaConfig":
        return cls(**d)

    def to_hf(self) -> dict:
        """HF `LlavaConfig` dict (accepted by `transformers.LlavaConfig(**d)`)."""
        if self.projector_type != "mlp2x_gelu":
            raise ValueError(f"LlavaConfig.projector_type={self.projector_type!r} has no HF LLaVA equivalent")
        if self.vision_config.has_projection:
            raise ValueError("LlavaConfig: a vision tower with has_projection=True has no HF LLaVA equivalent")
        d = {
            "model_type": "llava",
            "vision_config": self.vision_config.to_hf(),
            "text_config": self.text_config.to_hf(),
            "image_token_index": self.image_token_id,
            "image_seq_length": self.num_image_tokens,
            "projector_hidden_act": "gelu",
            "multimodal_projector_bias": self.multimodal_projector_bias,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "tie_word_embeddings": self.text_config.tie_word_embeddings,
        }
        if self.pad_token_id is not None:
            d["pad_token_id"] = self.pad_token_id
        return d

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **runtime) -> "LlavaConfig":
        """From an HF `LlavaConfig` dict (`LlavaConfig.to_dict()` or a hub `config.json`).
        `runtime` sets run-time fields (`RUNTIME_FIELDS`: dtype, attention_impl, ...) in both towers."""
        act = d.get("projector_hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"LlavaConfig.projector_hidden_act={act!r} is not supported (only 'gelu')")
        vision = (VisionConfig.from_hf(d["vision_config"]) if d.get("vision_config") is not None
                  else _llava_default_vision())
        text = TextConfig.from_hf(d["text_config"]) if d.get("text_config") is not None else TextConfig()
        if d.get("tie_word_embeddings") and not text.tie_word_embeddings:
            text = dataclasses.replace(text, tie_word_embeddings=True)
        image_token_id = d.get("image_token_index", d.get("image_token_id", 32000))
        cfg = cls(
            vision_config=vision,
            text_config=text,
            image_token_id=image_token_id,
            multimodal_projector_bias=d.get("multimodal_projector_bias", True),
            vision_feature_layer=d.get("vision_feature_layer", -2),
            vision_feature_select_strategy=d.get("vision_feature_select_strategy", "default"),
            pad_token_id=d.get("pad_token_id"),
        )
        return cfg.with_runtime(**runtime) if runtime else cfg


def from_config_file(path: str) -> LlavaConfig:
    """The LlavaConfig of an ml_collections config file (`get_config()` returning `LlavaConfig.to_dict()`
    fields, as configs/llava_1_5_7b.py). Errors name the file."""
    from vlm_jax import cli, config_file

    config = config_file.load(path, what="model config file")
    try:
        d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        if "vision_config" not in d and "text_config" not in d:
            raise ValueError(f"not a model config (no vision_config/text_config; top-level fields: {sorted(d)[:8]}); "
                             "give a model shape file such as configs/llava_1_5_7b.py")
        return LlavaConfig.from_dict(d)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise cli.InputError(f"model config file {path}: {cli.one_line(e)}") from e


PRESETS = ("llava-1.5-7b", "tiny", "idefics2-8b-base")


def preset(name: str) -> "LlavaConfig | Idefics2Config":
    """Named configs: "llava-1.5-7b" (the llava-hf/llava-1.5-7b-hf shape), "tiny" (CPU tests) and
    "idefics2-8b-base" (HuggingFaceM4/idefics2-8b-base's config.json)."""
    if name == "idefics2-8b-base":
        return Idefics2Config.from_hf(IDEFICS2_8B_BASE_HF)
    if name == "llava-1.5-7b":
        return LlavaConfig(
            vision_config=_llava_default_vision(),
            text_config=TextConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                                   num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                   max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0),
            image_token_id=32000,
            pad_token_id=32001,
        )
    if name == "tiny":
        return LlavaConfig(
            vision_config=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=28, patch_size=14, projection_dim=16),
            text_config=TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rms_norm_eps=1e-5, rope_theta=10000.0,
                                   rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                                            original_max_position_embeddings=32)),
            image_token_id=255,
            pad_token_id=0,
        )
    raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")


# ---------------------------------------------------------------------------------------------------------
# Idefics2 (HF `Idefics2ForConditionalGeneration`): SigLIP vision tower → connector → Mistral decoder.

SIGLIP_ACTS = ("gelu_pytorch_tanh",)


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig(RuntimeFields):
    """SigLIP vision tower of Idefics2 (NaViT-style variable resolution). Defaults = HF
    `Idefics2VisionConfig()`; idefics2-8b uses so400m/14 at 980 px (1152 wide, 27 layers, 70×70 positions)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def __post_init__(self):
        _check_choice("SiglipVisionConfig", "hidden_act", self.hidden_act, SIGLIP_ACTS)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"SiglipVisionConfig: hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        _check_runtime(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches_per_side(self) -> int:
        """Side of the learned position grid (70 for 980/14); any image maps onto it by bucketing."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.num_patches_per_side ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SiglipVisionConfig":
        return cls(**d)

    def to_hf(self) -> dict:
        d = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        d["model_type"] = "idefics2_vision"
        return d

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **runtime) -> "SiglipVisionConfig":
        names = {f.name for f in dataclasses.fields(cls)} - set(RUNTIME_FIELDS)
        return cls(**{k: d[k] for k in names if k in d}, **runtime)


@dataclasses.dataclass(frozen=True)
class PerceiverConfig:
    """Idefics2 perceiver resampler (HF `Idefics2PerceiverConfig`): `resampler_depth` cross-attention layers
    turn any number of image patches into `resampler_n_latents` tokens. Its width is the text model's
    `hidden_size`; its compute dtype is the text model's."""

    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    resampler_n_latents: int = 64
    resampler_depth: int = 3
    resampler_n_heads: int = 16
    resampler_head_dim: int = 96
    num_key_value_heads: int = 4
    initializer_range: float = 0.02

    def __post_init__(self):
        _check_choice("PerceiverConfig", "hidden_act", self.hidden_act, ("silu",))
        if self.resampler_n_heads % self.num_key_value_heads:
            raise ValueError(f"PerceiverConfig: resampler_n_heads {self.resampler_n_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PerceiverConfig":
        return cls(**d)

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "PerceiverConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: d[k] for k in names if k in d})


def _idefics2_default_text() -> TextConfig:
    """The text model HF `Idefics2Config()` builds when no `text_config` is given (Mistral-7B)."""
    return TextConfig.from_hf({"model_type": "mistral", "max_position_embeddings": 4096 * 8, "rms_norm_eps": 1e-5,
                               "pad_token_id": 0})


@dataclasses.dataclass(frozen=True)
class Idefics2Config:
    """Idefics2: SigLIP → modality projection (SwiGLU MLP) + perceiver resampler → Mistral. Defaults = HF
    `Idefics2Config()`. Each image is `<fake_token_around_image>` + `num_image_tokens` × `image_token_id` +
    `<fake_token_around_image>` in `input_ids`."""

    vision_config: SiglipVisionConfig = dataclasses.field(default_factory=SiglipVisionConfig)
    perceiver_config: PerceiverConfig = dataclasses.field(default_factory=PerceiverConfig)
    text_config: TextConfig = dataclasses.field(default_factory=_idefics2_default_text)
    image_token_id: int = 32001

    def __post_init__(self):
        for field, cls in (("vision_config", SiglipVisionConfig), ("perceiver_config", PerceiverConfig),
                           ("text_config", TextConfig)):
            if isinstance(getattr(self, field), Mapping):
                object.__setattr__(self, field, cls.from_dict(getattr(self, field)))

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image in `input_ids` (the perceiver's latents: 64)."""
        return self.perceiver_config.resampler_n_latents

    @property
    def pad_token_id(self) -> int | None:
        return self.text_config.pad_token_id

    def with_runtime(self, **runtime) -> "Idefics2Config":
        """Same model with run-time fields replaced in the vision and text towers (the connector follows the
        text tower)."""
        unknown = set(runtime) - set(RUNTIME_FIELDS)
        if unknown:
            raise ValueError(f"Idefics2Config.with_runtime: unknown fields {sorted(unknown)}; expected {RUNTIME_FIELDS}")
        return dataclasses.replace(self, vision_config=dataclasses.replace(self.vision_config, **runtime),
                                   text_config=dataclasses.replace(self.text_config, **runtime))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Idefics2Config":
        return cls(**d)

    def to_hf(self) -> dict:
        """HF `Idefics2Config` dict (accepted by `transformers.Idefics2Config(**d)`)."""
        text = self.text_config.to_hf()
        text["model_type"] = "mistral"  # Idefics2 always builds its text model as Mistral
        perceiver = {**self.perceiver_config.to_dict(), "hidden_size": self.text_config.hidden_size,
                     "model_type": "idefics2_perceiver"}
        return {"model_type": "idefics2", "vision_config": self.vision_config.to_hf(),
                "perceiver_config": perceiver, "text_config": text, "image_token_id": self.image_token_id,
                "tie_word_embeddings": self.text_config.tie_word_embeddings}

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **runtime) -> "Idefics2Config":
        """From an HF `Idefics2Config` dict (a hub `config.json`); missing fields take HF's defaults, including
        HF's rule that a perceiver of another width takes the text model's width and `rms_norm_eps`."""
        vision = SiglipVisionConfig.from_hf(d.get("vision_config") or {})
        text_d = dict(d.get("text_config") or {"model_type": "mistral", "max_position_embeddings": 4096 * 8,
                                                 "rms_norm_eps": 1e-5, "pad_token_id": 0})
        text_d.setdefault("model_type", "mistral")
        text = TextConfig.from_hf(text_d)
        if d.get("tie_word_embeddings") and not text.tie_word_embeddings:
            text = dataclasses.replace(text, tie_word_embeddings=True)
        perceiver_d = dict(d.get("perceiver_config") or {})
        if perceiver_d.get("hidden_size", 4096) != text.hidden_size:
            perceiver_d["rms_norm_eps"] = text.rms_norm_eps
        cfg = cls(vision_config=vision, perceiver_config=PerceiverConfig.from_hf(perceiver_d), text_config=text,
                  image_token_id=d.get("image_token_id", 32001))
        return cfg.with_runtime(**runtime) if runtime else cfg


# HuggingFaceM4/idefics2-8b-base `config.json` (the architecture fields; transformers fills the rest).
IDEFICS2_8B_BASE_HF = {
    "architectures": ["Idefics2ForConditionalGeneration"], "model_type": "idefics2", "image_token_id": 32001,
    "tie_word_embeddings": False,
    "perceiver_config": {"hidden_act": "silu", "resampler_depth": 3, "resampler_head_dim": 96, "resampler_n_heads": 16,
                         "resampler_n_latents": 64, "num_key_value_heads": 4},
    "text_config": {"model_type": "mistral", "max_position_embeddings": 32768, "pad_token_id": 0,
                    "rms_norm_eps": 1e-05, "sliding_window": 4096, "vocab_size": 32003},
    "vision_config": {"hidden_size": 1152, "image_size": 980, "intermediate_size": 4304, "num_attention_heads": 16,
                      "num_hidden_layers": 27, "patch_size": 14},
}


def model_config_from_dict(d: Mapping[str, Any]) -> "LlavaConfig | Idefics2Config":
    """The model family's config from its `to_dict()` (as stored next to params): Idefics2 when the dict has a
    `perceiver_config`, else LLaVA."""
    return Idefics2Config.from_dict(d) if "perceiver_config" in d else LlavaConfig.from_dict(d)
