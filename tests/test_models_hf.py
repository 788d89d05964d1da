"""CLIP, Llama and LLaVA forward passes against tiny random transformers models (weights copied via
vlm_jax.models.hf), fp32 on CPU, max-abs error ≤ 1e-4."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_tiny
from vlm_jax.models import clip, hf as hf_table, llama, llava

ATOL = 1e-4


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def test_clip_hidden_states_pooled_and_projection_match_hf():
    hf = hf_tiny.hf_clip(with_projection=True)
    assert hf.config._attn_implementation == "eager"
    cfg = hf_tiny.vision_config(has_projection=True)
    params = hf_table.params_from_hf_state_dict(cfg, hf_tiny.state_dict_numpy(hf), "clip-vision-with-projection")
    pixels = hf_tiny.pixels_nchw(3, cfg.image_size, seed=0)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True)
    tower = clip.CLIPVisionTower(cfg)
    out = jax.jit(lambda p, x: tower.apply({"params": p}, x, all_hidden_states=True))(params, hf_tiny.to_nhwc(pixels))
    ref_states = np.stack([h.numpy() for h in ref.hidden_states])
    assert out.hidden_states.shape == ref_states.shape == (4, 3, 5, 32)
    assert max_err(out.hidden_states, ref_states) <= ATOL
    assert max_err(out.hidden_state, ref.last_hidden_state) <= ATOL
    assert max_err(out.image_embeds, ref.image_embeds) <= ATOL
    # Penultimate layer (what LLaVA uses), computing 2 of 3 layers only.
    partial = jax.jit(lambda p, x: tower.apply({"params": p}, x, num_layers=2))(params, hf_tiny.to_nhwc(pixels))
    assert max_err(partial.hidden_state, ref.hidden_states[-2]) <= ATOL
    assert partial.pooled is None and partial.image_embeds is None


def test_clip_vision_model_pooler_matches_hf():
    hf = hf_tiny.hf_clip(with_projection=False)
    cfg = hf_tiny.vision_config()
    params = hf_table.params_from_hf_state_dict(cfg, hf_tiny.state_dict_numpy(hf), "clip-vision")
    pixels = hf_tiny.pixels_nchw(2, cfg.image_size, seed=1)
    with torch.no_grad():
        ref = hf(pixel_values=pixels)
    out = clip.CLIPVisionTower(cfg).apply({"params": params}, jnp.asarray(hf_tiny.to_nhwc(pixels)))
    assert max_err(out.hidden_state, ref.last_hidden_state) <= ATOL
    assert max_err(out.pooled, ref.pooler_output) <= ATOL


@pytest.mark.parametrize("tied", [False, True])
def test_llama_logits_with_gqa_and_llama3_rope_match_hf(tied):
    hf = hf_tiny.hf_llama(tied)
    assert hf.config.rope_parameters["rope_type"] == "llama3" and hf.config.num_key_value_heads == 2
    cfg = hf_tiny.text_config(tie_word_embeddings=tied)
    params = hf_table.params_from_hf_state_dict(cfg, hf_tiny.state_dict_numpy(hf), "llama")
    assert ("lm_head" in params) == (not tied)
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, size=(2, 40))
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids)).logits.numpy()
    model = llama.Llama(cfg)

    @jax.jit
    def forward(p, ids):
        emb = model.apply({"params": p}, ids, method=llama.Llama.embed)
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        return model.apply({"params": p}, emb, positions, jnp.ones_like(ids))[0]

    logits = forward(params, ids)
    assert logits.dtype == jnp.float32 and logits.shape == ref.shape
    assert max_err(logits, ref) <= ATOL


def llava_batch(cfg):
    """Row 0: three images (two of them adjacent) between text; row 1: one image, right-padded.
    Row 1's image sits in slot 1 of 3 (slots 0 and 2 are empty)."""
    t, img = cfg.num_image_tokens, cfg.image_token_id
    row0 = [1, 5, 6] + [img] * t + [7, 8] + [img] * (2 * t) + [9, 10, 11]
    row1 = [1, 12] + [img] * t + [13, 14, 15]
    s = len(row0)
    ids = np.array([row0, row1 + [0] * (s - len(row1))], np.int32)
    attention_mask = np.array([[1] * s, [1] * len(row1) + [0] * (s - len(row1))], np.int32)
    hf_pixels = hf_tiny.pixels_nchw(4, cfg.vision_config.image_size, seed=4)
    nhwc = hf_tiny.to_nhwc(hf_pixels)
    pixels = np.zeros((2, 3) + nhwc.shape[1:], np.float32)
    pixels[0], pixels[1, 1] = nhwc[:3], nhwc[3]
    image_mask = np.array([[True, True, True], [False, True, False]])
    return ids, attention_mask, hf_pixels, pixels, image_mask, len(row1)


def test_llava_logits_with_interleaved_images_match_hf():
    hf = hf_tiny.hf_llava()
    cfg = hf_tiny.llava_config()
    params = hf_table.params_from_hf_state_dict(cfg, hf_tiny.state_dict_numpy(hf), "llava-hf")
    ids, attention_mask, hf_pixels, pixels, image_mask, len1 = llava_batch(cfg)
    llava.check_image_tokens(ids, image_mask, cfg.image_token_id, cfg.num_image_tokens)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids).long(), pixel_values=hf_pixels,
                 attention_mask=torch.from_numpy(attention_mask)).logits.numpy()
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    logits, cache = jax.jit(llava.Llava(cfg).apply)({"params": params}, ids, pixels, image_mask, positions,
                                                    attention_mask)
    assert cache is None
    assert max_err(logits[0], ref[0]) <= ATOL
    assert max_err(logits[1, :len1], ref[1, :len1]) <= ATOL
    # The splice matters: shuffling row 0's images changes its logits.
    swapped = pixels.copy()
    swapped[0] = pixels[0, ::-1]
    other, _ = jax.jit(llava.Llava(cfg).apply)({"params": params}, ids, swapped, image_mask, positions,
                                               attention_mask)
    assert max_err(other[0], ref[0]) > 1e-2


def test_llava_encode_images_and_pooled_vision_outputs():
    hf = hf_tiny.hf_llava()
    cfg = hf_tiny.llava_config()
    params = hf_table.params_from_hf_state_dict(cfg, hf_tiny.state_dict_numpy(hf), "llava-hf")
    hf_pixels = hf_tiny.pixels_nchw(2, cfg.vision_config.image_size, seed=5)
    with torch.no_grad():
        ref_feats = hf.model.get_image_features(pixel_values=hf_pixels, vision_feature_layer=-2,
                                                vision_feature_select_strategy="default").pooler_output
        ref_feats = torch.stack(list(ref_feats)).numpy()
        ref_tower = hf.model.vision_tower(pixel_values=hf_pixels)
    model = llava.Llava(cfg)
    pixels = hf_tiny.to_nhwc(hf_pixels)
    feats = model.apply({"params": params}, pixels, method=llava.Llava.encode_images)
    assert feats.shape == (2, cfg.num_image_tokens, cfg.text_config.hidden_size)
    assert max_err(feats, ref_feats) <= ATOL
    out = model.apply({"params": params}, pixels, method=llava.Llava.vision_outputs)
    assert max_err(out.pooled, ref_tower.pooler_output) <= ATOL


def test_llama_mlp_gradients_match_transformers():
    """The gated MLP's own backward pass (`llama._swiglu`, which recomputes the sigmoid) against PyTorch
    autograd through transformers' `LlamaMLP`: input and kernel gradients."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    cfg = hf_tiny.text_config()
    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(**cfg.to_hf()))
    x = np.random.default_rng(0).normal(size=(2, 5, cfg.hidden_size)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(2, 5, cfg.hidden_size)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    torch.sum(mlp(tx) * torch.tensor(w)).backward()
    kernels = {n: getattr(mlp, n).weight.detach().numpy().T for n in ("gate_proj", "up_proj", "down_proj")}

    def loss(x, kernels):
        return jnp.sum(llama._gated_mlp(x, kernels["gate_proj"], kernels["up_proj"], kernels["down_proj"],
                                        jnp.float32) * w)

    dx, dk = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jax.tree.map(jnp.asarray, kernels))
    np.testing.assert_allclose(np.asarray(dx), tx.grad.numpy(), atol=1e-5)
    for n in kernels:
        np.testing.assert_allclose(np.asarray(dk[n]), getattr(mlp, n).weight.grad.numpy().T, atol=1e-5, err_msg=n)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_llama_rope_matches_transformers_in_the_compute_dtype(dtype):
    """RoPE (Llama-3 scaling, two rows of positions) against transformers' `LlamaRotaryEmbedding` +
    `apply_rotary_pos_emb`, which cast the tables to q's dtype and rotate there: bit-for-bit in bf16
    (rotating in float32 and rounding once differs from it in about a third of the values), ≤ 1e-6 in fp32."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = hf_tiny.text_config()
    positions = np.stack([np.arange(300), np.arange(300)[::-1] * 37])
    q = np.random.default_rng(0).normal(size=(2, 300, 4, cfg.head_dim)).astype(np.float32) * 3
    tq = torch.tensor(q).to(getattr(torch, dtype))
    cos, sin = LlamaRotaryEmbedding(LlamaConfig(**cfg.to_hf()))(tq, torch.tensor(positions))
    ref, _ = apply_rotary_pos_emb(tq, tq, cos, sin, unsqueeze_dim=2)
    c, s = llama.rope_cos_sin(jnp.asarray(positions), llama.rope_inv_freq(cfg))
    out = jax.jit(llama.apply_rope)(jnp.asarray(q, dtype), c, s)
    assert out.dtype == jnp.dtype(dtype)
    if dtype == "bfloat16":
        np.testing.assert_array_equal(np.asarray(out, np.float32), ref.float().numpy())
    else:
        assert max_err(out, ref.numpy()) <= 1e-6
