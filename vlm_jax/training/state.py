"""The train state and its creation directly in sharded form.

Parameters and optimizer moments are laid out by logical-axis rules: the state is first traced
abstractly with its `nn.LogicallyPartitioned` boxes (`jax.eval_shape`, nothing allocated), the
boxes give each leaf's logical names, the rules map them to mesh axes, and the real state is then
built by a jit whose `out_shardings` are those shardings, so no device ever holds a full copy.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from vlm_jax.models.config import LlavaConfig
from vlm_jax.models.init import init_variables
from vlm_jax.sharding import param_shardings
from vlm_jax.training.params import split_params


class TrainState(struct.PyTreeNode):
    """step: int32 scalar, optimizer updates done; params: the full LLaVA params tree (float32 masters
    unless `param_dtype` says otherwise); opt_state: optimizer state over the trained sub-tree only."""

    step: jax.Array
    params: Any
    opt_state: Any


def _boxed_state_fn(model_config: LlavaConfig, frozen: Sequence[str], tx: optax.GradientTransformation
                    ) -> Callable[[jax.Array], TrainState]:
    """rng -> TrainState whose params/moments are still `LogicallyPartitioned` boxes."""

    def init(rng):
        params = init_variables(model_config, rng)["params"]
        trained, _ = split_params(params, frozen)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trained))

    return init


def abstract_train_state(model_config: LlavaConfig, frozen: Sequence[str], tx: optax.GradientTransformation,
                         mesh: Mesh, rules) -> tuple[TrainState, TrainState]:
    """(abstract unboxed state of ShapeDtypeStructs carrying shardings, the shardings tree).
    Boxed leaves are sharded by their logical names (`vlm_jax.sharding.param_shardings`: a mesh axis
    that does not divide a dimension is dropped), everything else (step, counts) is replicated."""
    boxed = jax.eval_shape(_boxed_state_fn(model_config, frozen, tx), jax.random.key(0))
    shardings = param_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            nn.meta.unbox(boxed), shardings)
    return abstract, shardings


def init_train_state(model_config: LlavaConfig, frozen: Sequence[str], tx: optax.GradientTransformation,
                     shardings: TrainState, rng: jax.Array) -> TrainState:
    """A fresh state (random params, zero moments) created directly with `shardings`."""
    init = _boxed_state_fn(model_config, frozen, tx)
    return jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)


def state_from_params(params: Any, frozen: Sequence[str], tx: optax.GradientTransformation,
                      shardings: TrainState) -> TrainState:
    """A fresh state around given (already sharded) params, e.g. from `init_checkpoint`."""

    def build(p):
        trained, _ = split_params(p, frozen)
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(trained))

    return jax.jit(build, out_shardings=shardings, donate_argnums=0)(params)
