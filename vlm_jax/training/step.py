"""One optimizer step: loss over the global batch (with gradient accumulation), clipping, AdamW.

Loss normalisation: the loss is the sum of token cross-entropies where `loss_mask` is set, divided
by the number of such tokens in the *whole global batch* (every device, every microbatch). With
accumulation the batch `[accum * micro, ...]` is cut into `accum` microbatches that each span all
data shards; each microbatch contributes `sum_ce / total_mask`, so the accumulated gradient equals
the gradient of the one-shot global-batch loss.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from vlm_jax.models.llava import Llava
from vlm_jax.training.params import merge_params, split_params
from vlm_jax.training.state import TrainState

MODEL_INPUTS = ("input_ids", "pixel_values", "image_mask", "positions", "segment_ids")
NAN_POLICIES = ("stop", "skip")


def token_losses(model: Llava, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Masked next-token cross-entropy `[b, seq]` float32 (0 where `loss_mask` is 0)."""
    logits, _ = model.apply({"params": params}, *(batch[k] for k in MODEL_INPUTS))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"])
    return ce * batch["loss_mask"]


def split_microbatches(batch: Mapping[str, jax.Array], accum: int) -> dict[str, jax.Array]:
    """`[accum * micro, ...]` -> `[accum, micro, ...]`; microbatch j takes rows j, j + accum, ... so
    each microbatch keeps rows on every data shard (no data movement when micro % shards == 0);
    the batch axis carries the logical name `activation_batch`."""

    def split(x):
        if x.shape[0] % accum:
            raise ValueError(f"global batch {x.shape[0]} is not a multiple of grad_accum_steps {accum}")
        y = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(y, (None, "activation_batch") + (None,) * (y.ndim - 2))

    return {k: split(v) for k, v in batch.items()}


def make_train_step(model: Llava, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    frozen: Sequence[str], grad_accum_steps: int = 1, nan_policy: str = "stop"):
    """`(state, batch) -> (state, metrics)`, to be jitted with state donation.

    metrics (float32 scalars): loss (global-batch mean over loss tokens), loss_tokens, tokens (non-padding
    tokens), images (real images), grad_norm
    (before clipping, trained params only), lr (used by this update), finite (1.0 if loss and
    grads are finite). With `nan_policy="skip"` a non-finite update leaves the state unchanged
    except `step`; with "stop" it is applied and the host loop stops with an error.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy={nan_policy!r}: expected one of {NAN_POLICIES}")

    def microbatch_loss(trained, frozen_params, micro, denominator):
        params = merge_params(trained, frozen_params)
        loss_sum = token_losses(model, params, micro).sum()
        return loss_sum / denominator, loss_sum

    grad_fn = jax.value_and_grad(microbatch_loss, has_aux=True)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        trained, frozen_params = split_params(state.params, frozen)
        loss_tokens = batch["loss_mask"].astype(jnp.float32).sum()
        denominator = jnp.maximum(loss_tokens, 1.0)
        if grad_accum_steps == 1:
            (_, loss_sum), grads = grad_fn(trained, frozen_params, batch, denominator)
        else:
            def body(carry, micro):
                grads_acc, loss_acc = carry
                (_, loss_sum), grads = grad_fn(trained, frozen_params, micro, denominator)
                return (jax.tree.map(jnp.add, grads_acc, grads), loss_acc + loss_sum), None

            zeros = jax.tree.map(jnp.zeros_like, trained)
            (grads, loss_sum), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)),
                                                split_microbatches(batch, grad_accum_steps))
        loss = loss_sum / denominator
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, trained)
        new_trained = optax.apply_updates(trained, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if nan_policy == "skip":
            new_trained, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                                  (new_trained, opt_state), (trained, state.opt_state))
        new_state = state.replace(step=state.step + 1, params=merge_params(new_trained, frozen_params),
                                  opt_state=opt_state)
        metrics = {"loss": loss, "loss_tokens": loss_tokens, "grad_norm": grad_norm,
                   "tokens": (batch["segment_ids"] > 0).sum().astype(jnp.float32),
                   "images": batch["image_mask"].sum().astype(jnp.float32),
                   "lr": jnp.asarray(schedule(state.step), jnp.float32), "finite": finite.astype(jnp.float32)}
        return new_state, metrics

    return train_step


def jit_train_step(train_step, state_shardings: TrainState, batch_sharding):
    """jit with the state's shardings in and out, the batch sharded over data x fsdp, state donated."""
    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, P())
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
