"""Train-step throughput: vlm_jax (JAX, jitted step) vs transformers' PyTorch LlavaForConditionalGeneration.

    python benchmarks/train_bench.py [--batch 4] [--seq 512] [--steps 5]

Both frameworks train the same LLaVA shape (below: CLIP-like tower 4x256 on 112px images, 2-layer GELU
projector, Llama 4x512 with a 32064-token vocabulary), float32, on the same batch (one image and
`seq - 64` text tokens per row) on this machine: forward, backward, global-norm clipping, AdamW, with
the vision tower frozen as in LLaVA training. vlm_jax runs its LM head on the positions with loss only,
128 at a time (`--loss-chunk`, `training.loss.weighted_cross_entropy`). PyTorch uses its default SDPA attention and all CPU
threads. The two steps are timed in turns (vlm_jax, PyTorch, vlm_jax, ...) after 2 warm-up steps each (JAX's
compilation included there); prints the median step time of `--steps` timed steps, its range, tokens/s,
the ratio of medians and the spread of the per-pair ratios; the last line is one JSON object of the figures.
`--size large` trains a second, larger shape (~177M parameters, GQA).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vlm_jax.models.config import LlavaConfig, TextConfig, VisionConfig  # noqa: E402
from vlm_jax.models.llava import Llava  # noqa: E402
from vlm_jax.models.init import param_count  # noqa: E402
from vlm_jax.sharding import DEFAULT_RULES, batch_sharding, make_mesh  # noqa: E402
from vlm_jax.training.optimizer import make_optimizer, make_schedule  # noqa: E402
from vlm_jax.training.state import abstract_train_state, init_train_state  # noqa: E402
from vlm_jax.training.step import jit_train_step, make_train_step  # noqa: E402

LR = 1e-4
OPTIM = {"learning_rate": LR, "schedule": "constant", "warmup_steps": 0, "warmup_ratio": 0.0, "min_lr_ratio": 0.0,
         "weight_decay": 0.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "max_grad_norm": 1.0}
FROZEN = ("vision_tower",)


def bench_config() -> LlavaConfig:
    """Tiny but not trivial: ~49M parameters, 64 image tokens per image."""
    return LlavaConfig(
        vision_config=VisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                   num_attention_heads=4, image_size=112, patch_size=14),
        text_config=TextConfig(vocab_size=32064, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                               num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048),
        image_token_id=32000, pad_token_id=0)


def large_config() -> LlavaConfig:
    """A second, larger shape (~177M parameters): CLIP-like 6x512 tower on 224px images (256 image tokens),
    Llama 8x1024 with grouped-query attention (16 heads, 4 kv heads)."""
    return LlavaConfig(
        vision_config=VisionConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                                   num_attention_heads=8, image_size=224, patch_size=14),
        text_config=TextConfig(vocab_size=32064, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                               num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096),
        image_token_id=32000, pad_token_id=0)


CONFIGS = {"small": bench_config, "large": large_config}


def make_batch(config: LlavaConfig, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """DESIGN.md batch: per row one image block then random text; loss on the text tokens."""
    rng = np.random.default_rng(seed)
    n_img = config.num_image_tokens
    ids = rng.integers(4, 32000, size=(batch, seq + 1)).astype(np.int32)
    ids[:, :n_img] = config.image_token_id
    loss_mask = np.ones((batch, seq), np.float32)
    loss_mask[:, : n_img - 1] = 0.0  # targets that are image tokens
    size = config.vision_config.image_size
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": loss_mask,
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
            "segment_ids": np.ones((batch, seq), np.int32),
            "pixel_values": rng.normal(size=(batch, 1, size, size, 3)).astype(np.float32),
            "image_mask": np.ones((batch, 1), bool)}


def interleaved_times(steps, n_warmup: int, n_timed: int) -> list[list[float]]:
    """Seconds of `n_timed` calls of each of `steps`, taken in turns (a, b, a, b, ...) after `n_warmup`
    untimed calls each, so both see the same machine load."""
    for step in steps:
        for _ in range(n_warmup):
            step()
    times = [[] for _ in steps]
    for _ in range(n_timed):
        for step, t in zip(steps, times):
            start = time.perf_counter()
            step()
            t.append(time.perf_counter() - start)
    return times


def jax_step_fn(config: LlavaConfig, batch: dict, with_hlo: bool = False, loss_chunk: int = 0):
    """A no-argument function running one jitted vlm_jax train step on `batch`; with `with_hlo` also the
    compiled step's HLO text (for train_profile.py)."""
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    schedule = make_schedule(OPTIM, 100)
    tx = make_optimizer(OPTIM, schedule)
    _, shardings = abstract_train_state(config, FROZEN, tx, mesh, DEFAULT_RULES)
    state = init_train_state(config, FROZEN, tx, shardings, jax.random.key(0))
    step = jit_train_step(make_train_step(Llava(config), tx, schedule, frozen=FROZEN, loss_chunk=loss_chunk), shardings, batch_sharding(mesh))
    device_batch = jax.device_put(batch, batch_sharding(mesh))
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])

    if with_hlo:
        return run, step.lower(state, device_batch).compile().as_text()
    return run


def torch_step_fn(config: LlavaConfig, batch: dict):
    import torch
    from transformers import LlavaConfig as HFLlavaConfig
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(HFLlavaConfig(**config.to_hf(), attn_implementation="sdpa")).train()
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    input_ids = torch.from_numpy(batch["input_ids"]).long()
    labels = input_ids.clone()
    labels[input_ids == config.image_token_id] = -100
    pixels = torch.from_numpy(batch["pixel_values"][:, 0].transpose(0, 3, 1, 2).copy())

    def run():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=input_ids, pixel_values=pixels, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", choices=sorted(CONFIGS), default="small", help="model shape (see CONFIGS)")
    parser.add_argument("--loss-chunk", type=int, default=128,
                        help="vlm_jax: loss positions per chunk of the LM head + cross-entropy; only chunks that "
                             "hold positions with loss run (0: every position at once)")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                        help="PyTorch intra-op threads (for 1 thread on both sides also run with XLA_FLAGS="
                             "'--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1')")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.torch_threads)
    config = CONFIGS[args.size]()
    batch = make_batch(config, args.batch, args.seq)
    tokens = args.batch * args.seq
    names = ("vlm_jax (JAX)", "transformers (PyTorch)")
    steps = [jax_step_fn(config, batch, loss_chunk=args.loss_chunk), torch_step_fn(config, batch)]
    times = interleaved_times(steps, 2, args.steps)
    medians = [statistics.median(t) for t in times]
    # per-pair ratios: each timed vlm_jax step against the PyTorch step right after it (same machine load)
    pair_ratios = sorted(t / j for j, t in zip(*times))
    print(f"LLaVA train step ({args.size}: {param_count(config) / 1e6:.1f}M params), float32, batch {args.batch} x "
          f"seq {args.seq} ({tokens} tokens, {config.num_image_tokens} image tokens/row), vision tower frozen; "
          f"{jax.devices()[0].device_kind}, torch {torch.get_num_threads()} threads, jax {jax.__version__}, torch "
          f"{torch.__version__}; {args.steps} interleaved timed steps each")
    print(f"| {'implementation':24s} | step ms (median) | min-max ms | tokens/s | vs PyTorch |")
    print(f"|{'-' * 26}|-----------------:|-----------:|---------:|-----------:|")
    for name, t, med in zip(names, times, medians):
        print(f"| {name:24s} | {med * 1e3:16.0f} | {min(t) * 1e3:.0f}-{max(t) * 1e3:.0f} | {tokens / med:8.0f} | "
              f"{medians[1] / med:9.2f}x |")
    print(f"vlm_jax / PyTorch per interleaved pair: median {statistics.median(pair_ratios):.2f}x, "
          f"range {pair_ratios[0]:.2f}-{pair_ratios[-1]:.2f}x")
    figures = {"size": args.size, "loss_chunk": args.loss_chunk, "params": param_count(config), "batch": args.batch, "seq": args.seq,
               "vlm_jax_step_ms": medians[0] * 1e3, "torch_step_ms": medians[1] * 1e3,
               "vlm_jax_tokens_per_s": tokens / medians[0], "torch_tokens_per_s": tokens / medians[1],
               "ratio": medians[1] / medians[0], "pair_ratio_median": statistics.median(pair_ratios),
               "pair_ratio_min": pair_ratios[0], "pair_ratio_max": pair_ratios[-1],
               "vlm_jax_step_ms_all": [t * 1e3 for t in times[0]], "torch_step_ms_all": [t * 1e3 for t in times[1]]}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
