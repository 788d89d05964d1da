"""Streaming a big top-level JSON array: data_prep.json_stream's reader vs ijson (`ijson.items(f, "item")`).

    python benchmarks/json_stream_bench.py [--documents 20000] [--repeats 3]

Writes a synthetic textbook-format array (interleaved `images` / `texts` lists of the seed's shape), then reads
every element with each reader in a fresh process (so peak RSS is that reader's own), checks both give the same
documents, and prints elements/s, MB/s and peak RSS. Last line: one JSON object of the figures.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

READERS = ("json_stream", "ijson")


def write_corpus(path: str, documents: int) -> None:
    """A JSON array of documents with 4-12 (image, text) positions each, ~2 KB of text per document."""
    with open(path, "w") as f:
        f.write("[\n")
        for d in range(documents):
            n = 4 + d % 9
            images, texts = [], []
            for k in range(n):
                images += [f"vid{d % 97}@{k}.0_{k + 1}.5#{k}.jpg", None]
                texts += [None, f"ASR sentence {d}-{k}: " + "the teacher explains the next step of the proof " * 4]
            doc = {"images": images, "texts": texts, "metadata": {"video": d, "score": d / 7.0}}
            f.write(("," if d else "") + json.dumps(doc) + "\n")
        f.write("]\n")


def read_all(reader: str, path: str) -> tuple[int, float, str]:
    """(elements, seconds, digest of the parsed documents) for one reader."""
    start = time.perf_counter()
    count, digest = 0, hashlib.md5()
    if reader == "json_stream":
        from data_prep.json_stream import iter_json_array

        for _, doc in iter_json_array(path):
            count += 1
            digest.update(doc["texts"][-1].encode())
    else:
        import ijson

        with open(path, "rb") as f:
            for doc in ijson.items(f, "item", use_float=True):
                count += 1
                digest.update(doc["texts"][-1].encode())
    return count, time.perf_counter() - start, digest.hexdigest()


def child(reader: str, path: str) -> None:
    count, seconds, digest = read_all(reader, path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"count": count, "seconds": seconds, "digest": digest, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    import ijson

    with tempfile.TemporaryDirectory(prefix="jsonbench") as tmp:
        path = os.path.join(tmp, "corpus.json")
        write_corpus(path, args.documents)
        mb = os.path.getsize(path) / 1e6
        runs: dict[str, list[dict]] = {r: [] for r in READERS}
        for _ in range(args.repeats):  # interleaved, so machine load hits both alike
            for reader in READERS:
                out = subprocess.run([sys.executable, __file__, "--child", reader, path], capture_output=True,
                                     text=True, check=True, env={**os.environ, "PYTHONPATH": ROOT})
                runs[reader].append(json.loads(out.stdout.strip().splitlines()[-1]))
    digests = {r["digest"] for rs in runs.values() for r in rs}
    assert len(digests) == 1 and all(r["count"] == args.documents for rs in runs.values() for r in rs), runs
    print(f"{args.documents} documents, {mb:.1f} MB JSON array; ijson backend {ijson.backend}; "
          f"median of {args.repeats} runs (fresh process each)")
    print(f"| reader | seconds | documents/s | MB/s | peak RSS MiB | vs ijson |")
    print("|---|--:|--:|--:|--:|--:|")
    figures = {"documents": args.documents, "mb": round(mb, 1), "ijson_backend": ijson.backend}
    base = statistics.median(r["seconds"] for r in runs["ijson"])
    for reader in READERS:
        secs = [r["seconds"] for r in runs[reader]]
        median, peak = statistics.median(secs), max(r["peak_mib"] for r in runs[reader])
        print(f"| {reader} | {median:.2f} | {args.documents / median:,.0f} | {mb / median:.1f} | {peak:.0f} | "
              f"{base / median:.2f}x |")
        figures[reader] = {"seconds": [round(s, 3) for s in secs], "peak_mib": round(peak),
                           "speed_vs_ijson": round(base / median, 3)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
