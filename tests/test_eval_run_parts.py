"""Pieces of the evaluation run that need no model: config files, prompt token ids, demonstration selection
(the query itself is never its own demonstration when the pool is the question file), batch planning."""
from __future__ import annotations

import inspect
import runpy
from pathlib import Path

import numpy as np
import pytest

from vlm_jax.evaluate.batched_generation import plan_batches
from vlm_jax.evaluate.examples import Example
from vlm_jax.evaluate.registry import LOADERS, load_split, names
from vlm_jax.evaluate.rices import random_select_indices
from vlm_jax.evaluate.run import select_demonstrations
from vlm_jax.evaluate.run_config import ConfigError, check_config, max_new_tokens, uses_ntk_rope

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "eval").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_files_name_real_loader_arguments(path):
    config = runpy.run_path(str(path))["get_config"]()
    assert config.benchmark == path.stem
    check_config(config)
    names()  # the family modules register their loaders
    for split in (config.eval_split, config.demo_split):
        spec = dict(split)
        params = inspect.signature(LOADERS[spec.pop("loader")]).parameters
        assert set(spec) <= set(params), f"{path.name}: {sorted(set(spec) - set(params))}"
    assert sorted(p.stem for p in CONFIGS) == names()


def test_original_defaults_of_the_configs():
    """Math demonstrations from another benchmark, 512 new tokens for math, RICES over the whole pool with the
    CLIP encoder, NTK RoPE from 8 shots."""
    config = {p.stem: runpy.run_path(str(p))["get_config"]() for p in CONFIGS}
    assert config["mathvista"].demo_split.loader == "mathvision"
    assert config["mathverse"].demo_split.loader == "mathvision"
    assert config["mathvision"].demo_split.loader == "mathvista"
    assert config["scienceqa"].demo_split.images_only and config["scienceqa"].demo_split.split == "train"
    assert [max_new_tokens(config[b]) for b in ("mathvista", "mathvision", "mathverse", "okvqa", "scienceqa")] == \
        [512, 512, 512, 128, 128]
    okvqa = config["okvqa"]
    assert (okvqa.protocol, okvqa.demo_selection, okvqa.rices.encoder, okvqa.rices.pool) == \
        ("original", "rices", "clip", "all")
    assert not uses_ntk_rope(okvqa)
    okvqa.shots = 8
    assert uses_ntk_rope(okvqa)
    okvqa.rope_scaling = "none"
    assert not uses_ntk_rope(okvqa)
    okvqa.protocol = "paper"
    with pytest.raises(ConfigError, match="config.protocol='paper'"):
        check_config(okvqa)
    okvqa.protocol = "original"
    okvqa.output_dir = "ftp://host/eval"
    with pytest.raises(ConfigError, match="config.output_dir ftp://host/eval: unsupported URL scheme ftp://"):
        check_config(okvqa)
    okvqa.output_dir = "gs://bucket/eval"
    check_config(okvqa)  # written through vlm_jax.paths (tests/test_remote_paths.py)


def test_load_split_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"config.eval_split.loader='nope'"):
        load_split({"loader": "nope"}, "config.eval_split")
    with pytest.raises(ValueError, match=r"config.demo_split: bad arguments \['bogus'\]"):
        load_split({"loader": "mathvista", "path": "x.json", "bogus": 1}, "config.demo_split")


def test_random_select_is_the_originals_python_random_stream():
    """The original's math random mode: `random.seed(42)` once, then `random.sample(range(N), k)` per question in
    order (the pool is not the question file: no exclusion)."""
    import random
    random.seed(42)
    expected = [random.sample(range(10), 2) for _ in range(3)]
    assert random_select_indices(10, 2, 42, 3) == expected
    pool = [_example(str(i), "mathvision") for i in range(10)]
    config = Config(shots=2, demo_selection="random_select", seed=42, include_self_first=False)
    demos = select_demonstrations(config, [_example(str(i)) for i in range(3)], pool)
    assert [[int(d.qid) for d in row] for row in demos] == expected


def _example(qid, benchmark="mathvista", image_dir=""):
    return Example(qid=qid, image_path=f"{image_dir}{qid}.png", question_text="q", answers=("1",), meta={"benchmark": benchmark})


class Config(dict):
    __getattr__ = dict.__getitem__


def test_random_demonstrations_never_the_query_itself():
    pool = [_example(str(i)) for i in range(5)]
    config = Config(shots=4, demo_selection="random", seed=0, include_self_first=False)
    for query, demos in zip(pool, select_demonstrations(config, pool, pool)):
        ids = [d.qid for d in demos]
        assert len(set(ids)) == 4 and query.qid not in ids
    # another benchmark's pool with the same ids is not "the query itself"
    other = [_example(str(i), "mathvision") for i in range(4)]
    assert all(len(d) == 4 for d in select_demonstrations(config, pool[:2], other))


def test_rices_demonstrations_skip_the_query_and_keep_most_similar_last(tmp_path):
    angles = np.radians([0, 10, 25, 90, 180])
    vectors = {f"{tmp_path}/{i}.png": np.array([np.cos(a), np.sin(a)]) for i, a in enumerate(angles)}
    for path in vectors:
        Path(path).touch()  # the embedding cache keys on the files' size and mtime
    embedder = (lambda paths: np.stack([vectors[p] for p in paths]), "toy")
    pool = [_example(str(i), image_dir=f"{tmp_path}/") for i in range(5)]
    config = Config(shots=2, demo_selection="rices", seed=0, include_self_first=False, output_dir=str(tmp_path),
                    rices=Config(cache_dir="", batch_size=8))
    demos = select_demonstrations(config, pool[:2], pool, embedder)
    # query 0 (0 deg): itself, then 1 (10 deg), 2 (25 deg) -> [2, 1]; query 1 (10 deg): 0 and 2 -> 2 (15 deg) first
    assert [[d.qid for d in row] for row in demos] == [["2", "1"], ["2", "0"]]
    config["include_self_first"] = True
    demos = select_demonstrations(config, pool[:1], pool, embedder)
    assert [d.qid for d in demos[0]] == ["0", "1"]


def test_plan_batches_sorts_by_length_and_covers_all():
    batches = plan_batches([5, 1, 9, 3, 7], 2)
    assert batches == [[1, 3], [0, 4], [2]]
