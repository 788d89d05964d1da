"""Command line of vlm_jax.evaluate: one dialect (an eval config file + `--config.FIELD=VALUE` overrides) for
both forms.

    python -m vlm_jax.evaluate --config configs/eval/BENCH.py --ckpt CKPT [--config.FIELD=VALUE ...]
    python -m vlm_jax.evaluate score --config configs/eval/BENCH.py --predictions P.jsonl [--config.FIELD=VALUE ...]

Exit status 0 on success, 2 for a usage error (flags, config fields), 1 for bad input (files, records,
checkpoint, judge); errors are one line on stderr.
"""
from __future__ import annotations

import json
import sys

from absl import flags
from absl.flags import Error as FlagsError
from ml_collections import config_flags

from vlm_jax.evaluate.run_config import FIELD_HELP, ConfigError

PROG = "python -m vlm_jax.evaluate"
USAGE_RUN = f"{PROG} --config configs/eval/BENCH.py --ckpt CKPT [--config.FIELD=VALUE ...]"
USAGE_SCORE = (f"{PROG} score --config configs/eval/BENCH.py --predictions P.jsonl [--records OUT.jsonl] "
               "[--config.FIELD=VALUE ...]")


class UsageError(ValueError):
    """The command line is wrong (exit 2)."""


def help_text() -> str:
    """`--help`: both forms, the files a config names, and the main config fields."""
    width = max(len(name) for name, _, _ in FIELD_HELP)
    fields = "\n".join(f"  --config.{name:<{width}}  [{default}] {meaning}" for name, default, meaning in FIELD_HELP)
    return f"""Few-shot evaluation of vlm_jax models (OK-VQA, TextVQA, ScienceQA, MathVista, MATH-Vision, MathVerse).

Run (generate, then score):
  {USAGE_RUN}
  Writes OUTPUT_DIR/BENCH_Kshot_SELECTION.predictions.jsonl (per question: prompt, raw answer, demo ids, ground
  truth, extracted answer, score) and .scores.json (accuracy, breakdowns, every setting). A predictions file
  left by an interrupted run is resumed.

Score an existing predictions file ({{"question_id": ..., "answer": "<raw generation>"}} per line):
  {USAGE_SCORE}
  Reads the annotations named by the config's eval_split (override e.g.
  --config.eval_split.annotations_path=...), prints one JSON object; --records writes per-question records.

Config files: configs/eval/{{okvqa,textvqa,textvqa_ocr,scienceqa,mathvista,mathvision,mathverse}}.py
(file paths default to data/eval/BENCH/...). Main fields [default]:
{fields}

Math scoring: the original's LLM judge through an OpenAI-compatible endpoint when VLM_JAX_JUDGE_URL
(+ VLM_JAX_JUDGE_KEY, VLM_JAX_JUDGE_MODEL) is set; otherwise vlm_jax's rules. scores.json names the scorer.
"""


def parse(argv: list[str], form: str) -> flags.FlagValues:
    """Parses `--config FILE [--config.x=...]` plus the form's own flags into a fresh FlagValues."""
    values = flags.FlagValues()
    argv = [PROG] + list(argv)
    config_flags.DEFINE_config_file("config", None, "evaluation config file (configs/eval/BENCH.py)",
                                    flag_values=values, sys_argv=argv)
    if form == "run":
        flags.DEFINE_string("ckpt", None, "vlm_jax params checkpoint folder (config.json + params/)",
                            flag_values=values)
    else:
        flags.DEFINE_string("predictions", None, "predictions JSONL", flag_values=values)
        flags.DEFINE_string("records", None, "write per-question records (JSONL) here", flag_values=values)
    try:
        values(argv)
    except (AttributeError, KeyError) as e:  # ml_collections' answer to an override of an unknown field
        raise UsageError(f"unknown config field in the overrides: {e}") from e
    except FlagsError as e:
        raise UsageError(str(e)) from e
    required = ("ckpt",) if form == "run" else ("predictions",)
    if values.config is None or any(not values[name].value for name in required):
        raise UsageError(f"usage: {USAGE_RUN if form == 'run' else USAGE_SCORE} (see {PROG} --help)")
    return values


def run_main(argv: list[str]) -> int:
    values = parse(argv, "run")
    from vlm_jax.evaluate.run import run_evaluation  # jax, flax and the model only for a generation run
    print(json.dumps(run_evaluation(values.config, values.ckpt), indent=1))
    return 0


def score_main(argv: list[str]) -> int:
    from vlm_jax.evaluate import registry
    from vlm_jax.evaluate.judge import math_judge
    from vlm_jax.evaluate.predictions import append_records, read_predictions
    from vlm_jax.evaluate.run_config import check_config

    values = parse(argv, "score")
    config = values.config
    check_config(config)
    benchmark = registry.get(config.benchmark)
    judge = math_judge(config.scorer, benchmark.judged)
    examples = registry.load_split(config.eval_split, "config.eval_split")
    scored = benchmark.score(examples, read_predictions(values.predictions), protocol=config.protocol,
                             allow_missing=config.allow_missing, judge=judge)
    if values.records:
        open(values.records, "w").close()
        append_records(values.records, scored.records)
    print(json.dumps(scored.summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatches on the form; returns the exit status (errors: one line on stderr)."""
    from vlm_jax.convert.safetensors_io import CheckpointError
    from vlm_jax.evaluate.examples import BenchmarkFileError
    from vlm_jax.evaluate.judge import JudgeError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv or argv[0] in ("-h", "--help", "help") or (argv[0] == "score" and
                                                               any(a in ("-h", "--help") for a in argv[1:])):
            if not argv:
                raise UsageError(f"usage: {USAGE_RUN} | {USAGE_SCORE} (see {PROG} --help)")
            print(help_text())
            return 0
        if argv[0] == "score":
            return score_main(argv[1:])
        if any(a in ("-h", "--help") for a in argv):
            print(help_text())
            return 0
        return run_main(argv)
    except (UsageError, ConfigError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (BenchmarkFileError, CheckpointError, JudgeError, ValueError, OSError, RecursionError,
            OverflowError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
