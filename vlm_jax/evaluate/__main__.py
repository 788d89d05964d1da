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

from vlm_jax import cli, config_file
from vlm_jax.evaluate.run_config import FIELD_HELP

PROG = "python -m vlm_jax.evaluate"
USAGE_RUN = f"{PROG} --config configs/eval/BENCH.py --ckpt CKPT [--config.FIELD=VALUE ...]"
USAGE_SCORE = (f"{PROG} score --config configs/eval/BENCH.py --predictions P.jsonl [--records OUT.jsonl] "
               "[--config.FIELD=VALUE ...]")
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
(file paths default to data/eval/BENCH/...), and configs/eval/demo.py (the CPU demo's held-out questions in
workdir/demo/corpus). Main fields [default]:
{fields}

Math scoring: the original's LLM judge through an OpenAI-compatible endpoint when VLM_JAX_JUDGE_URL
(+ VLM_JAX_JUDGE_KEY, VLM_JAX_JUDGE_MODEL) is set; otherwise vlm_jax's rules. scores.json names the scorer.
"""


def parse(argv: list[str], form: str):
    """Parses `--config FILE [--config.x=...]` plus the form's own flags (`--ckpt`, or `--predictions` and
    `--records`) into a fresh absl FlagValues; one-line UsageError / InputError otherwise."""
    from absl import flags

    def define(values):
        if form == "run":
            flags.DEFINE_string("ckpt", None, "vlm_jax params checkpoint folder (config.json + params/)",
                                flag_values=values)
            flags.DEFINE_string("compile_topology", None, "compile the generation program for this TPU slice "
                                "(v5e-16, v5p-8, ...) and exit: 0 if it fits, 1 if not", flag_values=values)
            flags.DEFINE_integer("compile_prompt_len", 0, "prompt tokens for --compile_topology "
                                 "(0: (shots + 1) * (num_image_tokens + 128))", flag_values=values)
            flags.DEFINE_string("model_preset", None, "the model for --compile_topology without --ckpt "
                                "(vlm_jax.models.config.preset name)", flag_values=values)
        else:
            flags.DEFINE_string("predictions", None, "predictions JSONL", flag_values=values)
            flags.DEFINE_string("records", None, "write per-question records (JSONL) here", flag_values=values)

    values = config_file.parse_flags(PROG if form == "run" else f"{PROG} score", list(argv), define=define,
                                     config_help="evaluation config file (configs/eval/BENCH.py)",
                                     example="configs/eval/okvqa.py")
    required = ("ckpt",) if form == "run" else ("predictions",)
    if form == "run" and values.compile_topology and values.model_preset:
        required = ()
    missing = [name for name in required if not values[name].value]
    if missing:
        raise cli.UsageError(f"--{missing[0]} is required: {USAGE_RUN if form == 'run' else USAGE_SCORE}")
    if form == "run":
        from vlm_jax import paths

        paths.check(values.ckpt, "--ckpt")  # a local folder or a gs:// URL
    return values


def compile_main(values) -> int:
    """`--compile_topology SLICE`: nothing is generated; the run's generation program (`batch_size` rows,
    `shots + 1` image slots, `max_new_tokens`, prompts of `--compile_prompt_len` tokens) is compiled for the
    TPU slice (`vlm_jax.training.aot.compile_generation`; only the checkpoint's config.json is read, or
    `--model_preset`). Prints a table and a JSON last line; 0 if it fits, else 1."""
    import os

    import jax


    from vlm_jax.evaluate.run import model_config_for_run
    from vlm_jax.evaluate.run_config import max_new_tokens
    from vlm_jax.models.config import preset
    from vlm_jax.topology import parse_slice
    from vlm_jax.training import aot

    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    try:
        tpu_slice = parse_slice(values.compile_topology)
    except ValueError as e:
        raise cli.UsageError(f"--compile_topology: {e}") from e
    config = values.config
    if values.ckpt:
        model_config = model_config_for_run(config, values.ckpt)
    else:
        model_config = preset(values.model_preset).with_runtime(dtype=config.dtype,
                                                                 attention_impl=config.attention_impl)
    prompt_len = values.compile_prompt_len or (config.shots + 1) * (model_config.num_image_tokens + 128)
    report = aot.compile_generation(model_config, tpu_slice, batch_size=config.batch_size, prompt_len=prompt_len,
                                    max_images=config.shots + 1, max_new_tokens=max_new_tokens(config))
    print(aot.format_table(report), flush=True)
    if not report["fits"]:
        print(f"does not fit: generation on {tpu_slice.name} {report['reason']}", file=sys.stderr, flush=True)
    print(json.dumps(aot.summary_json(report)), flush=True)
    return 0 if report["fits"] else 1


def run_main(argv: list[str]) -> int:
    values = parse(argv, "run")
    if values.compile_topology:
        return compile_main(values)
    from vlm_jax.evaluate.run import run_evaluation  # jax, flax and the model only for a generation run
    from vlm_jax.training.distributed import host_line, maybe_initialize_distributed

    if maybe_initialize_distributed():  # a multi-process job (same detection as training): questions are split
        print(host_line(), file=sys.stderr, flush=True)
    scores = run_evaluation(values.config, values.ckpt)
    import jax

    if jax.process_index() == 0:
        print(json.dumps(scores, indent=1))
    return 0


def score_main(argv: list[str]) -> int:
    from vlm_jax.evaluate import registry
    from vlm_jax.evaluate.judge import math_judge
    from vlm_jax.evaluate.predictions import read_predictions, write_jsonl_atomic
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
        write_jsonl_atomic(values.records, scored.records)
    print(json.dumps(scored.summary, indent=1))
    return 0


def _main(argv: list[str]) -> int:
    if not argv:
        raise cli.UsageError(f"usage: {USAGE_RUN} | {USAGE_SCORE} (see {PROG} --help)")
    if argv[0] in ("-h", "--help", "help") or any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    try:
        return score_main(argv[1:]) if argv[0] == "score" else run_main(argv)
    except cli.UserError:
        raise
    except (ValueError, RecursionError, OverflowError) as e:  # bad values in the inputs the command read
        raise cli.InputError(cli.one_line(e)) from e


def main(argv: list[str] | None = None) -> int:
    """Dispatches on the form; returns the exit status (0; 2 usage; 1 bad input; one `error:` line on stderr)."""
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
