"""Corpus formats -> one interleaved form: parallel `texts` / `image_refs` lists plus metadata.

- textbook (Multimodal-Textbook): `images`, `texts` (ASR) and `text_ocr_list` (ASR + keyframe OCR)
  are parallel lists with exactly one non-null per position; `metadata`, `image_num`, `text_num`,
  `token_num` are kept as metadata. Keyframes are named `VIDEOID@START_END#N.jpg`.
- obelics (OBELICS): `images` (URLs or paths) and `texts` parallel lists, `metadata` (list or JSON
  string). A URL refers to the file named by its SHA-256 hex digest, as the seed's loader does.
- mmc4 (MMC4): `text_list` sentences and `image_info` entries with `image_name` (or a URL, hashed
  as above) and `matched_text_index`; each image is placed right before its matched sentence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

FORMATS = ("textbook", "obelics", "mmc4")
_KEYFRAME = re.compile(r"^(?P<video>.+)@(?P<start>\d+(?:\.\d+)?)_(?P<end>\d+(?:\.\d+)?)#(?P<frame>\d+)$")


class MalformedDocument(ValueError):
    """The document does not follow its format; the message names the field."""


@dataclasses.dataclass(frozen=True)
class InterleavedDoc:
    """texts[i] is a string at text positions, None at image positions; image_refs the reverse."""

    doc_id: str
    texts: list[str | None]
    image_refs: list[str | None]
    metadata: Any


def parse_keyframe_name(path: str) -> dict[str, Any] | None:
    """`.../VIDEOID@START_END#N.jpg` -> {video_id, clip_start, clip_end, frame_index}, else None.

    The video id may itself start with '-' or contain '@'-free punctuation; the last '@' splits it.
    """
    stem = os.path.splitext(os.path.basename(path))[0]
    match = _KEYFRAME.match(stem)
    if match is None:
        return None
    return {
        "video_id": match["video"],
        "clip_start": float(match["start"]),
        "clip_end": float(match["end"]),
        "frame_index": int(match["frame"]),
    }


def url_file_name(url: str) -> str:
    """File name of a downloaded web image: the SHA-256 hex digest of its URL (seed convention)."""
    return hashlib.sha256(url.encode()).hexdigest()


def _image_ref(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedDocument(f"{field} is {value!r}, expected a path or URL string")
    return url_file_name(value) if value.startswith(("http://", "https://")) else value


def _parallel(raw: Mapping, text_field: str) -> tuple[list, list]:
    for field in ("images", text_field):
        if not isinstance(raw.get(field), list):
            raise MalformedDocument(f"field {field!r} missing or not a list")
    images, texts = raw["images"], raw[text_field]
    if len(images) != len(texts):
        raise MalformedDocument(f"'images' has {len(images)} entries but {text_field!r} has {len(texts)}")
    out_texts, out_refs = [], []
    for i, (image, text) in enumerate(zip(images, texts)):
        if (image is None) == (text is None):
            raise MalformedDocument(f"position {i}: exactly one of images[{i}] / {text_field}[{i}] must be non-null")
        if text is not None and not isinstance(text, str):
            raise MalformedDocument(f"{text_field}[{i}] is {type(text).__name__}, expected a string")
        out_texts.append(text)
        out_refs.append(None if image is None else _image_ref(image, f"images[{i}]"))
    return out_texts, out_refs


def _textbook(raw: Mapping, doc_id: str, text_field: str) -> InterleavedDoc:
    texts, refs = _parallel(raw, text_field)
    metadata = {k: raw[k] for k in ("metadata", "image_num", "text_num", "token_num") if k in raw}
    return InterleavedDoc(doc_id, texts, refs, metadata)


def _obelics(raw: Mapping, doc_id: str, text_field: str) -> InterleavedDoc:
    texts, refs = _parallel(raw, text_field)
    metadata = raw.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as err:
            raise MalformedDocument(f"'metadata' is a string but not JSON: {err.msg}") from err
    extra = {k: raw[k] for k in ("general_metadata", "url", "document_url") if k in raw}
    return InterleavedDoc(doc_id, texts, refs, {"metadata": metadata, **extra} if extra else metadata)


def _mmc4(raw: Mapping, doc_id: str) -> InterleavedDoc:
    sentences, infos = raw.get("text_list"), raw.get("image_info")
    if not isinstance(sentences, list) or not isinstance(infos, list):
        raise MalformedDocument("fields 'text_list' and 'image_info' must be lists")
    before: dict[int, list[str]] = {}
    for k, info in enumerate(infos):
        if not isinstance(info, Mapping):
            raise MalformedDocument(f"image_info[{k}] is not an object")
        index = info.get("matched_text_index")
        if not isinstance(index, int) or not 0 <= index < len(sentences):
            raise MalformedDocument(f"image_info[{k}].matched_text_index {index!r} not in [0, {len(sentences)})")
        name = info.get("image_name") or info.get("raw_url") or info.get("image_url")
        before.setdefault(index, []).append(_image_ref(name, f"image_info[{k}].image_name"))
    texts: list[str | None] = []
    refs: list[str | None] = []
    for j, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise MalformedDocument(f"text_list[{j}] is {type(sentence).__name__}, expected a string")
        for ref in before.get(j, []):
            texts.append(None)
            refs.append(ref)
        texts.append(sentence)
        refs.append(None)
    metadata = {k: raw[k] for k in ("url", "doc_loc", "similarity_matrix") if k in raw}
    metadata["image_info"] = [{k: v for k, v in info.items() if k != "image_name"} for info in infos]
    return InterleavedDoc(doc_id, texts, refs, metadata)


def to_interleaved(fmt: str, raw: Any, location: str, text_field: str = "texts") -> InterleavedDoc:
    """Normalises one source document of format `fmt`; MalformedDocument names what is wrong."""
    if not isinstance(raw, Mapping):
        raise MalformedDocument(f"document is a JSON {type(raw).__name__}, expected an object")
    doc_id = str(raw.get("id", raw.get("doc_id", location)))
    if fmt == "textbook":
        return _textbook(raw, doc_id, text_field)
    if fmt == "obelics":
        return _obelics(raw, doc_id, text_field)
    if fmt == "mmc4":
        return _mmc4(raw, doc_id)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
