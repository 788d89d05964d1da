"""The ArrayRecord record format: one interleaved document per record, encoded with msgpack.

A record is a msgpack map (never pickle):
  `v`          format version (1)
  `id`         document id (source file and position, or the corpus' own id)
  `texts`      list, `str` at text positions and None at image positions
  `images`     list, encoded image bytes (JPEG/PNG/... as found on disk) at image positions, else None
  `image_meta` list, per image position a map (`path`, and for textbook keyframes `video_id`,
               `clip_start`, `clip_end`, `frame_index`), else None
  `metadata`   the source document's metadata, as found (JSON-compatible)
Images are stored inside the record so training reads no loose files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgpack
from array_record.python.array_record_module import ArrayRecordWriter

RECORD_VERSION = 1
RECORD_FORMAT = "msgpack v1 (vlm_jax.data.records)"  # as named in a corpus' manifest.json
WRITER_OPTIONS = "group_size:1,uncompressed"  # group_size 1: cheap random access; images are already compressed.


def encode_document(doc: Mapping[str, Any]) -> bytes:
    """Validates and serialises a document map (keys as in the module docstring) to bytes."""
    check_document(doc)
    return msgpack.packb({"v": RECORD_VERSION, **doc}, use_bin_type=True)


def decode_document(data: bytes) -> dict[str, Any]:
    """Parses record bytes back into the document map; ValueError names what is malformed."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as err:
        raise ValueError(f"record is not valid msgpack: {err}") from err
    if not isinstance(doc, dict):
        raise ValueError(f"record is a msgpack {type(doc).__name__}, expected a map")
    if doc.get("v") != RECORD_VERSION:
        raise ValueError(f"record version {doc.get('v')!r}, expected {RECORD_VERSION}")
    check_document(doc)
    return doc


def check_document(doc: Mapping[str, Any]) -> None:
    """Raises ValueError unless texts/images/image_meta are parallel with one non-null per position."""
    for field in ("id", "texts", "images", "image_meta"):
        if field not in doc:
            raise ValueError(f"document has no field {field!r}")
    texts, images, meta = doc["texts"], doc["images"], doc["image_meta"]
    if not (isinstance(texts, list) and isinstance(images, list) and isinstance(meta, list)):
        raise ValueError(f"document {doc['id']!r}: texts/images/image_meta must be lists")
    if not len(texts) == len(images) == len(meta):
        raise ValueError(
            f"document {doc['id']!r}: texts/images/image_meta lengths differ "
            f"({len(texts)}, {len(images)}, {len(meta)})"
        )
    for i, (text, image) in enumerate(zip(texts, images)):
        if (text is None) == (image is None):
            raise ValueError(f"document {doc['id']!r} position {i}: exactly one of texts/images must be set")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"document {doc['id']!r} texts[{i}] is {type(text).__name__}, expected str")
        if image is not None and not isinstance(image, bytes):
            raise ValueError(f"document {doc['id']!r} images[{i}] is {type(image).__name__}, expected bytes")


class ShardWriter:
    """Writes encoded records to `<out>/<prefix>-NNNNN.array_record`, `shard_size` records per shard;
    `shards` lists `{"path", "num_records"}` per shard (the manifest's `shards` entry)."""

    def __init__(self, out_dir: str, prefix: str, shard_size: int):
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self._out, self._prefix, self._size = out_dir, prefix, shard_size
        self._writer = None
        self.shards: list[dict[str, Any]] = []

    def write(self, record: bytes) -> None:
        if self._writer is None:
            name = f"{self._prefix}-{len(self.shards):05d}.array_record"
            self._writer = ArrayRecordWriter(os.path.join(self._out, name), WRITER_OPTIONS)
            self.shards.append({"path": name, "num_records": 0})
        self._writer.write(record)
        self.shards[-1]["num_records"] += 1
        if self.shards[-1]["num_records"] == self._size:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
