"""Generation throughput of `vlm_jax.generation.generate` vs transformers `LlavaForConditionalGeneration.generate`
on the same small random LLaVA (saved to disk, converted with hf-to-orbax), the same prompts, on this machine.

Prefill tokens/s = prompt tokens (image tokens included, padding excluded) / time of a 1-new-token call;
decode tokens/s = batch * (N - 1) / (time of an N-token call - time of the 1-token call). Greedy, EOS
disabled so every row makes N tokens; compile time excluded (one warm-up call each); the fastest of --repeats interleaved runs.

    python benchmarks/generate_bench.py [--batch 4] [--new-tokens 32] [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vlm_jax.convert.__main__ import main as convert_main  # noqa: E402
from vlm_jax.checkpoint import load_config, load_params  # noqa: E402
from vlm_jax.generation import generate, left_pad  # noqa: E402
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


def best_seconds(short, long, repeats: int) -> tuple[float, float]:
    """Fastest of `repeats` interleaved timings of `short()` and `long()` (after one warm-up each): the
    least disturbed run on a shared machine."""
    short(), long()  # warm-up / compile
    times = {short: [], long: []}
    for _ in range(repeats):
        for fn in (short, long):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return min(times[short]), min(times[long])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--text-len", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genbench") as tmp:
        root = Path(tmp)
        hf_model = build_model(root / "hf", args)
        assert convert_main(["hf-to-orbax", "--hf", str(root / "hf"), "--out", str(root / "ckpt")]) == 0
        config = load_config(root / "ckpt")
        llava, params = Llava(config), load_params(root / "ckpt", sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    rows, images = prompts(args, config.num_image_tokens, np.random.default_rng(0))
    prompt_tokens = sum(len(r) for r in rows)

    ids, seg = left_pad(rows)
    max_img = max(len(i) for i in images)
    pixels = np.zeros((len(rows), max_img) + images[0].shape[1:], np.float32)
    mask = np.zeros((len(rows), max_img), bool)
    for r, imgs in enumerate(images):
        pixels[r, :len(imgs)], mask[r, :len(imgs)] = imgs, True

    def ours(n):
        return lambda: generate(llava, params, ids, seg, pixels, mask, max_new_tokens=n, eos_token_id=-1).tokens

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
    results = {}
    for name, make in (("vlm_jax (jit prefill + while_loop decode)", ours), ("transformers generate", theirs)):
        one, full = best_seconds(make(1), make(args.new_tokens), args.repeats)
        # None when noise made the long call no slower than the short one (rerun with more --repeats)
        decode = args.batch * (args.new_tokens - 1) / (full - one) if full > one else None
        results[name] = (prompt_tokens / one, decode)
    print(f"model: text {args.layers}x{args.hidden}, vision 4x128 @ {args.image_size}px "
          f"({config.num_image_tokens} tokens/image); batch {args.batch}, {prompt_tokens} prompt tokens, "
          f"{args.new_tokens} new tokens/row; jax {jax.__version__} on {jax.devices()[0].platform}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); greedy tokens identical: {same}")
    print("| implementation | prefill tokens/s | decode tokens/s |")
    print("|---|---|---|")
    for name, (prefill, decode) in results.items():
        print(f"| {name} | {prefill:,.0f} | {'too noisy' if decode is None else f'{decode:,.0f}'} |")
    (p_ours, d_ours), (p_hf, d_hf) = results.values()
    d_ratio = "n/a" if d_ours is None or d_hf is None else f"{d_ours / d_hf:.2f}x"
    print(f"| ratio vlm_jax / transformers | {p_ours / p_hf:.2f}x | {d_ratio} |")


if __name__ == "__main__":
    main()
