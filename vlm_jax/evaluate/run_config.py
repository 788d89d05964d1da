"""The settings of one few-shot evaluation run, as an ml_collections ConfigDict (`configs/eval/BENCH.py` fill in
the benchmark and its file paths; any field can be overridden on the command line, `--config.shots=4`)."""
from __future__ import annotations

from typing import Any, Mapping

from ml_collections import ConfigDict

DEMO_SELECTIONS = ("random", "rices")


def base_config(benchmark: str, eval_split: Mapping[str, Any], demo_split: Mapping[str, Any]) -> ConfigDict:
    """Defaults of a run on `benchmark`; the splits are `splits.load_split` specs (loader + its arguments)."""
    c = ConfigDict()
    c.benchmark = benchmark
    c.eval_split = ConfigDict(dict(eval_split))  # the questions answered and scored
    c.demo_split = ConfigDict(dict(demo_split))  # the demonstration pool (a training split where one exists)
    c.num_queries = 0  # evaluate only the first N questions (0: all)
    c.shots = 0  # demonstrations per prompt: 0, 1, 2, 4, 8
    c.demo_selection = "random"  # "random" (seeded per question) or "rices" (CLIP image similarity)
    c.include_self_first = False  # the seeds' ablation: the query example itself is the first demonstration
    c.query_set_size = 2048  # seeded sample of the demo split the demonstrations come from
    c.seed = 42
    c.max_new_tokens = 128
    c.temperature = 0.0  # 0: greedy
    c.top_p = 1.0
    c.batch_size = 8  # rows per generate call (rounded up to a multiple of the local device count)
    c.dtype = "bfloat16"  # compute dtype of both towers
    c.attention_impl = "xla"  # "xla", "cudnn" or "pallas" for the prefill
    c.image_aspect_ratio = "pad"  # LLaVA-1.5 pads images to a square first; "none" to skip
    c.tokenizer = ""  # "": the tokenizer the checkpoint records; "byte": ByteTokenizer; or a tokenizer folder
    c.rices = ConfigDict({"ckpt": "",  # the CLIP tower to embed with ("": the evaluated checkpoint's)
                          "cache_dir": "",  # embeddings cache ("": OUTPUT_DIR/rices_cache)
                          "batch_size": 64})
    c.output_dir = f"eval_out/{benchmark}"
    c.judge = False  # math benchmarks: extract answers with the LLM judge (VLM_JAX_JUDGE_URL/_KEY/_MODEL)
    return c


def check_config(c: ConfigDict) -> None:
    """A ValueError naming the field for settings a run cannot use."""
    if c.demo_selection not in DEMO_SELECTIONS:
        raise ValueError(f"config.demo_selection={c.demo_selection!r}: expected one of {DEMO_SELECTIONS}")
    for name in ("shots", "num_queries", "query_set_size"):
        if c[name] < 0:
            raise ValueError(f"config.{name}={c[name]} must be >= 0")
    for name in ("max_new_tokens", "batch_size"):
        if c[name] < 1:
            raise ValueError(f"config.{name}={c[name]} must be >= 1")
    if c.include_self_first and c.shots == 0:
        raise ValueError("config.include_self_first needs config.shots >= 1")
