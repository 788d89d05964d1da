"""KV-cache decoding equals the full forward pass, token by token (fp32, max-abs ≤ 1e-4).

Weights are the tiny random transformers models' (hf_tiny), so the full forward is itself the HF-verified
one (tests/test_models_hf.py). A batch of two rows, the second left-padded (segment 0), is prefilled into a
cache longer than needed (empty slots stay segment 0), then extended one token at a time with a traced
`cache_index`, as `vlm_jax.inference.generation` does. The "pallas" variant also writes a chunk at a static offset,
which maps onto the flash kernel (decode steps fall back to "xla")."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_tiny
from vlm_jax.inference import generation
from vlm_jax.models import hf as hf_table, llama, llava

ATOL = 1e-4
PAD = 3  # left padding of row 1


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def left_padded(rows: list[list[int]]):
    """input_ids, positions, segment_ids `[b, s]` with rows right-aligned (0 = padding)."""
    s = max(len(r) for r in rows)
    ids = np.zeros((len(rows), s), np.int32)
    seg = np.zeros((len(rows), s), np.int32)
    pos = np.zeros((len(rows), s), np.int32)
    for i, r in enumerate(rows):
        ids[i, s - len(r):], seg[i, s - len(r):], pos[i, s - len(r):] = r, 1, np.arange(len(r))
    return ids, pos, seg


def decode_matches_full(apply, cfg, ids, pos, seg, full, prefill_len: int, chunk: int, prefill_extra=()):
    """Prefill `prefill_len` tokens (cache_index 0), then a chunk of `chunk` tokens at the static offset
    `prefill_len` (skipped when 0), then one token per traced step; each call's logits at real tokens
    must equal `full`'s. `apply(ids, pos, seg, cache, cache_index, *extra)` runs the model."""
    b, s = ids.shape
    cache = llama.init_cache(cfg, b, s + 5)
    real = seg > 0

    def check(logits, start):
        got = np.asarray(logits)
        want = np.asarray(full)[:, start:start + got.shape[1]]
        mask = real[:, start:start + got.shape[1]]
        assert max_err(got[mask], want[mask]) <= ATOL, start

    logits, cache = jax.jit(lambda c: apply(ids[:, :prefill_len], pos[:, :prefill_len], seg[:, :prefill_len],
                                            c, 0, *prefill_extra))(cache)
    check(logits, 0)
    start = prefill_len
    if chunk:
        sl = slice(start, start + chunk)
        logits, cache = jax.jit(lambda c: apply(ids[:, sl], pos[:, sl], seg[:, sl], c, start))(cache)
        check(logits, start)
        start += chunk
    step = jax.jit(lambda c, i, x, p, g: apply(x, p, g, c, i))
    for t in range(start, s):
        logits, cache = step(cache, jnp.int32(t), ids[:, t:t + 1], pos[:, t:t + 1], seg[:, t:t + 1])
        check(logits, t)
    np.testing.assert_array_equal(np.asarray(cache["segment_ids"]), np.pad(seg, ((0, 0), (0, 5))))


@pytest.mark.parametrize("impl, chunk", [("xla", 0), ("pallas", 3)])
def test_llama_cache_decoding_matches_full_forward(impl, chunk):
    base = hf_tiny.text_config()
    params = hf_table.params_from_hf_state_dict(base, hf_tiny.state_dict_numpy(hf_tiny.hf_llama(False)), "llama")
    rng = np.random.default_rng(0)
    ids, pos, seg = left_padded([list(rng.integers(3, base.vocab_size, 14)),
                                 list(rng.integers(3, base.vocab_size, 14 - PAD))])
    full_model = llama.Llama(base)

    def full_forward(p):
        return full_model.apply({"params": p}, full_model.apply({"params": p}, ids, method=llama.Llama.embed),
                                pos, seg)[0]

    full = jax.jit(full_forward)(params)
    cfg = dataclasses.replace(base, attention_impl=impl, attention_block_q=16, attention_block_k=16)
    model = llama.Llama(cfg)

    def apply(x, p, g, cache, index):
        emb = model.apply({"params": params}, x, method=llama.Llama.embed)
        return model.apply({"params": params}, emb, p, g, cache=cache, cache_index=index)

    decode_matches_full(apply, cfg, ids, pos, seg, full, prefill_len=6, chunk=chunk)


@pytest.mark.parametrize("impl, chunk, weights", [("xla", 0, None), ("pallas", 2, None), ("xla", 0, "transposed"),
                                                  ("xla", 2, "plain")])
def test_llava_cache_decoding_after_image_prefill_matches_full_forward(impl, chunk, weights):
    """Row 0 holds three images (two adjacent), row 1 one image (in slot 2 of 3); all in the prefill.
    `weights`: the layers run unrolled on generation's copy of their weights (`layer_weights`, q/k/v and gate/up
    fused into one kernel each; stored transposed or as plain slices) over a split cache, as CPU generation does;
    "plain" also runs the prefill's MLP in chunks (`mlp_chunk`) on the fused gate/up kernel."""
    base = hf_tiny.llava_config()
    params = hf_table.params_from_hf_state_dict(base, hf_tiny.state_dict_numpy(hf_tiny.hf_llava()), "llava-hf")
    t, img = base.num_image_tokens, base.image_token_id
    ids, pos, seg = left_padded([[1, 5] + [img] * t + [6] + [img] * (2 * t) + [7, 8, 9, 10, 11, 12, 13],
                                 [1, 9] + [img] * t + [14, 15, 16, 17, 18, 19, 20]])
    prefill_len = ids.shape[1] - 6
    pixels = np.asarray(hf_tiny.to_nhwc(hf_tiny.pixels_nchw(6, base.vision_config.image_size, seed=7)))
    pixels = pixels.reshape(2, 3, *pixels.shape[1:])
    image_mask = np.array([[True, True, True], [False, False, True]])
    llava.check_image_tokens(ids, image_mask, img, t)
    full = jax.jit(lambda p: llava.Llava(base).apply({"params": p}, ids, pixels, image_mask, pos, seg)[0])(params)
    mlp_chunk = next(d for d in range(2, prefill_len) if prefill_len % d == 0) if weights == "plain" else 0
    cfg = base.with_runtime(attention_impl=impl, attention_block_q=16, attention_block_k=16, mlp_chunk=mlp_chunk)
    model = llava.Llava(cfg)
    layer_params = None if weights is None else generation.from_layer_weights(
        model, params, generation.layer_weights(model, params, transpose=weights == "transposed"))
    if weights is not None:
        fused = layer_params[0]
        assert set(fused["self_attn"]) == {llama.FUSED_QKV, "o_proj"}
        assert set(fused["mlp"]) == {llama.FUSED_GATE_UP, "down_proj"}

    def apply(x, p, g, cache, index, pixel_values=None, mask=None):
        if weights is not None:
            cache = llama.split_cache(cache)
        return model.apply({"params": params}, x, pixel_values, mask, p, g, cache=cache, cache_index=index,
                           layer_params=layer_params)

    decode_matches_full(apply, cfg.text_config, ids, pos, seg, full, prefill_len=prefill_len, chunk=chunk,
                        prefill_extra=(pixels, image_mask))


def test_llava_decode_step_embeds_a_generated_image_token_with_its_own_row():
    """A decode step without pixels whose token is `<image>` (a model may generate it) gets the token's
    embedding row, as in transformers (which splices features only when pixel_values are given): logits
    equal HF's cached forward after the same image prefill."""
    import torch

    base = hf_tiny.llava_config()
    hf_model = hf_tiny.hf_llava()
    params = hf_table.params_from_hf_state_dict(base, hf_tiny.state_dict_numpy(hf_model), "llava-hf")
    t, img = base.num_image_tokens, base.image_token_id
    prompt = [1, 5] + [img] * t + [6, 7]
    steps = [img, 8, img]  # decoded tokens, two of them `<image>`
    pixels_nchw = hf_tiny.pixels_nchw(1, base.vision_config.image_size, seed=3)
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor([prompt]), pixel_values=pixels_nchw, use_cache=True)
        past, want = out.past_key_values, []
        for i, tok in enumerate(steps):
            out = hf_model(input_ids=torch.tensor([[tok]]), cache=past, use_cache=True,
                           cache_position=torch.tensor([len(prompt) + i]))
            past = out.past_key_values
            want.append(out.logits[0, -1].numpy())

    model = llava.Llava(base)
    s = len(prompt)
    cache = llama.init_cache(base.text_config, 1, s + len(steps))
    pixels = np.asarray(hf_tiny.to_nhwc(pixels_nchw))[None]
    ids = np.asarray([prompt], np.int32)
    _, cache = model.apply({"params": params}, ids, pixels, np.ones((1, 1), bool), np.arange(s)[None],
                           np.ones_like(ids), cache=cache, cache_index=0)
    step = jax.jit(lambda c, i, x: model.apply({"params": params}, x, None, None, jnp.full((1, 1), i),
                                               jnp.ones((1, 1), jnp.int32), cache=c, cache_index=i))
    for i, tok in enumerate(steps):
        logits, cache = step(cache, jnp.int32(s + i), jnp.full((1, 1), tok, jnp.int32))
        assert max_err(logits[0, -1], want[i]) <= ATOL, i
