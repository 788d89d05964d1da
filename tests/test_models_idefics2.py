"""Idefics2 (SigLIP at variable resolution → modality projection + perceiver → Mistral with a sliding window)
against a tiny random transformers `Idefics2ForConditionalGeneration` (weights copied via vlm_jax.models.hf), fp32 on
CPU, max-abs error <= 1e-4: vision features, connector output, logits, KV-cache decoding, parameter count."""
import jax
import jax.numpy as jnp
import numpy as np
import torch

import hf_tiny
from vlm_jax.models import idefics2, llama, siglip
from vlm_jax.models.hf import idefics2 as hf_idefics2
from vlm_jax.models import config as config_lib
from vlm_jax.models.init import param_count

ATOL = 1e-4
FAKE = hf_tiny.IDEFICS2_FAKE_TOKEN


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def image_block(cfg):
    return [FAKE] + [cfg.image_token_id] * cfg.num_image_tokens + [FAKE]


def images(seed: int = 0):
    """Three images of different sizes, padded bottom/right to 56 × 56 as the Idefics2 processor does:
    (50 × 42: a partial last patch row, invalid), (28 × 56), (56 × 56). Row 0 holds the first two, row 1 the
    third in slot 0 (slot 1 empty). → HF pixels `[2, 2, 3, 56, 56]`, masks `[2, 2, 56, 56]`, ours NHWC."""
    rng = np.random.default_rng(seed)
    sizes = [(50, 42), (28, 56), (56, 56)]
    pixels = np.zeros((2, 2, 56, 56, 3), np.float32)
    mask = np.zeros((2, 2, 56, 56), bool)
    for (row, slot), (h, w) in zip([(0, 0), (0, 1), (1, 0)], sizes):
        pixels[row, slot, :h, :w] = rng.normal(size=(h, w, 3))
        mask[row, slot, :h, :w] = True
    image_mask = np.array([[True, True], [True, False]])
    return torch.from_numpy(pixels.transpose(0, 1, 4, 2, 3).copy()), torch.from_numpy(mask), pixels, mask, image_mask


def batch(cfg):
    """Row 0: text, image, text, image, text (longer than the sliding window); row 1: one image, right-padded."""
    row0 = [1, 5, 6] + image_block(cfg) + [7, 8, 9] + image_block(cfg) + [10, 11, 12, 13, 14, 15]
    row1 = [1, 20] + image_block(cfg) + [21, 22, 23]
    s = len(row0)
    ids = np.array([row0, row1 + [0] * (s - len(row1))], np.int32)
    attention_mask = np.array([[1] * s, [1] * len(row1) + [0] * (s - len(row1))], np.int32)
    return ids, attention_mask, len(row1)


def load():
    hf = hf_tiny.hf_idefics2()
    cfg = hf_tiny.idefics2_config()
    return hf, cfg, hf_idefics2.params_from_hf_state_dict(cfg, hf_tiny.state_dict_numpy(hf))


def test_bucketed_position_ids_match_hf_embeddings_rule():
    """The float32 bucketing of HF's Idefics2VisionEmbeddings for odd grids on the 70 × 70 table of 980/14."""
    from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionEmbeddings
    from transformers import Idefics2VisionConfig

    emb = Idefics2VisionEmbeddings(Idefics2VisionConfig(hidden_size=1, num_channels=1, image_size=980,
                                                        patch_size=14))
    with torch.no_grad():
        emb.position_embedding.weight.copy_(torch.arange(4900, dtype=torch.float32)[:, None])
        emb.patch_embedding.weight.zero_()
        emb.patch_embedding.bias.zero_()
    masks = np.zeros((3, 70, 45), bool)  # a 70 x 45 patch grid (980 x 630 px) on the 70 x 70 table
    masks[0, :24, :40] = True
    masks[1, :70, :17] = True
    masks[2, :39, :45] = True
    with torch.no_grad():
        ref = emb(torch.zeros(3, 1, 980, 630), torch.from_numpy(masks))[..., 0].numpy().astype(np.int32)
    got = np.asarray(siglip.bucket_position_ids(jnp.asarray(masks), 70))
    np.testing.assert_array_equal(got, ref)


def test_vision_features_at_variable_sizes_match_hf():
    hf, cfg, params = load()
    hf_pixels, hf_mask, pixels, mask, image_mask = images()
    real = image_mask.reshape(-1)
    flat_hf = hf_pixels.reshape(4, 3, 56, 56)[torch.from_numpy(real)]
    patch_mask = siglip.patch_attention_mask(jnp.asarray(mask.reshape(4, 56, 56)[real]), 14)
    assert np.asarray(patch_mask).sum(axis=(1, 2)).tolist() == [9, 8, 16]
    with torch.no_grad():
        ref = hf.model.vision_model(pixel_values=flat_hf, patch_attention_mask=torch.from_numpy(np.asarray(patch_mask)))
    tower = siglip.SiglipVisionTower(cfg.vision_config)
    out = jax.jit(tower.apply)({"params": params["vision_model"]}, pixels.reshape(4, 56, 56, 3)[real], patch_mask)
    assert out.shape == (3, 16, 32)
    assert max_err(out, ref.last_hidden_state) <= ATOL


def test_connector_output_matches_hf():
    hf, cfg, params = load()
    hf_pixels, hf_mask, pixels, mask, image_mask = images(seed=1)
    with torch.no_grad():
        ref = hf.model.get_image_features(pixel_values=hf_pixels, pixel_attention_mask=hf_mask).pooler_output
    ref = torch.cat(list(ref)).numpy().reshape(3, cfg.num_image_tokens, -1)
    real = image_mask.reshape(-1)
    model = idefics2.Idefics2(cfg)
    feats = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m, method=idefics2.Idefics2.image_features))(
        params, pixels.reshape(4, 56, 56, 3)[real], mask.reshape(4, 56, 56)[real])
    assert feats.shape == (3, 8, 64)
    assert max_err(feats, ref) <= ATOL


def forward(cfg):
    model = idefics2.Idefics2(cfg)
    return jax.jit(lambda p, ids, px, im, pos, seg, pm: model.apply({"params": p}, ids, px, im, pos, seg,
                                                                   pixel_attention_mask=pm))


def test_logits_with_two_image_sizes_and_sliding_window_match_hf():
    hf, cfg, params = load()
    assert hf.config.text_config.sliding_window == 8
    ids, attention_mask, len1 = batch(cfg)
    assert ids.shape[1] > 2 * cfg.text_config.sliding_window
    hf_pixels, hf_mask, pixels, mask, image_mask = images(seed=2)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(attention_mask),
                 pixel_values=hf_pixels, pixel_attention_mask=hf_mask).logits.numpy()
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    logits, cache = forward(cfg)(params, ids, pixels, image_mask, positions, attention_mask, mask)
    assert cache is None and logits.dtype == jnp.float32
    assert max_err(logits[0], ref[0]) <= ATOL
    assert max_err(logits[1, :len1], ref[1, :len1]) <= ATOL
    # The sliding window matters: without it the logits differ.
    import dataclasses
    full_cfg = dataclasses.replace(cfg, text_config=dataclasses.replace(cfg.text_config, sliding_window=None))
    unwindowed, _ = forward(full_cfg)(params, ids, pixels, image_mask, positions, attention_mask, mask)
    assert max_err(unwindowed[0], ref[0]) > 1e-2


def test_kv_cache_decode_equals_full_forward():
    """Prefill the prompt with its images into a longer cache, then feed the rest one token per traced step
    (windowed attention over cache slots); every step's logits equal the full forward's."""
    _, cfg, params = load()
    ids, attention_mask, _ = batch(cfg)
    ids, attention_mask = ids[:1], attention_mask[:1]
    _, _, pixels, mask, image_mask = images(seed=3)
    pixels, mask, image_mask = pixels[:1], mask[:1], image_mask[:1]
    s = ids.shape[1]
    positions = np.arange(s, dtype=np.int32)[None]
    full, _ = forward(cfg)(params, ids, pixels, image_mask, positions, attention_mask, mask)
    model = idefics2.Idefics2(cfg)
    prompt = s - 5
    cache = llama.init_cache(cfg.text_config, 1, s + 3)
    logits, cache = jax.jit(lambda p, c: model.apply({"params": p}, ids[:, :prompt], pixels, image_mask,
                                                     positions[:, :prompt], attention_mask[:, :prompt], cache=c,
                                                     cache_index=0, pixel_attention_mask=mask))(params, cache)
    assert max_err(logits, full[:, :prompt]) <= ATOL
    step = jax.jit(lambda p, c, i, x: model.apply({"params": p}, x, None, None, i[None, None], jnp.ones_like(x),
                                                  cache=c, cache_index=i))
    for i in range(prompt, s):
        logits, cache = step(params, cache, jnp.int32(i), ids[:, i:i + 1])
        assert max_err(logits[:, 0], full[:, i]) <= ATOL, i


# idefics2-8b-base's config.json (HuggingFaceM4/idefics2-8b-base, transformers 4.40), as stored on the hub.
IDEFICS2_8B_BASE = {
    "architectures": ["Idefics2ForConditionalGeneration"],
    "image_token_id": 32001,
    "model_type": "idefics2",
    "perceiver_config": {"hidden_act": "silu", "model_type": "idefics2", "resampler_depth": 3,
                         "resampler_head_dim": 96, "resampler_n_heads": 16, "resampler_n_latents": 64,
                         "num_key_value_heads": 4},
    "text_config": {"max_position_embeddings": 32768, "model_type": "mistral", "pad_token_id": 0,
                    "rms_norm_eps": 1e-05, "sliding_window": 4096, "vocab_size": 32003},
    "tie_word_embeddings": False,
    "use_cache": True,
    "vision_config": {"hidden_size": 1152, "image_size": 980, "intermediate_size": 4304, "model_type": "idefics2",
                      "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14},
}


def hf_param_count(hf_dict) -> int:
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration

    with torch.device("meta"):
        model = Idefics2ForConditionalGeneration(Idefics2Config(**hf_dict))
    return sum(p.numel() for p in model.parameters())


def test_param_count_of_idefics2_8b_base_equals_transformers():
    cfg = config_lib.Idefics2Config.from_hf(IDEFICS2_8B_BASE)
    assert cfg.text_config.sliding_window == 4096 and cfg.text_config.num_key_value_heads == 8
    assert cfg.vision_config.num_positions == 70 * 70 and cfg.num_image_tokens == 64
    n = param_count(cfg)
    assert n == hf_param_count(IDEFICS2_8B_BASE)
    assert 8.0e9 < n < 8.5e9
    tiny = hf_tiny.idefics2_config()
    assert param_count(tiny) == hf_param_count(tiny.to_hf())
    assert config_lib.preset("idefics2-8b-base") == cfg


def test_param_count_cli_prints_idefics2_parts(capsys):
    from vlm_jax.models.param_count import main

    assert main(["--preset", "idefics2-8b-base"]) == 0
    rows = dict(line.split() for line in capsys.readouterr().out.splitlines())
    parts = [int(rows[k].replace(",", "")) for k in ("vision_model", "connector", "text_model")]
    assert sum(parts) == int(rows["total"].replace(",", "")) == hf_param_count(IDEFICS2_8B_BASE)
