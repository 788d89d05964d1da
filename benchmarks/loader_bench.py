"""Loader throughput: the Grain pipeline vs a per-sample PyTorch Dataset/DataLoader (seed style).

Builds a synthetic textbook-format corpus (real JPEG keyframes on disk, JSON array), converts it
with data_prep.convert, then measures documents/s and tokens/s with 0, 1, 2 worker processes for
  grain: ArrayRecord -> decode + CLIP preprocessing + seed tokenization -> best-fit packing (look-ahead)
  torch: the seed's way: per document open the loose JPEGs, pad to square, CLIPImageProcessor
         (PIL backend), same tokenization, right-pad every document to seq_len, DataLoader.
Both see the same documents, tokenizer, image size and seq_len. Packing efficiency = real tokens /
all tokens in the batches; the torch rows show what right-padding one document per row gives.

    python benchmarks/loader_bench.py [--docs 240] [--tokenizer byte|HF_DIR] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only light imports at module level: worker processes (spawn) re-import this module.
from data_prep.convert import convert  # noqa: E402
from vlm_jax.data.image import OPENAI_CLIP_MEAN, expand_to_square  # noqa: E402
from vlm_jax.data.tokenizer import ByteTokenizer, HFTokenizer, tokenize_interleaved  # noqa: E402

WORDS = "the of and a to in is that for it as was with be by on not he this are or his from at which".split()


def build_corpus(root: str, n_docs: int, seed: int = 0) -> tuple[str, str]:
    """Textbook-style docs: 1-3 keyframes (640x360 JPEG) each, 20-120-word ASR pieces between."""
    rng = np.random.default_rng(seed)
    images_dir = os.path.join(root, "images")
    docs = []
    for d in range(n_docs):
        video = f"-vid{d:04d}X"
        os.makedirs(os.path.join(images_dir, video), exist_ok=True)
        images, texts = [], []
        for k in range(int(rng.integers(1, 4))):
            rel = f"{video}/{video}@{10.0 * k}_{10.0 * k + 9.5}#{k + 1}.jpg"
            yy, xx = np.mgrid[0:360, 0:640]
            arr = np.stack([(xx + d * 7) % 256, (yy * 2 + k * 50) % 256, (xx // 3 + yy // 2) % 256], -1)
            arr = np.clip(arr + rng.integers(-25, 26, arr.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(os.path.join(images_dir, rel), "JPEG", quality=90)
            text = " ".join(rng.choice(WORDS, int(rng.integers(20, 120))))
            images += [rel, None]
            texts += [None, text]
        docs.append({"images": images, "texts": texts, "metadata": [], "image_num": len(images) // 2})
    path = os.path.join(root, "corpus.json")
    with open(path, "w") as f:
        json.dump(docs, f)
    return path, images_dir


class _Rates:
    """Accumulates per-batch counts; rates are over the time after the first batch (steady state)."""

    def __init__(self):
        self.start, self.first, self.after_first = time.perf_counter(), None, None
        self.totals = {"real_tokens": 0, "total_tokens": 0, "documents": 0}
        self.head = dict(self.totals)

    def add(self, real_tokens: int, total_tokens: int, documents: int) -> None:
        for key, value in (("real_tokens", real_tokens), ("total_tokens", total_tokens), ("documents", documents)):
            self.totals[key] += value
        if self.first is None:
            self.first, self.after_first, self.head = time.perf_counter() - self.start, time.perf_counter(), dict(self.totals)

    def result(self) -> dict:
        steady = time.perf_counter() - self.after_first
        rates = {f"{k}_per_s": (self.totals[k] - self.head[k]) / steady for k in self.totals}
        overall = self.totals["documents"] / (time.perf_counter() - self.start)
        return {"first_batch": self.first, "efficiency": self.totals["real_tokens"] / self.totals["total_tokens"],
                "documents_per_s_overall": overall, **rates, **self.totals}


def bench_grain(shards: str, args, workers: int) -> dict:
    from vlm_jax.data.loader import make_train_iterator
    from vlm_jax.data.packing import token_counts

    config = dict(shards=[shards], batch_size=args.batch_size, seq_len=args.seq_len, max_images_per_row=args.slots,
                  num_image_tokens=args.image_tokens, max_images=args.max_images, image_size=args.image_size,
                  tokenizer=args.tokenizer, image_token_id=args.image_token_id, seed=0, num_epochs=1,
                  num_workers=workers, read_threads=args.read_threads, pack_lookahead=args.lookahead)
    rates = _Rates()
    it = make_train_iterator(config)
    for batch in it:
        rates.add(**token_counts(batch))
    it.close()
    return rates.result()


class SeedStyleDataset:
    """Per-document loading as the seed does it: loose files, PIL CLIP processor, right padding."""

    def __init__(self, corpus_path, images_dir, args):
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        with open(corpus_path) as f:
            self.docs = json.load(f)  # The seed loads the whole JSON into memory.
        self.images_dir, self.args = images_dir, args
        self.tokenizer = ByteTokenizer() if args.tokenizer == "byte" else HFTokenizer(args.tokenizer)
        size = args.image_size
        self.processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        self.fill = tuple(int(x * 255) for x in OPENAI_CLIP_MEAN)

    def __len__(self):
        return len(self.docs)

    def __getitem__(self, i):
        import torch

        a, doc = self.args, self.docs[i]
        tok = tokenize_interleaved(doc["texts"], self.tokenizer, image_token_id=a.image_token_id,
                                   num_image_tokens=a.image_tokens, max_images=a.max_images, max_length=a.seq_len)
        paths = [p for p in doc["images"] if p is not None][: tok.num_images]
        pixels = torch.zeros(a.max_images, 3, a.image_size, a.image_size)
        for k, rel in enumerate(paths):
            img = Image.open(os.path.join(self.images_dir, rel)).convert("RGB")
            img = expand_to_square(img, self.fill)
            pixels[k] = torch.from_numpy(self.processor(img, return_tensors="np")["pixel_values"][0])
        ids = torch.full((a.seq_len,), self.tokenizer.pad_id, dtype=torch.long)
        labels = torch.full((a.seq_len,), -100, dtype=torch.long)
        ids[: len(tok.input_ids)] = torch.from_numpy(tok.input_ids.astype(np.int64))
        labels[: len(tok.labels)] = torch.from_numpy(tok.labels.astype(np.int64))
        mask = torch.arange(a.seq_len) < len(tok.input_ids)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "images": pixels, "length": len(tok.input_ids)}


def bench_torch(corpus_path, images_dir, args, workers: int) -> dict:
    import torch

    torch.set_num_threads(1)
    rates = _Rates()
    dataset = SeedStyleDataset(corpus_path, images_dir, args)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, generator=torch.Generator().manual_seed(0))
    for batch in loader:
        n = len(batch["length"])
        rates.add(int(batch["length"].sum()), n * args.seq_len, n)
    return rates.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=240)
    parser.add_argument("--tokenizer", default="byte", help='"byte" or a local HF tokenizer directory')
    parser.add_argument("--image-token-id", type=int, default=3, help="the <image> id (ByteTokenizer: 3)")
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--image-tokens", type=int, default=576)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-images", type=int, default=3)
    parser.add_argument("--slots", type=int, default=6, help="image slots per packed row")
    parser.add_argument("--read-threads", type=int, default=2)
    parser.add_argument("--lookahead", type=int, default=64, help="documents the best-fit packer looks ahead over")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="loader_bench_")
    t = time.perf_counter()
    corpus_path, images_dir = build_corpus(workdir, args.docs)
    print(f"corpus: {args.docs} documents, {sum(len(f) for _, _, f in os.walk(images_dir))} JPEGs (640x360) "
          f"built in {time.perf_counter() - t:.1f}s under {workdir}")
    shards = os.path.join(workdir, "shards")
    manifest = convert(corpus_path, images_dir, shards, "textbook", shard_size=64, workers=2, log=io.StringIO())
    print(f"convert (2 workers): {manifest['documents_written']} docs, {manifest['images_written']} images in "
          f"{manifest['elapsed_s']:.2f}s = {manifest['documents_written'] / manifest['elapsed_s']:.0f} docs/s, "
          f"{manifest['images_written'] / manifest['elapsed_s']:.0f} images/s")
    print(f"settings: seq_len {args.seq_len}, batch {args.batch_size}, image {args.image_size}px -> "
          f"{args.image_tokens} tokens, <= {args.max_images} images/doc, {args.slots} slots/row, "
          f"tokenizer {args.tokenizer}, grain read threads {args.read_threads}")
    header = (f"{'pipeline':<26}{'workers':>8}{'docs/s':>9}{'all docs/s':>11}{'real tok/s':>12}{'row tok/s':>11}"
              f"{'efficiency':>12}{'1st batch s':>13}")
    print(header)
    print("-" * len(header))
    figures = []
    for name, fn in (("grain packed (ours)", lambda w: bench_grain(shards, args, w)),
                     ("torch DataLoader, padded", lambda w: bench_torch(corpus_path, images_dir, args, w))):
        for workers in (int(w) for w in args.workers.split(",")):
            r = fn(workers)
            print(f"{name:<26}{workers:>8}{r['documents_per_s']:>9.1f}{r['documents_per_s_overall']:>11.1f}"
                  f"{r['real_tokens_per_s']:>12.0f}"
                  f"{r['total_tokens_per_s']:>11.0f}{r['efficiency']:>11.1%}{r['first_batch']:>13.2f}", flush=True)
            figures.append({"pipeline": name, "workers": workers, **r})
    print("rates: steady state after the first batch (startup is the last column); all docs/s: documents / whole "
          "run, startup included\n(the packer's look-ahead reads ahead before the first batch); efficiency = real "
          "tokens / (rows x seq_len);\nrow tok/s = rows x seq_len per second, the token throughput the model sees")
    best = {name: max((f for f in figures if f["pipeline"] == name), key=lambda f: f["documents_per_s"])
            for name in dict.fromkeys(f["pipeline"] for f in figures)}
    ours, theirs = best.get("grain packed (ours)"), best.get("torch DataLoader, padded")
    print(json.dumps({"seq_len": args.seq_len, "batch": args.batch_size, "docs": args.docs, "rows": figures,
                      "best_docs_per_s_ratio": ours["documents_per_s"] / theirs["documents_per_s"]
                      if ours and theirs else None,
                      "best_real_tokens_per_s_ratio": ours["real_tokens_per_s"] / theirs["real_tokens_per_s"]
                      if ours and theirs else None}))


if __name__ == "__main__":
    main()
