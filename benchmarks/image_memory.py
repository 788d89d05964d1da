"""Peak resident memory of `vlm_jax.generate` and the training loader on hostile image shapes.

Writes a 1x60000 PNG (316 bytes; padded to a square it would be 60000x60000 = 10.8 GB of RGB) and a
20000x1000 PNG (inside the pixel and aspect limits; its padded square would be 1.2 GB), a tiny random
checkpoint and a small corpus holding each, then runs every case as its own process under
`/usr/bin/time -v` and prints a table; the last line is one JSON object of the figures (GiB).

    python benchmarks/image_memory.py [--work /tmp/image_memory]

Cases: python + imports (baseline); generate with the image; the loader iterating a corpus that holds the
image among ordinary ones; and, for the 20000x1000 image, LLaVA's pipeline as written (the whole padded
square built, then resized) for comparison. The 1x60000 image is refused from its header (aspect-ratio
limit) by generate (exit 1, one line) and skipped and counted by the loader.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"strip_1x60000": (1, 60000), "wide_20000x1000": (20000, 1000)}


def _png(width: int, height: int) -> bytes:
    import numpy as np
    from PIL import Image

    arr = np.zeros((height, width, 3), np.uint8)
    arr[..., 0] = (np.arange(width) % 256)[None, :]
    arr[..., 1] = (np.arange(height) % 256)[:, None]
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "PNG", optimize=True)
    return out.getvalue()


def prepare(work: Path) -> None:
    """The images, a tiny random params checkpoint (no tokenizer: generate takes --input-ids) and corpora."""
    from vlm_jax.checkpoint import save_params
    from vlm_jax.data.records import CorpusWriter
    from vlm_jax.models.config import preset
    from vlm_jax.models.init import random_params

    work.mkdir(parents=True, exist_ok=True)
    cfg = preset("tiny")
    save_params(str(work / "ckpt"), random_params(cfg), cfg)
    ordinary = _png(64, 48)
    for name, (w, h) in SHAPES.items():
        data = _png(w, h)
        (work / f"{name}.png").write_bytes(data)
        writer = CorpusWriter(str(work / f"corpus_{name}"), 100)
        for i in range(8):
            images = [ordinary, data] if i % 2 == 0 else [ordinary]
            texts, imgs = [f"doc {i}"], [None]
            for img in images:
                texts += [None, "some text"]
                imgs += [img, None]
            writer.write({"id": f"d{i}", "texts": texts, "images": imgs, "image_meta": [None] * len(texts),
                          "metadata": {}})
        writer.publish()


def run_case(case: str, work: Path, name: str) -> None:
    """One measured case, in this process."""
    image = work / f"{name}.png"
    if case == "baseline":
        import vlm_jax.data.loader  # noqa: F401
        import vlm_jax.generate  # noqa: F401
    elif case == "generate":
        from vlm_jax.generate import main

        code = main(["--ckpt", str(work / "ckpt"), "--image", str(image), "--input-ids", "1,255,5", "--max-new-tokens", "2"])
        print(f"exit {code}", file=sys.stderr)
    elif case == "loader":
        from vlm_jax.data.loader import loader_metrics, make_train_iterator

        it = make_train_iterator(dict(shards=[str(work / f"corpus_{name}")], batch_size=2, seq_len=64,
                                      max_images_per_row=2, max_images=2, num_image_tokens=4, image_token_id=255,
                                      image_size=28, tokenizer="byte", seed=0, num_epochs=1))
        batches = sum(1 for _ in it)
        counts = loader_metrics(it)
        print(f"{batches} batches; images used {counts['images_used']}, skipped too large "
              f"{counts['images_skipped_too_large']}", file=sys.stderr)
    elif case == "canvas":  # LLaVA's expand2square as written, then the resize
        from PIL import Image

        from vlm_jax.data.image import OPENAI_CLIP_MEAN, expand_to_square

        with Image.open(image) as img:
            square = expand_to_square(img.convert("RGB"), tuple(int(x * 255) for x in OPENAI_CLIP_MEAN))
            square.resize((336, 336), resample=3)
    else:
        raise SystemExit(f"unknown case {case}")


def measure(case: str, work: Path, name: str) -> tuple[float, str]:
    """(peak RSS GiB, last stderr line) of `case` in a fresh process."""
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, __file__, "--work", str(work), "--case", case,
                           "--image", name], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    lines = [l for l in proc.stderr.splitlines() if l.startswith(("error:", "exit ")) or "batches" in l]
    return kb / 2**20, "; ".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/image_memory"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.work, args.image)
        return
    prepare(args.work)
    rows, figures = [], {}
    base, _ = measure("baseline", args.work, "strip_1x60000")
    rows.append(("python + imports", "-", base, ""))
    figures["baseline_gib"] = round(base, 3)
    for name in SHAPES:
        cases = ("generate", "loader") + (("canvas",) if name != "strip_1x60000" else ())
        for case in cases:
            peak, note = measure(case, args.work, name)
            rows.append((case, name, peak, note))
            figures[f"{case}_{name}_gib"] = round(peak, 3)
    print(f"{'case':18s} {'image':18s} {'peak RSS GiB':>12s}  outcome")
    for case, name, peak, note in rows:
        print(f"{case:18s} {name:18s} {peak:12.3f}  {note}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
