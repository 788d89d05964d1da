"""Idefics2 conversion through the CLI: hf-to-orbax detects an Idefics2 folder; orbax-to-hf writes a folder
`Idefics2ForConditionalGeneration.from_pretrained` loads with no missing / unexpected keys, bit-identical to
the source, with equal logits; the from-scratch assembly (Mistral + SigLIP, positions interpolated bicubically
as the original, connector random) puts every tensor where the original's script does."""
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

import hf_tiny
from test_models_idefics2 import batch, images
from vlm_jax.convert.__main__ import main
from vlm_jax.convert.idefics2 import interpolate_positions
from vlm_jax.checkpoint import load_config, load_params
from vlm_jax.models import config as config_lib
from vlm_jax.models.hf import idefics2 as hf_idefics2
from vlm_jax.models.init import abstract_params


def flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from flat(v, prefix + (k,))
        else:
            yield prefix + (k,), np.asarray(v)


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    root = tmp_path_factory.mktemp("idefics2")
    hf = hf_tiny.hf_idefics2()
    hf.save_pretrained(root / "hf")
    assert main(["hf-to-orbax", "--hf", str(root / "hf"), "--out", str(root / "ckpt")]) == 0
    assert main(["orbax-to-hf", "--ckpt", str(root / "ckpt"), "--out", str(root / "out")]) == 0
    return root, hf


def test_import_is_bit_identical_to_the_hf_state_dict(round_trip):
    root, hf = round_trip
    cfg = load_config(root / "ckpt")
    assert isinstance(cfg, config_lib.Idefics2Config)
    assert cfg.with_runtime(param_dtype="float32") == hf_tiny.idefics2_config()
    want = hf_idefics2.params_from_hf_state_dict(cfg, hf_tiny.state_dict_numpy(hf))
    got = dict(flat(load_params(root / "ckpt")))
    assert set(got) == set(dict(flat(want)))
    for path, value in flat(want):
        np.testing.assert_array_equal(got[path], value, err_msg="/".join(path))


def test_export_loads_without_missing_keys_bit_identical_with_equal_logits(round_trip):
    from transformers import Idefics2ForConditionalGeneration

    root, hf = round_trip
    assert json.loads((root / "out" / "config.json").read_text())["architectures"] == [
        "Idefics2ForConditionalGeneration"]
    loaded, info = Idefics2ForConditionalGeneration.from_pretrained(root / "out", output_loading_info=True,
                                                                    attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ref_sd, got_sd = hf.state_dict(), loaded.state_dict()
    assert set(ref_sd) == set(got_sd)
    for key in ref_sd:
        assert torch.equal(ref_sd[key], got_sd[key]), key
    cfg = hf_tiny.idefics2_config()
    ids, attention_mask, _ = batch(cfg)
    hf_pixels, hf_mask, *_ = images(seed=5)
    kwargs = dict(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(attention_mask),
                  pixel_values=hf_pixels, pixel_attention_mask=hf_mask)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**kwargs).logits, hf(**kwargs).logits)


def test_bicubic_position_interpolation_equals_torch():
    """The original's `interpolate_pos_embedding`: F.interpolate(scale_factor=70/27, bicubic) of the 27x27 grid."""
    table = np.random.default_rng(0).normal(size=(27 * 27, 5)).astype(np.float32)
    grid = torch.from_numpy(table).reshape(1, 27, 27, 5).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, scale_factor=(70 / 27, 70 / 27), mode="bicubic",
                                           align_corners=False).permute(0, 2, 3, 1).reshape(4900, 5).numpy()
    got = interpolate_positions(table, 70)
    assert got.shape == (4900, 5)
    # torch's float32 bicubic is itself ~2e-6 from the exact (float64) result per axis; ours is float32 too.
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    exact = torch.nn.functional.interpolate(grid.double(), scale_factor=(70 / 27, 70 / 27), mode="bicubic",
                                            align_corners=False).permute(0, 2, 3, 1).reshape(4900, 5).numpy()
    assert np.abs(got - exact).max() < 1e-5


def test_from_scratch_assembly_of_mistral_and_siglip(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM, SiglipConfig, SiglipModel

    cfg = hf_tiny.idefics2_config()
    torch.manual_seed(7)
    t = cfg.text_config
    mistral = MistralForCausalLM(MistralConfig(**{**t.to_hf(), "vocab_size": t.vocab_size - 3}))
    v = cfg.vision_config
    siglip = SiglipModel(SiglipConfig(
        vision_config=dict(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                           num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
                           image_size=42, patch_size=v.patch_size),
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50)))
    with torch.no_grad():
        for p in siglip.vision_model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-zero biases, so "not copied" is visible
    mistral.save_pretrained(tmp_path / "mistral")
    siglip.save_pretrained(tmp_path / "siglip")
    (tmp_path / "idefics2.json").write_text(json.dumps(cfg.to_hf()))
    args = ["hf-to-orbax", "--family", "idefics2", "--vision", str(tmp_path / "siglip"), "--llm",
            str(tmp_path / "mistral"), "--config", str(tmp_path / "idefics2.json"), "--seed", "3"]
    assert main(args + ["--out", str(tmp_path / "ckpt")]) == 0
    got = load_params(tmp_path / "ckpt")
    sd = {k: v.numpy() for k, v in mistral.state_dict().items()}
    text = got["text_model"]
    np.testing.assert_array_equal(text["embed_tokens"]["embedding"][:t.vocab_size - 3], sd["model.embed_tokens.weight"])
    np.testing.assert_array_equal(text["lm_head"]["kernel"][:, :t.vocab_size - 3], sd["lm_head.weight"].T)
    assert np.std(np.asarray(text["embed_tokens"]["embedding"][t.vocab_size - 3:])) > 0.005  # extra rows random
    q1 = sd["model.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(text["layers"]["self_attn"]["q_proj"]["kernel"][1].reshape(t.hidden_size, -1),
                                  q1.T)
    vs = {k: v.numpy() for k, v in siglip.state_dict().items()}
    vis = got["vision_model"]
    np.testing.assert_array_equal(vis["layers"]["mlp"]["fc1"]["kernel"][0], vs["vision_model.encoder.layers.0.mlp.fc1.weight"].T)
    np.testing.assert_array_equal(vis["layers"]["layer_norm1"]["scale"][1],
                                  vs["vision_model.encoder.layers.1.layer_norm1.weight"])
    for bias in (vis["layers"]["mlp"]["fc1"]["bias"], vis["layers"]["layer_norm1"]["bias"],
                 vis["patch_embedding"]["bias"], vis["post_layernorm"]["bias"]):
        np.testing.assert_array_equal(bias, 0.0)  # the original copies weights only
    want_pos = interpolate_positions(vs["vision_model.embeddings.position_embedding.weight"], 4)
    np.testing.assert_array_equal(vis["position_embedding"], want_pos)
    np.testing.assert_array_equal(got["connector"]["perceiver_resampler"]["latents"], 1.0)
    # --vision-biases copies the biases too.
    assert main(args + ["--vision-biases", "--out", str(tmp_path / "ckpt2")]) == 0
    got2 = load_params(tmp_path / "ckpt2")
    np.testing.assert_array_equal(got2["vision_model"]["layers"]["mlp"]["fc1"]["bias"][0],
                                  vs["vision_model.encoder.layers.0.mlp.fc1.bias"])
    # Every param of the model, with its shape (the tree an Idefics2 of this config applies).
    abstract = nn.unbox(abstract_params(cfg))["params"]
    assert jax.tree.structure(abstract) == jax.tree.structure(got2)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(got2)))


def test_assembly_rejects_a_mismatched_llm(tmp_path, capsys):
    from transformers import MistralConfig, MistralForCausalLM

    cfg = hf_tiny.idefics2_config()
    MistralForCausalLM(MistralConfig(**{**cfg.text_config.to_hf(), "hidden_size": 32})).save_pretrained(tmp_path / "m")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "config.json").write_text(json.dumps({**cfg.vision_config.to_hf(), "model_type": "siglip_vision_model"}))
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_hf()))
    code = main(["hf-to-orbax", "--family", "idefics2", "--vision", str(tmp_path / "v"), "--llm", str(tmp_path / "m"),
                 "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "Mistral hidden_size=32" in capsys.readouterr().err
