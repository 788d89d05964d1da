"""Parameter count of a model config, from `jax.eval_shape` of its init (nothing is allocated).

    python -m vlm_jax.models.param_count --preset llava-1.5-7b
    python -m vlm_jax.models.param_count --config configs/llava_1_5_7b.py
    python -m vlm_jax.models.param_count --preset idefics2-8b-base
"""
from __future__ import annotations

import sys

from vlm_jax import cli
from vlm_jax.models import config as config_lib
from vlm_jax.models.init import param_count


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status (0, 1 bad config file, 2 usage) after one `error:` line."""
    return cli.run(_main, argv, prog="python -m vlm_jax.models.param_count")


def _main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(prog="python -m vlm_jax.models.param_count", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="llava-1.5-7b", help=f"config preset name ({', '.join(config_lib.PRESETS)})")
    source.add_argument("--config", help="ml_collections model config file (configs/llava_1_5_7b.py)")
    args = parser.parse_args(argv)
    if args.config:
        cfg = config_lib.from_config_file(args.config)
    elif args.preset in config_lib.PRESETS:
        cfg = config_lib.preset(args.preset)
    else:
        raise cli.UsageError(f"--preset {args.preset!r} is unknown{cli.did_you_mean(args.preset, config_lib.PRESETS)} "
                             f"(known: {', '.join(config_lib.PRESETS)})")
    idefics2 = isinstance(cfg, config_lib.Idefics2Config)
    parts = {"vision_model" if idefics2 else "vision_tower": param_count(cfg.vision_config),
             "text_model" if idefics2 else "language_model": param_count(cfg.text_config)}
    total = param_count(cfg)
    parts["connector" if idefics2 else "multi_modal_projector"] = total - sum(parts.values())
    for name, n in parts.items():
        print(f"{name:24s} {n:>15,d}")
    print(f"{'total':24s} {total:>15,d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
