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

from collections.abc import Mapping
from typing import Any

import msgpack

RECORD_VERSION = 1


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
