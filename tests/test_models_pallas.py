"""The full tiny LLaVA with attention_impl="pallas" (flash kernel, interpret mode on CPU) equals "xla":
logits and the gradient of every parameter, fp32, on a packed batch with several documents per row,
images in both rows, padding, GQA and a ragged vision sequence (5 tokens); also on a 2x2 device mesh,
where the kernel runs per shard (batch and heads split)."""
import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import hf_tiny
from vlm_jax import sharding
from vlm_jax.models import hf as hf_table, llava


def packed_batch(cfg):
    """Row 0: two documents (3 and 1 images); row 1: one document with 2 images, then padding."""
    t, img = cfg.num_image_tokens, cfg.image_token_id
    docs = [[[1, 5] + [img] * t + [6, 7] + [img] * t + [8] + [img] * t + [9, 10], [1, 11] + [img] * t + [12] * 6],
            [[1] + [img] * (2 * t) + list(range(20, 34))]]
    s = max(sum(len(d) for d in row) for row in docs) + 3
    ids, pos, seg = (np.zeros((2, s), np.int32) for _ in range(3))
    for r, row in enumerate(docs):
        at = 0
        for n, doc in enumerate(row, 1):
            ids[r, at:at + len(doc)], pos[r, at:at + len(doc)], seg[r, at:at + len(doc)] = doc, np.arange(len(doc)), n
            at += len(doc)
    pixels = np.asarray(hf_tiny.to_nhwc(hf_tiny.pixels_nchw(8, cfg.vision_config.image_size, seed=11)))
    pixels = pixels.reshape(2, 4, *pixels.shape[1:])
    image_mask = np.array([[True, True, True, True], [True, False, True, False]])
    llava.check_image_tokens(ids, image_mask, img, t)
    return ids, pixels, image_mask, pos, seg


def logits_and_grads(impl: str, mesh=None):
    """(logits, param grads, pallas_call count, shard_map count) of sum(logits * fixed cotangent)."""
    base = hf_tiny.llava_config()
    params = hf_table.params_from_hf_state_dict(base, hf_tiny.state_dict_numpy(hf_tiny.hf_llava()), "llava-hf")
    batch = packed_batch(base)
    assert batch[0].shape[1] > 32  # several 16-token kernel blocks per row
    cotangent = jnp.asarray(np.random.default_rng(0).normal(size=batch[0].shape + (base.text_config.vocab_size,)),
                            jnp.float32) * (batch[4] > 0)[..., None]
    model = llava.Llava(base.with_runtime(attention_impl=impl, attention_block_q=16, attention_block_k=16))

    def loss(p):
        logits = model.apply({"params": p}, *batch)[0]
        return jnp.sum(logits * cotangent), logits

    grad_fn = jax.value_and_grad(loss, has_aux=True)
    context = contextlib.ExitStack()
    if mesh is not None:
        context.enter_context(jax.set_mesh(mesh))
        context.enter_context(nn.logical_axis_rules(sharding.DEFAULT_RULES))
    with context:
        jaxpr = str(jax.make_jaxpr(grad_fn)(params))
        (_, logits), grads = jax.jit(grad_fn)(params)
    return logits, grads, jaxpr.count("pallas_call"), jaxpr.count("shard_map")


@functools.cache
def xla_reference():
    logits, grads, kernels, _ = logits_and_grads("xla")
    assert kernels == 0
    return logits, grads


def assert_close_to_xla(logits, grads):
    logits_x, grads_x = xla_reference()
    real = packed_batch(hf_tiny.llava_config())[4] > 0
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(logits_x)[real], atol=1e-4, rtol=0)
    flat_x = jax.tree_util.tree_leaves_with_path(grads_x)
    flat_p = jax.tree_util.tree_leaves(grads)
    assert len(flat_x) == len(flat_p) > 20
    for (path, gx), gp in zip(flat_x, flat_p):
        gx, gp = np.asarray(gx), np.asarray(gp)
        scale = max(1.0, float(np.abs(gx).max()))
        name = jax.tree_util.keystr(path)
        assert np.abs(gx).max() > 0 or "post_layernorm" in name, name  # LLaVA skips CLIP's last norm
        np.testing.assert_allclose(gp, gx, atol=2e-5 * scale, rtol=1e-4, err_msg=name)


def test_pallas_logits_and_param_grads_equal_xla():
    logits, grads, kernels, _ = logits_and_grads("pallas")
    assert kernels == 6  # per scanned stack (CLIP, Llama): forward, dq and dk/dv
    assert_close_to_xla(logits, grads)


def test_pallas_under_a_mesh_runs_per_shard_and_equals_xla():
    mesh = sharding.make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
    logits, grads, kernels, shard_maps = logits_and_grads("pallas", mesh)
    assert kernels == 6 and shard_maps >= 2
    assert_close_to_xla(logits, grads)
