"""Llama decoder (HF `LlamaForCausalLM`): embeddings → L × (RMSNorm → GQA attention with RoPE →
residual; RMSNorm → SiLU-gated MLP → residual) → RMSNorm → LM head (float32 logits).
With `TextConfig.sliding_window` set it is HF's `MistralForCausalLM` (the only difference: each query sees
the last `sliding_window` slots, itself included).

The KV cache is a dict `k, v: [layers, batch, kv_heads, max_len, head_dim]`,
`segment_ids: [batch, max_len]` (0 = empty slot); a call writes its chunk at `cache_index` and
attends over the whole cache with `q_offset=cache_index`.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from vlm_jax.models.attention import attention, decode_attention
from vlm_jax.models.config import TextConfig
from vlm_jax.models.layers import LAYER_INPUT, DenseGeneral, RMSNorm, flat_matmul, normal_init, stacked

# The names of a layer's fused kernels in generation's copy of the weights (`fuse_layer_kernels`).
FUSED_QKV, FUSED_GATE_UP = "qkv_proj", "gate_up_proj"

# Logical axes of the cache arrays, for sharding a generation cache like the activations.
CACHE_LOGICAL_AXES = {
    "k": ("layers", "activation_batch", "activation_kv_heads", "activation_length", None),
    "v": ("layers", "activation_batch", "activation_kv_heads", "activation_length", None),
    "segment_ids": ("activation_batch", "activation_length"),
}


def rope_inv_freq(config: TextConfig) -> np.ndarray:
    """Inverse RoPE frequencies `[head_dim // 2]` (float32), with the Llama-3 scaling rule when
    `config.rope_scaling` is set (as HF `_compute_llama3_parameters`)."""
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
    rs = config.rope_scaling
    if rs is None or rs.rope_type == "dynamic":
        return inv_freq
    old_len = rs.original_max_position_embeddings
    low_freq_wavelen = old_len / rs.low_freq_factor
    high_freq_wavelen = old_len / rs.high_freq_factor
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / rs.factor, inv_freq)
    smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def dynamic_ntk_inv_freq(config: TextConfig, positions) -> jax.Array:
    """Dynamic NTK inverse frequencies `[batch, head_dim // 2]` (HF `rope_type="dynamic"`): per row, with
    L = max(position) + 1, the base becomes theta * (factor * L / M - (factor - 1)) ** (dim / (dim - 2)) for
    L > M = max_position_embeddings (unchanged below), recomputed every call as HF recomputes it whenever the
    sequence grows."""
    dim, max_pos, factor = config.head_dim, config.max_position_embeddings, config.rope_scaling.factor
    seq_len = jnp.maximum(jnp.max(positions, axis=-1) + 1, max_pos).astype(jnp.float32)  # [batch]
    base = config.rope_theta * (factor * seq_len / max_pos - (factor - 1)) ** (dim / (dim - 2))
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return 1.0 / (base[:, None] ** exponents[None, :])


def rope_cos_sin(positions, inv_freq):
    """cos, sin tables `[batch, seq, head_dim]` (float32) for integer `positions [batch, seq]` and inverse
    frequencies `[head_dim // 2]` or per row `[batch, head_dim // 2]`."""
    inv_freq = jnp.asarray(inv_freq)
    inv_freq = inv_freq[None, None, :] if inv_freq.ndim == 1 else inv_freq[:, None, :]
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """Rotate `x [batch, seq, heads, head_dim]` by position (HF rotate_half convention) with the float32
    tables `cos`, `sin [batch, seq, head_dim]`, in x's dtype as transformers does (`LlamaRotaryEmbedding`
    casts the tables to x's dtype, `apply_rotary_pos_emb` computes `x*cos + rotate_half(x)*sin` there): a
    bf16 model's q/k are rotated in bf16 (bit-for-bit transformers' values, and no float32 copy of q/k in
    memory), a float32 model's in float32."""
    cos, sin = cos.astype(x.dtype)[:, :, None], sin.astype(x.dtype)[:, :, None]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _is_static_zero(index) -> bool:
    return isinstance(index, (int, np.integer)) and index == 0


class LlamaAttention(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids, kv_segment_ids, layer_cache, cache_index):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        proj = partial(DenseGeneral, use_bias=False, dtype=dtype, param_dtype=pdtype)
        heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
        if self.has_variable("params", FUSED_QKV):  # generation's copy of the weights (`fuse_layer_kernels`)
            qkv = proj((heads + 2 * kv_heads, c.head_dim), name=FUSED_QKV, kernel_init=nn.initializers.zeros)(x)
            q, k, v = jnp.split(qkv, [heads, heads + kv_heads], axis=-2)
        else:
            q = proj((heads, c.head_dim), name="q_proj",
                     kernel_init=normal_init(c.initializer_range, ("embed", "heads", "head_dim")))(x)
            k = proj((kv_heads, c.head_dim), name="k_proj",
                     kernel_init=normal_init(c.initializer_range, ("embed", "kv_heads", "head_dim")))(x)
            v = proj((kv_heads, c.head_dim), name="v_proj",
                     kernel_init=normal_init(c.initializer_range, ("embed", "kv_heads", "head_dim")))(x)
        q = nn.with_logical_constraint(apply_rope(q, cos, sin),
                                       ("activation_batch", "activation_length", "activation_heads", None))
        k = nn.with_logical_constraint(apply_rope(k, cos, sin),
                                       ("activation_batch", "activation_length", "activation_kv_heads", None))
        if layer_cache is None:
            out = attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids, causal=True,
                            implementation=c.attention_impl, block_q=c.attention_block_q,
                            block_k=c.attention_block_k, sliding_window=c.sliding_window)
            new_cache = None
        else:
            # The whole stacked cache rides in the scan carry and is updated in place at [layer, :, :, cache_index]
            # (scanning it as xs / ys would copy every layer's cache on every decode step). It is kept
            # [layers, batch, kv_heads, max_len, head_dim]: the layout the one-token decode attention reads
            # directly (no per-step transpose of the whole cache).
            # With `layer` None the buffers are this layer's own `[batch, kv_heads, max_len, head_dim]` (the
            # unrolled decode of `Llama`, where the attention reads the buffer itself, not a sliced copy).
            cache_k, cache_v, layer = layer_cache
            if layer is None:
                write = lambda cache, x: jax.lax.dynamic_update_slice(  # noqa: E731
                    cache, jnp.swapaxes(x, 1, 2).astype(cache.dtype), (0, 0, cache_index, 0))
                cache_k, cache_v = write(cache_k, k), write(cache_v, v)
                layer_k, layer_v = cache_k.astype(dtype), cache_v.astype(dtype)
            else:
                write = lambda cache, x: jax.lax.dynamic_update_slice(  # noqa: E731
                    cache, jnp.swapaxes(x, 1, 2).astype(cache.dtype)[None], (layer, 0, 0, cache_index, 0))
                cache_k, cache_v = write(cache_k, k), write(cache_v, v)
                layer_k = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False).astype(dtype)
                layer_v = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False).astype(dtype)
            if q.shape[1] == 1 and not _is_static_zero(cache_index):
                out = decode_attention(q, layer_k, layer_v, segment_ids, kv_segment_ids, cache_index,
                                       sliding_window=c.sliding_window)
            else:
                out = attention(q, jnp.swapaxes(layer_k, 1, 2), jnp.swapaxes(layer_v, 1, 2),
                                q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, causal=True,
                                q_offset=cache_index, implementation=c.attention_impl,
                                block_q=c.attention_block_q, block_k=c.attention_block_k,
                                sliding_window=c.sliding_window)
            new_cache = (cache_k, cache_v, None if layer is None else layer + 1)
        out = proj(c.hidden_size, axis=(-2, -1), name="o_proj",
                   kernel_init=normal_init(c.initializer_range, ("heads", "head_dim", "embed")))(out)
        return out, new_cache


class _Kernel(nn.Module):
    """One `kernel` parameter (the params layout of a bias-free `nn.Dense`), returned as an array."""

    shape: tuple
    initializer: Any
    param_dtype: Any

    @nn.compact
    def __call__(self):
        return self.param("kernel", self.initializer, self.shape, self.param_dtype)


@jax.custom_vjp
def _swiglu(g, u):
    """`silu(g) * u`, elementwise. Its backward pass keeps only `g` and `u` (the gate and up matmul outputs)
    and recomputes the sigmoid; autodiff of `nn.silu(g) * u` keeps four more `[b, s, F]` buffers per layer
    (the sigmoid, its products and the output) for the training step."""
    return nn.silu(g) * u


def _swiglu_fwd(g, u):
    return nn.silu(g) * u, (g, u)


def _swiglu_bwd(residuals, dh):
    g, u = residuals
    sig = jax.nn.sigmoid(g)
    silu = g * sig
    return dh * u * (sig + silu * (1 - sig)), dh * silu


_swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def _gated_mlp(x, gate, up, down, dtype):
    """`down(silu(gate(x)) * up(x))` on x `[b, s, D]` with kernels `[D, F]`, `[D, F]`, `[F, D]` cast to `dtype`;
    `up` None: `gate` is the two side by side, `[D, 2, F]` (`fuse_layer_kernels`), one matmul."""
    x = x.astype(dtype)
    if up is None:
        g, u = jnp.moveaxis(flat_matmul(x, gate.astype(dtype)), -2, 0)
    else:
        g, u = flat_matmul(x, gate.astype(dtype)), flat_matmul(x, up.astype(dtype))
    h = _swiglu(g, u)
    h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
    return flat_matmul(h, down.astype(dtype))


class LlamaMLP(nn.Module):
    """SiLU-gated MLP. With `config.mlp_chunk` > 0 (dividing the sequence) it runs on that many positions
    at a time in a rematerialised `lax.scan`: the same math (the MLP is position-wise; the kernels'
    gradients are summed over chunks in float32) without `[seq, intermediate]` buffers.
    `in_features` (default `hidden_size`): the input width (Idefics2's modality projection maps the vision
    width to the text width with this MLP)."""

    config: TextConfig
    in_features: int | None = None

    @nn.compact
    def __call__(self, x):
        c = self.config
        pdtype = jnp.dtype(c.param_dtype)
        d_in = c.hidden_size if self.in_features is None else self.in_features
        up_init = normal_init(c.initializer_range, ("embed", "mlp"))
        if self.has_variable("params", FUSED_GATE_UP):  # generation's copy of the weights (`fuse_layer_kernels`)
            gate, up = _Kernel((d_in, 2, c.intermediate_size), nn.initializers.zeros, pdtype, name=FUSED_GATE_UP)(), None
        else:
            gate = _Kernel((d_in, c.intermediate_size), up_init, pdtype, name="gate_proj")()
            up = _Kernel((d_in, c.intermediate_size), up_init, pdtype, name="up_proj")()
        down = _Kernel((c.intermediate_size, c.hidden_size), normal_init(c.initializer_range, ("mlp", "embed")),
                       pdtype, name="down_proj")()
        dtype = jnp.dtype(c.dtype)
        b, s, d = x.shape
        chunk = c.mlp_chunk
        if chunk <= 0 or chunk >= s or s % chunk:
            return _gated_mlp(x, gate, up, down, dtype)
        chunks = jnp.swapaxes(x.reshape(b, s // chunk, chunk, d), 0, 1)
        # the kernels enter the scan as (at least) float32, so the chunks' gradients are summed in float32
        # even when the params arrive in the compute dtype (`compute_dtype_grads`)
        gate, up, down = (None if k is None else k.astype(jnp.promote_types(k.dtype, jnp.float32))
                          for k in (gate, up, down))
        body = jax.checkpoint(lambda _, xc: (None, _gated_mlp(xc, gate, up, down, dtype)))
        _, out = jax.lax.scan(body, None, chunks)
        return jnp.swapaxes(out, 0, 1).reshape(b, s, c.hidden_size)


class LlamaDecoderLayer(nn.Module):
    """Scan body `((x, cache), cos, sin, segment_ids, kv_segment_ids, cache_index) -> ((x, cache), None)`;
    `cache` is `(k, v, layer)`: the stacked `[layers, batch, kv_heads, max_len, head_dim]` buffers and this
    layer's index (the layer writes its slot and passes `layer + 1` on), or None."""

    config: TextConfig

    @nn.compact
    def __call__(self, carry, cos, sin, segment_ids, kv_segment_ids, cache_index):
        x, layer_cache = carry
        x = checkpoint_name(x, LAYER_INPUT)  # the residual the "offload" remat policy moves to host memory
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        h = RMSNorm(c.rms_norm_eps, dtype, pdtype, name="input_layernorm")(x)
        h, layer_cache = LlamaAttention(c, name="self_attn")(h, cos, sin, segment_ids, kv_segment_ids,
                                                             layer_cache, cache_index)
        x = x + h
        x = x + LlamaMLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, dtype, pdtype, name="post_attention_layernorm")(x))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return (x, layer_cache), None


class TokenEmbedding(nn.Module):
    """`embedding [vocab, embed]`: lookup for input ids, and (tied head) float32 logits."""

    config: TextConfig

    def setup(self):
        c = self.config
        self.embedding = self.param("embedding", normal_init(c.initializer_range, ("vocab", "embed")),
                                    (c.vocab_size, c.hidden_size), jnp.dtype(c.param_dtype))

    def __call__(self, input_ids):
        return jnp.take(self.embedding, input_ids, axis=0).astype(jnp.dtype(self.config.dtype))

    def attend(self, x):
        emb = self.embedding.astype(jnp.dtype(self.config.dtype))
        return jnp.einsum("bsd,vd->bsv", x, emb, preferred_element_type=jnp.float32)


class LMHead(nn.Module):
    """Untied output projection `kernel [embed, vocab]` → float32 logits."""

    config: TextConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        kernel = self.param("kernel", normal_init(c.initializer_range, ("embed", "vocab")),
                            (c.hidden_size, c.vocab_size), jnp.dtype(c.param_dtype))
        return flat_matmul(x, kernel.astype(x.dtype), preferred_element_type=jnp.float32)


class Llama(nn.Module):
    """`embed(input_ids [b, s]) -> [b, s, D]`; `__call__(embeddings, positions, segment_ids, cache,
    cache_index) -> (logits [b, s, vocab] float32, cache or None)`."""

    config: TextConfig

    def setup(self):
        c = self.config
        self.embed_tokens = TokenEmbedding(c)
        self.layers = stacked(LlamaDecoderLayer, length=c.num_hidden_layers, remat_policy=c.remat_policy,
                              in_axes=(nn.broadcast,) * 5)(c)
        self.norm = RMSNorm(c.rms_norm_eps, jnp.dtype(c.dtype), jnp.dtype(c.param_dtype))
        if not c.tie_word_embeddings:
            self.lm_head = LMHead(c)

    def _unrolled_layers(self, x, cache, cos, sin, segment_ids, kv_segment_ids, cache_index, layer_params=None):
        """The layers one by one (a Python loop over `layer_params`, default the stacked params sliced at
        static indices: `unstack_layers`) on a `split_cache` cache → (x, (k tuple, v tuple, None))."""
        c = self.config
        layer = LlamaDecoderLayer(c, parent=None)  # applied functionally to each layer's slice
        if layer_params is None:
            layer_params = unstack_layers(self.layers.variables["params"], c.num_hidden_layers)
        ks, vs = [], []
        for i, (k, v) in enumerate(zip(cache["k"], cache["v"])):
            params = layer_params[i]
            (x, (k, v, _)), _ = layer.apply({"params": params}, (x, (k, v, None)), cos, sin, segment_ids,
                                            kv_segment_ids, cache_index)
            ks.append(k)
            vs.append(v)
        return x, (tuple(ks), tuple(vs), None)

    def embed(self, input_ids):
        """Token embeddings `[b, s, D]` in the compute dtype."""
        return self.embed_tokens(input_ids)

    def __call__(self, embeddings, positions, segment_ids, cache=None, cache_index=None, last_logits_only=False,
                 hidden_only=False, layer_params=None):
        """embeddings `[b, s, D]`, positions / segment_ids int `[b, s]` (segment 0 = padding).
        With `cache` (from `init_cache`) the chunk is written at `cache_index` (int scalar, may be
        traced) and attends to every filled slot before it; returns the updated cache.
        `last_logits_only`: logits `[b, 1, vocab]` of the last position only (generation prefill).
        `hidden_only`: the final-norm hidden states `[b, s, D]` instead of logits (the training loss applies the
        head itself, in sequence chunks, with `output_kernel`; so does generation's packed prefill, at each row's
        last token).
        `layer_params`: with a `split_cache` cache, the layers' params as `unstack_layers` gives them (decode
        loops slice them once, outside the loop); default: sliced from the stacked params here."""
        c = self.config
        if self.is_initializing():  # create the embedding table even though the caller embeds
            self.embed_tokens(jnp.zeros((1, 1), jnp.int32))
        x = nn.with_logical_constraint(embeddings.astype(jnp.dtype(c.dtype)),
                                       ("activation_batch", "activation_length", "activation_embed"))
        dynamic = c.rope_scaling is not None and c.rope_scaling.rope_type == "dynamic"
        cos, sin = rope_cos_sin(positions, dynamic_ntk_inv_freq(c, positions) if dynamic else rope_inv_freq(c))
        segment_ids = segment_ids.astype(jnp.int32)
        if cache is None:
            kv_segment_ids, layer_caches = segment_ids, None
        else:
            if cache_index is None:
                raise ValueError("Llama: cache given without cache_index")
            kv_segment_ids = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, cache_index))
            layer_caches = (cache["k"], cache["v"], jnp.int32(0))
        if cache is not None and isinstance(cache["k"], tuple):
            x, layer_caches = self._unrolled_layers(x, cache, cos, sin, segment_ids, kv_segment_ids, cache_index,
                                                    layer_params)
        else:
            (x, layer_caches), _ = self.layers((x, layer_caches), cos, sin, segment_ids, kv_segment_ids,
                                               cache_index)
        if last_logits_only:
            x = x[:, -1:]
        x = self.norm(x)
        new_cache = None
        if cache is not None:
            new_cache = {"k": layer_caches[0], "v": layer_caches[1], "segment_ids": kv_segment_ids}
        if hidden_only:
            return x, new_cache
        logits = self.embed_tokens.attend(x) if c.tie_word_embeddings else self.lm_head(x)
        logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
        return logits, new_cache


def output_kernel(config: TextConfig, params) -> jax.Array:
    """The LM head `[embed, vocab]` of a Llama params tree (the token embedding, transposed, when tied);
    `hidden @ output_kernel` in the compute dtype with float32 accumulation gives the logits."""
    if config.tie_word_embeddings:
        return params["embed_tokens"]["embedding"].T
    return params["lm_head"]["kernel"]


def unstack_layers(stacked_params, num_layers: int) -> list:
    """The stacked `layers` params subtree (leading axis = layer) as a list of `num_layers` per-layer subtrees
    (static slices: copies, once traced)."""
    stacked_params = nn.unbox(stacked_params)
    return [jax.tree.map(lambda a: a[i], stacked_params) for i in range(num_layers)]


def fuse_layer_kernels(layer_params: dict) -> dict:
    """One layer's params (`unstack_layers`) with `self_attn`'s q/k/v kernels `[D, heads, head_dim]` concatenated
    along the heads into one `FUSED_QKV` kernel `[D, heads + 2 * kv_heads, head_dim]` and `mlp`'s gate/up kernels
    `[D, F]` stacked into one `FUSED_GATE_UP` kernel `[D, 2, F]`: the layer then runs two matmuls where it ran five,
    reading its input once for each group (the same math; `LlamaAttention` / `LlamaMLP` take either form).
    For generation's copy of the weights: a decode step is bound by its many small weight matmuls, and XLA does
    not merge dots that share an input. Training keeps the separate kernels (HF names; sharded by head)."""
    attn, mlp = dict(layer_params["self_attn"]), dict(layer_params["mlp"])
    qkv = jnp.concatenate([attn.pop(n)["kernel"] for n in ("q_proj", "k_proj", "v_proj")], axis=-2)
    gate_up = jnp.stack([mlp.pop(n)["kernel"] for n in ("gate_proj", "up_proj")], axis=-2)
    return {**layer_params, "self_attn": {**attn, FUSED_QKV: {"kernel": qkv}},
            "mlp": {**mlp, FUSED_GATE_UP: {"kernel": gate_up}}}


def split_cache(cache: dict) -> dict:
    """The cache with `k`, `v` as tuples of per-layer `[batch, kv_heads, max_len, head_dim]` buffers. `Llama`
    then runs its layers unrolled, each attending over its own buffer in place (with the stacked layout, each
    layer of each decode step reads a copied slice of the stack). `generation.decode_loop` decodes on this."""
    if isinstance(cache["k"], tuple):
        return cache
    return {"k": tuple(cache["k"]), "v": tuple(cache["v"]), "segment_ids": cache["segment_ids"]}


def init_cache(config: TextConfig, batch: int, max_len: int, dtype=None) -> dict:
    """Empty KV cache: `k, v: [layers, batch, kv_heads, max_len, head_dim]` zeros (dtype defaults to
    the compute dtype) and `segment_ids: [batch, max_len]` zeros (every slot empty)."""
    dtype = jnp.dtype(config.dtype if dtype is None else dtype)
    shape = (config.num_hidden_layers, batch, config.num_key_value_heads, max_len, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch, max_len), jnp.int32)}


def init_variables(config: TextConfig, rng: jax.Array) -> dict:
    """Boxed (`nn.LogicallyPartitioned`) variables `{"params": ...}` of a Llama."""
    emb = jnp.zeros((1, 1, config.hidden_size), jnp.dtype(config.dtype))
    ids = jnp.zeros((1, 1), jnp.int32)
    return Llama(config).init(rng, emb, ids, ids + 1)
