"""Parameter count of a model config, from `jax.eval_shape` of its init (nothing is allocated).

    python -m vlm_jax.models.param_count --preset llava-1.5-7b
    python -m vlm_jax.models.param_count --config configs/llava_1_5_7b.py
"""
from __future__ import annotations

import argparse

from vlm_jax.models import config as config_lib
from vlm_jax.models.init import param_count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="llava-1.5-7b", help="config preset name (llava-1.5-7b, tiny)")
    source.add_argument("--config", help="ml_collections model config file (configs/llava_1_5_7b.py)")
    args = parser.parse_args(argv)
    cfg = config_lib.from_config_file(args.config) if args.config else config_lib.preset(args.preset)
    parts = {"vision_tower": param_count(cfg.vision_config), "language_model": param_count(cfg.text_config)}
    total = param_count(cfg)
    parts["multi_modal_projector"] = total - sum(parts.values())
    for name, n in parts.items():
        print(f"{name:24s} {n:>15,d}")
    print(f"{'total':24s} {total:>15,d}")


if __name__ == "__main__":
    main()
