"""Offline conversion: interleaved JSON/JSONL corpora + image folders -> ArrayRecord shards.

    python -m data_prep.convert --format {textbook,obelics,mmc4} --input JSON_OR_JSONL_OR_DIR \
        --images ROOT --out DIR --shard-size N [--text-field texts|text_ocr_list] [--workers K]

Streams the input (jsonl line by line, .json arrays element by element), reads and fully decodes
every referenced image in a process pool (to reject corrupt files now, not at training time), and
writes one msgpack record per document (`vlm_jax.data.records`) with the original image bytes
inside, `--shard-size` documents per shard. Image paths are confined to `--images`. Skips are
counted by reason, logged one per line to `DIR/skipped.jsonl`, and summarised in `DIR/manifest.json`.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from PIL import Image

from data_prep.formats import FORMATS, MalformedDocument, parse_keyframe_name, to_interleaved
from data_prep.json_stream import Malformed, iter_documents
from vlm_jax import cli
from vlm_jax.data.records import RECORD_FORMAT, ShardWriter, encode_document

SKIP_REASONS = ("malformed_record", "no_images", "missing_file", "undecodable_image", "escaping_path")


@dataclasses.dataclass(frozen=True)
class ConvertSettings:
    """What a worker needs to turn one source document into a record."""

    fmt: str
    images_root: str
    text_field: str = "texts"
    strip_prefix: str | None = None


@dataclasses.dataclass
class Result:
    """One document's outcome: the record (None if skipped), images written, skip events."""

    record: bytes | None
    images: int
    skips: list[tuple[str, str, str]]  # (reason, location, detail)


class RefusedPath(ValueError):
    """An image reference that leaves the images root."""


def resolve_image_path(root: str, ref: str, strip_prefix: str | None = None) -> str:
    """Absolute path of `ref` inside the (real) `root`; RefusedPath for absolute or escaping refs.

    `strip_prefix`, if given and `ref` starts with it, is removed first (for corpora that store
    absolute paths of the machine they were built on).
    """
    if strip_prefix and ref.startswith(strip_prefix):
        ref = ref[len(strip_prefix) :].lstrip("/")
    if os.path.isabs(ref):
        raise RefusedPath(f"absolute path {ref!r}")
    path = os.path.realpath(os.path.join(root, ref))
    if os.path.commonpath([root, path]) != root:
        raise RefusedPath(f"{ref!r} resolves outside the images root")
    return path


def _read_image(path: str) -> tuple[bytes, dict[str, Any]]:
    """Reads and fully decodes an image file; returns its bytes and size/format info."""
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return data, {"width": img.width, "height": img.height, "format": img.format}


def convert_one(settings: ConvertSettings, location: str, raw: Any) -> Result:
    """Source document -> Result. Bad images are dropped with their position; never raises on data."""
    if isinstance(raw, Malformed):
        return Result(None, 0, [("malformed_record", location, raw.message)])
    try:
        doc = to_interleaved(settings.fmt, raw, location, settings.text_field)
    except MalformedDocument as err:
        return Result(None, 0, [("malformed_record", location, str(err))])
    texts, images, image_meta, skips = [], [], [], []
    for text, ref in zip(doc.texts, doc.image_refs):
        if ref is None:
            texts.append(text)
            images.append(None)
            image_meta.append(None)
            continue
        where = f"{location} image {ref!r}"
        try:
            data, info = _read_image(resolve_image_path(settings.images_root, ref, settings.strip_prefix))
        except RefusedPath as err:
            skips.append(("escaping_path", where, str(err)))
            continue
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
            skips.append(("missing_file", where, err.strerror or str(err)))
            continue
        except Exception as err:  # noqa: BLE001 - any decoder failure means an undecodable image.
            skips.append(("undecodable_image", where, f"{type(err).__name__}: {err}"))
            continue
        texts.append(None)
        images.append(data)
        image_meta.append({"path": ref, **info, **(parse_keyframe_name(ref) or {})})
    if not any(image is not None for image in images):
        return Result(None, 0, skips + [("no_images", location, "no readable image left")])
    record = encode_document(
        {"id": doc.doc_id, "texts": texts, "images": images, "image_meta": image_meta, "metadata": doc.metadata}
    )
    return Result(record, sum(image is not None for image in images), skips)


def _convert_chunk(settings: ConvertSettings, items: list[tuple[str, Any]]) -> list[Result]:
    return [convert_one(settings, location, raw) for location, raw in items]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _results(settings: ConvertSettings, documents: Iterable, workers: int, chunk_size: int) -> Iterator[Result]:
    """Converts in order; with workers > 1 a spawn pool holds at most 4 chunks per worker in flight."""
    if workers <= 1:
        for location, raw in documents:
            yield convert_one(settings, location, raw)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending: collections.deque = collections.deque()
        for chunk in _chunks(documents, chunk_size):
            pending.append(pool.apply_async(_convert_chunk, (settings, chunk)))
            while len(pending) >= 4 * workers:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def convert(
    input_path: str,
    images_root: str,
    out_dir: str,
    fmt: str,
    shard_size: int,
    text_field: str = "texts",
    workers: int = 0,
    strip_prefix: str | None = None,
    prefix: str = "data",
    progress_every_s: float = 10.0,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """Runs the conversion; returns (and writes to `out_dir/manifest.json`) the manifest dict.

    Progress lines and the final summary go to `log` (default: sys.stderr).
    """
    log = log or sys.stderr
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    if not os.path.isdir(images_root):
        raise FileNotFoundError(f"--images {images_root!r} is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    workers = workers or (os.cpu_count() or 1)
    settings = ConvertSettings(fmt, os.path.realpath(images_root), text_field, strip_prefix)
    skipped: collections.Counter = collections.Counter()
    documents_read = documents_written = images_written = 0
    start = last_report = time.monotonic()
    writer = ShardWriter(out_dir, prefix, shard_size)
    with open(os.path.join(out_dir, "skipped.jsonl"), "w") as skip_log:
        for result in _results(settings, iter_documents(input_path), workers, chunk_size=16):
            documents_read += 1
            for reason, location, detail in result.skips:
                skipped[reason] += 1
                skip_log.write(json.dumps({"reason": reason, "location": location, "detail": detail}) + "\n")
            if result.record is not None:
                writer.write(result.record)
                documents_written += 1
                images_written += result.images
            now = time.monotonic()
            if now - last_report >= progress_every_s:
                last_report = now
                print(f"[convert] {documents_read} documents read, {documents_written} written, "
                      f"{images_written} images, {documents_read / (now - start):.1f} docs/s", file=log, flush=True)
    writer.close()
    manifest = {
        "format": fmt,
        "text_field": text_field,
        "input": os.path.abspath(input_path),
        "images_root": settings.images_root,
        "record_format": RECORD_FORMAT,
        "shards": writer.shards,
        "documents_read": documents_read,
        "documents_written": documents_written,
        "images_written": images_written,
        "skipped": {reason: skipped.get(reason, 0) for reason in SKIP_REASONS},
        "elapsed_s": round(time.monotonic() - start, 3),
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    print(_summary(manifest, out_dir), file=log, flush=True)
    return manifest


def _summary(manifest: dict[str, Any], out_dir: str) -> str:
    skipped = manifest["skipped"]
    doc_skips = skipped["malformed_record"] + skipped["no_images"]
    image_skips = skipped["missing_file"] + skipped["undecodable_image"] + skipped["escaping_path"]
    return "\n".join([
        f"[convert] documents: {manifest['documents_written']} written, {doc_skips} skipped "
        f"(malformed record: {skipped['malformed_record']}, no image left: {skipped['no_images']})",
        f"[convert] images: {manifest['images_written']} written, {image_skips} skipped "
        f"(missing file: {skipped['missing_file']}, undecodable: {skipped['undecodable_image']}, "
        f"outside --images: {skipped['escaping_path']})",
        f"[convert] {len(manifest['shards'])} shards in {out_dir}; every skip with its line/index in "
        f"{os.path.join(out_dir, 'skipped.jsonl')}",
    ])


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status (0, 1 bad input, 2 usage) after one `error:` line."""
    return cli.run(_main, argv, prog="python -m data_prep.convert")


def _main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(prog="python -m data_prep.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input", required=True, help=".json (array), .jsonl, or a directory of them")
    parser.add_argument("--images", required=True, help="root folder; image paths must resolve inside it")
    parser.add_argument("--out", required=True, help="output directory for shards and manifest.json")
    parser.add_argument("--shard-size", type=int, required=True, help="documents per shard")
    parser.add_argument("--text-field", default="texts", choices=("texts", "text_ocr_list"),
                        help="textbook/obelics text list to use (text_ocr_list: ASR + keyframe OCR)")
    parser.add_argument("--workers", type=int, default=0, help="image-reading processes (default: all cores)")
    parser.add_argument("--strip-prefix", default=None, help="prefix removed from image paths before resolving")
    parser.add_argument("--prefix", default="data", help="shard file name prefix")
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    convert(args.input, args.images, args.out, args.format, args.shard_size, args.text_field, args.workers,
            args.strip_prefix, args.prefix, args.progress_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
