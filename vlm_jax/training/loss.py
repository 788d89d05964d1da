"""Next-token cross-entropy from the final hidden states, in sequence chunks.

The full logits of a 32k-token row are `[32768, vocab]` float32 (4 GiB for Llama's 32k vocabulary),
and their gradient as much again. `token_cross_entropy` applies the LM head and the softmax
cross-entropy `chunk` positions at a time inside a rematerialised `lax.scan`: the forward keeps only
the per-token losses, the backward recomputes one chunk's logits at a time, so at most one chunk's
logits (and their gradient) exist at once. The math is the plain head's: `hidden @ kernel` in the
compute dtype with float32 accumulation, float32 log-softmax.
"""
from __future__ import annotations

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
