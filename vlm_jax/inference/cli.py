"""`python -m vlm_jax.generate`: continue a prompt with images from a vlm_jax params checkpoint.

    python -m vlm_jax.generate --ckpt CKPT --image a.png --image b.png \
        --prompt "USER: <image>\n<image>\nWhat differs? ASSISTANT:" [--max-new-tokens 128] [--json]

`<image>` marks where each image goes (in order); without any, the images are put first, each followed by
a newline, as LLaVA does. The tokenizer is the one the checkpoint records (`--tokenizer` overrides it);
`--input-ids 1,2,3` drives a model without one: each image token id (`config.image_token_id`) marks one image,
or a run of `num_image_tokens` of them one already-expanded image. Greedy unless `--temperature > 0`; stops at
EOS. The same as `vlm_jax.load(CKPT).generate(prompt, images)`, for either model family.

Idefics2 checkpoints use the Idefics2 processor (`vlm_jax.data.idefics2_processor`): images at their aspect ratio
(longest / shortest edge as the checkpoint's `preprocessor_config.json` records them, e.g. the sizes a
`vlm_jax.train` run trained with, else the original's 560 / 336; 980 / 336 with `--high-res`), each
`<image>` expanded to
`<fake_token_around_image>` + 64 image tokens + `<fake_token_around_image>`; without placeholders the images
go first.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from vlm_jax import cli
from vlm_jax.checkpoint import PARAMS_DIR, load_config, tokenizer_spec
from vlm_jax.models.config import Idefics2Config
from vlm_jax.inference.model import (DEFAULT_MAX_NEW_TOKENS, IMAGE_PLACEHOLDER, VLM, expand_image_tokens,
                                     load)

PROG = "python -m vlm_jax.generate"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="vlm_jax params checkpoint folder")
    parser.add_argument("--image", type=Path, action="append", default=[], help="image file (repeatable)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="text with <image> placeholders (needs a tokenizer)")
    group.add_argument("--input-ids", help="comma-separated token ids (image token id marks each image)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"tokens to generate at most (default {DEFAULT_MAX_NEW_TOKENS}, as the original evaluation)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    parser.add_argument("--tokenizer", default=None,
                        help="'byte' or a tokenizer folder (default: the one the checkpoint records)")
    parser.add_argument("--image-aspect-ratio", choices=["pad", "none"], default="pad",
                        help="pad: pad to a square with the mean colour first (LLaVA-1.5)")
    parser.add_argument("--high-res", action="store_true",
                        help="Idefics2: longest image edge 980 (the original's --high_res) instead of the checkpoint's "
                        "preprocessor_config.json size or 560")
    parser.add_argument("--space-after-image", action="store_true",
                        help="Idefics2: a space after each image block before a word (transformers 5's processor; "
                        "the original's 4.40 adds none)")
    parser.add_argument("--json", action="store_true", help='print {"token_ids": [...], "text": ...}')
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        parser.error(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if not (0 < args.top_p <= 1):
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    return args


def parse_input_ids(text: str, vocab_size: int) -> list[int]:
    """`--input-ids` "1,2,3" -> ids, each checked to lie in [0, vocab_size)."""
    ids = []
    for k, token in enumerate(t for t in text.replace(" ", "").split(",") if t):
        try:
            ids.append(int(token))
        except ValueError:
            raise cli.UsageError(f"--input-ids: item {k} {token!r} is not an integer (give comma-separated "
                                 "token ids, e.g. 1,32000,450)") from None
        if not 0 <= ids[-1] < vocab_size:
            raise cli.InputError(f"--input-ids: item {k} = {ids[-1]} is outside the checkpoint's vocabulary "
                                 f"[0, {vocab_size}); give ids of this checkpoint's tokenizer")
    if not ids:
        raise cli.UsageError("--input-ids is empty; give comma-separated token ids, e.g. 1,32000,450")
    return ids


def _checked_config(args: argparse.Namespace):
    """The checkpoint's model config, after checking --ckpt is a params checkpoint."""
    if not args.ckpt.is_dir():
        cli.require_dir(args.ckpt, "--ckpt", "give a vlm_jax params checkpoint (e.g. workdir/demo/final)")
    config = load_config(args.ckpt)
    if not (args.ckpt / PARAMS_DIR).is_dir():
        raise cli.InputError(f"--ckpt {args.ckpt}: no {PARAMS_DIR}/ folder (not a vlm_jax params checkpoint; "
                             "convert a Hugging Face one with python -m vlm_jax.convert hf-to-orbax)")
    return config


def _prompt(args: argparse.Namespace, config):
    """The prompt (text or ids), checked against the checkpoint and the --image count before any loading."""
    n_images = len(args.image)
    if args.input_ids is not None:
        ids = parse_input_ids(args.input_ids, config.text_config.vocab_size)
        _, marked = expand_image_tokens(ids, config.image_token_id, config.num_image_tokens)
        if marked != n_images:
            raise cli.UsageError(f"--input-ids mark {marked} images but {n_images} --image were given")
        return ids
    if args.tokenizer is None and tokenizer_spec(args.ckpt) is None:
        raise cli.InputError(f"--ckpt {args.ckpt} records no tokenizer (no tokenizer files, no tokenizer_spec.json); "
                             "give --tokenizer byte|DIR or --input-ids")
    placeholders = args.prompt.count(IMAGE_PLACEHOLDER)
    if placeholders and placeholders != n_images:
        raise cli.UsageError(f"--prompt has {placeholders} {IMAGE_PLACEHOLDER} placeholders but {n_images} --image")
    return args.prompt


def run(args: argparse.Namespace) -> dict:
    """Generates for one prompt; returns {"token_ids": new ids (EOS included), "text": decoded or None}."""
    config = _checked_config(args)
    if isinstance(config, Idefics2Config):
        return _run_idefics2(args, config)
    prompt = _prompt(args, config)
    vlm: VLM = load(args.ckpt, dtype=args.dtype, tokenizer=args.tokenizer, aspect=args.image_aspect_ratio)
    return vlm.generate(prompt, [str(p) for p in args.image], max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p, seed=args.seed)


def _run_idefics2(args: argparse.Namespace, config: Idefics2Config) -> dict:
    """`run` for an Idefics2 checkpoint through `vlm_jax.load`'s Idefics2 handle: the Idefics2 processor's images (no
    splitting, the checkpoint's sizes or 560 / 336, `--high-res` 980 / 336, padded with a pixel mask) and prompt
    expansion (`vlm_jax.data.idefics2_processor`)."""
    from vlm_jax.data import idefics2_processor as proc

    spec = args.tokenizer or tokenizer_spec(args.ckpt)
    if args.input_ids is not None:
        raw = parse_input_ids(args.input_ids, config.text_config.vocab_size)
        _, n_images = expand_image_tokens(raw, config.image_token_id, config.num_image_tokens)
        if n_images != len(args.image):
            raise cli.UsageError(f"--input-ids mark {n_images} images but {len(args.image)} --image were given")
        prompt = raw
    elif spec is None or spec == "byte":
        raise cli.InputError(f"--ckpt {args.ckpt} has no tokenizer files; use --input-ids")
    else:
        prompt = args.prompt
    vlm = load(args.ckpt, dtype=args.dtype, tokenizer=spec,
               image_sizes=proc.SIZES["high_res"] if args.high_res else None)
    if vlm.processor is not None:
        vlm.processor.space_after_image = args.space_after_image
    return vlm.generate(prompt, [str(p) for p in args.image], max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status (0, 1 bad input, 2 usage) after one `error:` line."""
    return cli.run(_main, argv, prog=PROG)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(result["text"] if result["text"] is not None else " ".join(map(str, result["token_ids"])))
    return 0
