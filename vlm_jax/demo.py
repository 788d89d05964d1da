"""Tiny LLaVA on random weights: one synthetic image + a prompt → prefill → greedy decoding with the KV cache.

    python -m vlm_jax.demo [--new-tokens 8]

Prints the shapes, parameter count, generated token ids and timings; the text is meaningless
(random weights) — this shows the model wiring end to end.
"""
from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models import config as config_lib
from vlm_jax.models.llama import init_cache
from vlm_jax.models.llava import Llava, check_image_tokens
from vlm_jax.models.param_count import abstract_params, param_count


def synthetic_image(size: int) -> np.ndarray:
    """A normalised `[size, size, 3]` image: colour gradients with a bright disc in the middle."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    disc = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1).astype(np.float32)
    rgb = np.stack([x, y, disc], axis=-1).astype(np.float32)
    return (rgb - 0.5) / 0.25


def random_params(cfg, seed: int = 0, std: float = 0.02) -> dict:
    """N(0, std²) weights (norm scales 1) for every param of `cfg` (Llava/Vision/TextConfig), drawn in
    numpy from the abstract tree (no init compilation)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if jax.tree_util.keystr(path[-1:], simple=True) == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        return rng.normal(0.0, std, leaf.shape).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract_params(cfg))["params"])


def greedy_generate(model: Llava, params, input_ids, pixel_values, image_mask, new_tokens: int):
    """Prefill `input_ids [1, s]` (with images), then append `new_tokens` argmax tokens one at a time.
    Returns (generated ids [new_tokens], prefill seconds, decode seconds)."""
    cfg = model.config
    s = input_ids.shape[1]
    cache = init_cache(cfg.text_config, batch=1, max_len=s + new_tokens)
    positions = jnp.arange(s, dtype=jnp.int32)[None]

    prefill = jax.jit(lambda p, c: model.apply({"params": p}, input_ids, pixel_values, image_mask, positions,
                                               jnp.ones_like(input_ids), cache=c, cache_index=0))

    @jax.jit
    def step(p, c, token, index):
        ids = token[None, None]
        logits, c = model.apply({"params": p}, ids, None, None, index[None, None], jnp.ones_like(ids),
                                cache=c, cache_index=index)
        return jnp.argmax(logits[0, -1]).astype(jnp.int32), c

    t0 = time.perf_counter()
    logits, cache = prefill(params, cache)
    token = jnp.argmax(logits[0, -1]).astype(jnp.int32)
    token.block_until_ready()
    t1 = time.perf_counter()
    out = [int(token)]
    for i in range(new_tokens - 1):
        token, cache = step(params, cache, token, jnp.int32(s + i))
        out.append(int(token))
    t2 = time.perf_counter()
    return out, t1 - t0, t2 - t1


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args(argv)

    cfg = config_lib.preset("tiny")
    v = cfg.vision_config
    params = random_params(cfg)
    prompt = [1, 17, 42] + [cfg.image_token_id] * cfg.num_image_tokens + [99, 7]
    input_ids = jnp.asarray([prompt], jnp.int32)
    pixel_values = jnp.asarray(synthetic_image(v.image_size))[None, None]
    image_mask = jnp.ones((1, 1), bool)
    check_image_tokens(input_ids, image_mask, cfg.image_token_id, cfg.num_image_tokens, where="demo prompt")

    print(f"tiny LLaVA: {param_count(cfg):,} params; vision {v.num_hidden_layers} layers x {v.hidden_size} "
          f"(runs {cfg.vision_layers_used}), text {cfg.text_config.num_hidden_layers} layers x "
          f"{cfg.text_config.hidden_size}, {cfg.text_config.num_attention_heads} heads / "
          f"{cfg.text_config.num_key_value_heads} kv heads")
    print(f"input_ids {tuple(input_ids.shape)} ({cfg.num_image_tokens} image tokens), "
          f"pixel_values {tuple(pixel_values.shape)}, image_mask {tuple(image_mask.shape)}")
    tokens, t_prefill, t_decode = greedy_generate(Llava(cfg), params, input_ids, pixel_values, image_mask,
                                                  args.new_tokens)
    print(f"generated {len(tokens)} tokens: {tokens}")
    print(f"prefill (incl. compile) {t_prefill:.2f}s; decode (incl. compile) {t_decode:.2f}s "
          f"for {len(tokens) - 1} steps on {jax.default_backend()}")


if __name__ == "__main__":
    main()
