"""`python -m vlm_jax.convert hf-to-orbax | orbax-to-hf ...`: checkpoint conversion CLI (see README)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlm_jax import cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m vlm_jax.convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("hf-to-orbax", help="Hugging Face safetensors -> vlm_jax params checkpoint")
    imp.add_argument("--hf", type=Path, help="llava-hf or original-LLaVA checkpoint folder")
    imp.add_argument("--clip", type=Path, help="CLIP folder (vision tower of --llm, or of an original LLaVA)")
    imp.add_argument("--llm", type=Path, help="LlamaForCausalLM folder (with --clip: a fresh projector)")
    imp.add_argument("--out", type=Path, required=True, help="output checkpoint folder")
    imp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                     help="stored param dtype (auto: the checkpoint's, float32 if mixed)")
    imp.add_argument("--seed", type=int, default=0, help="projector / connector init seed (--clip/--llm, --vision/--llm)")
    imp.add_argument("--family", choices=["llava", "idefics2"], default="llava",
                     help="model family of a from-parts assembly (an --hf folder's family is detected)")
    imp.add_argument("--vision", type=Path, help="idefics2: SigLIP folder (SiglipModel / SiglipVisionModel) for "
                     "the from-scratch assembly with --llm (Mistral)")
    imp.add_argument("--config", type=Path, help="idefics2 assembly: the Idefics2 config.json to build "
                     "(default: idefics2-8b-base's)")
    imp.add_argument("--vision-biases", action="store_true",
                     help="idefics2 assembly: also copy SigLIP's biases (the original copies weights only)")
    exp = sub.add_parser("orbax-to-hf", help="vlm_jax checkpoint -> llava-hf folder")
    exp.add_argument("--ckpt", type=Path, required=True, help="params checkpoint or training checkpoint folder")
    exp.add_argument("--out", type=Path, required=True, help="output Hugging Face folder")
    exp.add_argument("--step", type=int, help="training checkpoint step (default: the latest)")
    exp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: as stored")
    exp.add_argument("--max-shard-size", default="2GB", help="e.g. 2GB, 500MB")
    args = parser.parse_args(argv)
    if args.command == "hf-to-orbax" and args.family == "idefics2":
        if args.hf is not None or args.clip is not None or args.vision is None or args.llm is None:
            parser.error("hf-to-orbax --family idefics2 needs --vision SIGLIP_DIR and --llm MISTRAL_DIR "
                         "(an Idefics2 --hf folder needs no --family)")
    elif args.command == "hf-to-orbax":
        if args.vision or args.config or args.vision_biases:
            parser.error("--vision, --config and --vision-biases go with --family idefics2")
        if args.hf is None and (args.clip is None or args.llm is None):
            parser.error("hf-to-orbax needs --hf DIR, or --clip DIR and --llm DIR")
        if args.hf is not None and args.llm is not None:
            parser.error("--llm goes with --clip only, not with --hf")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        kind = "a non-empty folder" if args.out.is_dir() else "a file"
        raise cli.InputError(f"--out {args.out}: is {kind}; give a new or empty folder (nothing is overwritten)")
    if args.command == "orbax-to-hf":
        from vlm_jax.convert.safetensors_io import parse_size

        try:
            parse_size(args.max_shard_size)
        except ValueError as e:
            parser.error(f"--max-shard-size: {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status (0, 1 bad checkpoint/input, 2 usage) after one `error:` line."""
    return cli.run(_main, argv, prog="python -m vlm_jax.convert")


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.command == "hf-to-orbax" and args.family == "idefics2":
        from vlm_jax.convert import idefics2
        from vlm_jax.models.config import Idefics2Config

        config = None
        if args.config is not None:
            try:
                config = Idefics2Config.from_hf(idefics2.read_json(args.config))
            except (TypeError, ValueError) as e:
                raise cli.InputError(f"{args.config}: {e}") from e
        config = idefics2.assemble(args.vision, args.llm, args.out, config=config,
                                   dtype="float32" if args.dtype == "auto" else args.dtype, seed=args.seed,
                                   vision_biases=args.vision_biases)
        print(f"wrote {args.out} (idefics2 from {args.vision} + {args.llm}, image_token_id={config.image_token_id}, "
              f"vocab_size={config.text_config.vocab_size}, param_dtype={config.text_config.param_dtype})")
    elif args.command == "hf-to-orbax":
        from vlm_jax.convert.hf_to_orbax import convert

        config = convert(args.out, hf=args.hf, clip=args.clip, llm=args.llm, dtype=args.dtype, seed=args.seed)
        print(f"wrote {args.out} (image_token_id={config.image_token_id}, "
              f"vocab_size={config.text_config.vocab_size}, param_dtype={config.text_config.param_dtype})")
    else:
        from vlm_jax.convert.orbax_to_hf import export

        export(args.ckpt, args.out, dtype=args.dtype, step=args.step, max_shard_size=args.max_shard_size)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
