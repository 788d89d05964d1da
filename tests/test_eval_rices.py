"""RICES retrieval picks the known nearest neighbours (most similar last), on arrays and through the image-path
API with an injected mean-colour embedding and its on-disk cache; random selection and query sets are seeded."""
import os

import numpy as np
import pytest
from PIL import Image

from vlm_jax.evaluate.examples import Example, sample_query_set
from vlm_jax.evaluate.rices import demonstrations, embed_images, random_indices, rices_indices


def unit(degrees):
    return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))])


def test_rices_orders_top_k_most_similar_last():
    pool = np.stack([unit(a) for a in (0, 10, 45, 90, 180)])  # angles of pool items 0..4
    pool = pool * np.array([[1.0], [3.0], [0.5], [2.0], [7.0]])  # scale must not matter: cosine similarity
    queries = np.stack([unit(8), unit(100)])
    # query at 8 deg: distances 8, 2, 37, 82, 172 -> top-3 by similarity = items 1, 0, 2 -> most similar last
    # query at 100 deg: distances 100, 90, 55, 10, 80 -> top-3 = items 3, 2, 4
    np.testing.assert_array_equal(rices_indices(pool, queries, 3), [[2, 0, 1], [4, 2, 3]])
    np.testing.assert_array_equal(rices_indices(pool, queries, 0), np.zeros((2, 0)))
    with pytest.raises(ValueError, match="k=6"):
        rices_indices(pool, queries, 6)


def test_rices_ties_keep_pool_order():
    pool = np.stack([unit(90), unit(0), unit(45), unit(0)])
    # items 1 and 3 are identical and equally nearest: stable order 1 before 3, then reversed
    np.testing.assert_array_equal(rices_indices(pool, unit(0)[None], 2), [[3, 1]])


def test_random_indices_are_seeded_distinct_and_per_query():
    a = random_indices(100, 8, seed=42, query_index=5)
    assert len(set(a.tolist())) == 8 and a.min() >= 0 and a.max() < 100
    np.testing.assert_array_equal(a, random_indices(100, 8, seed=42, query_index=5))
    assert not np.array_equal(a, random_indices(100, 8, seed=42, query_index=6))
    assert not np.array_equal(a, random_indices(100, 8, seed=43, query_index=5))


def _example(qid, image="x.jpg"):
    return Example(qid=qid, image_path=image, question_text="q", answers=("a",), meta={"benchmark": "okvqa"})


def test_demonstrations_and_self_first():
    pool = [_example(str(i)) for i in range(5)]
    query = _example("q")
    assert [d.qid for d in demonstrations(pool, [2, 0, 1], query)] == ["2", "0", "1"]
    # the query itself takes the first slot; the 2 most similar (last two of the RICES order) follow
    assert [d.qid for d in demonstrations(pool, [2, 0, 1], query, include_self_first=True)] == ["q", "0", "1"]
    assert demonstrations(pool, [], query, include_self_first=True) == []


def test_sample_query_set():
    examples = [_example(str(i)) for i in range(3000)]
    sample = sample_query_set(examples, 2048, seed=42)
    assert len(sample) == 2048 and len({e.qid for e in sample}) == 2048
    assert [e.qid for e in sample] == [e.qid for e in sample_query_set(examples, 2048, seed=42)]
    assert [e.qid for e in sample] != [e.qid for e in sample_query_set(examples, 2048, seed=0)]
    assert sample_query_set(examples[:100], 2048, seed=42) == examples[:100]


COLOURS = {"red": (250, 10, 10), "green": (10, 250, 10), "blue": (10, 10, 250), "yellow": (250, 250, 10),
           "purple": (200, 20, 230)}


class MeanColour:
    """Embedding = mean RGB minus grey, counting the images it is asked to embed."""

    def __init__(self):
        self.calls = []

    def __call__(self, paths):
        self.calls.append(list(paths))
        return np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32).mean((0, 1)) - 128 for p in paths])


def _write(path, rgb):
    Image.new("RGB", (4, 4), rgb).save(path)
    return str(path)


def test_rices_over_image_files_with_disk_cache(tmp_path):
    pool_paths = [_write(tmp_path / f"{name}.png", rgb) for name, rgb in COLOURS.items()]
    query_paths = [_write(tmp_path / "q_orange.png", (250, 120, 10)), _write(tmp_path / "q_violet.png", (150, 10, 240))]
    embed = MeanColour()
    cache = str(tmp_path / "cache")
    pool_emb = embed_images(pool_paths + pool_paths[:2], embed, model_id="mean-rgb", cache_dir=cache, batch_size=2)
    assert pool_emb.shape == (7, 3)
    np.testing.assert_allclose(np.linalg.norm(pool_emb, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(pool_emb[5:], pool_emb[:2])  # duplicate paths share a row
    assert sum(len(c) for c in embed.calls) == 5 and max(len(c) for c in embed.calls) == 2
    query_emb = embed_images(query_paths, embed, model_id="mean-rgb")
    top = rices_indices(pool_emb[:5], query_emb, 2)
    names = list(COLOURS)
    # orange - grey = (122, -8, -118): cosine 0.847 with red (122, -118, -118), 0.793 with yellow (122, 122, -118);
    # violet - grey = (22, -118, 112): 0.950 with purple (72, -108, 102), 0.736 with blue (-118, -118, 122)
    assert [[names[i] for i in row] for row in top] == [["yellow", "red"], ["blue", "purple"]]

    embed.calls.clear()
    again = embed_images(pool_paths, embed, model_id="mean-rgb", cache_dir=cache)
    assert embed.calls == []  # served from the .npy cache
    np.testing.assert_array_equal(again, pool_emb[:5])
    assert len([f for f in os.listdir(cache) if f.endswith(".npy")]) == 1

    embed_images(pool_paths, embed, model_id="other-model", cache_dir=cache)
    assert len(embed.calls) == 1  # another model id misses

    embed.calls.clear()
    _write(tmp_path / "blue.png", (10, 250, 250))  # the file changes: cache key (size, mtime) changes
    os.utime(tmp_path / "blue.png", ns=(1, 1))
    changed = embed_images(pool_paths, embed, model_id="mean-rgb", cache_dir=cache)
    assert len(embed.calls) == 1
    assert not np.allclose(changed[2], pool_emb[2])


def test_missing_image_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        embed_images([str(tmp_path / "nope.png")], MeanColour(), model_id="m", cache_dir=str(tmp_path))
