"""`python -m vlm_jax.evaluate --config configs/eval/BENCH.py --ckpt CKPT [--config.FIELD=VALUE ...]`: a few-shot
evaluation run (see `run_config.base_config` for the fields, `run.run_evaluation` for what it writes).
Prints the scores JSON.

With `--compile_topology SLICE` (e.g. v5e-16; needs libtpu) nothing is generated: the run's generation
program (`batch_size` rows, `shots + 1` image slots, `max_new_tokens`, prompts of `--compile_prompt_len`
tokens, default `(shots + 1) * (num_image_tokens + 128)`) is compiled for the slice as
`vlm_jax.training.aot.compile_generation` describes; `--ckpt` (only its config.json is read) or
`--model_preset NAME` gives the model. Prints a table and a JSON last line; exit 0 if it fits, else 1."""
from __future__ import annotations

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from vlm_jax.evaluate.run import run_evaluation


def parse(argv: list[str]) -> flags.FlagValues:
    """Parses `--config FILE [--config.x=...] --ckpt CKPT` into a fresh FlagValues (no global flags)."""
    values = flags.FlagValues()
    argv = ["python -m vlm_jax.evaluate"] + list(argv)
    config_flags.DEFINE_config_file("config", None, "evaluation config file (configs/eval/BENCH.py)",
                                    flag_values=values, sys_argv=argv)
    flags.DEFINE_string("ckpt", None, "vlm_jax params checkpoint folder (config.json + params/)", flag_values=values)
    flags.DEFINE_string("compile_topology", None, "compile the generation program for this TPU slice and exit",
                        flag_values=values)
    flags.DEFINE_integer("compile_prompt_len", 0, "prompt tokens for --compile_topology (0: estimate)",
                         flag_values=values)
    flags.DEFINE_string("model_preset", None, "model for --compile_topology without --ckpt", flag_values=values)
    try:
        values(argv)
    except (AttributeError, KeyError) as e:  # ml_collections' answer to an override of an unknown field
        raise ValueError(f"unknown config field in the overrides: {e}") from e
    if values.config is None or not (values.ckpt or (values.compile_topology and values.model_preset)):
        raise ValueError("usage: python -m vlm_jax.evaluate --config configs/eval/BENCH.py --ckpt CKPT "
                         "[--config.shots=4 ...]")
    return values


def compile_for_topology(values: flags.FlagValues) -> int:
    """`--compile_topology`: compiles the generation program for a TPU slice; 0 if it fits, else 1."""
    import jax

    from vlm_jax.convert.orbax_params import read_config
    from vlm_jax.models.config import preset
    from vlm_jax.topology import parse_slice
    from vlm_jax.training import aot

    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    config = values.config
    architecture = read_config(values.ckpt) if values.ckpt else preset(values.model_preset)
    model_config = architecture.with_runtime(dtype=config.dtype, attention_impl=config.attention_impl)
    prompt_len = values.compile_prompt_len or (config.shots + 1) * (model_config.num_image_tokens + 128)
    report = aot.compile_generation(model_config, parse_slice(values.compile_topology), batch_size=config.batch_size,
                                    prompt_len=prompt_len, max_images=config.shots + 1,
                                    max_new_tokens=config.max_new_tokens)
    print(aot.format_table(report), flush=True)
    if not report["fits"]:
        print(f"does not fit: generation on {values.compile_topology} {report['reason']}", file=sys.stderr, flush=True)
    print(json.dumps(aot.summary_json(report)), flush=True)
    return 0 if report["fits"] else 1


def main(argv: list[str]) -> int:
    """Runs the evaluation and prints its scores; returns the exit status."""
    values = parse(argv)
    if values.compile_topology:
        return compile_for_topology(values)
    print(json.dumps(run_evaluation(values.config, values.ckpt), indent=1))
    return 0
