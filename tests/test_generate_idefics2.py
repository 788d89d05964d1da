"""Greedy generation of an Idefics2 (tiny random transformers model, weights copied) equals transformers'
`generate`: a batch of two left-padded prompts, the first with two images of different sizes (padded, with a
pixel attention mask), longer than Mistral's sliding window."""
import numpy as np
import torch

import hf_tiny
from test_models_idefics2 import image_block, images, load
from vlm_jax.inference.generation import generate, left_pad
from vlm_jax.models import idefics2

NEW = 12


def test_greedy_generation_with_two_image_sizes_equals_transformers():
    hf, cfg, params = load()
    block = image_block(cfg)
    rows = [[1, 5, 6] + block + [7, 8] + block + [9, 10], [1, 20, 21] + block + [22]]
    hf_pixels, hf_mask, pixels, mask, image_mask = images(seed=4)
    want = []
    for r, row in enumerate(rows):
        n = int(image_mask[r].sum())
        with torch.no_grad():
            out = hf.generate(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                              pixel_values=hf_pixels[r:r + 1, :n], pixel_attention_mask=hf_mask[r:r + 1, :n],
                              max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
        want.append(out[0, len(row):].tolist())
    ids, seg = left_pad(rows)
    got = generate(idefics2.Idefics2(cfg), params, ids, seg, pixels, image_mask, max_new_tokens=NEW,
                   eos_token_id=cfg.text_config.vocab_size + 1, pad_token_id=0, pixel_attention_mask=mask)
    assert got.rows() == want
    assert len(set(map(tuple, want))) == 2 and len(set(want[0])) > 2  # not a degenerate repetition
