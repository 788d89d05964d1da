"""The params checkpoint format (vlm_jax.checkpoint): run-time options are not stored, the tokenizer is recorded
(files copied, or a spec), the vision tower restores alone, and a bad folder fails naming the file."""
import json

import jax
import numpy as np
import pytest

from vlm_jax.checkpoint import (CheckpointError, load_config, load_params, load_vision_tower, save_params,
                                tokenizer_spec)
from vlm_jax.data.tokenizer import ByteTokenizer, make_tokenizer
from vlm_jax.models.config import preset
from vlm_jax.models.init import random_params


@pytest.fixture(scope="module")
def tiny():
    cfg = preset("tiny")
    return cfg, random_params(cfg, seed=3)


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_run_time_options_are_not_stored(tiny, tmp_path):
    cfg, params = tiny
    run = cfg.with_runtime(dtype="bfloat16", attention_impl="pallas", attention_block_q=64, remat_policy="full")
    save_params(tmp_path, params, run)
    stored = json.loads((tmp_path / "config.json").read_text())
    for tower in ("vision_config", "text_config"):
        assert not {"dtype", "attention_impl", "attention_block_q", "attention_block_k", "remat_policy"} & set(stored[tower])
    assert load_config(tmp_path) == cfg  # the defaults, not the writing run's options
    assert load_config(tmp_path, dtype="bfloat16").text_config.dtype == "bfloat16"
    assert _equal(load_params(tmp_path), params)


def test_tokenizer_record_byte_and_files(tiny, tmp_path):
    cfg, params = tiny
    save_params(tmp_path / "byte", params, cfg, tokenizer="byte")
    assert tokenizer_spec(tmp_path / "byte") == "byte"
    assert isinstance(make_tokenizer(tokenizer_spec(tmp_path / "byte")), ByteTokenizer)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer_config.json").write_text('{"model_max_length": 8}')
    save_params(tmp_path / "files", params, cfg, tokenizer=str(tok_dir))
    assert (tmp_path / "files" / "tokenizer_config.json").read_text() == '{"model_max_length": 8}'
    assert tokenizer_spec(tmp_path / "files") == str(tmp_path / "files")
    save_params(tmp_path / "none", params, cfg)
    assert tokenizer_spec(tmp_path / "none") is None
    with pytest.raises(CheckpointError, match="neither 'byte' nor a folder"):
        save_params(tmp_path / "bad", params, cfg, tokenizer=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="neither 'byte' nor a folder"):
        make_tokenizer("bytes")


def test_vision_tower_alone_and_errors(tiny, tmp_path):
    cfg, params = tiny
    save_params(tmp_path, params, cfg)
    vision, tower = load_vision_tower(tmp_path)
    assert vision == cfg.vision_config and _equal(tower, params["vision_tower"])
    placed = load_params(tmp_path, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    assert isinstance(jax.tree.leaves(placed)[0], jax.Array) and _equal(placed, params)
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_config(tmp_path / "params")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_config(tmp_path)
