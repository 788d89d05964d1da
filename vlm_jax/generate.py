"""`python -m vlm_jax.generate`: continue a prompt with images from a vlm_jax params checkpoint.

    python -m vlm_jax.generate --ckpt CKPT --image a.png --image b.png \
        --prompt "USER: <image>\n<image>\nWhat differs? ASSISTANT:" --max-new-tokens 32 [--json]

`<image>` marks where each image goes (in order); without any, the images are put first, each followed by
a newline, as LLaVA does. `--input-ids 1,2,3` drives a checkpoint without a tokenizer: each image token id
(`config.image_token_id`) marks one image, or a run of `num_image_tokens` of them one already-expanded image.
Greedy unless `--temperature > 0`; stops at EOS.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from vlm_jax import cli
from vlm_jax.checkpoint import PARAMS_DIR, load_config, load_params, tokenizer_spec
from vlm_jax.data.image import checkpoint_image_settings, preprocess_image
from vlm_jax.data.tokenizer import make_tokenizer
from vlm_jax.generation import generate, left_pad
from vlm_jax.models.config import LlavaConfig
from vlm_jax.models.llava import Llava

IMAGE_PLACEHOLDER = "<image>"
DEFAULT_MAX_NEW_TOKENS = 128  # the original evaluation's max_new_tokens


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m vlm_jax.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="vlm_jax params checkpoint folder")
    parser.add_argument("--image", type=Path, action="append", default=[], help="image file (repeatable)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="text with <image> placeholders (needs the checkpoint's tokenizer)")
    group.add_argument("--input-ids", help="comma-separated token ids (image token id marks each image)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"tokens to generate at most (default {DEFAULT_MAX_NEW_TOKENS}, as the original evaluation)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-aspect-ratio", choices=["pad", "none"], default="pad",
                        help="pad: pad to a square with the mean colour first (LLaVA-1.5)")
    parser.add_argument("--json", action="store_true", help='print {"token_ids": [...], "text": ...}')
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        parser.error(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if not (0 < args.top_p <= 1):
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    return args


def load_images(paths: list[Path], ckpt: Path, config: LlavaConfig, aspect: str) -> np.ndarray | None:
    """Images → `[n, H, W, 3]` float32 with the checkpoint's preprocessor_config.json when it has one."""
    if not paths:
        return None
    settings = checkpoint_image_settings(ckpt, config.vision_config.image_size)
    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                out.append(preprocess_image(img, aspect=aspect, **settings))
        except OSError as e:  # missing file, unreadable or not an image
            raise cli.InputError(f"--image {path}: cannot read the image ({e})") from e
    return np.stack(out)


def expand_image_tokens(ids: list[int], image_token_id: int, num_image_tokens: int) -> tuple[list[int], int]:
    """Expands each lone image token id to `num_image_tokens` copies; runs that are already whole multiples
    of `num_image_tokens` stay. Returns (expanded ids, number of images)."""
    out, n_images, i = [], 0, 0
    while i < len(ids):
        if ids[i] != image_token_id:
            out.append(ids[i])
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] == image_token_id:
            j += 1
        run = j - i
        if run == 1:
            n_images += 1
        elif run % num_image_tokens == 0:
            n_images += run // num_image_tokens
        else:
            raise cli.UsageError(f"--input-ids: a run of {run} image tokens ({image_token_id}) at position {i} is "
                             f"neither 1 per image nor a multiple of num_image_tokens={num_image_tokens}")
        out.extend([image_token_id] * (num_image_tokens * (1 if run == 1 else run // num_image_tokens)))
        i = j
    return out, n_images


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


def prompt_to_ids(prompt: str, tokenizer, n_images: int, image_token_id: int, num_image_tokens: int) -> list[int]:
    """BOS + text pieces tokenized separately, an image block at each `<image>` (prepended when none)."""
    if IMAGE_PLACEHOLDER not in prompt and n_images:
        prompt = (IMAGE_PLACEHOLDER + "\n") * n_images + prompt
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    if len(pieces) - 1 != n_images:
        raise cli.UsageError(f"--prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholders but {n_images} --image")
    ids = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    for k, piece in enumerate(pieces):
        if k:
            ids.extend([image_token_id] * num_image_tokens)
        ids.extend(tokenizer.encode(piece) if piece else [])
    return ids


def _tokenizer(ckpt: Path):
    spec = tokenizer_spec(ckpt)
    return None if spec is None else make_tokenizer(spec)


def run(args: argparse.Namespace) -> dict:
    """Generates for one prompt; returns {"token_ids": new ids (EOS included), "text": decoded or None}."""
    if not args.ckpt.is_dir():
        cli.require_dir(args.ckpt, "--ckpt", "give a vlm_jax params checkpoint (e.g. workdir/demo/final)")
    config = load_config(args.ckpt)
    if not (args.ckpt / PARAMS_DIR).is_dir():
        raise cli.InputError(f"--ckpt {args.ckpt}: no {PARAMS_DIR}/ folder (not a vlm_jax params checkpoint; "
                             "convert a Hugging Face one with python -m vlm_jax.convert hf-to-orbax)")
    tokenizer = _tokenizer(args.ckpt)
    n_tokens = config.num_image_tokens
    if args.input_ids is not None:
        raw = parse_input_ids(args.input_ids, config.text_config.vocab_size)
        ids, n_images = expand_image_tokens(raw, config.image_token_id, n_tokens)
        if n_images != len(args.image):
            raise cli.UsageError(f"--input-ids mark {n_images} images but {len(args.image)} --image were given")
    else:
        if tokenizer is None:
            raise cli.InputError(f"--ckpt {args.ckpt} records no tokenizer (no tokenizer files, no tokenizer_spec.json); "
                                 "use --input-ids")
        ids = prompt_to_ids(args.prompt, tokenizer, len(args.image), config.image_token_id, n_tokens)
    pixels = load_images(args.image, args.ckpt, config, args.image_aspect_ratio)
    eos = tokenizer.eos_id if tokenizer is not None else config.text_config.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    input_ids, segment_ids = left_pad([ids], pad_token_id=pad)
    out = generate(Llava(config), load_params(args.ckpt, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), input_ids, segment_ids,
                   None if pixels is None else pixels[None], None if pixels is None else np.ones((1, len(pixels)), bool),
                   max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                   temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    new = out.rows()[0]
    return {"token_ids": new, "text": None if tokenizer is None else tokenizer.decode(new)}


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status (0, 1 bad input, 2 usage) after one `error:` line."""
    return cli.run(_main, argv, prog="python -m vlm_jax.generate")


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(result["text"] if result["text"] is not None else " ".join(map(str, result["token_ids"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
