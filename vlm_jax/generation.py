"""Batched KV-cache generation for `Llava`: one jit-compiled prefill, then a `lax.while_loop` of one-token
decode steps over the cache, greedy or temperature / top-p sampling, stopping per row at EOS.

Batch-first and shape-bucket friendly: prompts are left-padded to a common length (pick it from a few
buckets to bound recompiles), every row may have its own number of images (`image_mask`), and the compiled
function depends only on (batch, prompt length, image slots, max_new_tokens).
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models.llama import init_cache
from vlm_jax.models.llava import Llava, check_image_tokens


@dataclasses.dataclass(frozen=True)
class GenerationOutput:
    """tokens int32 `[batch, max_new_tokens]` (the new tokens, EOS included, then `pad_token_id`);
    num_tokens int32 `[batch]` (how many of a row's tokens are real)."""

    tokens: np.ndarray
    num_tokens: np.ndarray

    def rows(self) -> list[list[int]]:
        """The new tokens of each row as Python lists (EOS included when generated)."""
        return [row[:n].tolist() for row, n in zip(self.tokens, self.num_tokens)]


def left_pad(sequences: Sequence[Sequence[int]], length: int | None = None, pad_token_id: int = 0):
    """Left-pads token lists to `length` (default: the longest) → (input_ids int32 `[b, length]`,
    segment_ids int32 `[b, length]`: 1 on real tokens, 0 on padding)."""
    length = max(len(s) for s in sequences) if length is None else length
    ids = np.full((len(sequences), length), pad_token_id, np.int32)
    seg = np.zeros((len(sequences), length), np.int32)
    for row, s in enumerate(sequences):
        if len(s) > length:
            raise ValueError(f"left_pad: row {row} has {len(s)} tokens, more than length {length}")
        if len(s):
            ids[row, length - len(s):] = s
            seg[row, length - len(s):] = 1
    return ids, seg


def sample_tokens(logits, rng, temperature, top_p):
    """Next tokens `[b]` from float32 logits `[b, vocab]`: argmax when `temperature <= 0`, else a draw from
    softmax(logits / temperature) restricted to the smallest set of tokens whose probability reaches `top_p`."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each sorted token
    kept = jnp.where(before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)  # the smallest kept logit (the top one always is)
    sampled = jax.random.categorical(rng, jnp.where(scaled >= threshold, scaled, -jnp.inf), axis=-1)
    return jnp.where(temperature > 0, sampled.astype(jnp.int32), greedy)


@partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _generate(model: Llava, params, input_ids, segment_ids, pixel_values, image_mask, rng, temperature, top_p,
              eos_token_id, pad_token_id, *, max_new_tokens: int):
    batch, prompt_len = input_ids.shape
    real = segment_ids > 0
    positions = jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0).astype(jnp.int32)
    prompt_lengths = jnp.sum(real, axis=1).astype(jnp.int32)
    cache = init_cache(model.config.text_config, batch, prompt_len + max_new_tokens)
    variables = {"params": params}
    logits, cache = model.apply(variables, input_ids, pixel_values, image_mask, positions, segment_ids,
                                cache=cache, cache_index=0)
    rng, step_rng = jax.random.split(rng)
    first = sample_tokens(logits[:, -1], step_rng, temperature, top_p)
    tokens = jnp.full((batch, max_new_tokens), pad_token_id, jnp.int32).at[:, 0].set(first)
    done = first == eos_token_id

    def cond(state):
        step, _, _, done, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, cache, tokens, done, rng = state
        last = jax.lax.dynamic_slice_in_dim(tokens, step - 1, 1, axis=1)
        pos = (prompt_lengths + step - 1)[:, None]
        logits, cache = model.apply(variables, last, None, None, pos, jnp.ones_like(last), cache=cache,
                                    cache_index=prompt_len + step - 1)
        rng, step_rng = jax.random.split(rng)
        new = sample_tokens(logits[:, -1], step_rng, temperature, top_p)
        new = jnp.where(done, pad_token_id, new)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], step, axis=1)
        return step + 1, cache, tokens, done | (new == eos_token_id), rng

    _, _, tokens, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, tokens, done, rng))
    is_eos = tokens == eos_token_id
    num_tokens = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, max_new_tokens)
    return tokens, num_tokens.astype(jnp.int32)


def generate(model: Llava, params, input_ids, segment_ids, pixel_values, image_mask, *, max_new_tokens: int,
             eos_token_id: int, pad_token_id: int = 0, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0) -> GenerationOutput:
    """Continues each left-padded prompt row by up to `max_new_tokens` tokens.

    input_ids / segment_ids int32 `[b, s]` (from `left_pad`; image positions hold `image_token_id` repeated
    `num_image_tokens` times per image), pixel_values float32 `[b, n_img, H, W, 3]`, image_mask bool
    `[b, n_img]` (or both None for text only). Greedy when `temperature == 0`. A row stops after it emits
    `eos_token_id`; the loop stops when every row has.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    c = model.config
    if pixel_values is None:
        image_mask = np.zeros((input_ids.shape[0], 0), bool)
    check_image_tokens(input_ids, image_mask, c.image_token_id, c.num_image_tokens, where="generate")
    tokens, num_tokens = _generate(
        model, params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(segment_ids, jnp.int32),
        None if pixel_values is None else jnp.asarray(pixel_values, jnp.float32),
        None if pixel_values is None else jnp.asarray(image_mask, bool),
        jax.random.PRNGKey(seed), jnp.float32(temperature), jnp.float32(top_p),
        jnp.int32(eos_token_id), jnp.int32(pad_token_id), max_new_tokens=max_new_tokens)
    return GenerationOutput(np.asarray(tokens), np.asarray(num_tokens))
