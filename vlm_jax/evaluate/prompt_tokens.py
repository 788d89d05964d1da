"""Prompt segments → token ids, the way LLaVA's `tokenizer_image_token` tokenizes a few-shot prompt.

LLaVA splits the prompt at each `<image>` and tokenizes every chunk on its own (so each starts with
SentencePiece's prefix space) with BOS only at the very start; `</s>` closing a demonstration answer is the EOS
token and the text after it, in the same chunk, gets no prefix space (the slow legacy=False tokenizer). Here the
prompt already is segments: BOS, then each `Text` encoded on its own (`encode_continuation` right after an
`EndOfTurn`), each `Image` as `num_image_tokens` copies of the model's `image_token_id` (the expanded form the
model takes), each `EndOfTurn` as the tokenizer's `eos_id`.
"""
from __future__ import annotations

from pathlib import Path

from vlm_jax.checkpoint import CheckpointError, tokenizer_spec
from vlm_jax.data.tokenizer import Tokenizer, make_tokenizer
from vlm_jax.evaluate.prompts import EndOfTurn, Image, Prompt, Text, parse_rendered


def load_tokenizer(spec: str, ckpt: str | Path) -> Tokenizer:
    """The tokenizer named by a config (`vlm_jax.data.tokenizer.make_tokenizer` grammar: "byte" or a tokenizer
    folder), or with "" the one the checkpoint records."""
    spec = spec or tokenizer_spec(ckpt)
    if spec is None:
        raise CheckpointError(f"{ckpt}: records no tokenizer (no tokenizer files, no tokenizer_spec.json); set "
                              "config.tokenizer to 'byte' or a tokenizer folder")
    return make_tokenizer(spec)


def prompt_token_ids(prompt: Prompt | str, tokenizer: Tokenizer, image_token_id: int,
                     num_image_tokens: int) -> list[int]:
    """Token ids `[BOS] text0 [IMG]*num_image_tokens text1 ... [EOS] ...` of a prompt's segments (a rendered
    prompt string is read back into segments first)."""
    if isinstance(prompt, str):
        prompt = parse_rendered(prompt)
    ids = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    previous = None
    for segment in prompt.segments:
        if isinstance(segment, Text):
            after_eos = isinstance(previous, EndOfTurn)
            ids.extend(tokenizer.encode_continuation(segment.text) if after_eos else tokenizer.encode(segment.text))
        elif isinstance(segment, Image):
            ids.extend([image_token_id] * num_image_tokens)
        elif isinstance(segment, EndOfTurn):
            ids.append(tokenizer.eos_id)
        else:
            raise TypeError(f"unknown prompt segment {segment!r}")
        previous = segment
    return ids
