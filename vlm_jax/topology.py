"""Cloud TPU slice names -> libtpu topologies, chip counts and HBM, and compile-only TPU devices.

`python -m vlm_jax.train --compile_topology NAME` compiles for a TPU slice on a machine without one:
libtpu (the `tpu` extra) describes the slice's devices and XLA compiles for them while JAX itself
runs on CPU. Accepted names (case-insensitive):

| name | chips | topology | HBM per chip: datasheet / usable by XLA |
| --- | --: | --- | --: |
| `v4-N` (N TensorCores = 2 per chip) | N/2 | 3-D, e.g. v4-8 = 2x2x1, v4-16 = 2x2x2, v4-32 = 2x2x4 | 32 / 30.75 GiB |
| `v5p-N` (N TensorCores = 2 per chip) | N/2 | 3-D like v4 | 95 / 95.74 GiB |
| `v5e-N` / `v5litepod-N` (N chips) | N | 2-D: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16 | 16 / 15.75 GiB |
| `v6e-N` (N chips) | N | 2-D like v5e | 32 / 31.25 GiB |
| `v5p:2x2x1`, `v5e:4x8`, ... (libtpu's own form) | product | as written | per generation |
| `Kx<any of the above>`, e.g. `2xv5e-16` | K x chips | K slices joined over DCN (multislice) | |

v4 and v5p compile for "megacore" chips (one JAX device per chip, both TensorCores), as JAX runs them.
"Usable" is the capacity libtpu 0.0.42's compiler checks a program against (its "available HBM" in the
RESOURCE_EXHAUSTED error); the fit check uses it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

HBM_GIB = {"v4": 30.75, "v5p": 95.74, "v5e": 15.75, "v6e": 31.25}  # usable by XLA (see above)
# JAX `device_kind` of each generation (also what vlm_jax.training.flops looks up).
DEVICE_KIND = {"v4": "TPU v4", "v5p": "TPU v5", "v5e": "TPU v5 lite", "v6e": "TPU v6 lite"}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
_MEGACORE = ("v4", "v5p")
_SHAPES_3D = {1: (1, 1, 1), 2: (1, 2, 1), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4),
              64: (4, 4, 4), 128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
              256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice (or `num_slices` identical slices): what libtpu needs and what the fit check needs."""

    name: str  # as given
    generation: str  # "v4" | "v5p" | "v5e" | "v6e"
    shape: tuple[int, ...]  # chips along each ICI axis of one slice
    num_slices: int = 1

    @property
    def topology_name(self) -> str:
        """libtpu's name, e.g. "v5p:2x2x1"."""
        return f"{self.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def chips(self) -> int:
        return math.prod(self.shape) * self.num_slices

    @property
    def hbm_gib(self) -> float:
        return HBM_GIB[self.generation]

    @property
    def accelerator_type(self) -> str:
        """The Cloud TPU accelerator type of one slice (`v5p-8`, `v5litepod-16`)."""
        n = math.prod(self.shape) * _CORES_PER_CHIP[self.generation]
        return f"{'v5litepod' if self.generation == 'v5e' else self.generation}-{n}"


def _generation(text: str, name: str) -> str:
    gen = _ALIASES.get(text, text)
    if gen not in HBM_GIB:
        raise ValueError(f"TPU slice {name!r}: unknown generation {text!r}; known: {sorted(HBM_GIB)}")
    return gen


def parse_slice(name: str) -> Slice:
    """`"v5p-8"`, `"v5e-16"`, `"v5p:2x2x1"`, `"2xv5e-16"` -> `Slice` (ValueError naming the problem)."""
    text = name.strip().lower()
    num_slices = 1
    multi = re.fullmatch(r"(\d+)x(v.+)", text)
    if multi:
        num_slices, text = int(multi.group(1)), multi.group(2)
    explicit = re.fullmatch(r"(v[0-9a-z]+):(\d+(?:x\d+)*)", text)
    if explicit:
        gen = _generation(explicit.group(1), name)
        shape = tuple(int(s) for s in explicit.group(2).split("x"))
        want = 3 if gen in ("v4", "v5p") else 2
        if len(shape) != want:
            raise ValueError(f"TPU slice {name!r}: {gen} topologies have {want} dimensions (e.g. "
                             f"{'2x2x1' if want == 3 else '4x4'})")
        return Slice(name, gen, shape, num_slices)
    counted = re.fullmatch(r"(v[0-9a-z]+)-(\d+)", text)
    if not counted:
        raise ValueError(f"TPU slice {name!r}: expected a name like v5p-8, v5e-16, v6e-8, v4-8, "
                         "v5p:2x2x1 or 2xv5e-16")
    gen = _generation(counted.group(1), name)
    n = int(counted.group(2))
    cores = _CORES_PER_CHIP[gen]
    chips = n // cores
    shapes = _SHAPES_3D if gen in ("v4", "v5p") else _SHAPES_2D
    if n % cores or chips not in shapes:
        sizes = ", ".join(f"{gen}-{c * cores}" for c in shapes)
        raise ValueError(f"TPU slice {name!r}: no standard topology; known sizes: {sizes} "
                         f"(or give the shape, e.g. {gen}:{'x'.join(map(str, shapes[4]))})")
    return Slice(name, gen, shapes[chips], num_slices)


def compile_only_devices(tpu_slice: Slice) -> list:
    """Compile-only TPU devices of `tpu_slice` (needs libtpu: `pip install -e '.[tpu]'`), usable in a
    `Mesh` for `jax.jit(...).lower(...).compile()` while JAX runs on CPU. Sets libtpu's environment so
    it neither probes for hardware nor takes the single-process lock (nothing runs on a TPU)."""
    from jax.experimental import topologies

    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", tpu_slice.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_WORKER_ID", "0")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs = {"chip_config_name": "megacore"} if tpu_slice.generation in _MEGACORE else {}
    if tpu_slice.num_slices > 1:
        kwargs["num_slices"] = tpu_slice.num_slices
    try:
        desc = topologies.get_topology_desc(topology_name=tpu_slice.topology_name, platform="tpu", **kwargs)
    except RuntimeError as e:
        if "TPU support not installed" in str(e):
            raise RuntimeError("compiling for a TPU slice needs libtpu: pip install -e '.[tpu]'") from e
        raise
    return list(desc.devices)
