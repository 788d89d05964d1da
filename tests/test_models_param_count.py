"""Parameter counts (vlm_jax.models.param_count, from jax.eval_shape) equal transformers' for the same
config, built on torch's meta device (nothing allocated); the configs/ files equal the presets."""
import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from vlm_jax.models import config as config_lib
from vlm_jax.models.init import param_count
from vlm_jax.models.param_count import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def hf_param_count(cfg: config_lib.LlavaConfig) -> int:
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig(**cfg.to_hf()))
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors once


def tiny_tied_gqa() -> config_lib.LlavaConfig:
    tiny = config_lib.preset("tiny")
    return dataclasses.replace(tiny, text_config=dataclasses.replace(tiny.text_config, tie_word_embeddings=True))


@pytest.mark.parametrize("name, cfg", [("llava-1.5-7b", config_lib.preset("llava-1.5-7b")),
                                       ("tiny", config_lib.preset("tiny")),
                                       ("tiny-tied", tiny_tied_gqa())])
def test_param_count_equals_transformers(name, cfg):
    assert param_count(cfg) == hf_param_count(cfg)


def test_cli_prints_parts_and_the_transformers_total(capsys):
    main(["--config", str(CONFIGS / "llava_1_5_7b.py")])
    rows = dict(line.split() for line in capsys.readouterr().out.splitlines())
    want = hf_param_count(config_lib.preset("llava-1.5-7b"))
    assert rows["total"] == f"{want:,}"
    parts = [int(rows[k].replace(",", "")) for k in ("vision_tower", "language_model", "multi_modal_projector")]
    assert sum(parts) == want and min(parts) > 0


@pytest.mark.parametrize("file, name", [("llava_1_5_7b.py", "llava-1.5-7b"), ("llava_tiny.py", "tiny")])
def test_config_files_equal_presets(file, name):
    cfg = config_lib.from_config_file(str(CONFIGS / file))
    assert cfg == config_lib.preset(name)
    assert cfg.num_image_tokens == (576 if name == "llava-1.5-7b" else 4)


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return {'text_config': {'hidden_act': 'gelu'}}\n")
    with pytest.raises(ValueError, match=r"bad\.py.*hidden_act"):
        config_lib.from_config_file(str(bad))
    with pytest.raises(ValueError, match="missing.py: no such file"):
        config_lib.from_config_file(str(tmp_path / "missing.py"))
