"""CPU demo of the Idefics2 family: a tiny Idefics2 trained from scratch, in a few minutes, on the corpus of
`configs/demo.py` (12 subjects from bundled photos, `vlm_jax.demo_corpus`).

    python -m vlm_jax.train --config configs/idefics2_demo.py

The same run as the LLaVA demo, through the Idefics2 path: SigLIP-style tower (3 layers, 32 px images, 8 px
patches) → modality projection + perceiver resampler (16 latents) → Mistral decoder (2 layers, sliding window 128);
the original collator's tokenization (each image = `<fake_token_around_image>` + 16 × `<image>` + fake token,
the fake tokens and the text before the first image trained) with the byte-level Idefics2 tokenizer in
configs/idefics2_demo_tokenizer (`vlm_jax.data.idefics2_processor.write_byte_tokenizer`: `<unk>` 0 = pad, `<s>`
1, `</s>` 2, byte b = 3 + b, fake token 259, `<image>` 260); images resized by the Idefics2 processor to 32 px,
zero-padded with a pixel mask. Held-out questions scored before and after training.
"""
import os

from vlm_jax import config_file

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "idefics2_demo_tokenizer")


def get_config():
    c = config_file.load(os.path.join(HERE, "demo.py"))  # the LLaVA demo's run: corpus, steps, batch, optimizer
    c.workdir = "workdir/idefics2_demo"
    c.model_preset = "idefics2-8b-base"  # the architecture; every dimension shrunk below
    c.model_overrides = {
        "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        "perceiver_config": {"resampler_n_latents": 16, "resampler_depth": 2, "resampler_n_heads": 4,
                             "resampler_head_dim": 32, "num_key_value_heads": 2},
        "text_config": {"vocab_size": 261, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                        "sliding_window": 128, "pad_token_id": 0},
        "image_token_id": 260,
    }
    c.data.tokenizer = TOKENIZER
    c.data.image_longest_edge = 32
    c.data.image_shortest_edge = 32
    return c
