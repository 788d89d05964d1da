"""Hostile inputs to `python -m data_prep.convert`: each case checks the exit code, the one-line message
(or the skip counted under its reason) and that nothing outside `--out` changed. Fixtures are made here."""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib

import pytest
import tensorflow_datasets as tfds

from data_prep import convert as convert_mod
from data_testlib import image_bytes
from vlm_jax.data.records import from_example

GOOD = {"images": ["good.jpg", None], "texts": [None, "a good document"], "metadata": []}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (1-bit grey); the pixel data is absent."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def _snapshot(root, skip):
    """{relative path: (size, mtime)} of everything under root except the `skip` folder."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) != str(skip)]
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_size if not os.path.isdir(path) else 0, st.st_mtime_ns)
    return out


@pytest.fixture()
def env(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.jpg").write_bytes(image_bytes(24, 16, seed=1))
    return tmp_path, images


def _run(tmp_path, images, input_path, *extra, out=None, capsys=None):
    out = out or tmp_path / "out"
    before = _snapshot(tmp_path, out)
    code = convert_mod.main(["--format", "textbook", "--input", str(input_path), "--images", str(images),
                             "--out", str(out), "--workers", "1", *extra])
    assert _snapshot(tmp_path, out) == before, "something outside --out changed"
    return code


def _docs(out):
    source = tfds.builder_from_directory(str(out)).as_data_source(split="train")
    return [from_example(source[i]) for i in range(len(source))]


def _jsonl(path, docs):
    path.write_bytes(b"".join((d if isinstance(d, bytes) else json.dumps(d).encode()) + b"\n" for d in docs))
    return path


def _error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- command-line errors: exit 2; missing or wrong-kind paths: exit 1; one line, nothing written anywhere ----

USAGE_CASES = {
    "prefix escapes --out": (["--prefix", "../evil"], "--prefix"),
    "prefix with a slash": (["--prefix", "a/b"], "--prefix"),
    "prefix upper case": (["--prefix", "Data"], "--prefix"),
    "shard size 0": (["--shard-size", "0"], "--shard-size 0"),
    "negative workers": (["--workers", "-3"], "--workers -3"),
    "pixel limit 0": (["--max-image-pixels", "0"], "--max-image-pixels"),
    "aspect limit nan": (["--max-aspect-ratio", "nan"], "--max-aspect-ratio"),
}


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_usage_errors(env, capsys, case):
    tmp_path, images = env
    argv, message = USAGE_CASES[case]
    src = _jsonl(tmp_path / "in.jsonl", [GOOD])
    assert _run(tmp_path, images, src, *argv) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_setup_errors(env, capsys):
    tmp_path, images = env
    src = _jsonl(tmp_path / "in.jsonl", [GOOD])
    (tmp_path / "a_file").write_text("x")
    os.mkfifo(tmp_path / "pipe.jsonl")
    cases = [
        (dict(input_path=src, out=tmp_path / "a_file"), "exists and is not a folder"),
        (dict(input_path=tmp_path / "missing.jsonl"), "no such file or folder"),
        (dict(input_path=tmp_path / "pipe.jsonl"), "not a regular file"),
        (dict(input_path=tmp_path / "a_file"), "expected a .json or .jsonl"),
    ]
    for kwargs, message in cases:
        assert _run(tmp_path, images, kwargs["input_path"], out=kwargs.get("out")) == 1, message
        assert message in _error_line(capsys)
    assert _run(tmp_path, tmp_path / "no_images", src) == 1
    line = _error_line(capsys)
    assert "--images" in line and "no such folder" in line
    assert _run(tmp_path, images, src, "--format", "nope") == 2
    assert "invalid choice" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


# --- bad input: exit 1, one line ---------------------------------------------------------------------------

def test_non_empty_out_without_overwrite(env, capsys):
    tmp_path, images = env
    src = _jsonl(tmp_path / "in.jsonl", [GOOD])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _run(tmp_path, images, src) == 1
    assert "is not empty" in _error_line(capsys)
    assert os.listdir(out) == ["notes.txt"]
    # --overwrite replaces only a previous conversion's files: the user's file stays.
    assert _run(tmp_path, images, src, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine" and len(_docs(out)) == 1


@pytest.mark.parametrize("content, reason", [(b"", "holds no document"), (b"\n\n", "holds no document"),
                                             (b'{"images": ["nothere.jpg", null], "texts": [null, "t"]}\n',
                                              "no_images 1, missing_file 1")])
def test_a_run_that_wrote_nothing_exits_1(env, capsys, content, reason):
    tmp_path, images = env
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    assert _run(tmp_path, images, src) == 1
    line = _error_line(capsys)
    assert "no document written" in line and reason in line
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["manifest.json", "skipped.jsonl"]  # why, but no dataset
    _jsonl(src, [GOOD])  # fixed input: the same --out is accepted again (it holds only that report)
    assert _run(tmp_path, images, src) == 0 and len(_docs(out)) == 1
    src.write_bytes(content)  # --overwrite with nothing to write: the previous corpus goes, the report stays
    capsys.readouterr()
    assert _run(tmp_path, images, src, "--overwrite") == 1 and "no document written" in _error_line(capsys)
    assert sorted(os.listdir(out)) == ["manifest.json", "skipped.jsonl"]


# --- bad records and images: skipped and counted, the rest converted -------------------------------------

def _convert_ok(tmp_path, images, src, *extra):
    assert _run(tmp_path, images, src, *extra) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    skips = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    return manifest, skips, _docs(tmp_path / "out")


def test_bad_records_in_jsonl_are_skipped(env):
    tmp_path, images = env
    deep = b'{"images": ["good.jpg", null], "texts": [null, "t"], "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    lines = [
        GOOD,
        b'{"images": ["good.jpg", null], "texts": [null, "caf\xe9 latin-1"]}',  # not UTF-8
        deep,  # deeper than Python's parser takes
        {"images": ["good.jpg", None], "texts": [None, "big ints"], "metadata": [2 ** 64, -(2 ** 70), 2 ** 200]},
        b'{"images": ["good.jpg", null], "texts": [null, "lone \\ud800 surrogate"]}',  # valid JSON, not encodable
        [1, 2],  # not an object
        {"images": [7, None], "texts": [None, "t"]},  # image ref not a string
        {"images": ["good.jpg\u0000.png", None], "texts": [None, "t"]},  # NUL in a path
        GOOD,
    ]
    manifest, skips, docs = _convert_ok(tmp_path, images, _jsonl(tmp_path / "in.jsonl", lines))
    assert manifest["documents_read"] == 9 and manifest["documents_written"] == 3
    assert manifest["skipped"]["malformed_record"] == 5 and manifest["skipped"]["escaping_path"] == 1
    details = {int(s["location"].rsplit("line ", 1)[1].split()[0]): s["detail"] for s in skips}
    assert "not UTF-8: byte 0xe9" in details[2] and "nested too deeply" in details[3]
    assert "UnicodeEncodeError" in details[5] or "surrogate" in details[5]
    assert docs[1]["metadata"] == {"metadata": [2 ** 64, -(2 ** 70), 2 ** 200]}  # exact, no overflow


def test_bad_elements_of_a_json_array_are_skipped_and_the_array_goes_on(env):
    tmp_path, images = env
    good = json.dumps(GOOD).encode()
    deep = b'{"images": ["good.jpg", null], "texts": [null, "t"], "m": ' + b"[" * 50_000 + b'"]x"' + b"]" * 50_000 + b"}"
    latin1 = b'{"images": ["good.jpg", null], "texts": [null, "caf\xe9"]}'
    src = tmp_path / "in.json"
    src.write_bytes(b"[" + b",\n".join([good, deep, latin1, good]) + b"]")
    manifest, skips, docs = _convert_ok(tmp_path, images, src)
    assert manifest["documents_read"] == 4 and manifest["documents_written"] == 2
    assert [s["location"].rsplit("[", 1)[1] for s in skips] == ["index 1]", "index 2]"]
    assert "nested too deeply" in skips[0]["detail"] and "not UTF-8: byte 0xe9" in skips[1]["detail"]


def test_hostile_images_are_skipped_and_counted(env):
    tmp_path, images = env
    os.mkfifo(images / "pipe.jpg")
    (images / "strip.png").write_bytes(image_bytes(1, 600, seed=2, fmt="PNG"))  # 1 x 600: aspect 600
    (images / "bomb.png").write_bytes(_png_header_only(20_000, 20_000))  # 400 M pixels claimed, 45 bytes
    (images / "big.png").write_bytes(_png_header_only(8_000, 8_000))  # 64 M: above our limit, below Pillow's
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes(image_bytes(64, 64, seed=3)[:200])
    os.symlink(images / "loop_a.jpg", images / "loop_b.jpg")
    os.symlink(images / "loop_b.jpg", images / "loop_a.jpg")
    refs = ["pipe.jpg", "strip.png", "bomb.png", "big.png", "empty.jpg", "truncated.jpg", "loop_a.jpg", "good.jpg"]
    doc = {"images": [], "texts": []}
    for ref in refs:
        doc["images"] += [ref, None]
        doc["texts"] += [None, f"after {ref}"]
    src = _jsonl(tmp_path / "in.jsonl", [doc])
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=_convert_ok(tmp_path, images, src)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "convert blocked (on the named pipe?)"
    manifest, skips, docs = result["out"]
    assert {s["location"].split("image ")[1].strip("'"): s["reason"] for s in skips} == {
        "pipe.jpg": "not_regular_file", "strip.png": "extreme_aspect_ratio", "bomb.png": "image_too_large",
        "big.png": "image_too_large",        "empty.jpg": "undecodable_image", "truncated.jpg": "undecodable_image", "loop_a.jpg": "undecodable_image"}
    assert manifest["images_written"] == 1
    assert docs[0]["texts"] == [t for ref in refs for t in ([None] if ref == "good.jpg" else []) + [f"after {ref}"]]
    # The limits are options: a smaller pixel limit skips the good image too (and nothing is left).
    assert _run(tmp_path, images, src, "--max-image-pixels", "100", "--overwrite") == 1


def test_fifo_input_file_inside_an_input_folder_is_not_opened(env):
    tmp_path, images = env
    folder = tmp_path / "in"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", [GOOD])
    os.mkfifo(folder / "b.jsonl")
    manifest, skips, docs = _convert_ok(tmp_path, images, folder)
    assert manifest["documents_written"] == 1 and skips[0]["reason"] == "malformed_record"
    assert "not a regular file" in skips[0]["detail"]


def test_readers_refuse_an_unfinished_conversion_in_one_line(env, capsys):
    from data_prep import stats

    tmp_path, _ = env
    out = tmp_path / "out"
    (out / ".partial").mkdir(parents=True)
    (out / ".partial" / "shard-00000").write_bytes(b"")
    assert stats.main(["--data", str(out), "--out", str(tmp_path / "report.json")]) == 1
    line = _error_line(capsys)
    assert "a conversion did not finish" in line and "dataset_info.json" in line
    assert not (tmp_path / "report.json").exists()


def test_stats_refuses_huge_images_in_a_corpus_from_the_header(tmp_path):
    from data_prep import stats
    from data_testlib import write_corpus_dir

    good = image_bytes(24, 16, seed=1)
    doc = {"id": "d", "texts": ["t", None, None, None, "end"], "images": [None, good, _png_header_only(12_000, 12_000),
                                                                          image_bytes(1, 300, seed=2, fmt="PNG"), None],
           "image_meta": [None] * 5, "metadata": {}}
    corpus = write_corpus_dir(str(tmp_path / "corpus"), [doc])  # written directly: no conversion limits applied
    out = tmp_path / "stats" / "report.json"
    assert stats.main(["--data", corpus, "--out", str(out), "--similarity", "standard"]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 1 and report["images_corrupt"] == 2  # 144 M pixels and 1:300, never decoded
