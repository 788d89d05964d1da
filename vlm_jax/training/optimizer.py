"""The optimizer: AdamW with linear warmup then a constant or cosine learning rate, global-norm clipping.

It is built over the *trained* part of the parameters only (see `vlm_jax.training.params`), so
frozen modules get no moment buffers. Gradient accumulation is not done here but in the train step
(an explicit scan over microbatches), so the loss can be normalised over the whole global batch.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from vlm_jax.training.params import weight_decay_mask

SCHEDULES = ("constant", "cosine")
MOMENT_DTYPES = ("float32", "bfloat16")


def warmup_steps_for(optim: Mapping[str, Any], schedule_steps: int) -> int:
    """Warmup length: `optim.warmup_steps` when >= 0, else `ceil(warmup_ratio * schedule_steps)` (as HF)."""
    if optim["warmup_steps"] >= 0:
        return int(optim["warmup_steps"])
    if optim["warmup_ratio"] > 0 and schedule_steps <= 0:
        raise ValueError("optim.warmup_ratio needs the schedule length: set num_train_steps or schedule_steps")
    return math.ceil(optim["warmup_ratio"] * max(schedule_steps, 0))


def make_schedule(optim: Mapping[str, Any], schedule_steps: int) -> optax.Schedule:
    """Learning rate by optimizer step: linear 0 -> `learning_rate` over the warmup (the first update
    uses lr 0, as HF's schedulers), then constant or cosine down to `min_lr_ratio * learning_rate`
    at `schedule_steps`.

    `optim` keys: learning_rate, schedule ("constant" | "cosine"), warmup_steps (-1: use
    warmup_ratio), warmup_ratio, min_lr_ratio.
    """
    if optim["schedule"] not in SCHEDULES:
        raise ValueError(f"optim.schedule={optim['schedule']!r}: expected one of {SCHEDULES}")
    peak = float(optim["learning_rate"])
    warmup = warmup_steps_for(optim, schedule_steps)
    if optim["schedule"] == "constant":
        return optax.warmup_constant_schedule(0.0, peak, max(warmup, 1)) if warmup else optax.constant_schedule(peak)
    if schedule_steps <= warmup:
        raise ValueError(f"cosine schedule: schedule_steps {schedule_steps} must exceed warmup {warmup}")
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, schedule_steps,
                                              end_value=peak * float(optim["min_lr_ratio"]))


def stored_as(inner: optax.GradientTransformation, dtype) -> optax.GradientTransformation:
    """`inner` with its floating-point state stored in `dtype` (e.g. bfloat16 Adam moments: half the
    memory) and computed in float32: the state is upcast before each update and rounded after it."""
    dtype = jnp.dtype(dtype)

    def cast(tree, to):
        return jax.tree.map(lambda x: x.astype(to) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

    def init(params):
        return cast(inner.init(params), dtype)

    def update(updates, state, params=None):
        updates, state = inner.update(updates, cast(state, jnp.float32), params)
        return updates, cast(state, dtype)

    return optax.GradientTransformation(init, update)


def make_optimizer(optim: Mapping[str, Any], schedule: optax.Schedule) -> optax.GradientTransformation:
    """Global-norm clipping (`max_grad_norm`, 0 = off) then AdamW (`b1`, `b2`, `eps`, `weight_decay`
    on all but biases and norm scales). Moments are stored in `moment_dtype` ("float32", or "bfloat16"
    to halve their memory; the update itself is computed in float32)."""
    moment_dtype = optim.get("moment_dtype", "float32")
    if moment_dtype not in MOMENT_DTYPES:
        raise ValueError(f"optim.moment_dtype={moment_dtype!r}: expected one of {MOMENT_DTYPES}")
    parts = []
    if optim["max_grad_norm"] > 0:
        parts.append(optax.clip_by_global_norm(float(optim["max_grad_norm"])))
    adamw = optax.adamw(schedule, b1=float(optim["b1"]), b2=float(optim["b2"]), eps=float(optim["eps"]),
                        weight_decay=float(optim["weight_decay"]), mask=weight_decay_mask)
    parts.append(adamw if moment_dtype == "float32" else stored_as(adamw, moment_dtype))
    return optax.chain(*parts)
