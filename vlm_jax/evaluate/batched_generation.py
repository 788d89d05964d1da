"""Generation for many prompts: length-sorted batches of one fixed size (so a run compiles one program per
prompt-length bucket), per-row image counts, data-parallel over a mesh of local devices through
`vlm_jax.inference.generation.generate(..., mesh=...)`, which left-pads each batch to its length bucket.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from jax.sharding import Mesh

from vlm_jax.inference.generation import generate, left_pad
from vlm_jax.models.llava import Llava

PixelLoader = Callable[[Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Request:
    """One prompt: its token ids (image blocks expanded) and its images in block order."""

    token_ids: tuple[int, ...]
    image_paths: tuple[str, ...]


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Request indices sorted by length (stable) and cut into batches of `batch_size` (the last may be short),
    so rows of similar length share a padded shape."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _pixels_and_mask(requests: Sequence[Request], rows: int, max_images: int, load_pixels: PixelLoader):
    """pixel_values float32 `[rows, max_images, H, W, 3]` and image_mask bool `[rows, max_images]` (a row's
    first `len(image_paths)` slots real; rows past `len(requests)` copy row 0), or (None, None) without images."""
    pixel_values, image_mask = None, np.zeros((rows, max_images), bool)
    for row, request in enumerate(requests):
        if len(request.image_paths) > max_images:
            raise ValueError(f"a prompt has {len(request.image_paths)} images, more than max_images={max_images}")
        if request.image_paths:
            pixels = load_pixels(request.image_paths)
            if pixel_values is None:
                pixel_values = np.zeros((rows, max_images) + pixels.shape[1:], np.float32)
            pixel_values[row, :len(pixels)] = pixels
            image_mask[row, :len(pixels)] = True
    if pixel_values is None:
        return None, None
    pixel_values[len(requests):], image_mask[len(requests):] = pixel_values[0], image_mask[0]
    return pixel_values, image_mask


def generate_requests(model: Llava, params, requests: Sequence[Request], *, mesh: Mesh, batch_size: int,
                      max_images: int, load_pixels: PixelLoader, max_new_tokens: int, eos_token_id: int,
                      pad_token_id: int, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                      progress=None) -> list[list[int]]:
    """The new tokens of every request (EOS included when generated), in request order.

    Each batch holds `batch_size` rows rounded up to a multiple of the mesh size (a short last batch is filled
    with copies of its first row, dropped afterwards, so every batch has one shape) with `max_images` image
    slots. `params` should already live on the mesh's devices. `progress` (a tqdm bar) advances by the real
    rows of each batch. Sampling (temperature > 0) draws with `seed + batch number`.
    """
    out: list[list[int]] = [[] for _ in requests]
    batch_size = -(-batch_size // mesh.size) * mesh.size
    for number, batch in enumerate(plan_batches([len(r.token_ids) for r in requests], batch_size)):
        rows = [requests[i] for i in batch]
        rows += [rows[0]] * (batch_size - len(rows))
        input_ids, segment_ids = left_pad([r.token_ids for r in rows], pad_token_id=pad_token_id)
        pixel_values, image_mask = _pixels_and_mask(rows[:len(batch)], batch_size, max_images, load_pixels)
        result = generate(model, params, input_ids, segment_ids, pixel_values, image_mask,
                          max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                          temperature=temperature, top_p=top_p, seed=seed + number, mesh=mesh).rows()
        for i, tokens in zip(batch, result):
            out[i] = tokens
        if progress is not None:
            progress.update(len(batch))
    return out
