"""One stream of interleaved documents from either converted corpora or the seeds' JSON/JSONL.

Converted corpus folders (`vlm_jax.data.records`) are read record by record. JSON input
goes through the converter's own per-document step (`data_prep.convert.convert_one`), so image paths
are resolved and confined to `images_root` exactly as in a conversion, and unreadable images are
dropped and reported with their reason. Nothing holds more than one document.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

from data_prep.convert import ConvertSettings, convert_one
from data_prep.formats import FormatOptions
from data_prep.json_stream import iter_documents
from vlm_jax.data import records

JSON_SUFFIXES = (".json", ".jsonl")


@dataclasses.dataclass
class SourceDocument:
    """A decoded record (`vlm_jax.data.records` in-memory document) or None, with the problems met on the way.

    `skips` lists `(reason, detail)`: convert's reasons for JSON input (`missing_file`,
    `undecodable_image`, `escaping_path`, `malformed_record`, `no_images`), `malformed_record` for
    corpus records that do not decode.
    """

    location: str
    doc: dict[str, Any] | None
    skips: list[tuple[str, str]]


def is_json_input(path: str) -> bool:
    """True for a .json/.jsonl file or a folder that is not a converted corpus (no dataset_info.json)."""
    if os.path.isdir(path):  # a folder a conversion wrote into (even unfinished) is read as a corpus
        return not any(os.path.exists(os.path.join(path, name)) for name in ("dataset_info.json", records.PARTIAL_DIR))
    return path.endswith(JSON_SUFFIXES)


def iter_corpus_documents(path: str) -> Iterator[SourceDocument]:
    """Documents of a converted corpus folder, in record order."""
    source = records.open_corpus(path).source
    for index in range(len(source)):
        location = f"{path}[record {index}]"
        try:
            yield SourceDocument(location, records.decode_document(source[index]), [])
        except ValueError as err:
            yield SourceDocument(location, None, [("malformed_record", str(err))])


def iter_json_documents(path: str, fmt: str, images_root: str, text_field: str = "texts") -> Iterator[SourceDocument]:
    """Documents of the seeds' JSON/JSONL (format textbook/obelics/mmc4), images read from `images_root`."""
    if not os.path.isdir(images_root):
        raise FileNotFoundError(f"--images {images_root!r} is not a directory (needed for JSON input)")
    settings = ConvertSettings(fmt, os.path.realpath(images_root), FormatOptions(text_field=text_field))
    for location, raw in iter_documents(path):
        result = convert_one(settings, location, raw)
        doc = None if result.record is None else records.decode_document(result.record)
        yield SourceDocument(location, doc, [(reason, f"{where}: {detail}") for reason, where, detail in result.skips])


def iter_source_documents(data: Sequence[str], fmt: str = "textbook", images_root: str | None = None,
                          text_field: str = "texts") -> Iterator[SourceDocument]:
    """Converted corpora or JSON, chosen per `data` entry by `is_json_input`."""
    for spec in data:
        if is_json_input(spec):
            if images_root is None:
                raise ValueError(f"{spec!r} is JSON input: pass --images ROOT (the folder its image paths are in)")
            yield from iter_json_documents(spec, fmt, images_root, text_field)
        else:
            yield from iter_corpus_documents(spec)
