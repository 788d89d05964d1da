"""The generic half of a Hugging Face weight table: one `TensorMapping` per leaf of our param tree (its HF
tensor name(s), shapes and the layout change between them), and the functions that apply a table.

A family module (`vlm_jax.models.hf.llava`, ...) builds the list of mappings for a config and a layout; the
converter (`vlm_jax.convert`) and the tests read the same list.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, Sequence

import numpy as np
from flax import traverse_util

Path = tuple[str, ...]

# Buffers some checkpoints carry that are not weights.
BUFFER_KEYS = re.compile(r"(\.position_ids|rotary_emb\.inv_freq)$")


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One leaf of our tree. `hf_keys` has one key, or one per layer when `stacked` (our leaf is then
    `np.stack([to_ours(hf[k]) for k in hf_keys])`). Shapes are per tensor (per layer)."""

    path: Path
    hf_keys: tuple[str, ...]
    stacked: bool
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def leaf_shape(self) -> tuple[int, ...]:
        """The shape of our whole leaf (with the leading layer axis when stacked)."""
        return ((len(self.hf_keys),) if self.stacked else ()) + self.shape


def same(path, keys, stacked, shape) -> TensorMapping:
    return TensorMapping(path, keys, stacked, shape, shape, lambda w: w, lambda w: w)


def linear(path, keys, stacked, d_in, d_out) -> TensorMapping:
    """torch Linear weight `[out, in]` ↔ kernel `[in, out]`."""
    return TensorMapping(path, keys, stacked, (d_out, d_in), (d_in, d_out), lambda w: w.T, lambda k: k.T)


def heads_in(path, keys, stacked, d, heads, head_dim) -> TensorMapping:
    """q/k/v weight `[heads*head_dim, d]` ↔ kernel `[d, heads, head_dim]`."""
    return TensorMapping(path, keys, stacked, (heads * head_dim, d), (d, heads, head_dim),
                         lambda w: w.T.reshape(d, heads, head_dim), lambda k: k.reshape(d, heads * head_dim).T)


def heads_bias(path, keys, stacked, heads, head_dim) -> TensorMapping:
    """q/k/v bias `[heads*head_dim]` ↔ `[heads, head_dim]`."""
    return TensorMapping(path, keys, stacked, (heads * head_dim,), (heads, head_dim),
                         lambda b: b.reshape(heads, head_dim), lambda b: b.reshape(heads * head_dim))


def heads_out(path, keys, stacked, heads, head_dim, d) -> TensorMapping:
    """o/out weight `[d, heads*head_dim]` ↔ kernel `[heads, head_dim, d]`."""
    return TensorMapping(path, keys, stacked, (d, heads * head_dim), (heads, head_dim, d),
                         lambda w: w.T.reshape(heads, head_dim, d), lambda k: k.reshape(heads * head_dim, d).T)


def patch(path, key, p, c, d) -> TensorMapping:
    """Conv weight `[d, c, p, p]` ↔ kernel `[p*p*c, d]` over patches flattened as (row, col, channel)."""
    return TensorMapping(path, (key,), False, (d, c, p, p), (p * p * c, d),
                         lambda w: w.transpose(2, 3, 1, 0).reshape(p * p * c, d),
                         lambda k: k.reshape(p, p, c, d).transpose(3, 2, 0, 1))


def expected_shapes(mappings: Sequence[TensorMapping]) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> torch-layout shape, for every tensor the table reads."""
    return {key: m.hf_shape for m in mappings for key in m.hf_keys}


def by_hf_key(mappings: Sequence[TensorMapping]) -> dict[str, tuple[TensorMapping, int | None]]:
    """HF tensor name -> (its mapping, its index on the stacked layer axis or None)."""
    return {key: (m, i if m.stacked else None) for m in mappings for i, key in enumerate(m.hf_keys)}


def params_from_state_dict(mappings: Sequence[TensorMapping], state_dict: Mapping[str, np.ndarray], *,
                           where: str, ignorable: frozenset = frozenset(), strict: bool = True) -> dict:
    """HF tensors (numpy, any float dtype, kept as given) → our nested param dict.

    Raises ValueError naming the key on a missing tensor or a wrong shape; with `strict`, also on keys that
    are neither mapped, `ignorable`, nor known buffers (`position_ids`, `rotary_emb.inv_freq`)."""
    flat: dict[Path, np.ndarray] = {}
    used = set()
    for m in mappings:
        tensors = []
        for key in m.hf_keys:
            if key not in state_dict:
                raise ValueError(f"{where}: state dict has no tensor {key!r}")
            w = np.asarray(state_dict[key])
            if tuple(w.shape) != m.hf_shape:
                raise ValueError(f"{where}: {key!r} has shape {tuple(w.shape)}, the config expects {m.hf_shape}")
            tensors.append(m.to_ours(w))
            used.add(key)
        flat[m.path] = np.stack(tensors) if m.stacked else tensors[0]
    if strict:
        extra = sorted(k for k in state_dict if k not in used and k not in ignorable and not BUFFER_KEYS.search(k))
        if extra:
            raise ValueError(f"{where}: {len(extra)} unexpected tensors, e.g. {extra[:5]} "
                             "(pass strict=False to ignore them)")
    return traverse_util.unflatten_dict(flat)


def state_dict_from_params(mappings: Sequence[TensorMapping], params: Mapping, *, where: str) -> dict[str, np.ndarray]:
    """Our param tree (plain or boxed arrays) → `{hf_key: np.ndarray}` for every tensor of the table."""
    flat = traverse_util.flatten_dict(params)
    out: dict[str, np.ndarray] = {}
    for m in mappings:
        if m.path not in flat:
            raise ValueError(f"{where}: params have no {'/'.join(m.path)}")
        arr = np.asarray(getattr(flat[m.path], "value", flat[m.path]))
        if arr.shape != m.leaf_shape:
            raise ValueError(f"{where}: {'/'.join(m.path)} has shape {arr.shape}, expected {m.leaf_shape}")
        for i, key in enumerate(m.hf_keys):
            out[key] = np.ascontiguousarray(m.to_hf(arr[i] if m.stacked else arr))
    return out
