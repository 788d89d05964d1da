"""`python -m vlm_jax.evaluate --config configs/eval/BENCH.py --ckpt CKPT [--config.FIELD=VALUE ...]`: a few-shot
evaluation run (see `run_config.base_config` for the fields, `run.run_evaluation` for what it writes).
Prints the scores JSON."""
from __future__ import annotations

import json

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
    try:
        values(argv)
    except (AttributeError, KeyError) as e:  # ml_collections' answer to an override of an unknown field
        raise ValueError(f"unknown config field in the overrides: {e}") from e
    if values.config is None or not values.ckpt:
        raise ValueError("usage: python -m vlm_jax.evaluate --config configs/eval/BENCH.py --ckpt CKPT "
                         "[--config.shots=4 ...]")
    return values


def main(argv: list[str]) -> int:
    """Runs the evaluation and prints its scores; returns the exit status."""
    values = parse(argv)
    print(json.dumps(run_evaluation(values.config, values.ckpt), indent=1))
    return 0
