"""Prompt text → token ids the way LLaVA's `tokenizer_image_token` does it, with image blocks expanded.

LLaVA splits the prompt at each `<image>`, tokenizes every chunk on its own (so each starts with
SentencePiece's prefix space) with BOS only at the very start, and tokenizes the `</s>` closing each
demonstration answer as the EOS token, the text after it with no prefix space. Here each `<image>` becomes `num_image_tokens` copies of the model's
`image_token_id` (the expanded form the model takes) and each `</s>` the tokenizer's `eos_id`.
"""
from __future__ import annotations

from pathlib import Path

from vlm_jax.checkpoint import CheckpointError, tokenizer_spec
from vlm_jax.data.tokenizer import Tokenizer, make_tokenizer
from vlm_jax.evaluate.prompts import IMAGE_PLACEHOLDER, SEP2

def load_tokenizer(spec: str, ckpt: str | Path) -> Tokenizer:
    """The tokenizer named by a config (`vlm_jax.data.tokenizer.make_tokenizer` grammar: "byte" or a tokenizer
    folder), or with "" the one the checkpoint records."""
    spec = spec or tokenizer_spec(ckpt)
    if spec is None:
        raise CheckpointError(f"{ckpt}: records no tokenizer (no tokenizer files, no tokenizer_spec.json); set "
                              "config.tokenizer to 'byte' or a tokenizer folder")
    return make_tokenizer(spec)


def prompt_token_ids(text: str, tokenizer: Tokenizer, image_token_id: int, num_image_tokens: int) -> list[int]:
    """Token ids of a prompt: [BOS] chunk0 [IMG]*num_image_tokens chunk1 ... with each `</s>` as `eos_id`."""
    ids = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    for k, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if k:
            ids.extend([image_token_id] * num_image_tokens)
        for j, piece in enumerate(chunk.split(SEP2)):
            if j:
                ids.append(tokenizer.eos_id)
            if piece:  # After `</s>` the slow Llama tokenizer adds no prefix space (vlm_jax.data.tokenizer).
                ids.extend(tokenizer.encode_continuation(piece) if j else tokenizer.encode(piece))
    return ids
