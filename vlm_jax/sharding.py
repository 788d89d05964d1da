"""Logical-axis → mesh-axis rules and helpers to shard vlm_jax param trees.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters sharded over it) and
`tensor` (heads / MLP / vocab split). Batches are split over ("data", "fsdp").

Typical use::

    mesh = make_mesh(data=1, fsdp=-1, tensor=1)
    abstract = jax.eval_shape(functools.partial(llava.init_variables, cfg), rng)   # boxed
    shardings = param_shardings(abstract, mesh)                                    # plain tree
    variables = jax.jit(lambda r: nn.unbox(llava.init_variables(cfg, r)), out_shardings=shardings)(rng)
    with mesh, nn.logical_axis_rules(DEFAULT_RULES):   # activation constraints inside the model
        ...
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axes). Flax gives a mesh axis to the first matching name of an array only.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # params
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("patch", None),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence | None = None) -> Mesh:
    """Mesh with axes ("data", "fsdp", "tensor"); one size may be -1 (= all remaining devices).

    TPU devices are laid out by their physical coordinates (`mesh_utils.create_device_mesh`) so
    neighbouring mesh positions are ICI neighbours. Devices of several slices (multislice; devices
    with `slice_index`) put the slices along `data`: `data` must be a multiple of the slice count, and
    only `data` traffic crosses the data-centre network (DCN); `fsdp` and `tensor` stay inside a
    slice. Other devices (CPU, GPU) keep `jax.devices()` order, process by process.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"make_mesh: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"make_mesh: {len(devices)} devices do not divide by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"make_mesh: data*fsdp*tensor = {math.prod(sizes)} but there are {len(devices)} devices")
    if devices[0].platform != "tpu":
        return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)
    from jax.experimental import mesh_utils

    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    if num_slices > 1:
        if sizes[0] % num_slices:
            raise ValueError(f"make_mesh: {num_slices} slices need data ({sizes[0]}) to be a multiple of "
                             f"{num_slices} (data-parallel across slices over DCN)")
        ici = (sizes[0] // num_slices, sizes[1], sizes[2])
        grid = mesh_utils.create_hybrid_device_mesh(ici, (num_slices, 1, 1), devices,
                                                    allow_split_physical_axes=True)
    else:
        grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES)


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dims they do not divide evenly (those dims are replicated instead)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if size and dim % size == 0 else None)
    return PartitionSpec(*out)


def param_partition_specs(boxed_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """Mesh `PartitionSpec` per leaf of a boxed (`nn.LogicallyPartitioned`) tree, real or from
    `jax.eval_shape`, as a plain tree shaped like `nn.unbox(boxed_tree)`. Leaves without names are
    replicated."""
    def spec(leaf):
        if not _is_box(leaf):
            return PartitionSpec()
        logical = nn.logical_to_mesh_axes(leaf.names, rules)
        return _fit(logical, leaf.value.shape, mesh)

    return jax.tree_util.tree_map(spec, boxed_tree, is_leaf=_is_box)


def param_shardings(boxed_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """`NamedSharding` per leaf (see `param_partition_specs`)."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), param_partition_specs(boxed_tree, mesh, rules),
                                  is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of `[batch, ...]` input arrays: batch split over ("data", "fsdp")."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
