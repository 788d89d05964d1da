"""data_prep.stats: similarity numbers against a direct computation, group means by hand, corrupt images."""

import dataclasses
import functools
import io
import itertools
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from data_prep import stats
from data_prep.similarity import ClipFeaturizer, document_similarity, grey, random_vision_tower
from data_testlib import image_bytes, write_corpus_dir
from vlm_jax.checkpoint import load_vision_tower, save_params
from vlm_jax.data.image import preprocess_image
from vlm_jax.data.tokenizer import ByteTokenizer, HFTokenizer, tokenize_interleaved
from vlm_jax.models.init import random_params
from vlm_jax.models.clip import CLIPVisionTower
from vlm_jax.models.config import preset

VISION = preset("tiny").vision_config
CORRUPT = b"\xff\xd8 not a jpeg"


@pytest.fixture(scope="module")
def tower():
    return random_vision_tower(VISION, seed=1)


@pytest.fixture(scope="module")
def featurizer(tower):
    return ClipFeaturizer(VISION, tower, batch_size=4, source="test tiny")


def _doc(doc_id, images, words=("a", "b")):
    """Text, then image/text alternating; `images` are encoded bytes."""
    texts, imgs = [" ".join(words)], [None]
    for k, data in enumerate(images):
        texts += [None, f"after {k}"]
        imgs += [data, None]
    return {"id": doc_id, "texts": texts, "images": imgs, "image_meta": [None] * len(texts), "metadata": {}}


@functools.cache
def _tower_apply(config):
    return jax.jit(lambda params, pixels: CLIPVisionTower(config).apply({"params": params}, pixels))


def _direct_features(params, config, encoded):
    """CLIP features straight from the Flax tower (pooled, or projected when the config has it)."""
    pixels = np.stack([preprocess_image(Image.open(io.BytesIO(b)), config.image_size, aspect="none") for b in encoded])
    out = _tower_apply(config)(params, pixels)
    return np.asarray(out.image_embeds if config.has_projection else out.pooled, np.float64)


def _direct_similarity(params, config, encoded):
    """Mean over pairs of ((cos + 1) / 2 + SSIM(grey_i, grey_j resized to grey_i)) / 2, computed here."""
    feats = _direct_features(params, config, encoded)
    greys = [Image.open(io.BytesIO(b)).convert("L") for b in encoded]
    values = []
    for i, j in itertools.combinations(range(len(encoded)), 2):
        cos = feats[i] @ feats[j] / (np.linalg.norm(feats[i]) * np.linalg.norm(feats[j]))
        a = np.asarray(greys[i])
        b = np.asarray(greys[j].resize(greys[i].size, Image.BILINEAR))
        values.append(((cos + 1) / 2 + structural_similarity(a, b, data_range=255)) / 2)
    return float(np.mean(values))


def _run(tmp_path, docs, featurizer, tokenizer=None, num_image_tokens=4, similarity="standard"):
    shard = write_corpus_dir(str(tmp_path / "corpus"), docs)
    out = str(tmp_path / "report.json")
    report = stats.compute_stats([shard], out, tokenizer=tokenizer or ByteTokenizer(), featurizer=featurizer,
                                 num_image_tokens=num_image_tokens, similarity=similarity)
    rows = [json.loads(line) for line in open(report["documents_file"])]
    return report, rows


def test_identical_images_have_similarity_one(featurizer):
    encoded = [image_bytes(30, 20, seed=3, fmt="PNG")] * 3
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in encoded]
    sim = document_similarity(featurizer(images), [grey(img) for img in images])
    assert sim.pairs == 3
    assert sim.similarity == pytest.approx(1.0, abs=1e-6)
    assert sim.clip == pytest.approx(1.0, abs=1e-6) and sim.ssim == pytest.approx(1.0, abs=1e-12)


def test_known_pairs_equal_direct_computation():
    # A tower with a projection (image_embeds); the corpus test below covers one without (pooled).
    config = dataclasses.replace(VISION, has_projection=True)
    params = random_vision_tower(config, seed=2)
    encoded = [image_bytes(30, 20, seed=1, fmt="PNG"), image_bytes(17, 25, seed=2, fmt="JPEG"),
               image_bytes(40, 40, seed=5, fmt="PNG")]
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in encoded]
    feats = ClipFeaturizer(config, params, batch_size=2)(images)  # 2 batches, the second padded
    np.testing.assert_allclose(feats, _direct_features(params, config, encoded), rtol=1e-5, atol=1e-5)
    sim = document_similarity(feats, [grey(img) for img in images])
    assert sim.pairs == 3
    assert sim.similarity == pytest.approx(_direct_similarity(params, config, encoded), abs=1e-6)
    assert sim.similarity < 0.99  # different images really are less similar than identical ones


def test_group_means_match_hand_computation_and_corrupt_images_are_counted(tmp_path, featurizer, tower):
    imgs = {k: image_bytes(20 + k, 16 + 2 * k, seed=k, fmt="PNG" if k % 2 else "JPEG") for k in range(12)}
    docs = [
        _doc("four_a", [imgs[0], imgs[1], imgs[2], imgs[3]]),
        _doc("four_b", [imgs[4], imgs[5], CORRUPT, imgs[6], imgs[7]]),  # 5 stored, 1 corrupt -> group 4
        _doc("five", [imgs[k] for k in (8, 9, 10, 11, 0)]),
        _doc("one", [imgs[1], CORRUPT]),
    ]
    report, rows = _run(tmp_path, docs + [b"not a record"], featurizer)
    by_id = {r["id"]: r for r in rows}
    direct = {
        "four_a": _direct_similarity(tower, VISION, [imgs[k] for k in (0, 1, 2, 3)]),
        "four_b": _direct_similarity(tower, VISION, [imgs[k] for k in (4, 5, 6, 7)]),
        "five": _direct_similarity(tower, VISION, [imgs[k] for k in (8, 9, 10, 11, 0)]),
    }
    for doc_id, value in direct.items():
        assert by_id[doc_id]["similarity"] == pytest.approx(value, abs=1e-6)
    groups = report["similarity_by_image_count"]
    assert groups["4"]["documents"] == 2
    assert groups["4"]["similarity"] == pytest.approx((direct["four_a"] + direct["four_b"]) / 2, abs=1e-6)
    assert groups["5"]["similarity"] == pytest.approx(direct["five"], abs=1e-6)
    assert all(groups[str(k)]["documents"] == 0 for k in range(6, 12))
    assert by_id["one"]["pairs"] == 0 and by_id["one"]["similarity"] is None
    assert by_id["four_b"]["images"] == 4 and by_id["four_b"]["images_corrupt"] == 1
    assert report["images_corrupt"] == 2 and report["images"] == 4 + 4 + 5 + 1
    assert report["documents"] == 4 and report["documents_skipped"] == 1
    assert report["skipped"] == {"malformed_record": 1}
    assert report["image_pairs"] == 6 + 6 + 10
    # Every distribution has its histogram, plus the by-image-count bar chart.
    names = sorted(os.path.basename(p) for p in report["plots"])
    assert names == ["images_hist.png", "similarity_by_image_count.png", "similarity_hist.png",
                     "text_pieces_hist.png", "tokens_hist.png"]
    for path in report["plots"]:
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width > 100


def _tiny_hf_tokenizer(directory, words):
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", "<image>"] + sorted(words))}
    raw = RawTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>", extra_special_tokens=["<image>"]).save_pretrained(directory)
    return HFTokenizer(str(directory))


def test_token_counts_are_what_the_model_sees(tmp_path, featurizer):
    tok = _tiny_hf_tokenizer(tmp_path / "tok", ["a", "b", "after", "0", "1", "2", "3"])
    images = [image_bytes(20, 20, seed=k) for k in range(4)]
    report, rows = _run(tmp_path, [_doc("d", images)], featurizer, tokenizer=tok, num_image_tokens=7)
    row = rows[0]
    # By hand: <s> a b [7 image tokens] after 0 [7] after 1 [7] after 2 [7] after 3 </s>
    assert (row["tokens"], row["text_tokens"], row["image_tokens"]) == (1 + 2 + 4 * 7 + 4 * 2 + 1, 10, 28)
    doc = _doc("d", images)
    expected = tokenize_interleaved(doc["texts"], tok, image_token_id=4, num_image_tokens=7, max_images=12,
                                    max_length=10_000)
    assert row["tokens"] == len(expected.input_ids)
    # The seed keeps at most max_images images: later blocks (and their placeholders) are not counted.
    capped = stats.count_tokens(doc["texts"], tok, num_image_tokens=7, max_images=2)
    assert capped["images_in_sequence"] == 2 and capped["image_tokens"] == 14


def test_cli_with_converted_checkpoint_on_seed_json(tmp_path):
    cfg = preset("tiny")
    params = random_params(cfg, seed=4)
    save_params(tmp_path / "ckpt", params, cfg)
    config, loaded = load_vision_tower(tmp_path / "ckpt")
    assert config == cfg.vision_config
    for a, b in zip(*(sorted(_leaves(t)) for t in (loaded, params["vision_tower"]))):
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
    root = tmp_path / "images"
    (root / "vid1").mkdir(parents=True)
    names = [f"vid1/vid1@10.0_55.0#{k}.jpg" for k in range(3)]
    for k, name in enumerate(names):
        (root / name).write_bytes(image_bytes(24, 18, seed=k, fmt="JPEG"))
    (root / "vid1" / "bad.jpg").write_bytes(CORRUPT)
    docs = [{"images": [None, names[0], None, names[1], "vid1/bad.jpg", names[2], "vid1/missing.jpg"],
             "texts": ["intro", None, "mid", None, None, None, None], "metadata": {"v": 1}}]
    with open(tmp_path / "corpus.json", "w") as f:
        json.dump(docs, f)
    out = tmp_path / "out" / "report.json"
    assert stats.main(["--data", str(tmp_path / "corpus.json"), "--images", str(root), "--clip-ckpt",
                       str(tmp_path / "ckpt"), "--out", str(out), "--batch-size", "2", "--similarity", "standard"]) == 0
    report = json.loads(out.read_text())
    assert report["clip"]["source"].startswith("checkpoint ")
    assert report["num_image_tokens"] == cfg.num_image_tokens
    assert report["images"] == 3 and report["images_corrupt"] == 1
    assert report["skipped"] == {"undecodable_image": 1, "missing_file": 1}
    row = json.loads((tmp_path / "out" / "report.documents.jsonl").read_text())
    assert row["video_ids"] == ["vid1"]
    encoded = [(root / n).read_bytes() for n in names]
    assert row["similarity"] == pytest.approx(_direct_similarity(params["vision_tower"], cfg.vision_config, encoded),
                                              abs=1e-6)


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), np.asarray(value)


def _original_expected(params, config, encoded, image_num):
    """The original's scripts by hand: inbatch_clip_score + inbatch_ssim_score sums, check_inbatchsim score."""
    import cv2

    feats = _direct_features(params, config, encoded)
    clip_sum = ssim_sum = 0.0
    for i, j in itertools.combinations(range(len(encoded)), 2):
        cos = feats[i] @ feats[j] / (np.linalg.norm(feats[i]) * np.linalg.norm(feats[j]))
        clip_sum += (cos + 1) / 2
    for i, j in itertools.combinations(range(len(encoded)), 2):
        a, b = (cv2.imdecode(np.frombuffer(encoded[k], np.uint8), cv2.IMREAD_COLOR) for k in (i, j))
        if a.shape != b.shape:
            b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
        try:
            ssim_sum += structural_similarity(cv2.cvtColor(a, cv2.COLOR_BGR2GRAY), cv2.cvtColor(b, cv2.COLOR_BGR2GRAY),
                                              full=True)[0]
        except ValueError:  # an image under 7 px: the original zeroes the document's SSIM sum
            ssim_sum = 0.0
            break
    clip_score = (clip_sum + 1) / 2  # check_inbatchsim.py maps the sum once more
    return (ssim_sum + clip_score) / 2 / (image_num * (image_num - 1) / 2)


def test_original_similarity_protocol_is_the_papers_table(tmp_path):
    config = dataclasses.replace(VISION, has_projection=True)  # get_image_features: projected
    params = random_vision_tower(config, seed=3)
    featurizer = ClipFeaturizer(config, params, batch_size=4, source="test tiny projected")
    imgs = {k: image_bytes(20 + 3 * k, 16 + 2 * k, seed=k, fmt="PNG" if k % 2 else "JPEG") for k in range(10)}
    tiny = image_bytes(5, 5, seed=11, fmt="PNG")  # SSIM's 7x7 window does not fit: the original's sum becomes 0
    docs = [
        {**_doc("four", [imgs[k] for k in range(4)]), "metadata": {"image_num": 4}},
        {**_doc("field_says_5", [imgs[k] for k in range(4, 8)]), "metadata": {"image_num": 5}},  # grouped by the field
        {**_doc("tiny", [imgs[8], imgs[9], tiny, imgs[0]]), "metadata": {"image_num": 4}},
        {**_doc("corrupt", [imgs[1], CORRUPT, imgs[2], imgs[3], imgs[4]]), "metadata": {"image_num": 5}},
        _doc("no_field", [imgs[k] for k in (5, 6, 7, 8, 9)]),  # no image_num: its image count
    ]
    report, rows = _run(tmp_path, docs, featurizer, similarity="original")
    by_id = {r["id"]: r for r in rows}
    expected = {
        "four": _original_expected(params, config, [imgs[k] for k in range(4)], 4),
        "field_says_5": _original_expected(params, config, [imgs[k] for k in range(4, 8)], 5),
        "tiny": _original_expected(params, config, [imgs[8], imgs[9], tiny, imgs[0]], 4),
        "no_field": _original_expected(params, config, [imgs[k] for k in (5, 6, 7, 8, 9)], 5),
    }
    for doc_id, value in expected.items():
        assert by_id[doc_id]["similarity"] == pytest.approx(value, rel=1e-5), doc_id
    assert by_id["tiny"]["ssim_failed"] and by_id["tiny"]["ssim_sum"] == 0.0
    assert by_id["corrupt"]["similarity"] is None  # the original's clip_success = False
    groups = report["similarity_by_image_count"]
    assert report["similarity_protocol"] == "original"
    assert groups["4"]["documents"] == 2
    assert groups["4"]["similarity"] == pytest.approx((expected["four"] + expected["tiny"]) / 2, rel=1e-5)
    assert groups["5"]["documents"] == 2
    assert groups["5"]["similarity"] == pytest.approx((expected["field_says_5"] + expected["no_field"]) / 2, rel=1e-5)
    # Not the standard protocol's number: that is a mean over pairs, this a sum mapped twice over C(n, 2).
    standard = _direct_similarity(params, config, [imgs[k] for k in range(4)])
    assert abs(standard - expected["four"]) > 1e-3
