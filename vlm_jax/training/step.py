"""One optimizer step: loss over the global batch (with gradient accumulation), clipping, AdamW.

With accumulation the batch `[accum * micro, ...]` is cut into `accum` microbatches that each span all
data shards (microbatch j takes rows j, j + accum, ...). Loss normalisation (`loss_normalization`):
- "global" (vlm_jax's default): the sum of token cross-entropies where `loss_mask` is set, divided by
  the number of such tokens in the *whole global batch* (every device, every microbatch); each
  microbatch contributes `sum_ce / total_mask`, so the accumulated gradient equals the gradient of the
  one-shot global-batch loss.
- "per_device" (the original's DeepSpeed/HF Trainer loss): each microbatch's rows are cut into
  `batch_shards` contiguous groups (the rows one device holds); each group's loss is its own token
  mean, and the step's loss is the mean over all (microbatch, group) pairs, so accumulating `accum`
  microbatches equals one step on `accum` times as many devices.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from vlm_jax.data.packing import PIXEL_MASK_KEY
from vlm_jax.models.init import FAMILIES, text_model_params
from vlm_jax.models.llama import output_kernel
from vlm_jax.training.loss import token_cross_entropy, weighted_cross_entropy
from vlm_jax.training.params import merge_params, split_params
from vlm_jax.training.state import TrainState

MODEL_INPUTS = ("input_ids", "pixel_values", "image_mask", "positions", "segment_ids")
NAN_POLICIES = ("stop", "skip")
LOSS_NORMALIZATIONS = ("global", "per_device")


def head_inputs(model: nn.Module, params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(final-norm hidden states `[b, seq, D]`, LM head kernel `[D, vocab]`) of a family's model
    (`models.init.model_for`) on a batch; an Idefics2 batch's `pixel_attention_mask` goes to the model."""
    extra = {PIXEL_MASK_KEY: batch[PIXEL_MASK_KEY]} if PIXEL_MASK_KEY in batch else {}
    hidden, _ = model.apply({"params": params}, *(batch[k] for k in MODEL_INPUTS), hidden_only=True, **extra)
    return hidden, output_kernel(model.config.text_config, text_model_params(model.config, params))


def token_losses(model: nn.Module, params: Any, batch: Mapping[str, jax.Array], loss_chunk: int = 0) -> jax.Array:
    """Masked next-token cross-entropy `[b, seq]` float32 (0 where `loss_mask` is 0) of a family's model;
    the LM head and the softmax run `loss_chunk` positions at a time (0: all at once), see
    `vlm_jax.training.loss`."""
    hidden, kernel = head_inputs(model, params, batch)
    return token_cross_entropy(hidden, kernel, batch["targets"], batch["loss_mask"], loss_chunk)


def loss_weights(loss_mask: jax.Array, loss_normalization: str, batch_shards: int) -> jax.Array:
    """Per-token weights `[b, seq]` float32 of a microbatch's summed loss (module docstring): the loss mask
    ("global"), or the mask divided by its device group's mask count ("per_device": rows cut into
    `batch_shards` contiguous groups)."""
    mask = loss_mask.astype(jnp.float32)
    if loss_normalization == "global":
        return mask
    if mask.shape[0] % batch_shards:
        raise ValueError(f"microbatch of {mask.shape[0]} rows does not split over {batch_shards} devices")
    groups = mask.reshape(batch_shards, -1, mask.shape[-1])
    return (groups / jnp.maximum(groups.sum(axis=(1, 2), keepdims=True), 1.0)).reshape(mask.shape)


def cast_text_layers(model: nn.Module, trained: Mapping[str, Any]) -> dict:
    """`trained` with the text model's stacked decoder layers (`[layers, ...]` leaves under its `layers`)
    cast to the compute dtype (`model.config.text_config.dtype`); every other leaf unchanged. Unchanged
    too when the text model is frozen or computes in its params' dtype."""
    key = FAMILIES[type(model.config)][2]
    dtype = jnp.dtype(model.config.text_config.dtype)
    if key not in trained or "layers" not in trained[key]:
        return dict(trained)
    layers = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                          trained[key]["layers"])
    return {**trained, key: {**trained[key], "layers": layers}}


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


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    frozen: Sequence[str], grad_accum_steps: int = 1, nan_policy: str = "stop", loss_chunk: int = 0,
                    loss_normalization: str = "global", batch_shards: int = 1, compute_dtype_grads: bool = False,
                    compute_dtype_grads_accum: bool = False):
    """`(state, batch) -> (state, metrics)`, to be jitted with state donation.

    metrics (float32 scalars): loss (as `loss_normalization` says, see the module docstring), loss_tokens, tokens (non-padding
    tokens), images (real images), grad_norm
    (before clipping, trained params only), lr (used by this update), finite (1.0 if loss and
    grads are finite). With `nan_policy="skip"` a non-finite update leaves the state unchanged
    except `step`; with "stop" it is applied and the host loop stops with an error.
    `loss_chunk`: positions per chunk of the LM head + cross-entropy (`loss.weighted_cross_entropy`: only
    positions with loss go through the head).
    `batch_shards`: devices along the batch axes (data x fsdp), the groups of "per_device".
    `compute_dtype_grads`: differentiate with respect to the text model's decoder layers cast once to the
    compute dtype (`cast_text_layers`), so their gradients (half the step's gradient memory in bf16) stay
    in that dtype until the update upcasts them. The same gradients as float32 ones: each layer weight
    enters the model only through one cast to the compute dtype, whose gradient is already a
    compute-dtype value (with `mlp_chunk`, the chunks' sum is rounded to it once); the update stays float32.
    Not applied with `grad_accum_steps` > 1 (where the float32 accumulator holds every gradient anyway, and
    the 7B step on v6e-8 with 2 microbatches compiled to more memory with it, see README "Memory") unless
    `compute_dtype_grads_accum`: then the layers are cast once per step and each microbatch's layer
    gradients are compute-dtype values added to the float32 accumulator (the same sums: each added value
    is the bf16 value the float32 step upcasts first).
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy={nan_policy!r}: expected one of {NAN_POLICIES}")
    if loss_normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"loss_normalization={loss_normalization!r}: expected one of {LOSS_NORMALIZATIONS}")

    def microbatch_loss(trained, frozen_params, micro, denominator):
        """(this microbatch's share of the step's loss, that share times `denominator`)."""
        hidden, kernel = head_inputs(model, merge_params(trained, frozen_params), micro)
        weights = loss_weights(micro["loss_mask"], loss_normalization, batch_shards)
        loss_sum = weighted_cross_entropy(hidden, kernel, micro["targets"], weights, loss_chunk, batch_shards)
        return loss_sum / denominator, loss_sum

    grad_fn = jax.value_and_grad(microbatch_loss, has_aux=True)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        trained, frozen_params = split_params(state.params, frozen)
        cast = compute_dtype_grads and (grad_accum_steps == 1 or compute_dtype_grads_accum)
        differentiated = cast_text_layers(model, trained) if cast else trained
        loss_tokens = batch["loss_mask"].astype(jnp.float32).sum()
        if loss_normalization == "global":
            denominator = jnp.maximum(loss_tokens, 1.0)
        else:  # a mean over (microbatch, device group) pairs
            denominator = jnp.float32(grad_accum_steps * batch_shards)
        if grad_accum_steps == 1:
            (_, loss_sum), grads = grad_fn(differentiated, frozen_params, batch, denominator)
        else:
            def body(carry, micro):
                grads_acc, loss_acc = carry
                (_, loss_sum), grads = grad_fn(differentiated, frozen_params, micro, denominator)
                grads_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grads_acc, grads)
                return (grads_acc, loss_acc + loss_sum), None

            zeros = jax.tree.map(jnp.zeros_like, trained)
            (grads, loss_sum), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)),
                                                split_microbatches(batch, grad_accum_steps))
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trained)
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


def train_step_for(config, model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                   frozen: Sequence[str], batch_shards: int):
    """`make_train_step` with the step options of a train config (`vlm_jax.training.config`: grad_accum_steps,
    nan_policy, loss_chunk, loss_normalization, compute_dtype_grads, compute_dtype_grads_accum): the one place
    that maps them, for `vlm_jax.train` and the compile report (`training.aot`)."""
    return make_train_step(model, tx, schedule, frozen=frozen, grad_accum_steps=config.grad_accum_steps,
                           nan_policy=config.nan_policy, loss_chunk=config.loss_chunk,
                           loss_normalization=config.loss_normalization, batch_shards=batch_shards,
                           compute_dtype_grads=config.compute_dtype_grads,
                           compute_dtype_grads_accum=config.compute_dtype_grads_accum)


def jit_train_step(train_step, state_shardings: TrainState, batch_sharding):
    """jit with the state's shardings in and out, the batch sharded over data x fsdp, state donated."""
    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, P())
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
