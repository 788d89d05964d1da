"""Dynamic NTK RoPE (the original's 8-shot setting: `rope_scaling={"type": "dynamic", "factor": 3.0}`) equals
transformers' `rope_type="dynamic"` Llama: full-forward logits at prompt lengths below and above the original
context (max_position_embeddings 16 here), and a KV-cache prefill past the context followed by decode steps,
where transformers recomputes the frequencies for each new position while the cached keys keep theirs.

transformers' rotary module keeps the longest length it has seen (`max_seq_len_cached`) and does not shrink the
base for a later, shorter prompt that is still past the context; vlm_jax computes the base from each call's
own length, i.e. as a freshly loaded transformers model does. Each test therefore builds a fresh model."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_tiny
from vlm_jax.models import hf as hf_table, llama
from vlm_jax.models.config import RopeScaling, TextConfig

MAX_POS = 16
ATOL = 2e-4


@pytest.fixture
def models():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = TextConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                     rms_norm_eps=1e-5, initializer_range=hf_tiny.STD,
                     rope_scaling=RopeScaling(rope_type="dynamic", factor=3.0))
    hf_config = cfg.to_hf()
    assert hf_config["rope_parameters"] == {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 3.0}
    torch.manual_seed(3)
    hf = LlamaForCausalLM(LlamaConfig(**hf_config, attn_implementation="eager")).eval()
    assert TextConfig.from_hf(hf.config.to_dict()).rope_scaling == cfg.rope_scaling
    params = hf_table.params_from_hf_state_dict(cfg, hf_tiny.state_dict_numpy(hf), "llama")
    return cfg, hf, params


def _ours(cfg, params, ids):
    model = llama.Llama(cfg)
    pos = np.arange(ids.shape[1], dtype=np.int32)[None]
    emb = model.apply({"params": params}, ids, method=llama.Llama.embed)
    return np.asarray(model.apply({"params": params}, emb, pos, np.ones_like(ids))[0])


@pytest.mark.parametrize("length", [10, 40])
def test_full_forward_matches_transformers(models, length):
    cfg, hf, params = models
    ids = np.random.default_rng(length).integers(3, cfg.vocab_size, (1, length)).astype(np.int32)
    with torch.no_grad():
        want = hf(torch.from_numpy(ids).long()).logits.numpy()
    got = _ours(cfg, params, ids)
    assert np.max(np.abs(got - want)) <= ATOL
    if length > MAX_POS:  # the scaling is really in effect: plain RoPE gives other logits
        plain = _ours(dataclasses.replace(cfg, rope_scaling=None), params, ids)
        assert np.max(np.abs(plain - want)) > 100 * ATOL


def test_cached_decoding_past_the_context_matches_transformers(models):
    """Prefill 20 tokens (> 16), then 3 decode steps: each step's logits equal transformers' cached forward."""
    cfg, hf, params = models
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (1, 23)).astype(np.int32)
    with torch.no_grad():
        out = hf(torch.from_numpy(ids[:, :20]).long(), use_cache=True)
        want, past = [out.logits.numpy()[:, -1]], out.past_key_values
        for t in range(20, 22):
            out = hf(torch.from_numpy(ids[:, t:t + 1]).long(), past_key_values=past, use_cache=True)
            want.append(out.logits.numpy()[:, -1])
            past = out.past_key_values
    model = llama.Llama(cfg)
    cache = llama.init_cache(cfg, 1, 24)
    seg = np.ones_like(ids)
    pos = np.arange(23, dtype=np.int32)[None]

    def run(x, p, g, c, index):
        emb = model.apply({"params": params}, x, method=llama.Llama.embed)
        return model.apply({"params": params}, emb, p, g, cache=c, cache_index=index)

    logits, cache = jax.jit(lambda c: run(ids[:, :20], pos[:, :20], seg[:, :20], c, 0))(cache)
    got = [np.asarray(logits)[:, -1]]
    step = jax.jit(lambda c, i, x, p, g: run(x, p, g, c, i))
    for t in range(20, 22):
        logits, cache = step(cache, jnp.int32(t), ids[:, t:t + 1], pos[:, t:t + 1], seg[:, t:t + 1])
        got.append(np.asarray(logits)[:, -1])
    for t, (g, w) in enumerate(zip(got, want)):
        assert np.max(np.abs(g - w)) <= ATOL, t
