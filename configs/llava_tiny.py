"""A tiny LLaVA for CPU tests and smoke runs (the `tiny` preset): 3-layer 32-wide CLIP on 28 px images
(4 image tokens), 2-layer 64-wide Llama with GQA (4 heads / 2 kv heads) and Llama-3 RoPE scaling, vocab 256.

    python -m vlm_jax.models.param_count --config configs/llava_tiny.py

Format as configs/llava_1_5_7b.py.
"""
import ml_collections


def get_config():
    return ml_collections.ConfigDict({
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                          "num_attention_heads": 4, "image_size": 28, "patch_size": 14, "projection_dim": 16},
        "text_config": {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                        "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 32}},
        "image_token_id": 255,
        "pad_token_id": 0,
    })
