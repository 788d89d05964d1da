"""Peak resident memory of checkpoint conversion against the checkpoint's size on disk.

Builds a random llava-hf checkpoint (real CLIP ViT-L/14-336 tower, a Llama of the given size, bfloat16,
sharded safetensors with an index) without ever holding the whole model in memory, then runs
`python -m vlm_jax.convert hf-to-orbax` and `orbax-to-hf` under `/usr/bin/time -v` and prints a table.

    python benchmarks/convert_memory.py --work /tmp/convmem --hidden 2048 --layers 12 --intermediate 5632
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

REPO = Path(__file__).resolve().parents[1]


def build_checkpoint(out: Path, hidden: int, layers: int, intermediate: int, vocab: int, shard_bytes: int) -> None:
    """Writes a random bfloat16 llava-hf folder shard by shard (names and shapes from a meta-device model)."""
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab - 64, torch_dtype="bfloat16")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlavaForConditionalGeneration(config).state_dict().items()}
    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    shards, current, size = [], {}, 0

    def flush():
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(current, out / name, metadata={"format": "pt"})
        shards.append((name, list(current)))

    for key, shape in shapes.items():
        tensor = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        if current and size + tensor.nbytes > shard_bytes:
            flush()
            current, size = {}, 0
        current[key] = tensor
        size += tensor.nbytes
    flush()
    total = sum(s.numel() * 2 for s in shapes.values())
    weight_map = {k: name for name, keys in shards for k in keys}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    config.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(out)


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in bytes, wall seconds) of a command under /usr/bin/time -v."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return kib * 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (several GB)")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32064)
    parser.add_argument("--shard-mb", type=int, default=500)
    args = parser.parse_args()
    hf, ckpt, export = args.work / "hf", args.work / "orbax", args.work / "export"
    if not hf.exists():
        build_checkpoint(hf, args.hidden, args.layers, args.intermediate, args.vocab, args.shard_mb << 20)
    for folder in (ckpt, Path(f"{export}-2GB"), Path(f"{export}-500MB")):
        if folder.exists():
            sys.exit(f"{folder} exists; remove it first")
    python = [sys.executable]
    rows = [("python + imports (baseline)", hf, *timed(python + ["-c", "import vlm_jax.convert.hf_to_orbax, "
                                                               "vlm_jax.convert.orbax_to_hf"]))]
    rows.append(("hf-to-orbax", hf, *timed(python + ["-m", "vlm_jax.convert", "hf-to-orbax", "--hf", str(hf),
                                                       "--out", str(ckpt)])))
    for shard in ("2GB", "500MB"):  # export holds one output shard in memory, so its size bounds the peak
        rows.append((f"orbax-to-hf --max-shard-size {shard}", ckpt, *timed(
            python + ["-m", "vlm_jax.convert", "orbax-to-hf", "--ckpt", str(ckpt), "--out", f"{export}-{shard}",
                      "--max-shard-size", shard])))
    n_params = json.loads((hf / "model.safetensors.index.json").read_text())["metadata"]["total_size"] // 2
    model_bytes = disk_bytes(hf)
    print(f"model: {n_params / 1e9:.2f}B params, bfloat16, HF safetensors {model_bytes / 2**30:.2f} GiB on disk "
          f"(orbax, zstd: {disk_bytes(ckpt) / 2**30:.2f} GiB); peak RSS by /usr/bin/time -v")
    print("| step | peak RSS (GiB) | peak RSS / safetensors size | wall (s) |")
    print("|---|---|---|---|")
    for name, _, rss, wall in rows:
        print(f"| {name} | {rss / 2**30:.2f} | {rss / model_bytes:.2f} | {wall:.1f} |")
    print(json.dumps({"params": n_params, "safetensors_bytes": model_bytes, "rows": [
        {"step": name, "peak_rss_bytes": rss, "peak_rss_over_safetensors": rss / model_bytes, "wall_s": wall}
        for name, _, rss, wall in rows]}))

if __name__ == "__main__":
    main()
