"""data_prep.convert: textbook/obelics/mmc4 inputs -> a TFDS ArrayRecord dataset, with counted skips."""

import json
import os

import pytest
import tensorflow_datasets as tfds

from data_prep import convert as convert_mod
from data_prep.formats import parse_keyframe_name, url_file_name
from data_prep.json_stream import Malformed, iter_json_array, iter_jsonl
from data_testlib import image_bytes
from vlm_jax.data.loader import loader_metrics, make_train_iterator
from vlm_jax.data.records import CorpusError, from_example

KEYFRAMES = ["-1uixJ1V-As/-1uixJ1V-As@10.0_55.0#2.jpg", "-1uixJ1V-As/-1uixJ1V-As@55.0_80.5#1.jpg",
             "B5Cj_yJ-Okg/B5Cj_yJ-Okg@2240.26_2250.2000000000003#3.jpg"]


@pytest.fixture()
def images_root(tmp_path):
    root = tmp_path / "images"
    for i, rel in enumerate(KEYFRAMES):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(image_bytes(30 + i, 20, seed=i))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / url_file_name("https://example.com/cat.png")).write_bytes(image_bytes(16, 16, seed=5, fmt="PNG"))
    (root / "mmc4_a.jpg").write_bytes(image_bytes(20, 20, seed=6))
    (tmp_path / "outside.jpg").write_bytes(image_bytes(8, 8, seed=7))
    os.symlink(tmp_path / "outside.jpg", root / "link_out.jpg")
    return root


def _records(out_dir):
    """The corpus as any TFDS user opens it (no vlm_jax reader), in file order."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    source = tfds.builder_from_directory(str(out_dir)).as_data_source(split="train")
    assert len(source) == sum(s["num_records"] for s in manifest["shards"])
    assert sorted(p.name for p in out_dir.glob("*.array_record-*")) == [s["path"] for s in manifest["shards"]]
    return manifest, [from_example(source[i]) for i in range(len(source))]


def _skips(out_dir):
    return [json.loads(line) for line in (out_dir / "skipped.jsonl").read_text().splitlines()]


def _textbook_docs(tmp_path):
    kf = KEYFRAMES
    return [
        {"images": [kf[0], None, kf[1], None], "texts": [None, "asr one", None, "asr two"],
         "text_ocr_list": [None, "asr one OCR: x=1", None, "asr two OCR: y"], "metadata": [{"v": 1}, None, None, None],
         "image_num": 2, "text_num": 5, "token_num": 1200},
        {"images": [None, kf[2], "missing/nothere.jpg", None, "broken.jpg"], "texts": ["intro", None, None, "mid", None],
         "text_ocr_list": ["intro", None, None, "mid ocr", None], "metadata": [], "image_num": 3, "text_num": 2,
         "token_num": 5},
        {"images": ["../outside.jpg", None], "texts": [None, "t"], "text_ocr_list": [None, "t"], "metadata": []},
        {"images": [str(tmp_path / "images" / kf[0]), "link_out.jpg", None], "texts": [None, None, "abs + symlink"],
         "text_ocr_list": [None, None, "x"], "metadata": []},
        {"images": [kf[0], None], "texts": [None]},  # length mismatch: malformed
    ]


def test_textbook_json_array_with_ocr_text(tmp_path, images_root):
    src = tmp_path / "textbook.json"
    src.write_text(json.dumps(_textbook_docs(tmp_path), indent=1))
    out = tmp_path / "out"
    manifest = convert_mod.convert(str(src), str(images_root), str(out), "textbook", shard_size=1,
                                   text_field="text_ocr_list", workers=1)
    assert manifest["documents_read"] == 5 and manifest["documents_written"] == 2 and manifest["images_written"] == 3
    assert manifest["skipped"] == {"malformed_record": 1, "no_images": 2, "missing_file": 1, "not_regular_file": 0,
                                   "undecodable_image": 1, "image_too_large": 0, "extreme_aspect_ratio": 0,
                                   "escaping_path": 3}
    assert [s["num_records"] for s in manifest["shards"]] == [1, 1]
    _, docs = _records(out)
    assert docs[0]["texts"] == [None, "asr one OCR: x=1", None, "asr two OCR: y"]
    assert docs[0]["image_meta"][0] == {"path": KEYFRAMES[0], "width": 30, "height": 20, "format": "JPEG",
                                        "video_id": "-1uixJ1V-As", "clip_start": 10.0, "clip_end": 55.0,
                                        "frame_index": 2}
    assert docs[0]["images"][0] == (images_root / KEYFRAMES[0]).read_bytes()
    assert docs[0]["metadata"] == {"metadata": [{"v": 1}, None, None, None], "image_num": 2, "text_num": 5,
                                   "token_num": 1200}
    # Bad images of doc 1 are dropped together with their positions.
    assert docs[1]["texts"] == ["intro", None, "mid ocr"] and docs[1]["image_meta"][1]["frame_index"] == 3
    skips = _skips(out)
    where = {(s["reason"], s["location"].split(str(src))[-1].split(" image")[0]) for s in skips}
    assert ("malformed_record", "[index 4]") in where and ("missing_file", "[index 1]") in where
    assert ("undecodable_image", "[index 1]") in where and ("escaping_path", "[index 3]") in where


def test_obelics_and_mmc4_jsonl_via_cli_with_a_pool(tmp_path, images_root, capsys):
    obelics = tmp_path / "obelics.jsonl"
    lines = [
        json.dumps({"images": ["https://example.com/cat.png", None], "texts": [None, "a cat"],
                    "metadata": json.dumps([{"src": "web"}, None])}),
        "{not json",
        "",
        json.dumps({"images": [None], "texts": ["text only"], "metadata": "[]"}),
    ]
    obelics.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out_obelics"
    assert convert_mod.main(["--format", "obelics", "--input", str(obelics), "--images", str(images_root),
                             "--out", str(out), "--shard-size", "10", "--workers", "2", "--url-names", "sha256"]) == 0
    printed = capsys.readouterr().err
    assert "documents: 1 written, 2 skipped (malformed record: 1, no image left: 1)" in printed
    manifest, docs = _records(out)
    assert docs[0]["texts"] == [None, "a cat"] and docs[0]["metadata"] == [{"src": "web"}, None]
    assert {s["location"].split("/")[-1] for s in _skips(out)} == {"obelics.jsonl:line 2", "obelics.jsonl:line 4"}
    # The original reads image strings as paths (its URL hashing is commented out): the URL is a missing file.
    with pytest.raises(convert_mod.NothingWritten):
        convert_mod.convert(str(obelics), str(images_root), str(tmp_path / "orig"), "obelics", workers=1)
    assert json.loads((tmp_path / "orig" / "manifest.json").read_text())["skipped"]["missing_file"] == 1


def test_obelics_valid_image_is_honoured(tmp_path, images_root):
    src = tmp_path / "obelics.jsonl"
    src.write_text(json.dumps({"images": ["mmc4_a.jpg", None, KEYFRAMES[0], None], "texts": [None, "a", None, "b"],
                               "valid_image": [False, True]}) + "\n"
                   + json.dumps({"images": ["mmc4_a.jpg", None], "texts": [None, "a"], "valid_image": [1]}) + "\n")
    manifest = convert_mod.convert(str(src), str(images_root), str(tmp_path / "out"), "obelics", workers=1)
    _, docs = _records(tmp_path / "out")
    assert docs[0]["texts"] == ["a", None, "b"] and docs[0]["image_meta"][1]["path"] == KEYFRAMES[0]
    assert manifest["images_marked_invalid"] == 1 and manifest["skipped"]["malformed_record"] == 1


MMC4_DOC = {"text_list": ["s0", "s1", "s2", "s3"], "url": "u", "similarity_matrix": [
    [0.1, 0.2, 0.0, 0.9],   # image 0 (mmc4_a.jpg): best sentence 3
    [0.8, 0.1, 0.0, 0.2],   # image 1 (cat.png by URL hash): best sentence 0
    [0.0, 0.0, 0.99, 0.0]],  # image 2: not in valid_image_ids, never read
    "valid_image_ids": [0, 1], "image_info": [
        {"image_name": "mmc4_a.jpg", "matched_text_index": 1},
        {"image_url": "https://example.com/cat.png", "matched_text_index": 1},
        {"image_name": "missing.jpg", "matched_text_index": 2}]}


@pytest.mark.parametrize("placement, max_images, layout", [
    # The original: assignment rows (0, 1) -> sentences (3, 0); images spliced in image order into
    # placeholders in sentence order, so image 0 lands at sentence 0 (datasets.py:160-195).
    ("original", 12, ["a", "s0 s1 s2", "cat", "s3"]),
    ("assigned", 12, ["cat", "s0 s1 s2", "a", "s3"]),
    ("matched_text_index", 12, ["s0", "a", "cat", "s1 s2 s3"]),
    ("original", 1, ["s0 s1 s2", "a", "s3"]),  # first image in image order kept, at its own sentence
])
def test_mmc4_reader_as_the_original(tmp_path, images_root, placement, max_images, layout):
    from vlm_jax.data.tokenizer import seed_text_pieces

    src = tmp_path / "mmc4.jsonl"
    src.write_text(json.dumps(MMC4_DOC) + "\n" + json.dumps({**MMC4_DOC, "similarity_matrix": [[1.0]]}) + "\n")
    manifest = convert_mod.convert(str(src), str(images_root), str(tmp_path / "out"), "mmc4", workers=1,
                                   mmc4_placement=placement, mmc4_max_images=max_images)
    _, docs = _records(tmp_path / "out")
    names = {(images_root / "mmc4_a.jpg").read_bytes(): "a",
             (images_root / url_file_name("https://example.com/cat.png")).read_bytes(): "cat"}
    assert [t if t is not None else names[i] for t, i in zip(docs[0]["texts"], docs[0]["images"])] == layout
    if placement != "matched_text_index":  # the second document's matrix has the wrong shape
        assert manifest["images_marked_invalid"] == 1 and manifest["skipped"]["malformed_record"] == 1
        assert "similarity_matrix" in _skips(tmp_path / "out")[0]["detail"]
    if placement == "original" and max_images == 12:
        # The original's string: " ".join("<image>s0", "s1", "s2", "<image>s3") + "</s>", spaces at <image> removed.
        assert "<image>".join(seed_text_pieces(docs[0]["texts"], 12)) + "</s>" == "<image>s0 s1 s2<image>s3</s>"


def test_converted_shards_feed_the_loader(tmp_path, images_root):
    src = tmp_path / "textbook.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in _textbook_docs(tmp_path)[:2]) + "\n")
    out = tmp_path / "out"
    convert_mod.convert(str(src), str(images_root), str(out), "textbook", shard_size=1, workers=1)
    it = make_train_iterator(dict(shards=[str(out)], batch_size=1, seq_len=64, max_images_per_row=3,
                                  num_image_tokens=4, max_images=3, image_size=8, num_epochs=1))
    batches = list(it)
    assert sum(int(b["image_mask"].sum()) for b in batches) == 3
    assert loader_metrics(it)["documents_used"] == 2


def test_keyframe_names():
    assert parse_keyframe_name("-1uixJ1V-As/-1uixJ1V-As@10.0_55.0#2.jpg") == {
        "video_id": "-1uixJ1V-As", "clip_start": 10.0, "clip_end": 55.0, "frame_index": 2}
    assert parse_keyframe_name("5BXMCud20rg@23637.2_23658.239999999998#1.jpg")["clip_end"] == 23658.239999999998
    assert parse_keyframe_name("photo.jpg") is None and parse_keyframe_name("a@1_2.jpg") is None


def test_json_array_stream_across_tiny_chunks(tmp_path):
    values = [{"a": "x" * 50, "b": [1, 2.5, None]}, 12345678, "str,with]chars", [], {"nested": {"k": [{"q": True}]}}]
    path = tmp_path / "a.json"
    path.write_text(" \n[ " + " ,\n ".join(json.dumps(v) for v in values) + " ]\n")
    for chunk in (1, 3, 7, 1 << 20):
        assert [v for _, v in iter_json_array(str(path), chunk_chars=chunk)] == values
    truncated = tmp_path / "t.json"
    truncated.write_text(json.dumps(values)[:-20])
    items = list(iter_json_array(str(truncated), chunk_chars=4))
    assert [v for _, v in items[:-1]] == values[:4]
    assert isinstance(items[-1][1], Malformed) and items[-1][0].endswith("[index 4]")
    not_array = tmp_path / "o.json"
    not_array.write_text('{"a": 1}')
    assert isinstance(next(iter_json_array(str(not_array)))[1], Malformed)
    lines = tmp_path / "l.jsonl"
    lines.write_text('{"a": 1}\n\n{bad\n[2]\n')
    assert [(loc.split(":")[-1], isinstance(v, Malformed)) for loc, v in iter_jsonl(str(lines))] == [
        ("line 1", False), ("line 3", True), ("line 4", False)]


def _cli(tmp_path, images_root, out, *extra):
    src = tmp_path / "textbook.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in _textbook_docs(tmp_path)[:2]) + "\n")
    return convert_mod.main(["--format", "textbook", "--input", str(src), "--images", str(images_root),
                             "--out", str(out), "--workers", "1", *extra])


def test_output_is_a_self_describing_tfds_dataset_published_at_the_end(tmp_path, images_root, capsys):
    out = tmp_path / "out"
    assert _cli(tmp_path, images_root, out) == 0  # no --shard-size: the default
    manifest, docs = _records(out)
    assert len(manifest["shards"]) == 1 and manifest["shards"][0]["num_records"] == 2
    assert manifest["shards"][0]["path"] == "corpus-train.array_record-00000-of-00001"
    assert sorted(os.listdir(out)) == sorted(["dataset_info.json", "features.json", "manifest.json", "skipped.jsonl",
                                              manifest["shards"][0]["path"]])  # .partial/ is gone
    info = tfds.builder_from_directory(str(out)).info
    assert set(info.features.keys()) == {"id", "layout", "texts", "images", "metadata"}
    assert info.splits["train"].num_examples == 2
    # A second run into the same folder is refused (exit 1, one line) unless --overwrite.
    capsys.readouterr()
    assert _cli(tmp_path, images_root, out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty" in err[0] and "--overwrite" in err[0]
    assert _cli(tmp_path, images_root, out, "--overwrite", "--shard-size", "1") == 0
    manifest, docs2 = _records(out)
    assert [s["num_records"] for s in manifest["shards"]] == [1, 1] and docs2 == docs


def test_leftovers_of_a_killed_run_are_never_read(tmp_path, images_root):
    out = tmp_path / "out"
    (out / ".partial").mkdir(parents=True)
    (out / ".partial" / "shard-00000").write_bytes(b"")  # what a kill leaves behind
    with pytest.raises(CorpusError, match="a conversion did not finish"):
        make_train_iterator(dict(shards=[str(out)], batch_size=1, seq_len=64, max_images_per_row=3,
                                 num_image_tokens=4, max_images=3, image_size=8))
    assert _cli(tmp_path, images_root, out) == 0  # a leftover .partial/ is ours to replace
    (out / "corpus-train.array_record-00005-of-00009").write_bytes(b"")  # stray 0-byte shard: not listed
    assert len(tfds.builder_from_directory(str(out)).as_data_source(split="train")) == 2
    batches = list(make_train_iterator(dict(shards=[str(out)], batch_size=1, seq_len=64, max_images_per_row=3,
                                            num_image_tokens=4, max_images=3, image_size=8)))
    assert sum(int(b["image_mask"].sum()) for b in batches) == 3


def test_a_listed_shard_that_is_empty_is_refused_not_read(tmp_path, images_root):
    out = tmp_path / "out"
    assert _cli(tmp_path, images_root, out, "--shard-size", "1") == 0
    (out / "corpus-train.array_record-00001-of-00002").write_bytes(b"")  # truncated after the conversion
    with pytest.raises(CorpusError, match="00001-of-00002 listed in dataset_info.json is missing or empty"):
        make_train_iterator(dict(shards=[str(out)], batch_size=1, seq_len=64, max_images_per_row=3,
                                 num_image_tokens=4, max_images=3, image_size=8))
