"""Corpus formats -> one interleaved form: parallel `texts` / `image_refs` lists plus metadata.

Each reader follows the original's (`llava/train/datasets.py`) by default; vlm_jax's own choices are
named options (`FormatOptions`).

- textbook (Multimodal-Textbook) and obelics (OBELICS) are read as the original's
  `ObelicsFormatDataset`: `images` and `texts` (or `text_ocr_list`: ASR + keyframe OCR) are parallel
  lists with exactly one non-null per position; `valid_image` (one bool per image, default all true)
  is honoured: an image marked false is dropped with its position (`datasets.py:352,384-391`);
  `metadata` may be a JSON string. Image strings are paths under `--images`, URLs included (the
  original's URL hashing is commented out, `:382`); `url_names="sha256"` maps `http(s)` URLs to the
  file named by the URL's SHA-256 hex digest instead. textbook keeps `metadata`, `image_num`,
  `text_num`, `token_num`; keyframes are named `VIDEOID@START_END#N.jpg`.
- textbook_clips: the video-clip JSON the original's Idefics2 training reads (`_textbook_clips`).
- mmc4 (MMC4) as the original's `MMC4FormatDataset` (`datasets.py:138-195`): the images of
  `valid_image_ids` (default all; file `image_name`, else the SHA-256 of `image_url`) are assigned
  one-to-one to sentences by `scipy.optimize.linear_sum_assignment(-similarity_matrix)`; the first
  `mmc4_max_images` assigned images in image order are kept and `<image>` is prefixed to their
  sentences. The original then splices images in image order into placeholders in sentence order,
  so an image can land at another image's sentence (`mmc4_placement="original"`, the default);
  `"assigned"` puts each image at its own sentence, `"matched_text_index"` before the sentence its
  `image_info` entry names (vlm_jax's former rule, several images per sentence allowed). Sentences
  between images are joined with single spaces into one text piece, as the original joins them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

FORMATS = ("textbook", "obelics", "mmc4", "textbook_clips")
URL_NAMES = ("path", "sha256")
MMC4_PLACEMENTS = ("original", "assigned", "matched_text_index")


@dataclasses.dataclass(frozen=True)
class FormatOptions:
    """How a source document is read (module docstring); the defaults are the original's."""

    text_field: str = "texts"
    url_names: str = "path"
    mmc4_placement: str = "original"
    mmc4_max_images: int = 12  # the original's mmc4_max_num_images (scripts/run_training.sh:43)
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
    images_marked_invalid: int = 0  # `valid_image` false / not in `valid_image_ids`: dropped, not read
    # Per position: (text before, text after) an image, written only when the image is read (textbook_clips'
    # "Image:" label, which the original adds only for a keyframe it could open); None = no such texts.
    image_texts: list[tuple[str, str] | None] | None = None


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


def _image_ref(value: Any, field: str, url_names: str = "path") -> str:
    if not isinstance(value, str) or not value:
        raise MalformedDocument(f"{field} is {value!r}, expected a path or URL string")
    if url_names == "sha256" and value.startswith(("http://", "https://")):
        return url_file_name(value)
    return value


def _valid_image(raw: Mapping, n_images: int) -> list[bool]:
    valid = raw.get("valid_image", [True] * n_images)
    if not isinstance(valid, list) or len(valid) != n_images or not all(isinstance(v, bool) for v in valid):
        raise MalformedDocument(f"'valid_image' must be a list of {n_images} booleans (one per image)")
    return valid


def _parallel(raw: Mapping, options: FormatOptions) -> tuple[list, list, int]:
    """(texts, image refs, images marked invalid); invalid images are dropped with their position."""
    text_field = options.text_field
    for field in ("images", text_field):
        if not isinstance(raw.get(field), list):
            raise MalformedDocument(f"field {field!r} missing or not a list")
    images, texts = raw["images"], raw[text_field]
    if len(images) != len(texts):
        raise MalformedDocument(f"'images' has {len(images)} entries but {text_field!r} has {len(texts)}")
    valid = iter(_valid_image(raw, sum(image is not None for image in images)))
    out_texts, out_refs, invalid = [], [], 0
    for i, (image, text) in enumerate(zip(images, texts)):
        if (image is None) == (text is None):
            raise MalformedDocument(f"position {i}: exactly one of images[{i}] / {text_field}[{i}] must be non-null")
        if text is not None and not isinstance(text, str):
            raise MalformedDocument(f"{text_field}[{i}] is {type(text).__name__}, expected a string")
        ref = None if image is None else _image_ref(image, f"images[{i}]", options.url_names)
        if ref is not None and not next(valid):
            invalid += 1
            continue
        out_texts.append(text)
        out_refs.append(ref)
    return out_texts, out_refs, invalid


def _textbook(raw: Mapping, doc_id: str, options: FormatOptions) -> InterleavedDoc:
    texts, refs, invalid = _parallel(raw, options)
    metadata = {k: raw[k] for k in ("metadata", "image_num", "text_num", "token_num") if k in raw}
    return InterleavedDoc(doc_id, texts, refs, metadata, invalid)


def _obelics(raw: Mapping, doc_id: str, options: FormatOptions) -> InterleavedDoc:
    texts, refs, invalid = _parallel(raw, options)
    metadata = raw.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as err:
            raise MalformedDocument(f"'metadata' is a string but not JSON: {err.msg}") from err
    extra = {k: raw[k] for k in ("general_metadata", "url", "document_url") if k in raw}
    return InterleavedDoc(doc_id, texts, refs, {"metadata": metadata, **extra} if extra else metadata, invalid)


def _mmc4(raw: Mapping, doc_id: str, options: FormatOptions) -> InterleavedDoc:
    sentences, infos = raw.get("text_list"), raw.get("image_info")
    if not isinstance(sentences, list) or not isinstance(infos, list):
        raise MalformedDocument("fields 'text_list' and 'image_info' must be lists")
    for j, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise MalformedDocument(f"text_list[{j}] is {type(sentence).__name__}, expected a string")
    valid_ids = raw.get("valid_image_ids", list(range(len(infos))))
    if not isinstance(valid_ids, list) or not all(isinstance(i, int) and 0 <= i < len(infos) for i in valid_ids):
        raise MalformedDocument(f"'valid_image_ids' must list indices into image_info (0..{len(infos) - 1})")
    refs = []
    for k in valid_ids:
        info = infos[k]
        if not isinstance(info, Mapping):
            raise MalformedDocument(f"image_info[{k}] is not an object")
        if "image_name" in info:
            refs.append(_image_ref(info["image_name"], f"image_info[{k}].image_name"))
        else:
            url = info.get("image_url")
            if not isinstance(url, str) or not url:
                raise MalformedDocument(f"image_info[{k}] has neither 'image_name' nor an 'image_url' string")
            refs.append(url_file_name(url))
    before: dict[int, list[str]] = {}
    if options.mmc4_placement == "matched_text_index":
        for k, ref in zip(valid_ids, refs):
            index = infos[k].get("matched_text_index")
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(sentences):
                raise MalformedDocument(f"image_info[{k}].matched_text_index {index!r} not in [0, {len(sentences)})")
            before.setdefault(index, []).append(ref)
    elif refs:
        image_rows, sentence_cols = _assign(raw.get("similarity_matrix"), valid_ids, len(infos), len(sentences))
        kept = list(zip(image_rows, sentence_cols))[: options.mmc4_max_images]  # image order, as the original
        if options.mmc4_placement == "original":  # images in image order into placeholders in sentence order
            kept = list(zip([row for row, _ in kept], sorted(col for _, col in kept)))
        for row, col in kept:
            before[col] = [refs[row]]
    texts: list[str | None] = []
    image_refs: list[str | None] = []
    run: list[str] = []
    for j, sentence in enumerate(sentences):
        if j in before and run:
            texts.append(" ".join(run))  # the original joins every sentence with one space
            image_refs.append(None)
            run = []
        for ref in before.get(j, []):
            texts.append(None)
            image_refs.append(ref)
        run.append(sentence)
    if run:
        texts.append(" ".join(run))
        image_refs.append(None)
    metadata = {k: raw[k] for k in ("url", "doc_loc", "similarity_matrix", "valid_image_ids") if k in raw}
    metadata["image_info"] = [{k: v for k, v in info.items() if k != "image_name"} for info in infos]
    return InterleavedDoc(doc_id, texts, image_refs, metadata, len(infos) - len(valid_ids))


def _assign(matrix: Any, valid_ids: list[int], n_images: int, n_sentences: int) -> tuple[list[int], list[int]]:
    """One-to-one image -> sentence assignment maximising similarity over the valid images' rows.

    Returns (positions in `valid_ids`, sentence indices), in image order (`linear_sum_assignment`).
    """
    from scipy.optimize import linear_sum_assignment

    try:
        sim = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MalformedDocument(f"'similarity_matrix' is not a numeric matrix: {err}") from err
    if sim.shape != (n_images, n_sentences):
        raise MalformedDocument(f"'similarity_matrix' has shape {sim.shape}, expected (images, sentences) = "
                                f"({n_images}, {n_sentences})")
    if not np.isfinite(sim).all():
        raise MalformedDocument("'similarity_matrix' holds a non-finite value")
    rows, cols = linear_sum_assignment(-sim[valid_ids])
    return [int(r) for r in rows], [int(c) for c in cols]


def _textbook_clips(raw: Mapping, doc_id: str, options: FormatOptions) -> InterleavedDoc:
    """The original's Idefics2 reader of `ours_textbook_video_clip_format.json`
    (`training_idefics/training/training.py:190-288`, `add_ocr` False as `run.sh:49`; `text_field="text_ocr_list"`
    adds the OCR as `add_ocr=True` does): the string `"<s>"` + per clip: `"Image:<image>"` per keyframe of
    `keyframe_ssim` that opens (+ `"\n<s>"` after each for `vid == "image_text_pair"`), then `"\n" + refined_asr`
    (else `asr`); `"End of a Video"` clips add nothing; a literal `<image>` in OCR / ASR becomes `image`.
    Texts are the pieces of that string between images (joined with "" they give it back)."""
    clips = raw.get("conversations")
    if not isinstance(clips, list):
        raise MalformedDocument("field 'conversations' missing or not a list")
    texts: list = ["<s>"]
    refs: list = [None]
    image_texts: list = [None]
    for c, clip in enumerate(clips):
        if not isinstance(clip, Mapping):
            raise MalformedDocument(f"conversations[{c}] is a JSON {type(clip).__name__}, expected an object")
        vid = clip.get("vid")
        if vid == "End of a Video":
            continue
        frames = clip.get("keyframe_ssim") or []
        if not isinstance(frames, list):
            raise MalformedDocument(f"conversations[{c}].keyframe_ssim is not a list")
        after = "\n<s>" if vid == "image_text_pair" else ""
        for k, frame in enumerate(frames):
            texts.append(None)
            refs.append(_image_ref(frame, f"conversations[{c}].keyframe_ssim[{k}]"))
            image_texts.append(("Image:", after))
        ocr = clip.get("ocr_qwen2_vl_72b")
        ocr = "\nWe can see these words from the image by OCR: " + ocr if ocr else ""
        asr = clip.get("refined_asr") or clip.get("asr")
        asr = "\n" + asr if asr else ""
        for name, value in (("ocr_qwen2_vl_72b", ocr), ("refined_asr/asr", asr)):
            if not isinstance(value, str):
                raise MalformedDocument(f"conversations[{c}].{name} is not a string")
        text = (ocr if options.text_field == "text_ocr_list" else "") + asr
        if text:
            texts.append(text.replace("<image>", "image"))
            refs.append(None)
            image_texts.append(None)
    metadata = {k: raw[k] for k in ("token_num",) if k in raw}
    return InterleavedDoc(doc_id, texts, refs, metadata, 0, image_texts)


def to_interleaved(fmt: str, raw: Any, location: str, options: FormatOptions = FormatOptions()) -> InterleavedDoc:
    """Normalises one source document of format `fmt`; MalformedDocument names what is wrong."""
    if not isinstance(raw, Mapping):
        raise MalformedDocument(f"document is a JSON {type(raw).__name__}, expected an object")
    doc_id = str(raw.get("id", raw.get("doc_id", location)))
    if fmt == "textbook":
        return _textbook(raw, doc_id, options)
    if fmt == "obelics":
        return _obelics(raw, doc_id, options)
    if fmt == "mmc4":
        return _mmc4(raw, doc_id, options)
    if fmt == "textbook_clips":
        return _textbook_clips(raw, doc_id, options)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
