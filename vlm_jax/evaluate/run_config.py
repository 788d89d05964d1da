"""The settings of one few-shot evaluation (run or score), as an ml_collections ConfigDict. `configs/eval/BENCH.py`
fill in the benchmark and its file paths; any field can be overridden on the command line (`--config.shots=4`).

Defaults reproduce the original Multimodal-Textbook protocol; each vlm_jax choice is a named value (README,
"Reproducing the paper's protocol").
"""
from __future__ import annotations

from typing import Any, Mapping

from ml_collections import ConfigDict

from vlm_jax import cli, paths
from vlm_jax.evaluate import registry

DEMO_SELECTIONS = ("rices", "random", "random_select")
RICES_ENCODERS = ("clip", "model")
RICES_POOLS = ("all", "query_set")
ROPE_SCALINGS = ("auto", "none", "dynamic")
SCORERS = ("auto", "rules", "judge", "extract")
DEFAULT_CLIP = "data/eval/clip-vit-large-patch14"
NTK_MIN_SHOTS = 8  # the original loads the LM with dynamic NTK RoPE (factor 3) when shots >= 8
NTK_FACTOR = 3.0

# (field, default, meaning) of the main fields, for `--help` and the README.
FIELD_HELP = (
    ("benchmark", "from the config file", "okvqa, textvqa, textvqa_ocr, scienceqa, mathvista, mathvision, mathverse, "
                                         "demo"),
    ("protocol", "original", "prompt turns and scorers: 'original' (the paper's code) or 'standard' (vlm_jax's)"),
    ("eval_split / demo_split", "from the config file", "{loader, files...}: questions scored / demonstration pool"),
    ("shots", "0", "demonstrations per prompt (0/1/2/4/8)"),
    ("demo_selection", "rices", "rices (CLIP similarity, most similar last), random (seeded per question from a "
                                "query_set_size sample), random_select (the original's math random mode)"),
    ("rices.encoder", "clip", "clip: CLIP ViT-L/14-224 projected features from rices.clip_path (HF folder); "
                              "model: the evaluated checkpoint's own tower"),
    ("rices.pool", "all", "all: retrieve from the whole demo split; query_set: from a query_set_size sample"),
    ("query_set_size, seed", "2048, 42", "size of the seeded demonstration sample (random mode), seed"),
    ("include_self_first", "False", "the query itself as the first demonstration (ablation)"),
    ("max_new_tokens", "0", "0: the benchmark's own (512 math, 128 others)"),
    ("rope_scaling", "auto", "auto: dynamic NTK RoPE (factor 3) when shots >= 8, as the original; none; dynamic"),
    ("scorer", "auto", "math: auto (LLM judge when VLM_JAX_JUDGE_URL is set, else rules), judge, extract, rules"),
    ("batch_size, dtype, attention_impl", "8, bfloat16, xla", "generation batch, compute dtype, prefill attention"),
    ("tokenizer", "''", "'' the tokenizer the checkpoint records, 'byte', or a tokenizer folder"),
    ("num_queries", "0", "evaluate only the first N questions (0: all)"),
    ("output_dir", "eval_out/BENCH", "predictions JSONL (resumed when present) and scores JSON"),
    ("allow_missing", "False", "score: questions without a prediction count as wrong instead of an error"),
)


def base_config(benchmark: str, eval_split: Mapping[str, Any], demo_split: Mapping[str, Any]) -> ConfigDict:
    """Defaults of a run on `benchmark`; the splits are `registry.load_split` specs (loader + its arguments)."""
    c = ConfigDict()
    c.benchmark = benchmark
    c.protocol = "original"
    c.eval_split = ConfigDict(dict(eval_split))  # the questions answered and scored
    c.demo_split = ConfigDict(dict(demo_split))  # the demonstration pool
    c.num_queries = 0
    c.shots = 0
    c.demo_selection = "rices"
    c.include_self_first = False
    c.query_set_size = 2048
    c.seed = 42
    c.max_new_tokens = 0
    c.temperature = 0.0  # 0: greedy
    c.top_p = 1.0
    c.batch_size = 8
    c.dtype = "bfloat16"
    c.attention_impl = "xla"
    c.image_aspect_ratio = "pad"  # LLaVA-1.5 pads the model's images to a square first; "none" to skip
    c.tokenizer = ""
    c.prompt_template = "llava_v1"
    c.rope_scaling = "auto"
    c.rices = ConfigDict({"encoder": "clip", "clip_path": DEFAULT_CLIP, "pool": "all", "cache_dir": "",
                          "batch_size": 64})
    c.output_dir = f"eval_out/{benchmark}"
    c.scorer = "auto"
    c.allow_missing = False
    return c


class ConfigError(cli.UsageError, ValueError):
    """A config field has a value the evaluation cannot use (a usage error: the message names the field)."""


def _choice(c: ConfigDict, name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"config.{name}={value!r}: expected one of {choices}")


def check_config(c: ConfigDict) -> None:
    """A ValueError naming the field for settings a run cannot use."""
    _choice(c, "benchmark", c.benchmark, tuple(registry.names()))
    _choice(c, "protocol", c.protocol, tuple(registry.PROTOCOLS))
    _choice(c, "demo_selection", c.demo_selection, DEMO_SELECTIONS)
    _choice(c, "rices.encoder", c.rices.encoder, RICES_ENCODERS)
    _choice(c, "rices.pool", c.rices.pool, RICES_POOLS)
    _choice(c, "rope_scaling", c.rope_scaling, ROPE_SCALINGS)
    _choice(c, "scorer", c.scorer, SCORERS)
    for name in ("shots", "num_queries", "query_set_size", "max_new_tokens"):
        if not isinstance(c[name], int) or c[name] < 0:
            raise ConfigError(f"config.{name}={c[name]!r} must be an integer >= 0")
    for name in ("batch_size",):
        if not isinstance(c[name], int) or c[name] < 1:
            raise ConfigError(f"config.{name}={c[name]!r} must be an integer >= 1")
    if not c.temperature >= 0 or not 0 < c.top_p <= 1:
        raise ConfigError(f"config.temperature={c.temperature} / top_p={c.top_p}: need temperature >= 0, 0 < top_p <= 1")
    if c.include_self_first and c.shots == 0:
        raise ConfigError("config.include_self_first needs config.shots >= 1")
    try:
        paths.check(c.output_dir, "config.output_dir")
        paths.check(c.rices.cache_dir, "config.rices.cache_dir")
    except cli.UsageError as e:
        raise ConfigError(str(e)) from e


def max_new_tokens(c: ConfigDict) -> int:
    """`config.max_new_tokens`, or the benchmark's own when 0."""
    return c.max_new_tokens or registry.get(c.benchmark).max_new_tokens


def uses_ntk_rope(c: ConfigDict) -> bool:
    """Whether the run switches the language model to dynamic NTK RoPE (factor NTK_FACTOR)."""
    return c.rope_scaling == "dynamic" or (c.rope_scaling == "auto" and c.shots >= NTK_MIN_SHOTS)
