"""Safetensors checkpoints through the `safetensors` package: reading tensor by tensor, writing in shards.

Reading: `safetensors.safe_open(framework="numpy")` (memory-mapped; bfloat16 comes back as ml_dtypes.bfloat16
in the pinned safetensors 0.8), one tensor at a time. Writing: `write_sharded` groups tensors into shards of at
most `max_shard_bytes` (holding one shard) and writes each with `safetensors.numpy.save_file`, which needs no
memory beyond the tensors (`benchmarks/safetensors_write_bench.py`, see the README). Nothing here ever
unpickles anything: `.bin`/`.pt` checkpoints are refused with a message saying how to convert them.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from vlm_jax.checkpoint import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, name, numpy dtype, shape."""

    file: Path
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """One .safetensors file's tensors (name -> TensorInfo) and `__metadata__`, from its header (no data read);
    the library validates the header against the file size."""
    path = Path(path)
    try:
        with safe_open(path, framework="numpy") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            tensors = {}
            for name, sl in slices.items():
                dtype = _DTYPES.get(sl.get_dtype())
                if dtype is None:
                    raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {sl.get_dtype()!r}")
                tensors[name] = TensorInfo(path, name, dtype, tuple(int(d) for d in sl.get_shape()))
            return tensors, f.metadata() or {}
    except FileNotFoundError as e:
        raise CheckpointError(f"missing safetensors file {path}") from e
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a safetensors file, or truncated ({e})") from e


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Reads one tensor from disk into a fresh numpy array, shaped `info.shape`, in the stored dtype."""
    try:
        with safe_open(info.file, framework="numpy") as f:
            return f.get_tensor(info.name)
    except SafetensorError as e:
        raise CheckpointError(f"{info.file}: cannot read tensor {info.name!r} ({e})") from e


class SafetensorsDir:
    """The tensors of a Hugging Face checkpoint folder, opened lazily.

    Accepts `model.safetensors.index.json` (+ the shards it names), a single `model.safetensors`, or any
    `*.safetensors` files in the folder. Only headers are read on open; `read(name)` loads one tensor.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"checkpoint folder {self.directory} does not exist")
        self.tensors: dict[str, TensorInfo] = {}
        indexes = sorted(self.directory.glob("*.safetensors.index.json"))
        if indexes:
            self._open_index(indexes[0])
        else:
            files = sorted(self.directory.glob("*.safetensors"))
            if not files:
                raise CheckpointError(self._no_safetensors_message())
            for file in files:
                self._add_file(file)

    def _no_safetensors_message(self) -> str:
        pickles = sorted(p.name for pat in PICKLE_PATTERNS for p in self.directory.glob(pat))
        msg = f"{self.directory}: no *.safetensors files (and no *.safetensors.index.json)"
        if pickles:
            msg += (
                f"; found pickle checkpoint(s) {pickles[:4]}, which are never loaded here because unpickling runs "
                "arbitrary code. Convert them once, in a trusted environment, e.g. "
                "`AutoModel...from_pretrained(dir).save_pretrained(dir_safetensors)` with transformers, or "
                "`safetensors.torch.save_file(torch.load(f, weights_only=True), f.replace('.bin', '.safetensors'))`"
            )
        return msg

    def _open_index(self, index_path: Path) -> None:
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path}: not a safetensors index (needs a 'weight_map' object): {e}") from e
        by_file: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            by_file.setdefault(file, []).append(name)
        for file, names in sorted(by_file.items()):
            shard = self.directory / file
            if not shard.is_file():
                raise CheckpointError(
                    f"missing shard {shard} (named by {index_path.name} for {len(names)} tensors, e.g. {names[0]!r})"
                )
            found = self._add_file(shard)
            missing = sorted(set(names) - found)
            if missing:
                raise CheckpointError(f"{shard}: lacks tensor {missing[0]!r} that {index_path.name} places there")

    def _add_file(self, file: Path) -> set[str]:
        tensors, _ = read_header(file)
        for name in tensors:
            if name in self.tensors:
                raise CheckpointError(f"tensor {name!r} appears in both {self.tensors[name].file} and {file}")
        self.tensors.update(tensors)
        return set(tensors)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def read(self, name: str) -> np.ndarray:
        """Loads tensor `name` (as stored: torch layout, stored dtype)."""
        return read_tensor(self.tensors[name])

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _write_one(path: Path, tensors: list[tuple[str, np.ndarray]], metadata: dict[str, str]) -> None:
    """One safetensors file through the library (`safetensors.numpy.save_file`: no copy of the shard, measured)."""
    save_file({name: np.ascontiguousarray(arr) for name, arr in tensors}, str(path), metadata=metadata)


def write_sharded(
    tensors: Iterable[tuple[str, np.ndarray]],
    out_dir: str | os.PathLike,
    max_shard_bytes: int,
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Writes (name, array) pairs as HF-style shards `model-0000i-of-0000n.safetensors` + index json.

    Consumes the iterable lazily and holds at most one shard (≤ max_shard_bytes, or one larger tensor) in
    memory. A single shard is written as `model.safetensors` without index, as transformers does.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", **(metadata or {})}
    tmp_files: list[tuple[Path, list[str]]] = []
    pending: list[tuple[str, np.ndarray]] = []
    pending_bytes = total = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        path = out_dir / f".shard-{len(tmp_files):05d}.tmp"
        _write_one(path, pending, metadata)
        tmp_files.append((path, [n for n, _ in pending]))
        pending, pending_bytes = [], 0

    for name, arr in tensors:
        if pending and pending_bytes + arr.nbytes > max_shard_bytes:
            flush()
        pending.append((name, arr))
        pending_bytes += arr.nbytes
        total += arr.nbytes
    if pending or not tmp_files:
        flush()
    n = len(tmp_files)
    if n == 1:
        final = out_dir / SINGLE_NAME
        tmp_files[0][0].replace(final)
        return [final]
    weight_map, finals = {}, []
    for i, (tmp, names) in enumerate(tmp_files):
        final = out_dir / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        tmp.replace(final)
        finals.append(final)
        weight_map.update({name: final.name for name in names})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return finals


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '20KB' / '123' -> bytes (decimal units, as transformers' max_shard_size)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {text!r}; use e.g. 2GB, 500MB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def iter_tensors(ckpt: SafetensorsDir, names: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, array) loading one tensor at a time."""
    for name in names:
        yield name, ckpt.read(name)
