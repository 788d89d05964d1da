"""hf-to-orbax / orbax-to-hf on tiny random transformers checkpoints: round trips are bit-identical for
every source layout, exports load in transformers with no missing/unexpected keys and give the source's
logits, and bad input fails with one message naming the file or tensor."""
from __future__ import annotations

import json
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

import tiny_hf_models as tiny
from vlm_jax.convert.__main__ import main as convert_main
from vlm_jax.checkpoint import PARAMS_DIR, CheckpointError, restore_leaf, tree_metadata


def run(*argv):
    assert convert_main([str(a) for a in argv]) == 0


def load_hf(path):
    model, info = LlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def logits(model, image_token, pixel_values):
    ids = torch.tensor([[1, 5, 7] + [image_token] * 4 + [9, 11, 13]])
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixel_values).logits


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    model = tiny.llava_hf(root / "hf")
    return root, model


def test_llava_hf_round_trip_is_bit_identical_and_loads(llava):
    root, model = llava
    run("hf-to-orbax", "--hf", root / "hf", "--out", root / "ckpt")
    assert (root / "ckpt" / "tokenizer_config.json").exists() is False  # none in the source
    assert (root / "ckpt" / "preprocessor_config.json").is_file()
    run("orbax-to-hf", "--ckpt", root / "ckpt", "--out", root / "out", "--max-shard-size", "40KB")
    assert (root / "out" / "model.safetensors.index.json").is_file()
    assert (root / "out" / "preprocessor_config.json").is_file()
    src = {tiny.canonical(k): v for k, v in tiny.hf_state_dict(root / "hf").items()}
    out = {tiny.canonical(k): v for k, v in tiny.hf_state_dict(root / "out").items()}
    assert sorted(src) == sorted(out)
    for name in src:
        assert src[name].dtype == out[name].dtype and torch.equal(src[name], out[name]), name
    exported = load_hf(root / "out")
    pixels = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(logits(exported, tiny.IMAGE_TOKEN, pixels), logits(model, tiny.IMAGE_TOKEN, pixels),
                               rtol=0, atol=0)


def test_bfloat16_round_trip_keeps_bfloat16(tmp_path):
    tiny.llava_hf(tmp_path / "hf", dtype=torch.bfloat16)
    run("hf-to-orbax", "--hf", tmp_path / "hf", "--out", tmp_path / "ckpt")
    meta = tree_metadata(tmp_path / "ckpt" / PARAMS_DIR)
    assert meta["language_model"]["lm_head"]["kernel"].dtype == ml_dtypes.bfloat16
    run("orbax-to-hf", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "out")
    src, out = tiny.hf_state_dict(tmp_path / "hf"), tiny.hf_state_dict(tmp_path / "out")
    src = {tiny.canonical(k): v for k, v in src.items()}
    for name, t in out.items():
        assert t.dtype == torch.bfloat16 and torch.equal(src[tiny.canonical(name)], t), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("tower_inside", [True, False])
def test_original_llava_layout(llava, tmp_path, tower_inside):
    root, model = llava
    tiny.original_llava(root / "hf", tmp_path / "orig", tower_inside=tower_inside, clip_dir=tmp_path / "clip")
    run("hf-to-orbax", "--hf", tmp_path / "orig", "--clip", tmp_path / "clip", "--out", tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["image_token_id"] == tiny.VOCAB and config["text_config"]["vocab_size"] == tiny.VOCAB
    run("orbax-to-hf", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "out")
    src = {tiny.canonical(k): v for k, v in tiny.hf_state_dict(root / "hf").items()}
    out = {tiny.canonical(k): v for k, v in tiny.hf_state_dict(tmp_path / "out").items()}
    assert sorted(src) == sorted(out)
    for name in src:
        if name in ("lm_head.weight", "model.language_model.embed_tokens.weight"):
            # the out-of-vocabulary image token is padded in with zero rows (see orbax_to_hf)
            assert out[name].shape == (128, 48) and not out[name][tiny.VOCAB:].any()
            assert torch.equal(src[name], out[name][: tiny.VOCAB]), name
        else:
            assert torch.equal(src[name], out[name]), name
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen["suppress_tokens"] == list(range(tiny.VOCAB, 128))
    exported = load_hf(tmp_path / "out")
    pixels = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(logits(exported, tiny.VOCAB, pixels)[..., : tiny.VOCAB],
                               logits(model, tiny.IMAGE_TOKEN, pixels), rtol=0, atol=0)


def test_clip_plus_llm_start(tmp_path):
    clip, llm = tiny.clip_and_llama(tmp_path / "clip", tmp_path / "llm")
    for seed, name in ((3, "a"), (3, "b"), (4, "c")):
        run("hf-to-orbax", "--clip", tmp_path / "clip", "--llm", tmp_path / "llm", "--seed", seed,
            "--out", tmp_path / name)
    meta = tree_metadata(tmp_path / "a" / PARAMS_DIR)
    proj = [restore_leaf(tmp_path / n / PARAMS_DIR, ("multi_modal_projector", "linear_1", "kernel"), meta)
            for n in "abc"]
    np.testing.assert_array_equal(proj[0], proj[1])
    assert not np.array_equal(proj[0], proj[2])
    bound = 1 / np.sqrt(tiny.VISION["hidden_size"])
    assert proj[0].shape == (32, 48) and np.abs(proj[0]).max() <= bound and proj[0].std() > bound / 3
    run("orbax-to-hf", "--ckpt", tmp_path / "a", "--out", tmp_path / "out")
    exported = load_hf(tmp_path / "out")
    sd = exported.state_dict()
    for name, t in clip.vision_model.state_dict().items():
        if not name.endswith("position_ids"):
            assert torch.equal(sd["model.vision_tower." + name], t), name
    for name, t in llm.state_dict().items():
        target = "lm_head.weight" if name == "lm_head.weight" else "model.language_model." + name[len("model."):]
        assert torch.equal(sd[target][: t.shape[0]], t), name
    with torch.no_grad():  # text-only logits equal the source LLM's
        ids = torch.tensor([[1, 4, 9, 16, 25]])
        torch.testing.assert_close(exported(input_ids=ids).logits[..., : tiny.VOCAB], llm(input_ids=ids).logits,
                                   rtol=0, atol=0)


def error_of(argv, capsys) -> str:
    assert convert_main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_missing_shard_is_named(llava, tmp_path, capsys):
    root, _ = llava
    shutil.copytree(root / "hf", tmp_path / "hf")
    weight_map = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())["weight_map"]
    shard = weight_map["language_model.model.norm.weight"]
    (tmp_path / "hf" / shard).unlink()
    err = error_of(["hf-to-orbax", "--hf", tmp_path / "hf", "--out", tmp_path / "ckpt"], capsys)
    assert "missing shard" in err and shard in err


def test_shape_disagreeing_with_config_is_named(llava, tmp_path, capsys):
    root, _ = llava
    shutil.copytree(root / "hf", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 80
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    err = error_of(["hf-to-orbax", "--hf", tmp_path / "hf", "--out", tmp_path / "ckpt"], capsys)
    assert "language_model.model.layers.0.mlp." in err and "has shape" in err and "config.json implies" in err


def test_unknown_layout_and_pickles_are_refused(llava, tmp_path, capsys):
    root, _ = llava
    tiny.clip_and_llama(tmp_path / "clip", tmp_path / "llm")
    capsys.readouterr()  # transformers' progress bars
    err = error_of(["hf-to-orbax", "--hf", tmp_path / "llm", "--out", tmp_path / "x"], capsys)
    assert "unknown checkpoint layout" in err and "--llm" in err
    (tmp_path / "pickled").mkdir()
    shutil.copy(root / "hf" / "config.json", tmp_path / "pickled")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not loaded")
    err = error_of(["hf-to-orbax", "--hf", tmp_path / "pickled", "--out", tmp_path / "y"], capsys)
    assert "pytorch_model.bin" in err and "never loaded" in err
