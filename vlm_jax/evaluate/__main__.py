"""Command line of vlm_jax.evaluate.

    python -m vlm_jax.evaluate --config configs/eval/BENCH.py --ckpt CKPT [--config.shots=4 ...]
    python -m vlm_jax.evaluate score --benchmark B --predictions P.jsonl --annotations A [--questions Q]

The first form (any first argument that is not a subcommand) is the few-shot generation run (`run_cli`);
subcommands register themselves on the parser in `build_parser`; each sets `func(args) -> exit status`.
"""
from __future__ import annotations

import argparse
import sys

from absl.flags import Error as FlagsError

from vlm_jax.checkpoint import CheckpointError
from vlm_jax.evaluate import score_cli
from vlm_jax.evaluate.examples import BenchmarkFileError
from vlm_jax.evaluate.judge import JudgeError

SUBCOMMANDS = ("score",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vlm_jax.evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Few-shot VQA evaluation of vlm_jax models.\n\nA generation run: python -m vlm_jax.evaluate "
                    "--config configs/eval/BENCH.py --ckpt CKPT [--config.shots=4 --config.demo_selection=rices ...]")
    subparsers = parser.add_subparsers(dest="command", required=True)
    score_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
            from vlm_jax.evaluate import run_cli  # jax, flax and the model only for a generation run

            return run_cli.main(argv)
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (BenchmarkFileError, CheckpointError, JudgeError, FlagsError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
