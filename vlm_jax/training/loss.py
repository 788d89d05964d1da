"""Next-token cross-entropy from the final hidden states, in sequence chunks.

Two entry points:
- `token_cross_entropy`: the per-token losses `[b, s]` (evaluation, perplexity), every position.
- `weighted_cross_entropy`: the training loss `sum(weights * cross-entropy)` with its own gradient rule:
  the head runs only on positions whose weight is non-zero (image tokens, padding and prompts have
  none), gathered to the front of each data shard's rows, `chunk` of them at a time for as many chunks
  as the shard with the most such positions needs; each chunk's gradient is made in the same pass as
  its loss (three matmuls per chunk, none recomputed).

The full logits of a 32k-token row are `[32768, vocab]` float32 (4 GiB for Llama's 32k vocabulary),
and their gradient as much again. `token_cross_entropy` applies the LM head and the softmax
cross-entropy `chunk` positions at a time inside a rematerialised `lax.scan`: the forward keeps only
the per-token losses, the backward recomputes one chunk's logits at a time, so at most one chunk's
logits (and their gradient) exist at once. The math is the plain head's: `hidden @ kernel` in the
compute dtype with float32 accumulation, float32 log-softmax.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vlm_jax.models.layers import flat_matmul

LOGITS_AXES = ("activation_batch", "activation_length", "activation_vocab")


def _chunk_losses(hidden, kernel, targets, loss_mask):
    """hidden `[b, c, D]`, kernel `[D, vocab]` (cast to hidden's dtype here, so that the chunks' kernel
    gradients are summed in the kernel's own dtype), targets int `[b, c]`, loss_mask `[b, c]`
    -> masked cross-entropy `[b, c]` float32."""
    logits = flat_matmul(hidden, kernel.astype(hidden.dtype), preferred_element_type=jnp.float32)
    logits = nn.with_logical_constraint(logits, LOGITS_AXES)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets) * loss_mask


def token_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, loss_mask: jax.Array,
                        chunk: int = 0) -> jax.Array:
    """Masked next-token cross-entropy `[b, s]` float32 (0 where `loss_mask` is 0).

    hidden `[b, s, D]` (final-norm states, compute dtype), kernel `[D, vocab]` (any dtype; cast to
    hidden's), targets int `[b, s]`, loss_mask `[b, s]`. `chunk` > 0 and < s: the head runs on `chunk`
    positions at a time (the sequence is padded up to a multiple of it), never holding more than
    `[b, chunk, vocab]` logits in the forward or backward pass; 0: all positions at once.
    """
    loss_mask = loss_mask.astype(jnp.float32)
    b, s, d = hidden.shape
    if chunk <= 0 or chunk >= s:
        return _chunk_losses(hidden, kernel, targets, loss_mask)
    n = -(-s // chunk)
    pad = n * chunk - s
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        loss_mask = jnp.pad(loss_mask, ((0, 0), (0, pad)))

    def to_chunks(x):  # [b, n * c, ...] -> [n, b, c, ...]
        return jnp.swapaxes(x.reshape((b, n, chunk) + x.shape[2:]), 0, 1)

    @jax.checkpoint
    def body(_, xs):
        h, t, m = xs
        return None, _chunk_losses(h, kernel, t, m)

    _, losses = jax.lax.scan(body, None, (to_chunks(hidden), to_chunks(targets), to_chunks(loss_mask)))
    return jnp.swapaxes(losses, 0, 1).reshape(b, n * chunk)[:, :s]


def _chunk_loss_and_grads(h, kernel, targets, weights):
    """One chunk of `weighted_cross_entropy`'s forward-and-gradient pass: h `[g, c, D]`, kernel `[D, vocab]`,
    targets int `[g, c]`, weights float32 `[g, c]` -> (sum of weights x cross-entropy float32 scalar,
    d/dh `[g, c, D]` in h's dtype, d/dkernel `[D, vocab]` in kernel's dtype): autodiff of `_chunk_losses`."""
    loss, (dh, dkernel) = jax.value_and_grad(lambda h_, k_: _chunk_losses(h_, k_, targets, weights).sum(),
                                             argnums=(0, 1))(h, kernel)
    return loss, dh, dkernel


def _loss_and_grads(hidden, kernel, targets, weights, chunk, groups):
    """(loss, (d/dhidden, d/dkernel)) of `weighted_cross_entropy`, the head run on weighted positions only.

    Each chunk gathers its rows of `hidden` by index and scatter-adds their gradient into d/dhidden, so no
    reordered copy of the hidden states or of their gradient is made."""
    b, s, d = hidden.shape
    g = groups if groups > 0 and b % groups == 0 else 1
    length = b // g * s  # positions of one data shard
    h = nn.with_logical_constraint(hidden.reshape(g, length, d),
                                   ("activation_batch", "activation_length", "activation_embed"))
    t, w = targets.reshape(g, length), weights.astype(jnp.float32).reshape(g, length)
    c = chunk if 0 < chunk < length else length
    n = -(-length // c)
    order = jnp.argsort(w == 0, axis=1, stable=True)  # [g, length]: weighted positions first, in order
    order = jnp.pad(order, ((0, 0), (0, n * c - length)))  # padding names position 0 with weight 0 below
    w_sorted = jnp.pad(jnp.take_along_axis(w, order[:, :length], axis=1), ((0, 0), (0, n * c - length)))
    todo = ((w != 0).sum(axis=1).max() + c - 1) // c  # chunks the fullest shard needs
    take = jax.vmap(lambda x, i: x[i])  # per group: rows i of x
    add_at = jax.vmap(lambda x, i, v: x.at[i].add(v))

    def body(j, carry):
        loss, dh, dkernel = carry
        idx = jax.lax.dynamic_slice_in_dim(order, j * c, c, axis=1)  # [g, c]
        w_j = jax.lax.dynamic_slice_in_dim(w_sorted, j * c, c, axis=1)
        l, dh_j, dk_j = _chunk_loss_and_grads(take(h, idx), kernel, take(t, idx), w_j)
        return loss + l, add_at(dh, idx, dh_j), dkernel + dk_j.astype(jnp.float32)

    zeros = (jnp.zeros((), jnp.float32), jnp.zeros_like(h), jnp.zeros(kernel.shape, jnp.float32))
    loss, dh, dkernel = jax.lax.fori_loop(0, todo, body, zeros)
    return loss, (dh.reshape(b, s, d), dkernel.astype(kernel.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def weighted_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, weights: jax.Array,
                           chunk: int = 0, groups: int = 1) -> jax.Array:
    """`sum(weights * cross-entropy)` float32 scalar, the training loss before normalisation.

    hidden `[b, s, D]` (final-norm states, compute dtype), kernel `[D, vocab]` (any dtype), targets int
    `[b, s]`, weights `[b, s]` (the loss mask, or the mask scaled per device group; not differentiated).
    The value is `token_cross_entropy(hidden, kernel, targets, weights, chunk).sum()`. Under
    differentiation the head runs only where weights != 0: the rows are cut into `groups` contiguous
    groups (the rows one data shard holds; one group when `groups` does not divide b), each group's weighted positions are gathered to its front, and
    `chunk` positions per group (0: all) go through the head, loss and gradient at a time, for
    ceil(most weighted positions in a group / chunk) chunks; the gradients are the plain head's."""
    return token_cross_entropy(hidden, kernel, targets, weights, chunk).sum()


def _weighted_bwd(chunk, groups, grads, g):
    dh, dkernel = grads
    return (g.astype(dh.dtype) * dh, g.astype(dkernel.dtype) * dkernel, None, None)


weighted_cross_entropy.defvjp(_loss_and_grads, _weighted_bwd)
