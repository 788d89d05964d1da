"""Demonstration selection for few-shot evaluation: RICES (Retrieval-based In-Context Example Selection,
OpenFlamingo's `rices.py` as the Multimodal-Textbook seeds use it) and seeded random selection, plus image
embedding with an on-disk cache.

RICES ranks the demonstration pool by cosine similarity of image embeddings to the query image, keeps the
top k and orders them so the most similar is last, i.e. nearest the query turn (`argsort(descending=True,
stable=True)[:k]` then reversed). The seeds' "including_self_in_first_example" ablation puts the query
example itself (with its answer) in the first demonstration slot, the k-1 most similar following.

The embedding function is injected: `embed_fn(list_of_image_paths) -> np.ndarray [n, D]` (any scale; rows are
L2-normalised here).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
from typing import Callable, Sequence

import numpy as np

from vlm_jax import paths as paths_lib
from vlm_jax.evaluate.examples import Example

EmbedFn = Callable[[Sequence[str]], np.ndarray]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of `x` [n, D] scaled to unit L2 norm (float32); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def rices_indices(pool_embeddings: np.ndarray, query_embeddings: np.ndarray, k: int) -> np.ndarray:
    """Indices into the pool of each query's k most similar pool images, most similar LAST.

    pool_embeddings [N, D], query_embeddings [M, D] (normalised here, so similarity is cosine);
    returns int64 [M, k]. Ties keep pool order (stable sort), as the seeds' `argsort(stable=True)`.
    """
    if not 0 <= k <= len(pool_embeddings):
        raise ValueError(f"k={k} demonstrations requested from a pool of {len(pool_embeddings)}")
    similarity = l2_normalize(query_embeddings) @ l2_normalize(pool_embeddings).T  # [M, N]
    top = np.argsort(-similarity, axis=-1, kind="stable")[:, :k]
    return top[:, ::-1].astype(np.int64)


def random_indices(pool_size: int, k: int, seed: int, query_index: int) -> np.ndarray:
    """k distinct pool indices [k] drawn for one query; depends only on (seed, query_index), so any sharding
    of the queries over hosts draws the same demonstrations."""
    if not 0 <= k <= pool_size:
        raise ValueError(f"k={k} demonstrations requested from a pool of {pool_size}")
    return np.random.default_rng([seed, query_index]).choice(pool_size, size=k, replace=False).astype(np.int64)


def random_select_indices(pool_size: int, k: int, seed: int, num_queries: int) -> list[list[int]]:
    """The original's math `random_select` mode: one Python `random.Random(seed)` stream drawing
    `sample(range(pool_size), k)` for each query in order (its `random.seed(42)` then one draw per question),
    demonstrations in draw order."""
    if not 0 <= k <= pool_size:
        raise ValueError(f"k={k} demonstrations requested from a pool of {pool_size}")
    rng = random.Random(seed)
    return [rng.sample(range(pool_size), k) for _ in range(num_queries)]


def demonstrations(pool: Sequence[Example], indices: Sequence[int], query: Example,
                   include_self_first: bool = False) -> list[Example]:
    """The demonstration examples for `query` from selected pool indices (in prompt order).

    include_self_first: the seeds' ablation -- the query example itself fills the first slot and only the
    last len(indices)-1 selected (the most similar, for RICES) follow, so the shot count is unchanged.
    """
    chosen = [pool[i] for i in indices]
    if include_self_first and chosen:
        return [query] + chosen[1:]
    return chosen


def _cache_key(paths: Sequence[str], model_id: str) -> str:
    """Digest of the model id and each file's absolute path, size and mtime: any changed image misses."""
    entries = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"image for embedding not found: {p}") from e
        entries.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    blob = json.dumps([model_id, entries]).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def embed_images(paths: Sequence[str], embed_fn: EmbedFn, *, model_id: str, cache_dir: str | None = None,
                 batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings [len(paths), D] of image files, each distinct file embedded once.

    With cache_dir, the result is stored as `<cache_dir>/<model_id>-<digest>.npy` keyed by (model_id, every
    file's path + size + mtime) and reused on the next call with the same files and model.
    """
    unique = list(dict.fromkeys(paths))
    row_of = {p: i for i, p in enumerate(unique)}
    rows = [row_of[p] for p in paths]
    cache_file = None
    if cache_dir is not None:
        safe_model = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)
        cache_file = paths_lib.join(cache_dir, f"{safe_model}-{_cache_key(unique, model_id)}.npy")
        if paths_lib.isfile(cache_file):
            cached = np.load(io.BytesIO(paths_lib.as_path(cache_file).read_bytes()))
            if cached.ndim == 2 and cached.shape[0] == len(unique):
                return cached[rows]
    chunks = []
    for start in range(0, len(unique), batch_size):
        batch = unique[start:start + batch_size]
        emb = np.asarray(embed_fn(batch))
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(f"embed_fn returned shape {emb.shape} for {len(batch)} images; expected [n, D]")
        chunks.append(l2_normalize(emb))
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    if cache_file is not None:
        buffer = io.BytesIO()
        np.save(buffer, embeddings)
        paths_lib.write_bytes(cache_file, buffer.getvalue())
    return embeddings[rows]
