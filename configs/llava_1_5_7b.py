"""LLaVA-1.5-7B, the shape of llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 (features of layer -2, CLS
dropped: 576 tokens of 1024) → mlp2x_gelu projector → Vicuna-7B (32 layers, 4096 wide, 32 heads, vocab 32064).
7,063,427,072 parameters (= transformers' LlavaForConditionalGeneration for the same config).

    python -m vlm_jax.models.param_count --config configs/llava_1_5_7b.py

`get_config()` is an ml_collections ConfigDict of `LlavaConfig.to_dict()` fields (unlisted ones take their
defaults); `vlm_jax.models.config.from_config_file` turns it into a LlavaConfig. Run-time fields (dtype,
attention_impl, block sizes, remat) go in `text_config` / `vision_config` or via `LlavaConfig.with_runtime`.
"""
import ml_collections


def get_config():
    return ml_collections.ConfigDict({
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768},
        "text_config": {"vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0},
        "image_token_id": 32000,
        "pad_token_id": 32001,
        "projector_type": "mlp2x_gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    })
