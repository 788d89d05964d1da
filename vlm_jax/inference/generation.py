"""Batched KV-cache generation for `Llava`: one jit-compiled prefill, then a `lax.while_loop` of one-token
decode steps over the cache, greedy or temperature / top-p sampling, stopping per row at EOS.

Shapes are bucketed so a run compiles a handful of programs: prompts are left-padded to a length bucket
(`bucket_length`), every row may have its own number of images (`image_mask`), and the compiled function
depends only on (batch, prompt bucket, image slots, max_new_tokens, mesh) and, on one device, the packed
prefill's shape (`plan_packing`: number of sequences and their bucketed length).

Data parallelism: with `mesh=` the batch is padded to a multiple of the mesh's device count and split over
all of its devices: a `jit` of a `jax.shard_map` over every mesh axis runs the per-device program (params
replicated), so each device prefills and decodes its own rows and its decode loop stops when *its* rows are
done, with no collective per step (what `jax.pmap` does, without the `[devices, rows, ...]` reshape). Sampling
draws each row from its own key (`fold_in(seed, global row)`), so results never depend on the device count
or on padding rows. Multi-host: each process takes `process_slice` of the work items, generates on a mesh of
its local devices (`local_data_mesh`), and `gather_rows` all-gathers the rows back in global order.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlm_jax.models.init import text_model_params
from vlm_jax.models.llama import FUSED_QKV, Llama, fuse_layer_kernels, init_cache, output_kernel, split_cache, unstack_layers
from vlm_jax.models.llava import Llava, check_image_tokens


@dataclasses.dataclass(frozen=True)
class GenerationOutput:
    """tokens int32 `[batch, max_new_tokens]` (the new tokens, EOS included, then `pad_token_id`);
    num_tokens int32 `[batch]` (how many of a row's tokens are real)."""

    tokens: np.ndarray
    num_tokens: np.ndarray

    def rows(self) -> list[list[int]]:
        """The new tokens of each row as Python lists (EOS included when generated)."""
        return [row[:n].tolist() for row, n in zip(self.tokens, self.num_tokens)]


def left_pad(sequences: Sequence[Sequence[int]], length: int | None = None, pad_token_id: int = 0):
    """Left-pads token lists to `length` (default: the longest) → (input_ids int32 `[b, length]`,
    segment_ids int32 `[b, length]`: 1 on real tokens, 0 on padding)."""
    length = max(len(s) for s in sequences) if length is None else length
    ids = np.full((len(sequences), length), pad_token_id, np.int32)
    seg = np.zeros((len(sequences), length), np.int32)
    for row, s in enumerate(sequences):
        if len(s) > length:
            raise ValueError(f"left_pad: row {row} has {len(s)} tokens, more than length {length}")
        if len(s):
            ids[row, length - len(s):] = s
            seg[row, length - len(s):] = 1
    return ids, seg


def bucket_length(n: int, min_length: int = 16, steps_per_octave: int = 4) -> int:
    """The prompt-length bucket for `n` tokens: the smallest `2^k * (1 + j / steps_per_octave)` (multiple
    of 8, at least `min_length`) that holds `n`. Wastes at most 1/steps_per_octave of the length, and
    needs `steps_per_octave` compiled programs per doubling of the prompt length."""
    length = min_length
    while length < n:
        octave = 1 << max(length.bit_length() - 1, 0)
        length = max(length + max(octave // steps_per_octave, 8), min_length)
    return -(-length // 8) * 8


@dataclasses.dataclass(frozen=True)
class PrefillPacking:
    """Where each prompt row's real tokens go in a packed prefill: `num_rows` sequences of `length` slots, row r's
    tokens contiguous in sequence `row[r]` from slot `offset[r]` (int32 `[b]`, numpy), rows of one sequence kept
    apart by their segment ids."""

    num_rows: int
    length: int
    row: np.ndarray
    offset: np.ndarray


def _prefill_cost(config, num_rows: int, length: int) -> float:
    """FLOPs of the text model's prefill over `num_rows` sequences of `length` slots: the per-token weight matmuls
    plus the dense (masked) attention over each sequence's `length` x `length` scores."""
    c = config.text_config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_token = 2 * (c.hidden_size * (2 * q + 2 * kv) + 3 * c.hidden_size * c.intermediate_size)
    return c.num_hidden_layers * num_rows * length * (per_token + 4 * q * length)


def plan_packing(config, lengths: Sequence[int], padded_length: int) -> PrefillPacking | None:
    """A packed prefill for prompt rows of `lengths` real tokens (left-padded to `padded_length`), or None when it
    would not compute fewer FLOPs than the padded rows (`_prefill_cost`). Each candidate sequence length (the
    `bucket_length` buckets from the longest row up to all rows in one) is filled first-fit-decreasing; the cheapest
    wins. Rows share a sequence in their original order (the order their images are spliced in). Text models with
    dynamic NTK RoPE are never packed: their rotary base follows each sequence's last position."""
    rope = config.text_config.rope_scaling
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) < 2 or (rope is not None and rope.rope_type == "dynamic"):
        return None
    best, best_cost = None, _prefill_cost(config, len(lengths), padded_length)
    length = bucket_length(int(lengths.max()))
    while True:
        used, row = [], np.zeros(len(lengths), np.int32)
        for r in np.argsort(-lengths, kind="stable"):
            fits = [i for i, u in enumerate(used) if u + lengths[r] <= length]
            if fits:
                row[r] = fits[0]
                used[fits[0]] += lengths[r]
            else:
                row[r] = len(used)
                used.append(lengths[r])
        cost = _prefill_cost(config, len(used), length)
        if cost < best_cost:
            offset = np.zeros(len(lengths), np.int32)
            for i in range(len(used)):
                members = np.flatnonzero(row == i)
                offset[members] = np.cumsum(lengths[members]) - lengths[members]
            best, best_cost = PrefillPacking(len(used), length, row, offset), cost
        if len(used) == 1:
            return best
        length = bucket_length(length + 1)


def _empty_cache(text, rows: int, length: int, split: bool):
    """`init_cache(text, rows, length)`, as per-layer buffers (`split_cache`) when `split` (the CPU prefill
    writes straight into them, see `_generate`)."""
    cache = init_cache(text, rows, length)
    return split_cache(cache) if split else cache


def _packed_prefill(model, params, input_ids, segment_ids, pixel_values, image_mask, positions, pixel_kwargs,
                    row, offset, layer_params, *, num_rows: int, length: int, max_new_tokens: int, split: bool):
    """The prefill of `_generate` on packed sequences (`PrefillPacking`): the rows are embedded as they are
    (images spliced in), their real positions scattered into `num_rows` sequences of `length` slots (segment id
    r + 1 for row r), run through the text model, and each layer's K/V gathered back into the left-padded cache
    layout of the rows `[b, kv_heads, s + max_new_tokens, head_dim]` (`layer_params`, `split`: as `_generate`
    prefills unpacked) → (logits of each row's last token float32
    `[b, vocab]`, cache)."""
    text = model.config.text_config
    batch, prompt_len = input_ids.shape
    lengths = jnp.sum(segment_ids > 0, axis=1)
    start = offset + row * length  # flat slot of each row's first token
    dest = jnp.where(segment_ids > 0, start[:, None] + positions, num_rows * length)  # padding: dropped

    def pack(x, fill=0):
        flat = jnp.full((num_rows * length,) + x.shape[2:], fill, x.dtype)
        flat = flat.at[dest.reshape(-1)].set(x.reshape((-1,) + x.shape[2:]), mode="drop")
        return flat.reshape((num_rows, length) + x.shape[2:])

    embeddings = model.apply({"params": params}, input_ids, pixel_values, image_mask, **pixel_kwargs,
                             method="embed")
    rows = jnp.broadcast_to(jnp.arange(1, batch + 1, dtype=jnp.int32)[:, None], (batch, prompt_len))
    cache = _empty_cache(text, num_rows, length, split)
    text_params = text_model_params(model.config, params)
    hidden, cache = Llama(text).apply({"params": text_params}, pack(embeddings), pack(positions), pack(rows),
                                      cache=cache, cache_index=0, hidden_only=True, layer_params=layer_params)
    last = hidden.reshape(num_rows * length, -1)[jnp.maximum(start + lengths - 1, 0)]
    logits = jnp.einsum("bd,dv->bv", last, output_kernel(text, text_params).astype(last.dtype),
                        preferred_element_type=jnp.float32)
    # slot j of row r holds packed slot start[r] + j - (s - len[r]) (any slot where j is padding: masked)
    src = jnp.clip(start[:, None] + jnp.arange(prompt_len)[None] - (prompt_len - lengths)[:, None], 0,
                   num_rows * length - 1).reshape(-1)

    def unpack(buffer):  # [..., num_rows, kv, length, d] -> [..., b, kv, s + max_new_tokens, d]
        flat = jnp.swapaxes(buffer, -4, -3).reshape(buffer.shape[:-4] + (buffer.shape[-3], num_rows * length,
                                                                         buffer.shape[-1]))
        rows_kv = jnp.take(flat, src, axis=-2).reshape(flat.shape[:-2] + (batch, prompt_len, flat.shape[-1]))
        widths = [(0, 0)] * rows_kv.ndim
        widths[-2] = (0, max_new_tokens)
        return jnp.pad(jnp.swapaxes(rows_kv, -4, -3), widths)

    segments = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, max_new_tokens)))
    return logits, {"k": jax.tree.map(unpack, cache["k"]), "v": jax.tree.map(unpack, cache["v"]),
                    "segment_ids": segments}


def sample_tokens(logits, rng, temperature, top_p, row_offset=0):
    """Next tokens `[b]` from float32 logits `[b, vocab]`: argmax when `temperature <= 0`, else row r draws
    with key `fold_in(rng, row_offset + r)` from softmax(logits / temperature) restricted to the nucleus: the
    smallest set of most likely tokens whose probability reaches `top_p` (the top token is always kept).
    `row_offset` is the global index of row 0 when `logits` is one device's shard (pmap)."""
    def greedy():
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw():
        scaled = logits / jnp.maximum(temperature, 1e-6)
        sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each sorted token
        kept = jnp.where(before < top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)  # the smallest kept logit
        nucleus = jnp.where(scaled >= threshold, scaled, -jnp.inf)
        keys = jax.vmap(lambda r: jax.random.fold_in(rng, r))(row_offset + jnp.arange(logits.shape[0]))
        return jax.vmap(jax.random.categorical)(keys, nucleus).astype(jnp.int32)

    # a real branch: greedy decoding never pays for the vocabulary sort of the nucleus
    return jax.lax.cond(temperature > 0, draw, greedy)


def hoists_layer_weights(platform: str) -> bool:
    """Whether generation on `platform` ("cpu", "tpu", "gpu") runs the layers on a copy of their weights taken out
    of the stacked params before the loop: plain slices made per call, or a copy with every kernel transposed to
    `[out, in]` made once for many calls (`generation_weights`), at the cost of a second copy of the decoder weights.
    XLA:CPU needs it: its matmuls take no strided view, so weights sliced inside the decode loop are copied on every
    step (twice a step's weight traffic; 35 % of the bench's step), and its small-batch `[b, in] x [in, out]` dot
    reads a kernel whose contracted axis is minor faster (1.14-1.18x per decode step at batch 4-8, 1.17x on the
    bench's prefill). XLA:TPU fuses the slice into the matmul (checked in the compiled loop of a v5e program) and
    tiles its own layouts, so there it would only cost HBM; GPU is unmeasured and keeps the in-loop slices. Where it
    is true `_generate` also prefills with that copy and straight into per-layer cache buffers (`split_cache`, the
    layers unrolled) instead of splitting a stacked cache after the prefill: XLA:CPU copies those slices at
    ~0.3 GB/s (~0.3 s for a batch-8, 1000-token cache of the bench model)."""
    return platform == "cpu"


def _kernel_inputs(path, kernel) -> int:
    """How many leading axes of a Llama layer's `kernel` are its input axes (`o_proj [heads, head_dim, embed]`: 2;
    every other kernel: 1); 0 for a leaf that is no matmul kernel (the norms' scales)."""
    names = [getattr(k, "key", None) for k in path]
    if names[-1] != "kernel":
        return 0
    return 2 if "o_proj" in names else 1


def layer_weights(model: Llava, params, transpose: bool = True, fuse: bool = True) -> list:
    """Each text-model layer's params, copied once out of the stacked params with q/k/v and gate/up fused into one
    kernel each (`fuse_layer_kernels`: two matmuls where a layer ran five), every matmul kernel `[*in, *out]`
    stored as the flat bytes of `[*out, *in]` (its contracted axes minor: XLA:CPU's small-batch dot reads that
    layout faster; `hoists_layer_weights`). Flat, behind an optimization barrier, so XLA can neither cancel the transpose
    against `from_layer_weights`' nor turn it into a layout choice of its own. See `hoists_layer_weights`.
    `transpose=False`: plain slices in the params' layout; `fuse=False`: the kernels as the params hold them (both:
    what the loop read before; for benchmarks)."""
    def store(path, x):
        n = _kernel_inputs(path, x) if transpose else 0
        return x if not n else x.reshape(math.prod(x.shape[:n]), -1).T.reshape(-1)

    return jax.lax.optimization_barrier([jax.tree_util.tree_map_with_path(store, p)
                                         for p in _layers(model, params, fuse)])


def _layers(model: Llava, params, fuse: bool) -> list:
    """The text model's per-layer params, with their kernels fused (`fuse_layer_kernels`) when `fuse`."""
    layers = unstack_layers(text_model_params(model.config, params)["layers"], model.config.text_config.num_hidden_layers)
    return [fuse_layer_kernels(p) for p in layers] if fuse else layers


@partial(jax.jit, static_argnums=0)
def _layer_weights_program(model, params):
    return layer_weights(model, params)


def generation_weights(model: Llava, params, platform: str | None = None):
    """`layer_weights(model, params)` as a program of its own, to make once and pass to every
    `generate(prepared_weights=...)` call on the same params (`vlm_jax.load`'s handle does), so a call skips that
    per-call copy (~15 ms on the bench model); None where `platform` (default: the first device's) does not
    hoist (`hoists_layer_weights`). Holds a second copy of the decoder weights while kept."""
    platform = jax.devices()[0].platform if platform is None else platform
    return _layer_weights_program(model, params) if hoists_layer_weights(platform) else None


def from_layer_weights(model: Llava, params, stored) -> list:
    """The per-layer params (`fuse_layer_kernels` of the `unstack_layers` layout, `Llama(layer_params=...)`) from
    `layer_weights`' copy: a
    reshape and a transpose per kernel, traced where the layers run; XLA folds the transpose into the matmul's
    dimension numbers (no copy)."""
    def load(path, x, shape):
        n = _kernel_inputs(path, x)
        if not n or x.shape == shape.shape:  # a norm's scale, or a kernel copied as it was (`transpose=False`)
            return x
        return x.reshape(-1, math.prod(shape.shape[:n])).T.reshape(shape.shape)

    fused = FUSED_QKV in stored[0]["self_attn"]
    shapes = jax.eval_shape(lambda p: _layers(model, p, fused), params)
    return [jax.tree_util.tree_map_with_path(load, p, s) for p, s in zip(stored, shapes)]


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "hoist_weights", "pack_shape"))
def _generate(model: Llava, params, input_ids, segment_ids, pixel_values, image_mask, rng, temperature, top_p,
              eos_token_id, pad_token_id, row_offset=0, pixel_attention_mask=None, *, max_new_tokens: int,
              hoist_weights: bool = False, pack_row=None, pack_offset=None, pack_shape: tuple | None = None,
              stored_weights=None):
    """The per-device program: prefill the padded rows `[b, s]`, then decode until `max_new_tokens` or every
    row of this call has emitted EOS → (tokens int32 `[b, max_new_tokens]`, num_tokens int32 `[b]`).
    `row_offset` is the global index of row 0 (for the per-row sampling keys) when this is one device's shard.
    `pixel_attention_mask` `[b, n_img, H, W]` (Idefics2's padded images) goes to the model's prefill when given;
    `hoist_weights`: see `hoists_layer_weights`. `pack_shape` (num_rows, length) with `pack_row` / `pack_offset`
    int32 `[b]`: prefill the rows packed into that many sequences (`PrefillPacking`, `_packed_prefill`).
    `stored_weights`: `generation_weights` made beforehand (with `hoist_weights`; default: plain slices made here)."""
    batch, prompt_len = input_ids.shape
    real = segment_ids > 0
    positions = jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0).astype(jnp.int32)
    prompt_lengths = jnp.sum(real, axis=1).astype(jnp.int32)
    pixel_kwargs = {} if pixel_attention_mask is None else {"pixel_attention_mask": pixel_attention_mask}
    stored = None
    if hoist_weights:
        # made here: plain slices (a transposing copy inside this program runs at ~0.3 GB/s, ~60 ms on the bench
        # model: more than it saves over a short generation); `generation_weights`, made once, is transposed
        stored = layer_weights(model, params, transpose=False) if stored_weights is None else stored_weights
    layer_params = None if stored is None else from_layer_weights(model, params, stored)
    if pack_shape is not None:
        logits, cache = _packed_prefill(model, params, input_ids, segment_ids, pixel_values, image_mask, positions,
                                        pixel_kwargs, pack_row, pack_offset, layer_params, num_rows=pack_shape[0],
                                        length=pack_shape[1], max_new_tokens=max_new_tokens, split=hoist_weights)
    else:
        cache = _empty_cache(model.config.text_config, batch, prompt_len + max_new_tokens, hoist_weights)
        logits, cache = model.apply({"params": params}, input_ids, pixel_values, image_mask, positions, segment_ids,
                                    cache=cache, cache_index=0, last_logits_only=True, layer_params=layer_params,
                                    **pixel_kwargs)
        logits = logits[:, -1]
    rng, step_rng = jax.random.split(rng)
    first = sample_tokens(logits, step_rng, temperature, top_p, row_offset)
    tokens = decode_loop(model, params, cache, first, prompt_lengths, prompt_len, rng, temperature, top_p,
                         eos_token_id, pad_token_id, row_offset, max_new_tokens=max_new_tokens,
                         hoist_weights=hoist_weights, stored_weights=stored)
    is_eos = tokens == eos_token_id
    num_tokens = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, max_new_tokens)
    return tokens, num_tokens.astype(jnp.int32)


def decode_loop(model: Llava, params, cache, first, prompt_lengths, prompt_len, rng, temperature, top_p,
                eos_token_id, pad_token_id, row_offset=0, *, max_new_tokens: int, hoist_weights: bool = False,
                stored_weights=None):
    """One-token KV-cache decode steps in a `lax.while_loop` (traceable; `_generate` runs it after prefill).

    cache: `init_cache` layout, its first `prompt_len` slots filled; first int32 `[b]`: the token sampled from
    the prefill; prompt_lengths int32 `[b]`: real prompt tokens per row (the next position). Stops after
    `max_new_tokens` tokens or when every row has emitted EOS → tokens int32 `[b, max_new_tokens]` (first
    included; `pad_token_id` after a row's EOS). `hoist_weights`: the layers read `layer_weights`' copy
    (`stored_weights` when given, else plain slices made here, once, before the loop) instead of slicing the
    stacked params in every step (`hoists_layer_weights` says where that pays)."""
    batch = first.shape[0]
    variables = {"params": params}
    if not hoist_weights:
        stored_weights = None
    elif stored_weights is None and max_new_tokens > 1:  # one token: the loop never runs
        stored_weights = layer_weights(model, params, transpose=False)  # (see `_generate`)
    tokens = jnp.full((batch, max_new_tokens), pad_token_id, jnp.int32).at[:, 0].set(first)
    done = first == eos_token_id

    def cond(state):
        step, _, _, done, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, cache, tokens, done, rng = state
        last = jax.lax.dynamic_slice_in_dim(tokens, step - 1, 1, axis=1)
        pos = (prompt_lengths + step - 1)[:, None]
        layer_params = None if stored_weights is None else from_layer_weights(model, params, stored_weights)
        logits, cache = model.apply(variables, last, None, None, pos, jnp.ones_like(last), cache=cache,
                                    cache_index=prompt_len + step - 1, layer_params=layer_params)
        rng, step_rng = jax.random.split(rng)
        new = sample_tokens(logits[:, -1], step_rng, temperature, top_p, row_offset)
        new = jnp.where(done, pad_token_id, new)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], step, axis=1)
        return step + 1, cache, tokens, done | (new == eos_token_id), rng

    _, _, tokens, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), split_cache(cache), tokens, done, rng))
    return tokens


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "mesh"))  # hoist_weights follows the mesh's platform
def _generate_data_parallel(model: Llava, params, input_ids, segment_ids, pixel_values, image_mask, rng,
                            temperature, top_p, eos_token_id, pad_token_id, pixel_attention_mask=None, *,
                            max_new_tokens: int, mesh: Mesh):
    """`_generate` on every device of `mesh` (a `shard_map`): rows `[b, ...]` split over all mesh axes, params
    and scalars replicated; device d's rows start at global row `d * b / mesh.size`."""
    rows = PartitionSpec(mesh.axis_names)

    def per_device(params, input_ids, segment_ids, pixel_values, image_mask, rng, temperature, top_p, eos, pad,
                   pixel_attention_mask):
        row_offset = jax.lax.axis_index(mesh.axis_names) * input_ids.shape[0]
        return _generate(model, params, input_ids, segment_ids, pixel_values, image_mask, rng, temperature, top_p,
                         eos, pad, row_offset, pixel_attention_mask, max_new_tokens=max_new_tokens,
                         hoist_weights=hoists_layer_weights(mesh.devices.flat[0].platform))

    # check_vma=False as in jax's own pmap: the program has no collectives, and its KV cache starts as
    # (device-invariant) zeros that the layer scan fills with per-device rows, which the check would reject.
    scalar = PartitionSpec()
    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(scalar, rows, rows, rows, rows) + (scalar,) * 5 + (rows,),
                           out_specs=(rows, rows), check_vma=False)
    return mapped(params, input_ids, segment_ids, pixel_values, image_mask, rng, temperature, top_p, eos_token_id,
                  pad_token_id, pixel_attention_mask)


def _pad_axis(x: np.ndarray, axis: int, before: int, after: int, value) -> np.ndarray:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return np.pad(x, widths, constant_values=value)


def place_params(params, mesh: Mesh):
    """Params replicated on every device of `mesh` (leaves sharded on it, e.g. by FSDP, are all-gathered:
    data-parallel generation runs the whole model on each device). `generate(mesh=...)` does this on every
    call; do it once up front to avoid a copy per call (leaves already replicated there are kept as they are,
    skipping even `device_put`'s ~15 us per leaf)."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(x):
        return x if isinstance(x, jax.Array) and x.sharding == replicated else jax.device_put(x, replicated)

    return jax.tree.map(place, params)


def generate(model: Llava, params, input_ids, segment_ids, pixel_values, image_mask, *, max_new_tokens: int,
             eos_token_id: int, pad_token_id: int = 0, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, mesh: Mesh | None = None, bucket_prompts: bool = True, pack_prefill: bool = True,
             pixel_attention_mask=None, prepared_weights=None) -> GenerationOutput:
    """Continues each left-padded prompt row by up to `max_new_tokens` tokens.

    input_ids / segment_ids int32 `[b, s]` (from `left_pad`; image positions hold `image_token_id` repeated
    `num_image_tokens` times per image), pixel_values float32 `[b, n_img, H, W, 3]`, image_mask bool
    `[b, n_img]` (or both None for text only). Greedy when `temperature == 0`. A row stops after it emits
    `eos_token_id`; the loop stops when every row has. With `bucket_prompts` the prompt is left-padded further
    to `bucket_length(s)` (fewer compiles, same tokens). With `pack_prefill` (single device) the prefill runs on
    the rows packed into fewer, shorter sequences when that computes fewer FLOPs (`plan_packing`; same tokens,
    the decode still runs on the left-padded rows). With `mesh`, rows are split over all its devices
    (batch padded to a multiple of `mesh.size` with empty rows, dropped again), each device running prefill and
    its own decode loop on its rows (`jax.shard_map`, like `jax.pmap`); results keep the input order and equal
    the single-device ones; params are replicated over the mesh (see `place_params`).
    `model` is a `Llava` or an `Idefics2`; for Idefics2, `pixel_attention_mask` bool `[b, n_img, H, W]` marks each
    image's valid pixels (images padded to one size; None = all valid). `prepared_weights`: single device, the
    `generation_weights(model, params)` of these same params, made once for many calls (default: on CPU each
    call slices the layers' weights itself, untransposed).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    input_ids, segment_ids = np.asarray(input_ids, np.int32), np.asarray(segment_ids, np.int32)
    if input_ids.ndim != 2 or input_ids.shape != segment_ids.shape:
        raise ValueError(f"generate: input_ids {input_ids.shape} and segment_ids {segment_ids.shape} must both "
                         "be [batch, seq]")
    c = model.config
    batch, length = input_ids.shape
    if pixel_values is None:
        image_mask = np.zeros((batch, 0), bool)
    else:
        pixel_values, image_mask = np.asarray(pixel_values, np.float32), np.asarray(image_mask, bool)
        if pixel_values.shape[:2] != image_mask.shape:
            raise ValueError(f"generate: pixel_values {pixel_values.shape} do not match image_mask {image_mask.shape} "
                             "([batch, n_img, H, W, 3] and [batch, n_img])")
    check_image_tokens(input_ids, image_mask, c.image_token_id, c.num_image_tokens, where="generate")

    extra_len = (bucket_length(length) if bucket_prompts else length) - length
    extra_rows = -batch % (1 if mesh is None else mesh.size)
    input_ids = _pad_axis(_pad_axis(input_ids, 1, extra_len, 0, pad_token_id), 0, 0, extra_rows, pad_token_id)
    segment_ids = _pad_axis(_pad_axis(segment_ids, 1, extra_len, 0, 0), 0, 0, extra_rows, 0)
    arrays = [input_ids, segment_ids]
    if pixel_values is not None:
        arrays += [_pad_axis(pixel_values, 0, 0, extra_rows, 0.0), _pad_axis(image_mask, 0, 0, extra_rows, False)]
    if pixel_attention_mask is not None:
        if pixel_values is None or np.shape(pixel_attention_mask) != pixel_values.shape[:4]:
            raise ValueError(f"generate: pixel_attention_mask {np.shape(pixel_attention_mask)} must be [batch, n_img, H, W] "
                             "of pixel_values")
        arrays.append(_pad_axis(np.asarray(pixel_attention_mask, bool), 0, 0, extra_rows, False))
    if mesh is not None:
        arrays = jax.device_put(arrays, NamedSharding(mesh, PartitionSpec(mesh.axis_names)))
        params = place_params(params, mesh)
        run = partial(_generate_data_parallel, mesh=mesh)
    else:
        arrays = [jnp.asarray(a) for a in arrays]
        plan = plan_packing(c, segment_ids.astype(bool).sum(1), input_ids.shape[1]) if pack_prefill else None
        run = partial(_generate, hoist_weights=hoists_layer_weights(jax.devices()[0].platform),
                      stored_weights=prepared_weights)
        if plan is not None:
            run = partial(run, pack_row=jnp.asarray(plan.row), pack_offset=jnp.asarray(plan.offset),
                          pack_shape=(plan.num_rows, plan.length))
    pam = arrays.pop() if pixel_attention_mask is not None else None
    if pixel_values is None:
        arrays += [None, None]
    extra = () if mesh is not None else (0,)  # row_offset of the single-device program
    tokens, num_tokens = run(
        model, params, *arrays, jax.random.PRNGKey(seed), jnp.float32(temperature), jnp.float32(top_p),
        jnp.int32(eos_token_id), jnp.int32(pad_token_id), *extra, pam, max_new_tokens=max_new_tokens)
    return GenerationOutput(np.asarray(tokens)[:batch], np.asarray(num_tokens)[:batch])


def local_data_mesh(devices: Sequence | None = None) -> Mesh:
    """A 1-D `("data",)` mesh over this process's devices (default `jax.local_devices()`), for `generate`."""
    return Mesh(np.asarray(list(jax.local_devices() if devices is None else devices)), ("data",))


def process_slice(num_items: int, process_index: int | None = None, process_count: int | None = None) -> range:
    """The contiguous block of work-item indices this process handles: blocks of `ceil(n / count)` items,
    the last ones shorter or empty, so every item is taken by exactly one process."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    per = -(-num_items // count)
    return range(min(index * per, num_items), min((index + 1) * per, num_items))


def _pack_rows(rows: Sequence[Sequence[int]], indices: Sequence[int], per_process: int, width: int) -> np.ndarray:
    """Rows as int32 `[per_process, 2 + width]`: global index (-1 = filler), length, then the tokens."""
    packed = np.full((per_process, 2 + width), -1, np.int32)
    for slot, (index, row) in enumerate(zip(indices, rows)):
        if len(row) > width:
            raise ValueError(f"gather_rows: row {index} has {len(row)} tokens, more than width {width}")
        packed[slot, 0], packed[slot, 1] = index, len(row)
        packed[slot, 2:2 + len(row)] = row
    return packed


def gather_rows(rows: Sequence[Sequence[int]], indices: Sequence[int], num_items: int, width: int, *,
                process_count: int | None = None,
                allgather: Callable[[np.ndarray], np.ndarray] | None = None) -> list[list[int]]:
    """All processes' token rows in global order: this process holds `rows` for global `indices` (its
    `process_slice`), each at most `width` tokens; every process gets back all `num_items` rows.
    `allgather` (default `multihost_utils.process_allgather`) maps the local int32 `[ceil(n / count), 2 + width]`
    array to `[count, ...]`. Raises ValueError when an index is missing or duplicated across processes."""
    count = jax.process_count() if process_count is None else process_count
    per = -(-num_items // count)
    if len(rows) != len(indices) or len(rows) > per:
        raise ValueError(f"gather_rows: {len(rows)} rows for {len(indices)} indices; at most {per} per process")
    if allgather is None:
        from jax.experimental import multihost_utils

        allgather = multihost_utils.process_allgather
    gathered = np.asarray(allgather(_pack_rows(rows, indices, per, width))).reshape(-1, 2 + width)
    gathered = gathered[gathered[:, 0] >= 0]
    got = np.sort(gathered[:, 0])
    if len(got) != num_items or np.any(got != np.arange(num_items)):
        missing = sorted(set(range(num_items)) - set(got.tolist()))
        dupes = sorted({int(i) for i in got[1:][got[1:] == got[:-1]]})
        raise ValueError(f"gather_rows: expected indices 0..{num_items - 1} once each; missing {missing[:10]}, "
                         f"duplicated {dupes[:10]}")
    gathered = gathered[np.argsort(gathered[:, 0], kind="stable")]
    return [r[2:2 + r[1]].tolist() for r in gathered]
