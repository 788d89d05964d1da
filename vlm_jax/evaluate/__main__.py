"""Command line of vlm_jax.evaluate.

    python -m vlm_jax.evaluate score --benchmark B --predictions P.jsonl --annotations A [--questions Q]

Subcommands register themselves on the parser in `build_parser`; each sets `func(args) -> exit status`.
The few-shot generation run (`python -m vlm_jax.evaluate --config configs/eval/BENCH.py --ckpt CKPT`) is to be
dispatched in `main` before subcommand parsing, when the first argument is not a subcommand name.
"""
from __future__ import annotations

import argparse
import sys

from vlm_jax.evaluate import score_cli
from vlm_jax.evaluate.examples import BenchmarkFileError
from vlm_jax.evaluate.judge import JudgeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.evaluate",
                                     description="Few-shot VQA evaluation of vlm_jax models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    score_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BenchmarkFileError, JudgeError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
