"""Generation for many prompts: length-sorted batches of one fixed size, left-padded to a few length buckets
(one compile per bucket), per-row image counts, data-parallel over a `data` mesh of local devices through
`vlm_jax.generation.generate(..., mesh=...)`, and the multi-host split of a question list (each process takes
one contiguous shard; `gather_shards` puts the results back in question order on every process).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlm_jax.generation import generate, left_pad
from vlm_jax.models.llava import Llava

DATA_AXIS = "data"
PixelLoader = Callable[[Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Request:
    """One prompt: its token ids (image blocks expanded) and its images in block order."""

    token_ids: tuple[int, ...]
    image_paths: tuple[str, ...]


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over `devices` (default: all of this process's devices)."""
    return Mesh(np.asarray(list(devices) if devices is not None else jax.local_devices()), (DATA_AXIS,))


def process_shard(n: int, process_index: int, process_count: int) -> range:
    """The contiguous slice of `n` items process `process_index` of `process_count` handles; the shards cover
    0..n-1 exactly once, in order, their sizes differing by at most one."""
    base, extra = divmod(n, process_count)
    start = process_index * base + min(process_index, extra)
    return range(start, start + base + (process_index < extra))


def gather_shards(local: np.ndarray, n: int) -> np.ndarray:
    """Every process's `local` rows `[len(shard), ...]` (shards from `process_shard(n, ...)`) joined in
    process order → `[n, ...]` on every process (`process_allgather` of shards padded to one size)."""
    count = jax.process_count()
    if count == 1:
        return local
    size = -(-n // count)
    padded = np.zeros((size,) + local.shape[1:], local.dtype)
    padded[:len(local)] = local
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [count, size, ...]
    return np.concatenate([gathered[p, :len(process_shard(n, p, count))] for p in range(count)])


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Request indices sorted by length (stable) and cut into batches of `batch_size` (the last may be short),
    so rows of similar length share a padded shape."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def bucket_length(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple`: the padded prompt length, bounding recompiles."""
    return -(-length // multiple) * multiple


_GENERATE_TAKES_MESH = "mesh" in inspect.signature(generate).parameters


def _generate_on_mesh(model, params, input_ids, segment_ids, pixel_values, image_mask, mesh: Mesh, **kwargs):
    if _GENERATE_TAKES_MESH:
        return generate(model, params, input_ids, segment_ids, pixel_values, image_mask, mesh=mesh, **kwargs)
    # vlm_jax.generation.generate without its `mesh` argument: place the rows over the mesh here (the batch is
    # already a multiple of the device count) and let jit partition the batch.
    rows = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    input_ids, segment_ids, pixel_values, image_mask = (
        jax.device_put(x, rows) for x in (input_ids, segment_ids, pixel_values, image_mask))
    return generate(model, params, input_ids, segment_ids, pixel_values, image_mask, **kwargs)


def generate_requests(model: Llava, params, requests: Sequence[Request], *, mesh: Mesh, batch_size: int,
                      length_multiple: int, max_images: int, load_pixels: PixelLoader, max_new_tokens: int,
                      eos_token_id: int, pad_token_id: int, temperature: float = 0.0, top_p: float = 1.0,
                      seed: int = 0, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Generates for every request; returns (tokens int32 `[n, max_new_tokens]`, num_tokens int32 `[n]`) in
    request order (see `GenerationOutput`).

    Each batch holds `batch_size` rows rounded up to a multiple of the mesh size (a short last batch is filled
    with copies of its first row, dropped afterwards), prompts left-padded to `bucket_length(longest,
    length_multiple)`, and `max_images` image slots of which each row's first `len(image_paths)` are real.
    `params` should already be replicated on the mesh's devices. `progress` (a tqdm bar) advances by
    the real rows of each batch. Sampling (temperature > 0) draws with `seed + batch number`.
    """
    n = len(requests)
    tokens = np.zeros((n, max_new_tokens), np.int32)
    num_tokens = np.zeros((n,), np.int32)
    batch_size = -(-batch_size // mesh.size) * mesh.size
    for number, batch in enumerate(plan_batches([len(r.token_ids) for r in requests], batch_size)):
        rows = [requests[i] for i in batch]
        rows += [rows[0]] * (batch_size - len(rows))
        length = bucket_length(max(len(r.token_ids) for r in rows), length_multiple)
        input_ids, segment_ids = left_pad([r.token_ids for r in rows], length, pad_token_id)
        pixel_values, image_mask = None, np.zeros((batch_size, max_images), bool)
        for row, request in enumerate(rows[:len(batch)]):
            if len(request.image_paths) > max_images:
                raise ValueError(f"request {batch[row]} has {len(request.image_paths)} images, more than "
                                 f"max_images={max_images}")
            if request.image_paths:
                pixels = load_pixels(request.image_paths)
                if pixel_values is None:
                    pixel_values = np.zeros((batch_size, max_images) + pixels.shape[1:], np.float32)
                pixel_values[row, :len(pixels)] = pixels
                image_mask[row, :len(pixels)] = True
        if pixel_values is None:  # text-only prompts
            image_mask = None
        else:
            pixel_values[len(batch):] = pixel_values[0]
            image_mask[len(batch):] = image_mask[0]
        out = _generate_on_mesh(model, params, input_ids, segment_ids, pixel_values, image_mask, mesh,
                                max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                pad_token_id=pad_token_id, temperature=temperature, top_p=top_p,
                                seed=seed + number)
        tokens[batch] = np.asarray(out.tokens)[:len(batch)]
        num_tokens[batch] = np.asarray(out.num_tokens)[:len(batch)]
        if progress is not None:
            progress.update(len(batch))
    return tokens, num_tokens
