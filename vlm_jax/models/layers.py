"""Building blocks shared by the CLIP and Llama towers: initialisers with logical axis names,
norms, and the scan-over-layers + remat wrapper."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

# The name (`jax.ad_checkpoint.checkpoint_name`) of a stacked layer's input, the one residual per layer
# that "full" remat keeps for the backward pass.
LAYER_INPUT = "layer_input"

# Rematerialisation policies by config name ("none" = no remat). "full" saves nothing but each layer's
# input and recomputes the whole layer in the backward pass; "offload" is "full" with those layer inputs
# kept in host memory (pinned_host) instead of device memory: same math, less HBM, transfers to host.
REMAT_POLICIES = {
    "full": None,
    "offload": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=[LAYER_INPUT],
        offload_src="device", offload_dst="pinned_host"),
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def flat_matmul(x: jax.Array, kernel: jax.Array, n_contract: int = 1, preferred_element_type=None) -> jax.Array:
    """`x [..., *K] @ kernel [*K, *F] -> [..., *F]`, contracting x's trailing `n_contract` dims with the
    kernel's leading ones, computed as one 2-D matmul `[prod(...), prod(K)] @ [prod(K), prod(F)]`.

    The same math as `dot_general` over those dims. The 2-D form matters for the backward pass: with
    `[b, s, D]` activations XLA:CPU materialises transposed copies of the activations and their gradients
    for each weight gradient (the `[b, s, F]` operands as `[F, b*s]`), with `[b*s, D]` it does not (the
    train-bench step: README "Train-step speed against PyTorch"). On TPU/GPU the reshapes are free
    (row-major bitcasts that keep a batch-sharded leading axis sharded)."""
    k_shape = x.shape[x.ndim - n_contract:]
    if tuple(kernel.shape[:n_contract]) != tuple(k_shape):
        raise ValueError(f"flat_matmul: x {x.shape} does not contract with kernel {kernel.shape} over {n_contract} dims")
    lead, feats = x.shape[:x.ndim - n_contract], kernel.shape[n_contract:]
    k = math.prod(k_shape)
    out = jnp.dot(x.reshape(math.prod(lead), k), kernel.reshape(k, math.prod(feats)),
                  preferred_element_type=preferred_element_type)
    return out.reshape(lead + feats)


def normal_init(std: float, names: Sequence[str | None]):
    """N(0, std²) initialiser tagged with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.normal(std), tuple(names))


def zeros_init(names: Sequence[str | None]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(names))


def ones_init(names: Sequence[str | None]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), tuple(names))


def layer_norm(eps: float, dtype, param_dtype, name: str) -> nn.LayerNorm:
    """LayerNorm with float32 statistics (two-pass variance, as torch), params named (`norm`,)."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
                        scale_init=ones_init(("norm",)), bias_init=zeros_init(("norm",)), name=name)


class DenseGeneral(nn.Module):
    """`x [..., *in] @ kernel [*in, *features] (+ bias [*features])` over the trailing `axis` dims
    (`flat_matmul`).

    Like `nn.DenseGeneral` (same param names and shapes), but the initialisers see the kernel's real
    shape: flax's version initialises a flattened 2-D kernel, whose logical names (one per real axis)
    cannot be applied while a mesh is set (`jax.set_mesh`), where flax re-runs the initialiser
    abstractly on every apply to check shapes.
    """

    features: int | Sequence[int]
    kernel_init: Callable
    axis: int | Sequence[int] = -1
    use_bias: bool = False
    bias_init: Callable | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        axes = tuple(sorted(a % x.ndim for a in axes))
        if axes != tuple(range(x.ndim - len(axes), x.ndim)):
            raise ValueError(f"DenseGeneral contracts trailing axes only, got axis={self.axis} for rank {x.ndim}")
        kernel = self.param("kernel", self.kernel_init, tuple(x.shape[a] for a in axes) + features,
                            self.param_dtype)
        out = flat_matmul(x.astype(self.dtype), kernel.astype(self.dtype), len(axes))
        if self.use_bias:
            out = out + self.param("bias", self.bias_init, features, self.param_dtype).astype(self.dtype)
        return out


class RMSNorm(nn.Module):
    """Llama RMSNorm: `scale * (x / sqrt(mean(x²) + eps))`, statistics in float32 (HF LlamaRMSNorm)."""

    eps: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", ones_init(("norm",)), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def stacked(block_cls, *, length: int, remat_policy: str, in_axes):
    """`nn.scan` of `block_cls` over `length` layers: params gain a leading axis named `layers`;
    each layer is rematerialised with `remat_policy` (a key of REMAT_POLICIES, or "none").

    The block is called as `block(carry, *xs) -> (carry, y)`; `in_axes` says per extra argument
    whether it is scanned (0) or broadcast (`nn.broadcast`)."""
    body = block_cls
    if remat_policy != "none":
        body = nn.remat(block_cls, prevent_cse=False, policy=REMAT_POLICIES[remat_policy])
    return nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=in_axes,
                   length=length, metadata_params={nn.PARTITION_NAME: "layers"})


def first_layers(scanned_cls, n: int):
    """Run only the first `n` layers of a stacked module whose params hold all of them
    (the params are sliced `[:n]` on the way in; nothing is computed for the rest)."""
    return nn.map_variables(scanned_cls, "params",
                            trans_in_fn=lambda tree: jax.tree_util.tree_map(lambda a: a[:n], tree),
                            init=False)
