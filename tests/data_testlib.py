"""Helpers for the data tests: real encoded images and small converted corpora built in-test."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vlm_jax.data.records import CorpusWriter


def image_bytes(width: int, height: int, seed: int, fmt: str = "JPEG") -> bytes:
    """A real encoded image: a colour gradient keyed by `seed` plus noise (so resizing matters)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 7 + seed * 37) % 256, (yy * 5 + seed * 91) % 256, ((xx + yy) * 3 + seed * 13) % 256], -1)
    noise = rng.integers(-20, 21, base.shape)
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, fmt)
    return out.getvalue()


def document(doc_index: int, n_images: int, words: int = 4, corrupt: tuple[int, ...] = (), empty: tuple[int, ...] = ()):
    """Doc text "doc<index> ..." then alternating image/text; `corrupt`/`empty` list bad image numbers."""
    texts, images = [f"doc{doc_index} " + " ".join(f"w{doc_index}_{j}" for j in range(words))], [None]
    for k in range(n_images):
        if k in corrupt:
            data = b"\xff\xd8 not really a jpeg"
        elif k in empty:
            data = b""
        else:
            data = image_bytes(24 + k, 18 + doc_index % 5, seed=doc_index * 10 + k, fmt="JPEG" if k % 2 else "PNG")
        texts.append(None)
        images.append(data)
        texts.append(f"after{k} " + " ".join(f"x{j}" for j in range((doc_index + k) % 4)))
        images.append(None)
    return {"id": f"doc{doc_index}", "texts": texts, "images": images, "image_meta": [None] * len(texts),
            "metadata": {"n": doc_index}}


def write_corpus_dir(path: str, records: list, shard_size: int = 1000) -> str:
    """Writes documents (dicts, encoded) or raw bytes (malformed records) as a corpus folder; returns it."""
    writer = CorpusWriter(path, shard_size)
    for record in records:
        if isinstance(record, bytes):
            writer.write_record(record)
        else:
            writer.write(record)
    writer.publish()
    return path
