"""Offline conversion: interleaved JSON/JSONL corpora + image folders -> a TFDS ArrayRecord dataset.

    python -m data_prep.convert --format {textbook,obelics,mmc4,textbook_clips} --input JSON_OR_JSONL_OR_DIR \
        --images ROOT --out DIR [--shard-size N] [--text-field texts|text_ocr_list] [--workers K]

Streams the input (jsonl line by line, .json arrays element by element), reads and fully decodes
every referenced image in a process pool (to reject corrupt files now, not at training time), and
writes one record per document in the corpus format of `vlm_jax.data.records` (a TFDS dataset:
`tfds.builder_from_directory(DIR).as_data_source(split="train")` opens it) with the original image
bytes inside, `--shard-size` documents per shard. Image paths are confined to `--images`. Skips are
counted by reason, logged one per line to `DIR/skipped.jsonl`, and summarised in `DIR/manifest.json`.
Output is atomic: shards go to `DIR/.partial/` and are published with the metadata at the end.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


from data_prep.formats import (FORMATS, MMC4_PLACEMENTS, URL_NAMES, FormatOptions, MalformedDocument,
                               parse_keyframe_name, to_interleaved)
from data_prep.json_stream import Malformed, iter_documents
from vlm_jax import cli
from vlm_jax.data import records
from vlm_jax.data.image import (MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, ImageRejected, check_image_size, open_image_bytes,
                                read_image_file)

SKIP_REASONS = ("malformed_record", "no_images", "missing_file", "not_regular_file", "undecodable_image",
                "image_too_large", "extreme_aspect_ratio", "escaping_path")
DEFAULT_SHARD_SIZE = 500  # documents per shard: ~250 MB for textbook documents (10 keyframes of ~50 KB)


@dataclasses.dataclass(frozen=True)
class ConvertSettings:
    """What a worker needs to turn one source document into a record."""

    fmt: str
    images_root: str
    options: FormatOptions = FormatOptions()
    strip_prefix: str | None = None
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_aspect_ratio: float = MAX_ASPECT_RATIO


@dataclasses.dataclass
class Result:
    """One document's outcome: the record (None if skipped), images written, skip events."""

    record: bytes | None
    images: int
    skips: list[tuple[str, str, str]]  # (reason, location, detail)
    marked_invalid: int = 0  # images the source marks invalid (`valid_image`, `valid_image_ids`): not read


class RefusedPath(ValueError):
    """An image reference that leaves the images root."""


def resolve_image_path(root: str, ref: str, strip_prefix: str | None = None) -> str:
    """Absolute path of `ref` inside the (real) `root`; RefusedPath for absolute or escaping refs.

    `strip_prefix`, if given and `ref` starts with it, is removed first (for corpora that store
    absolute paths of the machine they were built on).
    """
    if "\x00" in ref:
        raise RefusedPath(f"{ref!r} contains a NUL character")
    if strip_prefix and ref.startswith(strip_prefix):
        ref = ref[len(strip_prefix) :].lstrip("/")
    if os.path.isabs(ref):
        raise RefusedPath(f"absolute path {ref!r}")
    path = os.path.realpath(os.path.join(root, ref))
    if os.path.commonpath([root, path]) != root:
        raise RefusedPath(f"{ref!r} resolves outside the images root")
    return path


class SkippedImage(ValueError):
    """An image refused by a rule; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _read_image(path: str, max_pixels: int, max_aspect: float) -> tuple[bytes, dict[str, Any]]:
    """Reads a regular image file within the limits and fully decodes it; returns bytes and size/format.

    The file is opened non-blocking and checked to be a regular file before reading (a named pipe
    would block forever); the size limits are checked on the header, before any pixel is decoded
    (`vlm_jax.data.image`, shared with the loader and generate).
    """
    try:
        data = read_image_file(path)
        with open_image_bytes(data) as img:
            check_image_size(*img.size, max_pixels, max_aspect)
            img.load()
            return data, {"width": img.size[0], "height": img.size[1], "format": img.format}
    except ImageRejected as err:
        raise SkippedImage(err.reason, str(err)) from err


def convert_one(settings: ConvertSettings, location: str, raw: Any) -> Result:
    """Source document -> Result. Bad images are dropped with their position; never raises on data."""
    try:
        return _convert_one(settings, location, raw)
    except Exception as err:  # noqa: BLE001 - a record nothing above foresaw is one malformed record, not a crash.
        return Result(None, 0, [("malformed_record", location, f"{type(err).__name__}: {err}")])


def _convert_one(settings: ConvertSettings, location: str, raw: Any) -> Result:
    if isinstance(raw, Malformed):
        return Result(None, 0, [("malformed_record", location, raw.message)])
    try:
        doc = to_interleaved(settings.fmt, raw, location, settings.options)
    except MalformedDocument as err:
        return Result(None, 0, [("malformed_record", location, str(err))])
    texts, images, image_meta, skips = [], [], [], []
    labels = doc.image_texts or [None] * len(doc.texts)
    for text, ref, label in zip(doc.texts, doc.image_refs, labels):
        if ref is None:
            texts.append(text)
            images.append(None)
            image_meta.append(None)
            continue
        where = f"{location} image {ref!r}"
        try:
            path = resolve_image_path(settings.images_root, ref, settings.strip_prefix)
            data, info = _read_image(path, settings.max_image_pixels, settings.max_aspect_ratio)
        except RefusedPath as err:
            skips.append(("escaping_path", where, str(err)))
            continue
        except SkippedImage as err:
            skips.append((err.reason, where, str(err)))
            continue
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
            skips.append(("missing_file", where, err.strerror or str(err)))
            continue
        except Exception as err:  # noqa: BLE001 - any decoder failure means an undecodable image.
            skips.append(("undecodable_image", where, f"{type(err).__name__}: {err}"))
            continue
        before, after = label or ("", "")
        for piece, data_, meta in ((before, None, None), (None, data, {"path": ref, **info,
                                                                       **(parse_keyframe_name(ref) or {})}),
                                   (after, None, None)):
            if piece != "":
                texts.append(piece)
                images.append(data_)
                image_meta.append(meta)
    if not any(image is not None for image in images):
        return Result(None, 0, skips + [("no_images", location, "no readable image left")], doc.images_marked_invalid)
    record = records.encode_document(
        {"id": doc.doc_id, "texts": texts, "images": images, "image_meta": image_meta, "metadata": doc.metadata})
    return Result(record, sum(image is not None for image in images), skips, doc.images_marked_invalid)


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
    shard_size: int = DEFAULT_SHARD_SIZE,
    text_field: str = "texts",
    workers: int = 0,
    strip_prefix: str | None = None,
    prefix: str = "corpus",
    progress_every_s: float = 10.0,
    log: TextIO | None = None,
    overwrite: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    url_names: str = "path",
    mmc4_placement: str = "original",
    mmc4_max_images: int = 12,
) -> dict[str, Any]:
    """Runs the conversion; returns (and writes to `out_dir/manifest.json`) the manifest dict.

    `prefix` names the dataset (and its shard files). Progress lines and the final summary go to
    `log` (default: sys.stderr). Raises `NothingWritten` (after writing `manifest.json` and
    `skipped.jsonl`, but no dataset) when every document was skipped.
    """
    log = log or sys.stderr
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size} must be >= 1")
    records.check_name(prefix)
    if not os.path.isdir(images_root):
        raise FileNotFoundError(f"--images {images_root!r} is not a directory")
    if not os.path.exists(input_path):
        raise FileNotFoundError(f"--input {input_path!r} does not exist")
    workers = workers or (os.cpu_count() or 1)
    options = FormatOptions(text_field, url_names, mmc4_placement, mmc4_max_images)
    settings = ConvertSettings(fmt, os.path.realpath(images_root), options, strip_prefix, max_image_pixels,
                               max_aspect_ratio)
    writer = records.CorpusWriter(out_dir, shard_size, name=prefix, overwrite=overwrite)
    skipped: collections.Counter = collections.Counter()
    documents_read = documents_written = images_written = marked_invalid = 0
    start = last_report = time.monotonic()
    skip_path = os.path.join(writer.partial, "skipped.jsonl")
    try:
        with open(skip_path, "w") as skip_log:
            for result in _results(settings, iter_documents(input_path), workers, chunk_size=16):
                documents_read += 1
                marked_invalid += result.marked_invalid
                for reason, location, detail in result.skips:
                    skipped[reason] += 1
                    skip_log.write(json.dumps({"reason": reason, "location": location, "detail": detail}) + "\n")
                if result.record is not None:
                    writer.write_record(result.record)
                    documents_written += 1
                    images_written += result.images
                now = time.monotonic()
                if now - last_report >= progress_every_s:
                    last_report = now
                    print(f"[convert] {documents_read} documents read, {documents_written} written, "
                          f"{images_written} images, {documents_read / (now - start):.1f} docs/s", file=log, flush=True)
        manifest = {
            "format": fmt,
            "text_field": text_field,
            "format_options": dataclasses.asdict(options),
            "image_limits": {"max_pixels": max_image_pixels, "max_aspect_ratio": max_aspect_ratio},
            "input": os.path.abspath(input_path),
            "images_root": settings.images_root,
            "record_format": records.RECORD_FORMAT,
            "name": prefix,
            "shards": [],
            "documents_read": documents_read,
            "documents_written": documents_written,
            "images_written": images_written,
            "images_marked_invalid": marked_invalid,
            "skipped": {reason: skipped.get(reason, 0) for reason in SKIP_REASONS},
        }
        manifest_path = os.path.join(writer.partial, "manifest.json")
        extra = {"skipped.jsonl": skip_path, "manifest.json": manifest_path}
        if documents_written == 0:
            manifest["elapsed_s"] = round(time.monotonic() - start, 3)
            _write_json(manifest_path, manifest)
            writer.publish_empty(extra)
            raise NothingWritten(_nothing_reason(manifest, out_dir))
        manifest["shards"] = writer.shards()
        manifest["elapsed_s"] = round(time.monotonic() - start, 3)
        _write_json(manifest_path, manifest)
        writer.publish(extra, description=f"{fmt} corpus converted from {os.path.basename(input_path)} "
                                          f"by python -m data_prep.convert")
    except BaseException:
        writer.abort()
        raise
    print(_summary(manifest, out_dir), file=log, flush=True)
    return manifest


class NothingWritten(cli.InputError):
    """Every document was skipped: there is no corpus to publish."""


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def _nothing_reason(manifest: dict[str, Any], out_dir: str) -> str:
    if manifest["documents_read"] == 0:
        return "no document written: the input holds no document"
    reasons = ", ".join(f"{k} {v}" for k, v in manifest["skipped"].items() if v)
    return (f"no document written: all {manifest['documents_read']} documents were skipped ({reasons}); "
            f"see {os.path.join(out_dir, 'skipped.jsonl')}")


_IMAGE_REASON_NAMES = {"missing_file": "missing file", "not_regular_file": "not a regular file",
                       "undecodable_image": "undecodable", "image_too_large": "too large",
                       "extreme_aspect_ratio": "extreme aspect ratio", "escaping_path": "outside --images"}


def _summary(manifest: dict[str, Any], out_dir: str) -> str:
    skipped = manifest["skipped"]
    doc_skips = skipped["malformed_record"] + skipped["no_images"]
    image_skips = sum(skipped[reason] for reason in _IMAGE_REASON_NAMES)
    image_detail = ", ".join(f"{name}: {skipped[reason]}" for reason, name in _IMAGE_REASON_NAMES.items())
    return "\n".join([
        f"[convert] documents: {manifest['documents_written']} written, {doc_skips} skipped "
        f"(malformed record: {skipped['malformed_record']}, no image left: {skipped['no_images']})",
        f"[convert] images: {manifest['images_written']} written, {image_skips} skipped ({image_detail}), "
        f"{manifest['images_marked_invalid']} marked invalid by the source",
        f"[convert] {len(manifest['shards'])} shards in {out_dir}; every skip with its line/index in "
        f"{os.path.join(out_dir, 'skipped.jsonl')}",
    ])


def _check_args(args: argparse.Namespace) -> None:
    """Checks the command line before anything is read or written: UsageError for a bad flag value,
    InputError for a path that is missing or of the wrong kind."""
    if args.shard_size < 1:
        raise cli.UsageError(f"--shard-size {args.shard_size}: must be >= 1")
    if args.mmc4_max_images < 1:
        raise cli.UsageError(f"--mmc4-max-images {args.mmc4_max_images}: must be >= 1")
    if args.workers < 0:
        raise cli.UsageError(f"--workers {args.workers}: must be >= 0 (0: all cores)")
    if args.max_image_pixels < 1 or not args.max_aspect_ratio >= 1:
        raise cli.UsageError(f"--max-image-pixels {args.max_image_pixels} / --max-aspect-ratio "
                             f"{args.max_aspect_ratio}: must be >= 1")
    try:
        records.check_name(args.prefix)
    except ValueError as err:
        raise cli.UsageError(f"--prefix: {err}") from err
    cli.require_dir(args.images, "--images", "give the folder the corpus' image paths are relative to")
    if not os.path.exists(args.input):
        raise cli.InputError(f"--input {args.input}: no such file or folder")
    if not (os.path.isdir(args.input) or os.path.isfile(args.input)):
        raise cli.InputError(f"--input {args.input}: not a regular file or a folder (named pipes are not read)")
    if not os.path.isdir(args.input) and not args.input.endswith((".json", ".jsonl")):
        raise cli.InputError(f"--input {args.input}: expected a .json or .jsonl file or a folder of them")
    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise cli.InputError(f"--out {args.out}: exists and is not a folder; choose a new or empty folder")


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status (0; 1 bad input or nothing written; 2 usage) after one `error:` line."""
    return cli.run(_main, argv, prog="python -m data_prep.convert")


def _main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(prog="python -m data_prep.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input", required=True, help=".json (array), .jsonl, or a directory of them")
    parser.add_argument("--images", required=True, help="root folder; image paths must resolve inside it")
    parser.add_argument("--out", required=True, help="output folder (empty, or a previous conversion with --overwrite)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"documents per shard (default {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--text-field", default="texts", choices=("texts", "text_ocr_list"),
                        help="textbook/obelics text list to use (text_ocr_list: ASR + keyframe OCR; textbook_clips: add the OCR)")
    parser.add_argument("--url-names", default="path", choices=URL_NAMES,
                        help="obelics/textbook image URLs: 'path' reads them as paths under --images (the original), "
                             "'sha256' as the file named by the URL's SHA-256")
    parser.add_argument("--mmc4-placement", default="original", choices=MMC4_PLACEMENTS,
                        help="mmc4: 'original' (Hungarian assignment, images spliced in image order), 'assigned' "
                             "(each image at its assigned sentence), 'matched_text_index'")
    parser.add_argument("--mmc4-max-images", type=int, default=12,
                        help="mmc4: assigned images kept per document, in image order (the original's 12)")
    parser.add_argument("--workers", type=int, default=0, help="image-reading processes (default: all cores)")
    parser.add_argument("--strip-prefix", default=None, help="prefix removed from image paths before resolving")
    parser.add_argument("--prefix", default="corpus", help="dataset name, also the shard file name prefix")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous conversion in --out")
    parser.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS,
                        help=f"larger images are skipped and counted (default {MAX_IMAGE_PIXELS})")
    parser.add_argument("--max-aspect-ratio", type=float, default=MAX_ASPECT_RATIO,
                        help=f"images with long/short side above this are skipped and counted (default {MAX_ASPECT_RATIO:g})")
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    _check_args(args)
    convert(args.input, args.images, args.out, args.format, args.shard_size, args.text_field, args.workers,
            args.strip_prefix, args.prefix, args.progress_every, overwrite=args.overwrite,
            max_image_pixels=args.max_image_pixels, max_aspect_ratio=args.max_aspect_ratio,
            url_names=args.url_names, mmc4_placement=args.mmc4_placement, mmc4_max_images=args.mmc4_max_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
