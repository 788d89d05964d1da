"""CPU demo: a tiny LLaVA trained from scratch, in a few minutes, on a corpus built from bundled photos.

    python -m vlm_jax.train --config configs/demo.py

Builds WORKDIR/corpus (vlm_jax.demo_corpus: 12 subjects from scikit-image / matplotlib sample
photos, random augmentations, interleaved "<image> This is a cat." documents -> ArrayRecord
shards), scores the held-out questions ("What is in the image? Answer: ...", other augmentations,
12 choices ranked by log-likelihood) with the untrained model, trains every module, and scores
them again.
"""
from vlm_jax.training.config import base_config


def get_config():
    c = base_config()
    c.workdir = "workdir/demo"
    c.model_preset = "tiny"
    c.model_overrides = {
        "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        "text_config": {"vocab_size": 260, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                        "rope_scaling": None},
        "image_token_id": 3,  # ByteTokenizer: 0 pad, 1 bos, 2 eos, 3 image, 4.. bytes
        "pad_token_id": 0,
    }
    c.frozen = ""  # from scratch: everything trains
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    c.global_batch_size = 8
    c.num_train_steps = 300
    c.optim.learning_rate = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 20
    c.optim.min_lr_ratio = 0.1
    c.optim.weight_decay = 0.01
    c.data.tokenizer = "byte"
    c.data.seq_len = 256
    c.data.max_images = 6
    c.data.max_images_per_row = 8
    c.data.num_epochs = -1
    c.checkpoint.save_every = 100
    c.checkpoint.keep = 2
    c.log_every = 25
    c.demo_corpus.build = True
    return c
