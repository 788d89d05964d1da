"""Generation throughput of `vlm_jax.inference.generation.generate` vs transformers `LlavaForConditionalGeneration.generate`
on the same small random LLaVA (saved to disk, converted with hf-to-orbax), the same prompts, on this machine.

Prefill tokens/s = prompt tokens (image tokens included, padding excluded) / time of a 1-new-token call;
decode tokens/s = batch * (N - 1) / (time of an N-token call - time of the 1-token call of the same repeat).
Greedy, EOS disabled so every row makes N tokens; compile time excluded (one warm-up call each); --repeats
interleaved repeats (vlm_jax and transformers in turns), medians and ranges, ratios per repeat. Then the
decode step-time curve: ms per decode step at cache lengths --curve (batch --curve-batch) on a filled cache,
with the K+V bytes each step reads and the time of one plain read (`host_read`) of the same buffers.
A decode step must read the language model's weights and the allocated K/V cache at least once, so the
bench also times one plain read of exactly those bytes (in turns with the generate calls) and prints the
decode ratio a step running at that floor would reach against transformers' measured step.
The last line is one JSON object of the figures.

    python benchmarks/generate_bench.py [--batch 4] [--new-tokens 32] [--repeats 5] [--curve 16,256,1000,4000]
        [--profile]   # also ms per decode step by op kind, from a jax.profiler trace at each curve length
        [--changes 15]  # also the packed prefill, the CPU weights' copy and its fused kernels on / off in one
                        # process, in turns
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vlm_jax.convert.__main__ import main as convert_main  # noqa: E402
import vlm_jax  # noqa: E402
from vlm_jax.inference.generation import (bucket_length, decode_loop, generate, generation_weights,  # noqa: E402
                                          hoists_layer_weights, layer_weights, left_pad)
from vlm_jax.models.llama import init_cache  # noqa: E402
from vlm_jax.models.llava import Llava  # noqa: E402

IMAGE_TOKEN = 1000


def build_model(path: Path, args) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                              image_size=args.image_size, patch_size=14)
    text = LlamaConfig(vocab_size=1024, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                       num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                       num_key_value_heads=args.hidden // 64, max_position_embeddings=4096, bos_token_id=1,
                       eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                         image_seq_length=(args.image_size // 14) ** 2)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    return model


def prompts(args, n_image_tokens: int, rng: np.random.Generator):
    """Rows of `[text, image block, text, (image block,) text]` with 1 or 2 images and varied lengths."""
    rows, images = [], []
    for r in range(args.batch):
        n_img = 1 + r % 2
        ids = [1]
        for _ in range(n_img):
            ids += rng.integers(3, IMAGE_TOKEN, args.text_len // 2 + r).tolist() + [IMAGE_TOKEN] * n_image_tokens
        rows.append(ids + rng.integers(3, IMAGE_TOKEN, args.text_len // 2).tolist())
        images.append(rng.normal(size=(n_img, args.image_size, args.image_size, 3)).astype(np.float32))
    return rows, images


def interleaved_seconds(fns, repeats: int) -> list[list[float]]:
    """`repeats` timings of each of `fns`, taken in turns (after one warm-up call each, compile included
    there), so every function sees the same machine load."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return times


def rates(one: list[float], full: list[float], prompt_tokens: int, batch: int, new_tokens: int):
    """Per repeat: prefill tokens/s = prompt tokens / (1-token call), decode tokens/s = batch * (N - 1) /
    (N-token call - 1-token call) of the same repeat (None when noise made it non-positive)."""
    prefill = [prompt_tokens / a for a in one]
    decode = [batch * (new_tokens - 1) / (b - a) if b > a else None for a, b in zip(one, full)]
    return prefill, decode


def host_read(tree):
    """A function that reads every byte of `tree`'s arrays once: numpy sums over zero-copy host views of the
    CPU buffers, the machine's floor for reading them (~9 GB/s here; a jitted `jnp.sum` is XLA:CPU's reduction
    and runs ~2.7x slower, so it is no floor)."""
    views = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return lambda: sum(float(v.sum()) for v in views)


def op_kind(name: str) -> str:
    """The kind of one XLA:CPU op of the decode loop, by its HLO name."""
    if name.startswith("ynn_fusion"):
        return "weight matmuls (YNNPACK fusions)"
    if name.startswith("dot"):
        return "attention dots (q.K, p.V)"
    if "slice" in name and "update" not in name:
        return "slices (copies)"
    return "other fusions (norms, RoPE, softmax, cache writes, argmax)"


def profile_ops(fn, compiled_text: str, steps: int) -> dict:
    """Runs `fn` under `jax.profiler` and sums the trace's events of the ops named in `compiled_text` (the
    compiled HLO) by `op_kind` → {kind: (ms per step, ops per step)} over `steps` steps (ops outside the loop,
    run once per call, are spread over the steps)."""
    names = set(re.findall(r"^\s*(?:ROOT )?%?([\w.-]+) = ", compiled_text, re.M))
    names -= {n for n in names if n.startswith(("while", "tuple", "get-tuple-element", "parameter", "constant",
                                                 "copy-start", "copy-done", "bitcast"))}
    with tempfile.TemporaryDirectory(prefix="genprof") as tmp:
        jax.profiler.start_trace(tmp)
        fn()
        jax.profiler.stop_trace()
        events = []
        for path in Path(tmp).rglob("*.trace.json.gz"):
            events += json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    total, count = {}, {}
    for e in events:
        if e.get("ph") == "X" and e.get("name") in names:
            kind = op_kind(e["name"])
            total[kind] = total.get(kind, 0.0) + e["dur"] / 1e3 / steps
            count[kind] = count.get(kind, 0) + 1 / steps
    return {kind: (total[kind], count[kind]) for kind in sorted(total, key=total.get, reverse=True)}


def decode_curve(model: Llava, params, lengths, batch: int, steps: int, repeats: int, profile: bool = False):
    """Decode step ms at each cache length: `generation.decode_loop` (the loop `generate` runs after prefill)
    on a KV cache whose first `length` slots are filled (random values, one segment), `steps` + 1 vs 1 tokens,
    step ms = time difference / steps; and, as the machine's floor for reading that cache, the ms of one
    plain read of the same K and V buffers (`host_read`). Lengths measured in turns, `repeats` times each →
    ({length: step ms per repeat}, {length: read ms per repeat}, {length: K+V bytes}, weights read ms per repeat,
    {length: `profile_ops` of one call} when `profile`, else {})."""
    text = model.config.text_config

    hoist = hoists_layer_weights(jax.devices()[0].platform)

    @partial(jax.jit, static_argnames=("n", "length"))
    def run(params, cache, n, length):
        first = jnp.full((batch,), 5, jnp.int32)
        # the weights' copy `generate` makes once per call (shared with its prefill), in the 1-step call too
        stored = layer_weights(model, params) if hoist else None
        return decode_loop(model, params, cache, first, jnp.full((batch,), length, jnp.int32), length,
                           jax.random.PRNGKey(0), jnp.float32(0.0), jnp.float32(1.0), jnp.int32(-1), jnp.int32(0),
                           max_new_tokens=n, hoist_weights=hoist, stored_weights=stored)

    caches = {}
    for length in lengths:
        empty = init_cache(text, batch, length + steps + 1)
        key = jax.random.PRNGKey(length)
        caches[length] = {"k": jax.random.normal(key, empty["k"].shape, empty["k"].dtype),
                          "v": jax.random.normal(jax.random.fold_in(key, 1), empty["v"].shape, empty["v"].dtype),
                          "segment_ids": empty["segment_ids"].at[:, :length].set(1)}
    fns = []
    for length in lengths:
        for n in (1, steps + 1):
            fns.append(partial(lambda c, n, length: run(params, c, n=n, length=length).block_until_ready(),
                               caches[length], n, length))
        fns.append(host_read((caches[length]["k"], caches[length]["v"])))
    fns.append(host_read(params["language_model"]))
    times = interleaved_seconds(fns, repeats)
    step_ms = {length: [(b - a) / steps * 1e3 for a, b in zip(times[3 * i], times[3 * i + 1])]
               for i, length in enumerate(lengths)}
    read_ms = {length: [t * 1e3 for t in times[3 * i + 2]] for i, length in enumerate(lengths)}
    kv_bytes = {length: 2 * caches[length]["k"].nbytes for length in lengths}
    profiles = {}
    for length in lengths if profile else ():
        text = run.lower(params, caches[length], n=steps + 1, length=length).compile().as_text()
        profiles[length] = profile_ops(fns[3 * lengths.index(length) + 1], text, steps)
    return step_ms, read_ms, kv_bytes, [t * 1e3 for t in times[-1]], profiles


def changes_in_one_process(llava, params, ids, seg, pixels, mask, rounds: int, curve_batch: int, curve_steps: int):
    """This session's changes, on and off in one process, variants timed call by call in turns (`rounds` rounds;
    separate runs of this bench differ by up to 2x with the machine's load, the ratios per round do not):
    the prefill (`generate` with one new token: packed vs padded rows, the CPU weights sliced per call vs their
    transposed copy made once: `generation_weights`)
    and the decode step (`decode_loop`, 32 steps, on `layer_weights` with q/k/v and gate/up fused, transposed, vs
    separate kernels transposed, vs separate plain slices) at batch 4 with
    the bench's cache and at batch `curve_batch` with a 16-token cache → (prefill {variant: ms per round},
    decode {(batch, length): {variant: step ms per round}}, tokens identical across prefill variants)."""
    weights = generation_weights(llava, params)
    prefill = {"padded rows, weights sliced per call": dict(pack_prefill=False),
               "packed rows, weights sliced per call": {},
               "padded rows, transposed copy made once": dict(pack_prefill=False, prepared_weights=weights),
               "packed rows, transposed copy made once": dict(prepared_weights=weights)}
    call = lambda kw, n=1: generate(llava, params, ids, seg, pixels, mask, max_new_tokens=n, eos_token_id=-1,  # noqa: E731
                                    **kw).tokens
    same = len({str(call(kw, 8).tolist()) for kw in prefill.values()}) == 1
    times = interleaved_seconds([partial(call, kw) for kw in prefill.values()], rounds)
    prefill_ms = {name: [t * 1e3 for t in ts] for name, ts in zip(prefill, times)}
    text = llava.config.text_config
    decode_ms = {}
    for batch, length in ((ids.shape[0], bucket_length(ids.shape[1])), (curve_batch, 16)):
        empty = init_cache(text, batch, length + curve_steps + 1)
        cache = {"k": jax.random.normal(jax.random.PRNGKey(0), empty["k"].shape, empty["k"].dtype),
                 "v": jax.random.normal(jax.random.PRNGKey(1), empty["v"].shape, empty["v"].dtype),
                 "segment_ids": empty["segment_ids"].at[:, :length].set(1)}

        @partial(jax.jit, static_argnames=("n",))
        def run(params, cache, stored, n):
            first = jnp.full((batch,), 5, jnp.int32)
            return decode_loop(llava, params, cache, first, jnp.full((batch,), length, jnp.int32), length,  # noqa: B023
                               jax.random.PRNGKey(0), jnp.float32(0.0), jnp.float32(1.0), jnp.int32(-1),
                               jnp.int32(0), max_new_tokens=n, hoist_weights=True, stored_weights=stored)

        variants = {"q|k|v, gate|up fused, transposed (now)": layer_weights(llava, params),
                    "separate kernels, transposed": layer_weights(llava, params, fuse=False),
                    "separate kernels, plain slices": layer_weights(llava, params, transpose=False, fuse=False)}
        fns = [partial(lambda st, n, c: run(params, c, st, n=n).block_until_ready(), st, n, cache)
               for st in variants.values() for n in (1, curve_steps + 1)]
        times = interleaved_seconds(fns, rounds)
        decode_ms[(batch, length)] = {name: [(b - a) / curve_steps * 1e3 for a, b in zip(times[2 * i], times[2 * i + 1])]
                                      for i, name in enumerate(variants)}
    return prefill_ms, decode_ms, same


def spread(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "too noisy"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--text-len", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="PyTorch intra-op threads (default: torch's); for 1 thread on both sides also run with "
                             "XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'")
    parser.add_argument("--curve", default="16,256,1000,4000",
                        help="cache lengths for the decode step-time curve ('' to skip)")
    parser.add_argument("--curve-batch", type=int, default=8)
    parser.add_argument("--curve-steps", type=int, default=32)
    parser.add_argument("--changes", type=int, default=0, metavar="ROUNDS",
                        help="also time the packed prefill and the CPU weights' copy on and off in this process, "
                             "in turns (this many rounds)")
    parser.add_argument("--profile", action="store_true",
                        help="also trace one decode call per curve length (jax.profiler) and print ms per step by op kind")
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="genbench") as tmp:
        root = Path(tmp)
        hf_model = build_model(root / "hf", args)
        assert convert_main(["hf-to-orbax", "--hf", str(root / "hf"), "--out", str(root / "ckpt")]) == 0
        vlm = vlm_jax.load(root / "ckpt")  # the inference handle; the loop below is timed without its prompt handling
        config, llava, params = vlm.config, vlm.model, vlm.params
    rows, images = prompts(args, config.num_image_tokens, np.random.default_rng(0))
    prompt_tokens = sum(len(r) for r in rows)

    ids, seg = left_pad(rows)
    max_img = max(len(i) for i in images)
    pixels = np.zeros((len(rows), max_img) + images[0].shape[1:], np.float32)
    mask = np.zeros((len(rows), max_img), bool)
    for r, imgs in enumerate(images):
        pixels[r, :len(imgs)], mask[r, :len(imgs)] = imgs, True

    weights = generation_weights(llava, params)  # made once, as `vlm_jax.load(...).generate` does (CPU)

    def ours(n):
        return lambda: generate(llava, params, ids, seg, pixels, mask, max_new_tokens=n, eos_token_id=-1,
                                prepared_weights=weights).tokens

    hf_ids = torch.tensor(ids, dtype=torch.long)
    hf_mask = torch.tensor(seg > 0, dtype=torch.long)
    hf_pixels = torch.tensor(np.concatenate(images)).permute(0, 3, 1, 2)

    def theirs(n):
        def run():
            with torch.no_grad():
                return hf_model.generate(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=hf_pixels,
                                         max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return run

    same = ours(args.new_tokens)().tolist() == theirs(args.new_tokens)()[:, ids.shape[1]:].tolist()
    # the bytes every decode step of `generate` reads at least once: the language model's weights and the K/V
    # cache it allocates (prompt bucket + new tokens)
    cache = init_cache(config.text_config, args.batch, bucket_length(ids.shape[1]) + args.new_tokens)
    step_bytes = (params["language_model"], cache["k"], cache["v"])
    floor = host_read(step_bytes)
    times = interleaved_seconds([ours(1), ours(args.new_tokens), theirs(1), theirs(args.new_tokens), floor],
                                args.repeats)
    names = ("vlm_jax (jit prefill + while_loop decode)", "transformers generate")
    results = {name: rates(times[2 * i], times[2 * i + 1], prompt_tokens, args.batch, args.new_tokens)
               for i, name in enumerate(names)}
    print(f"model: text {args.layers}x{args.hidden}, vision 4x128 @ {args.image_size}px "
          f"({config.num_image_tokens} tokens/image); batch {args.batch}, {prompt_tokens} prompt tokens, "
          f"{args.new_tokens} new tokens/row; jax {jax.__version__} on {jax.devices()[0].platform}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); greedy tokens identical: {same}; "
          f"{args.repeats} interleaved repeats, median (min-max)")
    print("| implementation | prefill tokens/s | decode tokens/s |")
    print("|---|---|---|")
    for name, (prefill, decode) in results.items():
        print(f"| {name} | {spread(prefill)} | {spread(decode)} |")
    (p_ours, d_ours), (p_hf, d_hf) = results.values()
    # per-repeat ratios: each repeat's vlm_jax figure against transformers' figure of the same repeat
    p_ratios = [a / b for a, b in zip(p_ours, p_hf)]
    d_ratios = [a / b for a, b in zip(d_ours, d_hf) if a is not None and b is not None]
    fmt = lambda r: f"{median(r):.2f}x ({min(r):.2f}-{max(r):.2f})" if r else "n/a"  # noqa: E731
    print(f"| ratio vlm_jax / transformers | {fmt(p_ratios)} | {fmt(d_ratios)} |")
    step_ms = lambda tok_s: args.batch / tok_s * 1e3 if tok_s else None  # noqa: E731
    floor_ms = [t * 1e3 for t in times[4]]
    # per repeat: transformers' step against the floor of the same repeat
    bound = [step_ms(b) / f for b, f in zip(d_hf, floor_ms) if b is not None]
    step_mb = sum(x.nbytes for x in jax.tree.leaves(step_bytes)) / 1e6
    ms = lambda tok_s: "n/a (too noisy)" if tok_s is None else f"{step_ms(tok_s):.2f}"  # noqa: E731
    print(f"decode step ms: vlm_jax {ms(median(d_ours))}, transformers {ms(median(d_hf))}; one plain "
          f"read of the {step_mb:.1f} MB a step must read (weights + allocated K/V): {median(floor_ms):.2f} ms "
          f"({min(floor_ms):.2f}-{max(floor_ms):.2f}); a step at that floor would be {fmt(bound)} transformers' decode")
    figures = {"batch": args.batch, "prompt_tokens": prompt_tokens, "new_tokens": args.new_tokens,
               "greedy_tokens_identical": same,
               "vlm_jax_prefill_tokens_per_s": median(p_ours), "torch_prefill_tokens_per_s": median(p_hf),
               "vlm_jax_decode_tokens_per_s": median(d_ours), "torch_decode_tokens_per_s": median(d_hf),
               "prefill_ratio": median(p_ratios), "prefill_ratio_min": min(p_ratios), "prefill_ratio_max": max(p_ratios),
               "decode_ratio": median(d_ratios), "decode_ratio_min": min(d_ratios, default=None),
               "decode_ratio_max": max(d_ratios, default=None), "decode_step_read_mb": step_mb,
               "decode_step_read_floor_ms": median(floor_ms), "decode_ratio_at_read_floor": median(bound)}
    if args.curve:
        lengths = [int(x) for x in args.curve.split(",")]
        curve, read_ms, kv_bytes, weight_read, profiles = decode_curve(
            llava, params, lengths, args.curve_batch, args.curve_steps, args.repeats, args.profile)
        weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params["language_model"]))
        base = median(curve[lengths[0]])
        print(f"decode step time vs filled cache length (vlm_jax decode_loop, batch {args.curve_batch}, "
              f"{args.curve_steps} steps; median (min-max) of {args.repeats}); K+V read per step (all layers, the "
              f"allocated cache) against the language model's {weight_bytes / 1e6:.1f} MB of weights; 'read' = one "
              "plain read of the same K and V buffers (the machine's floor for reading them once); 'floor' = that "
              f"read + one of the weights ({median(weight_read):.2f} ms)")
        print("| cache length | step ms | vs first | K+V MB | (weights + K+V) / weights | read ms | step growth / read "
              "| step / floor |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for length in lengths:
            ms, rd = curve[length], median(read_ms[length])
            growth = (median(ms) - base) / rd if length != lengths[0] else float("nan")
            print(f"| {length} | {median(ms):.2f} ({min(ms):.2f}-{max(ms):.2f}) | {median(ms) / base:.2f}x | "
                  f"{kv_bytes[length] / 1e6:.1f} | {(weight_bytes + kv_bytes[length]) / weight_bytes:.2f}x | {rd:.2f} | "
                  f"{growth:.2f} | {median(ms) / (rd + median(weight_read)):.2f} |")
        figures["decode_curve_batch"] = args.curve_batch
        figures["decode_step_ms"] = {str(length): median(ms) for length, ms in curve.items()}
        figures["decode_step_ms_all"] = {str(length): ms for length, ms in curve.items()}
        figures["decode_step_growth"] = {str(length): median(ms) / base for length, ms in curve.items()}
        figures["decode_kv_mb"] = {str(length): b / 1e6 for length, b in kv_bytes.items()}
        figures["decode_kv_read_ms"] = {str(length): median(ms) for length, ms in read_ms.items()}
        figures["language_model_weight_mb"] = weight_bytes / 1e6
        figures["language_model_weight_read_ms"] = median(weight_read)
        for length, kinds in profiles.items():
            print(f"profile of one decode call at cache length {length} (traced, ms per step, ops per step):")
            for kind, (ms, n) in kinds.items():
                print(f"  {kind}: {ms:.2f} ms, {n:.0f} ops")
        if profiles:
            figures["decode_profile_ms_per_step"] = {str(length): {kind: ms for kind, (ms, _) in kinds.items()}
                                                     for length, kinds in profiles.items()}
    if args.changes:
        prefill_ms, decode_ms, same_changes = changes_in_one_process(llava, params, ids, seg, pixels, mask, args.changes,
                                                                     args.curve_batch, args.curve_steps)
        first = next(iter(prefill_ms.values()))
        print(f"prefill (one generate call, 1 new token) in one process, {args.changes} rounds in turns, median "
              f"(min-max) ms; speed-up over the first row per round; tokens identical: {same_changes}")
        print("| variant | ms | speed-up |")
        print("|---|---|---|")
        for name, ms in prefill_ms.items():
            print(f"| {name} | {spread(ms)} | {fmt([a / b for a, b in zip(first, ms)])} |")
        print("| decode step | batch, cache | step ms | speed-up of the first row over it |")
        print("|---|---|---|---|")
        for (batch, length), variants in decode_ms.items():
            now = next(iter(variants.values()))
            for name, ms in variants.items():
                print(f"| {name} | {batch}, {length} | {median(ms):.2f} ({min(ms):.2f}-{max(ms):.2f}) | "
                      f"{fmt([b / a for a, b in zip(now, ms)]) if ms is not now else ''} |")
        figures["changes_prefill_ms"] = {name: median(ms) for name, ms in prefill_ms.items()}
        figures["changes_prefill_speedup"] = {name: median([a / b for a, b in zip(first, ms)])
                                              for name, ms in prefill_ms.items()}
        figures["changes_decode_step_ms"] = {f"{b}x{n}": {name: median(ms) for name, ms in v.items()}
                                             for (b, n), v in decode_ms.items()}
        figures["changes_decode_speedup"] = {
            f"{b}x{n}": {name: median([o / t for t, o in zip(next(iter(v.values())), ms)]) for name, ms in v.items()}
            for (b, n), v in decode_ms.items()}
        figures["changes_tokens_identical"] = same_changes
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
