"""The Idefics2 processor (HF `Idefics2Processor` with `do_image_splitting=False`), as the original configured it
(`training_idefics/training/training.py:540-551`): images resized so the longest edge is at most 560 px and the
shortest at least 336 (`high_res`: 980 / 336), bilinear, rescaled to [0, 1], normalised with mean = std = 0.5,
then zero-padded bottom/right to the batch's largest height and width with a pixel attention mask; each
`<image>` in the text becomes `<fake_token_around_image>` + 64 × `<image>` + `<fake_token_around_image>`
(adjacent images share one fake token), and the whole string is tokenized by the checkpoint's tokenizer with
its special tokens (BOS).

Text spacing: the original ran transformers 4.40, whose processor leaves the text after an image as it is.
transformers 5's processor also inserts a space after a closing fake token followed by a word
(`space_after_image=True`, a named option here; default False = the original).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Sequence

import numpy as np
from PIL import Image

from vlm_jax import paths
from vlm_jax.data.tokenizer import IGNORE_INDEX, TokenizedDocument

FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
IMAGE_TOKEN = "<image>"
MEAN = STD = (0.5, 0.5, 0.5)
# The original's sizes (`--high_res False` / `True`).
SIZES = {"default": (560, 336), "high_res": (980, 336)}


def resize_size(height: int, width: int, longest_edge: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) after HF Idefics2's resize rule: cap the longest edge at `longest_edge` keeping the aspect
    ratio (int truncation), then raise each edge to at least `shortest_edge`."""
    aspect = width / height
    if width >= height and width > longest_edge:
        width = longest_edge
        height = int(width / aspect)
    elif height > width and height > longest_edge:
        height = longest_edge
        width = int(height * aspect)
    return max(height, shortest_edge), max(width, shortest_edge)


def preprocess_image(img: Image.Image, longest_edge: int = 560, shortest_edge: int = 336) -> np.ndarray:
    """PIL image → float32 `[h, w, 3]` (RGB, resized bilinear by `resize_size`, (x / 255 - 0.5) / 0.5)."""
    img = img.convert("RGB")
    h, w = resize_size(img.height, img.width, longest_edge, shortest_edge)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, np.float32) * np.float32(1 / 255)
    return ((x - np.float32(0.5)) / np.float32(0.5)).astype(np.float32)


def pad_images(rows: Sequence[Sequence[np.ndarray]], height: int | None = None, width: int | None = None):
    """Rows of preprocessed images (`[h, w, 3]` each, any number per row) → pixel_values float32
    `[b, max_images, H, W, 3]` (zero padding), pixel_attention_mask bool `[b, max_images, H, W]`, image_mask bool
    `[b, max_images]`. H, W default to the largest image's (at least 1 image slot per row)."""
    images = [im for row in rows for im in row]
    height = max([im.shape[0] for im in images], default=1) if height is None else height
    width = max([im.shape[1] for im in images], default=1) if width is None else width
    n = max([len(row) for row in rows] + [1])
    pixels = np.zeros((len(rows), n, height, width, 3), np.float32)
    mask = np.zeros((len(rows), n, height, width), bool)
    image_mask = np.zeros((len(rows), n), bool)
    for r, row in enumerate(rows):
        for k, im in enumerate(row):
            h, w = im.shape[:2]
            pixels[r, k, :h, :w] = im
            mask[r, k, :h, :w] = True
            image_mask[r, k] = True
    return pixels, mask, image_mask


PREPROCESSOR_FILE = "preprocessor_config.json"


def checkpoint_sizes(ckpt: str | os.PathLike, default: tuple[int, int] = SIZES["default"]) -> tuple[int, int]:
    """(longest, shortest) edge from a checkpoint's `preprocessor_config.json` `size` (HF Idefics2ImageProcessor
    format), else `default`."""
    path = paths.join(ckpt, PREPROCESSOR_FILE)
    size = json.loads(paths.read_text(path)).get("size", {}) if paths.isfile(path) else {}
    return int(size.get("longest_edge", default[0])), int(size.get("shortest_edge", default[1]))


def write_preprocessor_config(path: str, longest_edge: int, shortest_edge: int) -> str:
    """Writes an HF `Idefics2ImageProcessor` preprocessor_config.json of these sizes (no image splitting) to `path`
    (a training run records the sizes it trained with next to its params); returns `path`."""
    config = {"image_processor_type": "Idefics2ImageProcessor", "do_convert_rgb": True, "do_resize": True,
              "size": {"longest_edge": longest_edge, "shortest_edge": shortest_edge}, "resample": 2,
              "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(MEAN),
              "image_std": list(STD), "do_pad": True, "do_image_splitting": False}
    paths.write_text(path, json.dumps(config, indent=2))
    return path


def expand_prompt(text: str, image_seq_len: int = 64, space_after_image: bool = False) -> str:
    """Each `<image>` → fake + `image_seq_len` × `<image>` + fake; adjacent images share a fake token."""
    block = f"{FAKE_IMAGE_TOKEN}{IMAGE_TOKEN * image_seq_len}{FAKE_IMAGE_TOKEN}"
    out = text.replace(IMAGE_TOKEN, block).replace(FAKE_IMAGE_TOKEN * 2, FAKE_IMAGE_TOKEN)
    if space_after_image:
        out = re.sub(rf"{re.escape(FAKE_IMAGE_TOKEN)}(?=[^\s<])", f"{FAKE_IMAGE_TOKEN} ", out)
    return out


@dataclasses.dataclass
class Idefics2Processor:
    """Prompt strings with `<image>` + PIL images → model inputs, with a local HF tokenizer folder."""

    tokenizer_path: str
    image_seq_len: int = 64
    longest_edge: int = 560
    shortest_edge: int = 336
    space_after_image: bool = False

    def __post_init__(self):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path, local_files_only=True)
        for token in (FAKE_IMAGE_TOKEN, IMAGE_TOKEN):
            if self.tokenizer.convert_tokens_to_ids(token) in (None, self.tokenizer.unk_token_id):
                raise ValueError(f"tokenizer at {self.tokenizer_path} has no {token} token (not an Idefics2 tokenizer)")
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.fake_image_token_id = self.tokenizer.convert_tokens_to_ids(FAKE_IMAGE_TOKEN)

    def encode(self, text: str) -> list[int]:
        """Token ids of one prompt (BOS included as the tokenizer adds it), images expanded."""
        return self.tokenizer(expand_prompt(text, self.image_seq_len, self.space_after_image))["input_ids"]

    def images(self, rows: Sequence[Sequence[Image.Image]]):
        """PIL images per row → `pad_images` output (pixel_values, pixel_attention_mask, image_mask)."""
        return pad_images([[preprocess_image(im, self.longest_edge, self.shortest_edge) for im in row]
                           for row in rows])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _cut(self, ids: np.ndarray) -> np.ndarray:
        return _drop_partial_block(ids, self.image_token_id, self.fake_image_token_id, self.image_seq_len)

    def tokenize_document(self, texts: Sequence[str | None], max_length: int) -> TokenizedDocument | None:
        """A training document (`texts`: pieces, None at images, as `data_prep --format textbook_clips` writes
        them) as the original's Idefics2 collator tokenizes it: the pieces joined with "" and `<image>` at each
        image, expanded and tokenized as `encode` (BOS added; the string's own leading `<s>` stays, so it starts
        `<s><s>` as in the original); labels = the ids with the pad token and `<image>` tokens ignored — BOS,
        the fake tokens, `Image:` and the text before the first image are trained (unlike LLaVA's rule).
        Past `max_length` the document is cut, never inside an image block (the original's tokenizer truncation
        could cut one, which transformers then rejects); None when no image block fits."""
        ids = np.asarray(self.encode(document_text(texts)), np.int32)
        truncated = len(ids) > max_length
        if truncated:
            ids = self._cut(ids[:max_length])
        n_images = len(_image_blocks(ids, self.image_token_id))
        if n_images == 0:
            return None
        labels = ids.copy()
        pad = self.tokenizer.pad_token_id
        if pad is not None:
            labels[ids == pad] = IGNORE_INDEX
        labels[ids == self.image_token_id] = IGNORE_INDEX
        return TokenizedDocument(input_ids=ids, labels=labels, num_images=n_images, truncated=truncated)


def _drop_partial_block(ids: np.ndarray, image_token_id: int, fake_id: int, image_seq_len: int) -> np.ndarray:
    """`ids` cut so that it ends with no partial image block: a last run of image tokens that is short or not
    closed by a fake token goes, with its opening fake token unless that one closes the previous image; a
    trailing opening fake token goes too."""
    blocks = _image_blocks(ids, image_token_id)
    closes = {e for _, e in blocks}  # positions of closing fake tokens
    if blocks:
        s, e = blocks[-1]
        if e - s != image_seq_len or e >= len(ids) or ids[e] != fake_id:
            shared = len(blocks) > 1 and blocks[-2][1] == s - 1
            ids = ids[:s if shared or s == 0 or ids[s - 1] != fake_id else s - 1]
    if len(ids) and ids[-1] == fake_id and len(ids) - 1 not in closes:
        ids = ids[:-1]
    return ids


def _image_blocks(ids: np.ndarray, image_token_id: int) -> list[tuple[int, int]]:
    """(start, end) of each run of image tokens in `ids`."""
    is_img = np.concatenate([[0], (ids == image_token_id).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(is_img))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def document_text(texts: Sequence[str | None]) -> str:
    """A record's pieces joined with "" and `<image>` at each image position (the original's string)."""
    return "".join(IMAGE_TOKEN if t is None else t for t in texts)


# A byte-level tokenizer with Idefics2's special tokens, for tiny models (the CPU demo, tests): the role the
# `ByteTokenizer` plays for LLaVA, as a Hugging Face tokenizer folder so that the processor, the checkpoint's
# tokenizer record, generation and evaluation take it like idefics2-8b's own.
BYTE_SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0 (also the pad token, as idefics2-8b pads), 1 BOS, 2 EOS
BYTE_OFFSET = len(BYTE_SPECIALS)  # byte b is id BYTE_OFFSET + b
BYTE_FAKE_TOKEN_ID = BYTE_OFFSET + 256  # 259
BYTE_IMAGE_TOKEN_ID = BYTE_FAKE_TOKEN_ID + 1  # 260
BYTE_VOCAB_SIZE = BYTE_IMAGE_TOKEN_ID + 1  # 261


def _byte_level_chars() -> list[str]:
    """GPT-2's byte → printable character map (what `tokenizers`' ByteLevel pre-tokenizer emits), by byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_byte_tokenizer(path: str) -> str:
    """Writes the byte-level Idefics2 tokenizer folder to `path` (returns it): `<unk>` 0 (pad), `<s>` 1 (added as
    BOS), `</s>` 2, byte b = 3 + b, `<fake_token_around_image>` 259, `<image>` 260; 261 ids, no merges."""
    from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(BYTE_SPECIALS)}
    vocab.update({c: BYTE_OFFSET + b for b, c in enumerate(_byte_level_chars())})
    vocab.update({FAKE_IMAGE_TOKEN: BYTE_FAKE_TOKEN_ID, IMAGE_TOKEN: BYTE_IMAGE_TOKEN_ID})
    tok = RawTokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<unk>", additional_special_tokens=[FAKE_IMAGE_TOKEN, IMAGE_TOKEN]
                            ).save_pretrained(path)
    return path
