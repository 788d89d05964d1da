"""Tokenizers and the interleaved-document tokenization rule of the Multimodal-Textbook seed.

The seed (`ObelicsFormatDataset.getitem` + `DataCollatorOpenflamingo`) turns an interleaved
document into one string: each kept image becomes `<image>`, the pieces are joined with a space,
the single space on each side of every `<image>` is removed, adjacent placeholders are separated by
one space, the EOS string is appended, and the slow Llama tokenizer (`use_fast=False`, `legacy:
false`, `<image>` an added special token; it adds BOS) tokenizes the whole string. Only the first
`max_images` images are kept. Labels ignore every token before the first image, the image tokens
and padding. `tokenize_interleaved` implements that rule with each placeholder expanded to
`num_image_tokens` copies of `image_token_id` (the llava-hf expanded form of DESIGN.md), and a
length budget that counts image tokens and never splits an image block.

The slow tokenizer (transformers 4.36 `LlamaTokenizer.tokenize` with `legacy=False`) splits the
string at special tokens; the text before the first one gets SentencePiece's prefix space `▁`
(`encode`), every text right after a special token (`<image>`, `</s>`) gets none
(`encode_continuation`): `"<image>The cat"` is `<image> The ▁cat`, not `<image> ▁The ▁cat`. A
literal `<image>`/`</s>` inside document text stays text here (in the seed it would become a special
token and desynchronise images and placeholders).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

IGNORE_INDEX = -100
BYTE_SPEC = "byte"  # the tokenizer spec of `ByteTokenizer`; any other spec is a Hugging Face tokenizer folder
# The files of a Hugging Face tokenizer folder (any one of them makes a folder a tokenizer).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.json", "chat_template.jinja", "vocab.json", "merges.txt",
)
SPIECE_UNDERLINE = "\u2581"  # SentencePiece's space; the slow Llama tokenizer reads a literal one as a space
_IMAGE_SENTINEL = "\uffff<image>\uffff"  # \uffff is a Unicode noncharacter; stripped from input text.


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    bos_id: int | None
    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` on its own (the start of a sequence), without BOS/EOS."""

    def encode_continuation(self, text: str) -> list[int]:
        """Token ids of `text` right after a special token (no SentencePiece prefix space)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special tokens other than the image token are dropped."""


class ByteTokenizer:
    """UTF-8 bytes plus four specials; deterministic, needs no files (tests and the CPU demo).

    Ids: 0 pad, 1 bos, 2 eos, 3 image, 4 + byte value for each byte; `vocab_size` 260.
    """

    pad_id, bos_id, eos_id, image_token_id = 0, 1, 2, 3
    _OFFSET = 4
    vocab_size = 256 + _OFFSET

    def encode(self, text: str) -> list[int]:
        return [b + self._OFFSET for b in text.encode("utf-8")]

    encode_continuation = encode  # bytes have no prefix space

    def decode(self, ids: Sequence[int]) -> str:
        out, pending = [], bytearray()
        for i in ids:
            i = int(i)
            if i >= self._OFFSET:
                pending.append(i - self._OFFSET)
                continue
            if i == self.image_token_id:
                out.append(pending.decode("utf-8", errors="replace"))
                out.append("<image>")
                pending = bytearray()
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer:
    """A local Hugging Face tokenizer directory (`AutoTokenizer`, `local_files_only=True`).

    `pad_id` falls back to the unk token, then 0, as LLaVA does for Llama/Vicuna (no pad token).
    `image_token_id` is the id of `<image>` when the tokenizer has it (llava-hf tokenizers do).
    For SentencePiece-style tokenizers (a `Metaspace` pre-tokenizer or a `Prepend("▁")` normalizer,
    as Llama/Vicuna/Mistral have) `encode`/`encode_continuation` give the slow `legacy=False` Llama
    tokenizer's ids whatever the folder's own legacy setting: the text is tokenized with the prefix
    space turned off, after prepending one space for `encode` (the slow tokenizer's `"▁" + text`).
    Other tokenizers (byte-level BPE) have no prefix space: both methods encode as the folder does.
    """

    def __init__(self, path: str):
        from transformers import AutoTokenizer  # Imported here: the byte tokenizer path needs no transformers.

        self.path = str(path)
        self._tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        if self._tok.eos_token_id is None:
            raise ValueError(f"tokenizer at {self.path} has no eos_token")
        self.bos_id = self._tok.bos_token_id
        self.eos_id = self._tok.eos_token_id
        pad = self._tok.pad_token_id
        self.pad_id = pad if pad is not None else (self._tok.unk_token_id or 0)
        self.vocab_size = len(self._tok)
        image_id = self._tok.convert_tokens_to_ids("<image>")
        self.image_token_id = image_id if image_id != self._tok.unk_token_id else None
        self._prefix_free = _prefix_free_backend(self._tok)

    def encode(self, text: str) -> list[int]:
        if self._prefix_free is None:
            return self._encode_as_configured(text)
        return self._prefix_free.encode(" " + text.replace(SPIECE_UNDERLINE, " "), add_special_tokens=False).ids

    def encode_continuation(self, text: str) -> list[int]:
        if self._prefix_free is None:
            return self._encode_as_configured(text)
        return self._prefix_free.encode(text.replace(SPIECE_UNDERLINE, " "), add_special_tokens=False).ids

    def _encode_as_configured(self, text: str) -> list[int]:
        # split_special_tokens: a literal "<image>" or "</s>" in document text stays text.
        return list(self._tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def make_tokenizer(spec: "str | Tokenizer") -> "Tokenizer":
    """The one tokenizer-spec grammar: `"byte"` -> `ByteTokenizer`; a folder with Hugging Face tokenizer files
    -> `HFTokenizer`; a Tokenizer passes through. ValueError names a spec that is neither."""
    if not isinstance(spec, str):
        return spec
    if spec == BYTE_SPEC:
        return ByteTokenizer()
    if not os.path.isdir(spec) or not any(os.path.isfile(os.path.join(spec, n)) for n in TOKENIZER_FILES):
        raise ValueError(f"tokenizer {spec!r}: neither {BYTE_SPEC!r} nor a folder with tokenizer files "
                         f"({', '.join(TOKENIZER_FILES[:3])}, ...)")
    return HFTokenizer(spec)
def _prefix_free_backend(tok):
    """A copy of `tok`'s `tokenizers` pipeline that never adds the SentencePiece prefix space and reads
    special-token strings as text; None when the pipeline has no prefix space to remove."""
    import json

    from tokenizers import Tokenizer as Backend

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    changed = False
    pre = spec.get("pre_tokenizer") or {}
    for p in pre.get("pretokenizers", [pre]):
        if p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never":
            p["prepend_scheme"], changed = "never", True
    norm = spec.get("normalizer") or {}
    if norm.get("type") == "Prepend":
        spec["normalizer"], changed = None, True
    elif norm.get("type") == "Sequence":
        kept = [n for n in norm["normalizers"] if n.get("type") != "Prepend"]
        changed = changed or len(kept) != len(norm["normalizers"])
        norm["normalizers"] = kept
    if not changed:
        return None
    out = Backend.from_str(json.dumps(spec))
    out.encode_special_tokens = True
    return out


@dataclasses.dataclass(frozen=True)
class TokenizedDocument:
    """One document in expanded form.

    input_ids: int32 `[length]`; labels: int32 `[length]` (IGNORE_INDEX where no loss, else the
    token itself; shift to next-token targets happens at packing); num_images: how many of the
    document's images (always its first ones) have a block in `input_ids`; truncated: the length
    budget cut the document (no EOS then, as with the seed's tokenizer truncation).
    """

    input_ids: np.ndarray
    labels: np.ndarray
    num_images: int
    truncated: bool


def seed_text_pieces(texts: Sequence[str | None], max_images: int) -> list[str]:
    """The text between image placeholders, built exactly as the seed builds its string.

    `texts` is the document's interleaved list: None marks an image position, a string a text
    position. Returns `k + 1` pieces around the `k = min(#images, max_images)` kept placeholders.
    """
    parts, n_images = [], 0
    for text in texts:
        if text is None:
            n_images += 1
            if n_images <= max_images:
                parts.append(_IMAGE_SENTINEL)
        elif text:  # The seed drops empty strings with `[_ for _ in texts if _]`.
            parts.append(text.replace("\uffff", ""))
    joined = " ".join(parts)
    joined = joined.replace(_IMAGE_SENTINEL + " ", _IMAGE_SENTINEL).replace(" " + _IMAGE_SENTINEL, _IMAGE_SENTINEL)
    run = re.escape(_IMAGE_SENTINEL)
    joined = re.sub(f"(?:{run})+", lambda m: " ".join([_IMAGE_SENTINEL] * (len(m.group(0)) // len(_IMAGE_SENTINEL))), joined)
    return joined.split(_IMAGE_SENTINEL)


def tokenize_interleaved(
    texts: Sequence[str | None],
    tokenizer: Tokenizer,
    *,
    image_token_id: int,
    num_image_tokens: int,
    max_images: int,
    max_length: int,
) -> TokenizedDocument | None:
    """Tokenizes an interleaved document (None = image position) with the seed's rule.

    Layout: `[BOS] text0 [IMG]*num_image_tokens text1 ... textk [EOS]`, pieces from
    `seed_text_pieces`; text0 encoded as the start of the string, the others as continuations
    (module docstring). The budget `max_length` counts image tokens: text that does not fit is cut
    (and EOS dropped), an image block that does not fit ends the document before it. Returns None
    when no image block fits (a document without images gives no loss in the seed either).
    """
    pieces = seed_text_pieces(texts, max_images)
    ids: list[int] = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    image_starts: list[int] = []
    truncated = False
    for k, piece in enumerate(pieces):
        if k > 0:  # An image block precedes every piece but the first.
            if len(ids) + num_image_tokens > max_length:
                truncated = True
                break
            image_starts.append(len(ids))
            ids.extend([image_token_id] * num_image_tokens)
        encode = tokenizer.encode if k == 0 else tokenizer.encode_continuation
        piece_ids = encode(piece) if piece else []
        room = max_length - len(ids)
        if len(piece_ids) > room:
            ids.extend(piece_ids[:room])
            truncated = True
            break
        ids.extend(piece_ids)
    if not truncated:
        if len(ids) < max_length:
            ids.append(tokenizer.eos_id)
        else:
            truncated = True
    if not image_starts:
        return None
    input_ids = np.asarray(ids, dtype=np.int32)
    labels = input_ids.copy()
    labels[: image_starts[0]] = IGNORE_INDEX
    for start in image_starts:
        labels[start : start + num_image_tokens] = IGNORE_INDEX
    return TokenizedDocument(input_ids=input_ids, labels=labels, num_images=len(image_starts), truncated=truncated)


TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def check_tokenizer_folder(path: str, what: str) -> str:
    """`path` if it is a folder with Hugging Face tokenizer files, else a one-line `cli.InputError` naming `what`."""
    from vlm_jax import cli

    fix = "give 'byte' or a Hugging Face tokenizer folder (tokenizer.json or tokenizer.model)"
    cli.require_dir(path, what, fix)
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILE_NAMES):
        raise cli.InputError(f"{what} {path}: no tokenizer files there; {fix}")
    return path
