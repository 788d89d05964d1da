"""Data-parallel generation: `vlm_jax.inference.generation.generate(mesh=local_data_mesh())` (`jit` of a `jax.shard_map`
of the per-device program `_generate` over the mesh) vs `jax.pmap` of the same `_generate`, on all local devices.

Both run a small random LLaVA on one batch of left-padded prompts with 0, 1 or 2 images per row, take host
arrays and return host tokens. The pmap version pads the batch exactly as `generate` does (prompt-length bucket,
rows to a multiple of the device count), reshapes it to `[devices, rows_per_device, ...]`, broadcasts params
(`in_axes=None`, already replicated once up front for both methods) and gives each device the global index of
its first row, so sampling keys are `fold_in(seed, global row)` as in `generate`. The script checks that both
give identical tokens, then times a whole call (prefill + decode + transfers; compile excluded by a warm-up
call, fastest of --repeats interleaved runs). EOS is disabled by default so every row makes --new-tokens tokens.
"speed vs pmap" = pmap seconds / method seconds (above 1: faster than pmap).

Both compiled programs are the same per-device loop, each device stopping on its own rows with no per-step
collective (in jax 0.10 pmap is itself `jit` of a `shard_map`); they differ in how the host hands over the
batch: `generate` puts rows `[b, ...]` straight onto a `NamedSharding` of the mesh, pmap reshapes them to
`[devices, b / devices, ...]` first.

    python benchmarks/generate_dp_bench.py --cpu-devices 8 [--batch 16] [--new-tokens 16] [--repeats 3]

`--cpu-devices N` sets `XLA_FLAGS=--xla_force_host_platform_device_count=N` before jax is imported (CPU only).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="simulate N CPU devices (sets XLA_FLAGS before jax is imported)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--text-len", type=int, default=24, help="text tokens per row (plus row index)")
    parser.add_argument("--hidden", type=int, default=128, help="text hidden size (head_dim 32)")
    parser.add_argument("--layers", type=int, default=2, help="text layers")
    parser.add_argument("--image-size", type=int, default=56, help="image side; (side / 14)^2 tokens per image")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--eos", type=int, default=-1, help="EOS token id (-1: never stop early)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    _cpu = _parser().parse_known_args()[0].cpu_devices
    if _cpu:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={_cpu}").strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vlm_jax.models.init import random_params  # noqa: E402
from vlm_jax.inference.generation import (GenerationOutput, _generate, _pad_axis, bucket_length, generate,  # noqa: E402
                                          hoists_layer_weights, left_pad, local_data_mesh, place_params)
from vlm_jax.models.config import LlavaConfig, TextConfig, VisionConfig  # noqa: E402
from vlm_jax.models.llava import Llava, check_image_tokens  # noqa: E402

IMAGE_TOKEN = 511
OURS = "jit shard_map (ours)"  # generate(mesh=...)


def small_config(args) -> LlavaConfig:
    """A small LLaVA: 2-layer CLIP tower (64 wide), 2x-GELU projector, Llama of `--layers` x `--hidden`."""
    vision = VisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                          image_size=args.image_size, patch_size=14, projection_dim=64)
    text = TextConfig(vocab_size=512, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 32,
                      num_key_value_heads=args.hidden // 32, max_position_embeddings=1024)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, pad_token_id=0)


def make_batch(cfg: LlavaConfig, batch: int, text_len: int, rng: np.random.Generator):
    """Left-padded rows `[text, (image block, text) x n_img]` with n_img = row % 3 (0, 1 or 2 images) and
    lengths growing with the row → (input_ids, segment_ids `[b, s]`, pixel_values `[b, 2, H, W, 3]`,
    image_mask `[b, 2]`)."""
    side = cfg.vision_config.image_size
    rows, mask = [], np.zeros((batch, 2), bool)
    for r in range(batch):
        n_img = r % 3
        ids = [1] + rng.integers(3, IMAGE_TOKEN, text_len + r).tolist()
        for i in range(n_img):
            ids += [IMAGE_TOKEN] * cfg.num_image_tokens + rng.integers(3, IMAGE_TOKEN, 4 + r % 5).tolist()
            mask[r, i] = True
        rows.append(ids)
    input_ids, segment_ids = left_pad(rows)
    pixel_values = rng.normal(size=(batch, 2, side, side, 3)).astype(np.float32)
    check_image_tokens(input_ids, mask, cfg.image_token_id, cfg.num_image_tokens, where="generate_dp_bench batch")
    return input_ids, segment_ids, pixel_values, mask


def make_pmap_generate(model: Llava, devices, max_new_tokens: int):
    """`generate` as a `jax.pmap` over `devices` (axis "data") of the per-device program `_generate`:
    returns `run(params, input_ids, segment_ids, pixel_values, image_mask, *, eos_token_id, pad_token_id=0,
    temperature=0.0, top_p=1.0, seed=0) -> GenerationOutput` on host arrays shaped as for `generate`
    (images required). Params are broadcast (`in_axes=None`); build once and reuse (one compile per shape)."""
    devices = list(devices)
    n = len(devices)

    def per_device(params, input_ids, segment_ids, pixel_values, image_mask, rng, temperature, top_p, eos, pad):
        row_offset = jax.lax.axis_index("data") * input_ids.shape[0]
        return _generate(model, params, input_ids, segment_ids, pixel_values, image_mask, rng, temperature, top_p,
                         eos, pad, row_offset, max_new_tokens=max_new_tokens,
                         hoist_weights=hoists_layer_weights(devices[0].platform))

    pmapped = jax.pmap(per_device, axis_name="data", devices=devices,
                       in_axes=(None, 0, 0, 0, 0, None, None, None, None, None))

    def run(params, input_ids, segment_ids, pixel_values, image_mask, *, eos_token_id: int, pad_token_id: int = 0,
            temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> GenerationOutput:
        input_ids, segment_ids = np.asarray(input_ids, np.int32), np.asarray(segment_ids, np.int32)
        batch, length = input_ids.shape
        extra_len, extra_rows = bucket_length(length) - length, -batch % n
        arrays = [_pad_axis(_pad_axis(input_ids, 1, extra_len, 0, pad_token_id), 0, 0, extra_rows, pad_token_id),
                  _pad_axis(_pad_axis(segment_ids, 1, extra_len, 0, 0), 0, 0, extra_rows, 0),
                  _pad_axis(np.asarray(pixel_values, np.float32), 0, 0, extra_rows, 0.0),
                  _pad_axis(np.asarray(image_mask, bool), 0, 0, extra_rows, False)]
        arrays = [a.reshape(n, a.shape[0] // n, *a.shape[1:]) for a in arrays]
        tokens, num_tokens = pmapped(params, *arrays, jax.random.PRNGKey(seed), jnp.float32(temperature),
                                     jnp.float32(top_p), jnp.int32(eos_token_id), jnp.int32(pad_token_id))
        tokens = np.asarray(tokens).reshape(n * arrays[0].shape[1], max_new_tokens)
        return GenerationOutput(tokens[:batch], np.asarray(num_tokens).reshape(-1)[:batch])

    return run


def fastest(fns: dict, repeats: int) -> tuple[dict, dict]:
    """(seconds of the first call of each fn — compile included —, fastest of `repeats` interleaved later
    calls): the least disturbed run on a shared machine."""
    first, times = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - start
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return first, {name: min(t) for name, t in times.items()}


def main(argv=None) -> dict:
    """Runs the comparison, prints the table; returns {"identical": bool, "rows": [dict per method]}.
    Raises AssertionError when the two methods' tokens differ."""
    args = _parser().parse_args(argv)
    devices = jax.local_devices()
    if args.cpu_devices and len(devices) != args.cpu_devices:
        raise SystemExit(f"--cpu-devices {args.cpu_devices}: jax already started with {len(devices)} devices "
                         "(the flag only works before jax is imported, i.e. when run as a script)")
    cfg = small_config(args)
    model = Llava(cfg)
    mesh = local_data_mesh(devices)
    params = place_params(random_params(cfg, seed=args.seed), mesh)  # replicated once, reused by both methods
    batch = make_batch(cfg, args.batch, args.text_len, np.random.default_rng(args.seed))
    kwargs = dict(eos_token_id=args.eos, pad_token_id=0, temperature=args.temperature, seed=args.seed)
    pmap_run = make_pmap_generate(model, devices, args.new_tokens)
    outputs = {}

    def jit_shard_map():
        outputs[OURS] = generate(model, params, *batch, max_new_tokens=args.new_tokens, mesh=mesh, **kwargs)

    def pmapped():
        outputs["pmap"] = pmap_run(params, *batch, **kwargs)

    first, best = fastest({"pmap": pmapped, OURS: jit_shard_map}, args.repeats)
    a, b = outputs["pmap"], outputs[OURS]
    identical = bool(np.array_equal(a.tokens, b.tokens) and np.array_equal(a.num_tokens, b.num_tokens))
    made = int(np.sum(b.num_tokens))
    prompt_tokens = int(np.sum(batch[1]))
    print(f"{jax.default_backend()} x {len(devices)} devices ({devices[0].device_kind}); batch {args.batch} "
          f"({prompt_tokens} prompt tokens, {cfg.num_image_tokens} per image, 0-2 images per row), "
          f"text {args.layers} layers x {args.hidden}, temperature {args.temperature}")
    print(f"identical tokens: {identical}")
    header = ("method", "devices", "batch", "new tokens", "seconds", "tokens/s", "speed vs pmap", "first call s")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    rows = []
    for name in ("pmap", OURS):
        row = dict(method=name, devices=len(devices), batch=args.batch, new_tokens=made, seconds=best[name],
                   tokens_per_s=made / best[name], ratio=best["pmap"] / best[name], first=first[name])
        rows.append(row)
        print(f"| {name} | {row['devices']} | {row['batch']} | {made} | {row['seconds']:.4f} | "
              f"{row['tokens_per_s']:.1f} | {row['ratio']:.2f}x | {row['first']:.2f} |")
    print(json.dumps({"identical": identical, "rows": rows}))
    if not identical:
        raise AssertionError(f"pmap and generate(mesh=...) tokens differ:\n{a.rows()}\n{b.rows()}")
    return {"identical": identical, "rows": rows}


if __name__ == "__main__":
    main()
