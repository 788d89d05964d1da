"""Packs tokenized documents and their images into fixed-size rows (the DESIGN.md batch layout).

Strategy: Grain's first-fit packing with `num_open_rows` open rows. Each document goes whole into
the first open row where both its tokens (`seq_len`) and its images (`max_images_per_row` slots)
fit; when it fits in none, all open rows are emitted and a new set is started with it. Documents
are never split, so an image block is always whole, and a row's k-th image block belongs to its
k-th image slot (tokens and images of a document are appended to the same row in the same order).
Grain's packer keeps the checkpoint state (parent state at the start of the open rows + rows
already emitted), so a restored iterator continues with the identical next row.
"""

from __future__ import annotations

from collections.abc import Mapping

import grain
import numpy as np

from vlm_jax.data.tokenizer import IGNORE_INDEX, TokenizedDocument

ROW_KEYS = ("input_ids", "targets", "loss_mask", "positions", "segment_ids", "pixel_values", "image_mask")


def document_example(doc: TokenizedDocument, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-document arrays to pack, with targets shifted inside the document.

    Returns input_ids int32 `[L]`, targets int32 `[L]` (`input_ids[i + 1]`, 0 at the last token),
    loss_mask float32 `[L]` (1 where the target token carries a label; 0 at the last token, which
    has no target), pixel_values float32 `[num_images, H, W, 3]`.
    """
    if pixel_values.shape[0] != doc.num_images:
        raise ValueError(f"{pixel_values.shape[0]} images for a document with {doc.num_images} image blocks")
    targets = np.zeros_like(doc.input_ids)
    targets[:-1] = doc.input_ids[1:]
    loss_mask = np.zeros(doc.input_ids.shape, np.float32)
    loss_mask[:-1] = doc.labels[1:] != IGNORE_INDEX
    return {"input_ids": doc.input_ids, "targets": targets, "loss_mask": loss_mask, "pixel_values": pixel_values}


def _to_row(packed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Grain's packed element (`<feature>_segment_ids/_positions`) -> the DESIGN.md row dict."""
    return {
        "input_ids": packed["input_ids"].astype(np.int32),
        "targets": packed["targets"].astype(np.int32),
        "loss_mask": packed["loss_mask"].astype(np.float32),
        "positions": packed["input_ids_positions"].astype(np.int32),
        "segment_ids": packed["input_ids_segment_ids"].astype(np.int32),
        "pixel_values": packed["pixel_values"],
        "image_mask": packed["pixel_values_segment_ids"] > 0,
    }


def pack_documents(
    docs: grain.IterDataset,
    *,
    seq_len: int,
    max_images_per_row: int,
    num_open_rows: int,
    pad_id: int = 0,
) -> grain.IterDataset:
    """Packs `document_example` dicts into rows of `seq_len` tokens and `max_images_per_row` images.

    Each output row: input_ids/targets/positions/segment_ids int32 `[seq_len]`, loss_mask float32
    `[seq_len]`, pixel_values float32 `[max_images_per_row, H, W, 3]` (zeros in empty slots),
    image_mask bool `[max_images_per_row]`. Segment ids are 1.. per document and 0 on padding;
    positions restart at 0 per document. Documents must already fit (`tokenize_interleaved` with
    `max_length <= seq_len`, `max_images <= max_images_per_row`), else Grain raises ValueError.
    """
    lengths = {"input_ids": seq_len, "targets": seq_len, "loss_mask": seq_len, "pixel_values": max_images_per_row}
    padding = {"input_ids": pad_id, "targets": 0, "loss_mask": 0, "pixel_values": 0}
    packed = grain.experimental.FirstFitPackIterDataset(
        docs,
        length_struct=lengths,
        num_packing_bins=num_open_rows,
        shuffle_bins=False,
        padding_struct=padding,
    )
    return packed.map(_to_row)


def token_counts(batch: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Counts for packing efficiency of a `[b, seq]` batch: real and total tokens, documents.

    Efficiency is `real_tokens / total_tokens`; right-padding one document per row would give
    `real_tokens / (documents * seq)` for the same documents.
    """
    seg = np.asarray(batch["segment_ids"])
    documents = sum(len(np.unique(row[row > 0])) for row in seg)
    return {"real_tokens": int((seg > 0).sum()), "total_tokens": int(seg.size), "documents": int(documents)}


def row_spec(seq_len: int, max_images_per_row: int, image_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-row `(shape, dtype)` of every `ROW_KEYS` array that `pack_documents` emits (a batch adds a
    leading `[batch]`); e.g. for ahead-of-time compilation with `jax.ShapeDtypeStruct`."""
    tokens = ((seq_len,), np.dtype(np.int32))
    return {"input_ids": tokens, "targets": tokens, "loss_mask": ((seq_len,), np.dtype(np.float32)),
            "positions": tokens, "segment_ids": tokens,
            "pixel_values": ((max_images_per_row, image_size, image_size, 3), np.dtype(np.float32)),
            "image_mask": ((max_images_per_row,), np.dtype(np.bool_))}
