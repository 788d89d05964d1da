"""`python -m vlm_jax.evaluate score`: score a prediction file against a benchmark's own annotation files and
print one JSON object (`accuracy` in percent, `count`, `missing`, `per_*` breakdowns).

Files per benchmark (`--annotations A [--questions Q]`):
  okvqa      A: `mscoco_val2014_annotations.json`, Q: `OpenEnded_mscoco_val2014_questions.json`
  textvqa    A + Q in VQA format as for okvqa, or A alone: native `TextVQA_0.5.1_val.json`
  scienceqa  A: `problems.json`, Q (optional): `pid_splits.json`; `--split` (default test)
  mathvista  A: `testmini.json` / `test_mini.json`
  mathvision A: `test.jsonl` / `testmini.jsonl`
  mathverse  A: `testmini.json`
"""
from __future__ import annotations

import argparse
import json

from vlm_jax.evaluate.data_math import load_mathverse, load_mathvision, load_mathvista
from vlm_jax.evaluate.data_scienceqa import load_scienceqa
from vlm_jax.evaluate.data_vqa import load_textvqa, load_vqa
from vlm_jax.evaluate.examples import Example
from vlm_jax.evaluate.judge import JudgeConfig, judge_extractor
from vlm_jax.evaluate.predictions import read_predictions
from vlm_jax.evaluate.scoring_math import score_mathverse, score_mathvision, score_mathvista
from vlm_jax.evaluate.scoring_scienceqa import score_scienceqa
from vlm_jax.evaluate.scoring_vqa import score_okvqa, score_textvqa

SCORERS = {"okvqa": score_okvqa, "textvqa": score_textvqa, "scienceqa": score_scienceqa,
           "mathvista": score_mathvista, "mathvision": score_mathvision, "mathverse": score_mathverse}
MATH_BENCHMARKS = ("mathvista", "mathvision", "mathverse")


def load_for_scoring(benchmark: str, annotations: str, questions: str | None, split: str) -> list[Example]:
    """The benchmark's examples with ground truth, from the files named in the module docstring."""
    if benchmark == "okvqa":
        if questions is None:
            raise ValueError("okvqa needs --questions (the OpenEnded_*_questions.json file)")
        return load_vqa(questions, annotations, benchmark="okvqa")
    if benchmark == "textvqa":
        if questions is not None:
            return load_vqa(questions, annotations, benchmark="textvqa")
        return load_textvqa(annotations)
    if benchmark == "scienceqa":
        return load_scienceqa(annotations, split=split, pid_splits_path=questions)
    if questions is not None:
        raise ValueError(f"{benchmark} takes only --annotations (its question file holds the answers)")
    return {"mathvista": load_mathvista, "mathvision": load_mathvision, "mathverse": load_mathverse}[benchmark](
        annotations)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers the `score` subcommand."""
    p = subparsers.add_parser("score", help="score a prediction JSONL file against a benchmark's annotations",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, choices=sorted(SCORERS))
    p.add_argument("--predictions", required=True,
                   help='JSONL, one {"question_id": ..., "answer": "<raw generation>"} per question')
    p.add_argument("--annotations", required=True, help="the benchmark's ground-truth file (see above)")
    p.add_argument("--questions", help="the benchmark's question file where it is separate (see above)")
    p.add_argument("--split", default="test", help="ScienceQA split (default test)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score questions without a prediction as wrong instead of failing")
    p.add_argument("--judge", action="store_true",
                   help="math benchmarks: extract answers with the LLM judge (VLM_JAX_JUDGE_URL/_KEY/_MODEL) "
                        "before the rule-based comparison")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Scores and prints the result JSON; returns the exit status."""
    examples = load_for_scoring(args.benchmark, args.annotations, args.questions, args.split)
    predictions = read_predictions(args.predictions)
    kwargs = {"allow_missing": args.allow_missing}
    if args.judge:
        if args.benchmark not in MATH_BENCHMARKS:
            raise ValueError(f"--judge applies to {', '.join(MATH_BENCHMARKS)}, not {args.benchmark}")
        kwargs["extract"] = judge_extractor(JudgeConfig.from_env())
    print(json.dumps(SCORERS[args.benchmark](examples, predictions, **kwargs), indent=1))
    return 0
