"""Tiny random transformers checkpoints written to disk for the conversion and generation tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, LlamaConfig,
                          LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration)

VOCAB = 120
IMAGE_TOKEN = 100  # inside the vocabulary, as llava-hf (32000 of 32064)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
              patch_size=14, projection_dim=16)
TEXT = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
SHARD = "40KB"  # several shards, so the index path is exercised


def llava_hf(path: Path, dtype=torch.float32, seed: int = 0) -> LlavaForConditionalGeneration:
    """A random LlavaForConditionalGeneration saved with save_pretrained (sharded safetensors) + a
    CLIP preprocessor config and a tokenizer_config stand-in."""
    torch.manual_seed(seed)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**VISION), text_config=LlamaConfig(**TEXT),
                         image_token_index=IMAGE_TOKEN, image_seq_length=4)
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    with torch.no_grad():  # norms are ones / zeros at init: randomise them so a mix-up shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, max_shard_size=SHARD)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(path)
    return model


def hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors, by stored name."""
    from safetensors import safe_open

    out = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def canonical(name: str) -> str:
    """Stored llava-hf name (transformers 4 or 5 spelling) -> transformers-5 in-memory name."""
    for old, new in (("language_model.lm_head.", "lm_head."), ("language_model.model.", "model.language_model."),
                     ("vision_tower.vision_model.", "model.vision_tower."), ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def original_llava(src: Path, dst: Path, *, tower_inside: bool, clip_dir: Path | None = None) -> None:
    """Rewrites a llava-hf folder in the original LLaVA (LlavaLlamaForCausalLM) layout; the vision tower
    goes inside (`model.vision_tower.vision_tower.vision_model.*`) or to `clip_dir` as a CLIPVisionModel."""
    dst.mkdir(parents=True)
    sd = {canonical(k): v for k, v in hf_state_dict(src).items()}
    hf_cfg = json.loads((src / "config.json").read_text())
    out, clip = {}, {}
    for name, t in sd.items():
        if name.startswith("model.vision_tower."):
            rest = name[len("model.vision_tower."):]
            if tower_inside:
                out["model.vision_tower.vision_tower.vision_model." + rest] = t
            else:
                clip["vision_model." + rest] = t
        elif name.startswith("model.multi_modal_projector.linear_1."):
            out["model.mm_projector.0." + name.rsplit(".", 1)[1]] = t
        elif name.startswith("model.multi_modal_projector.linear_2."):
            out["model.mm_projector.2." + name.rsplit(".", 1)[1]] = t
        elif name.startswith("model.language_model."):
            out["model." + name[len("model.language_model."):]] = t
        else:
            out[name] = t
    half = len(out) // 2
    names = sorted(out)
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: out[k].contiguous() for k in keys}, dst / file, metadata={"format": "pt"})
    (dst / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    text = hf_cfg["text_config"]
    config = {**{k: v for k, v in text.items() if k != "rope_parameters"}, "rope_theta": 10000.0,
              "rope_scaling": None, "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
              "mm_vision_tower": "tiny/clip", "mm_hidden_size": VISION["hidden_size"],
              "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": hf_cfg["vision_feature_layer"],
              "mm_vision_select_feature": "patch", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
              "image_aspect_ratio": "pad", "use_mm_proj": True, "tune_mm_mlp_adapter": False}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    if clip_dir is not None:
        clip_dir.mkdir(parents=True)
        if clip:
            save_file({k: v.contiguous() for k, v in clip.items()}, clip_dir / "model.safetensors",
                      metadata={"format": "pt"})
        (clip_dir / "config.json").write_text(json.dumps(
            {**hf_cfg["vision_config"], "architectures": ["CLIPVisionModel"]}))
        if (src / "preprocessor_config.json").is_file():
            (clip_dir / "preprocessor_config.json").write_text((src / "preprocessor_config.json").read_text())


def clip_and_llama(clip_dir: Path, llm_dir: Path, seed: int = 1) -> tuple[CLIPModel, LlamaForCausalLM]:
    """A full random CLIPModel (its text half must be ignored) and a LlamaForCausalLM, saved."""
    torch.manual_seed(seed)
    clip = CLIPModel(CLIPConfig(vision_config=VISION, text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=50,
        bos_token_id=0, eos_token_id=1, pad_token_id=1), projection_dim=16))
    clip.save_pretrained(clip_dir)
    llm = LlamaForCausalLM(LlamaConfig(**TEXT))
    llm.save_pretrained(llm_dir, max_shard_size=SHARD)
    return clip, llm
