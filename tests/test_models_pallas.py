"""The full tiny LLaVA with attention_impl="pallas" (flash kernel, interpret mode on CPU) equals "xla":
logits and the gradient of every parameter, fp32, on a packed batch with several documents per row,
images in both rows, padding, GQA and a ragged vision sequence (5 tokens)."""
import jax
import jax.numpy as jnp
import numpy as np

import hf_tiny
from vlm_jax.models import hf_weights, llava


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


def test_pallas_logits_and_param_grads_equal_xla():
    base = hf_tiny.llava_config()
    params = hf_weights.params_from_hf_state_dict(base, hf_tiny.state_dict_numpy(hf_tiny.hf_llava()), "llava-hf")
    batch = packed_batch(base)
    assert batch[0].shape[1] > 32  # several 16-token kernel blocks per row
    cotangent = jnp.asarray(np.random.default_rng(0).normal(size=batch[0].shape + (base.text_config.vocab_size,)),
                            jnp.float32) * (batch[4] > 0)[..., None]

    def run(impl):
        model = llava.Llava(base.with_runtime(attention_impl=impl, attention_block_q=16, attention_block_k=16))

        def loss(p):
            logits = model.apply({"params": p}, *batch)[0]
            return jnp.sum(logits * cotangent), logits
        grad_fn = jax.value_and_grad(loss, has_aux=True)
        kernels = str(jax.make_jaxpr(grad_fn)(params)).count("pallas_call")
        # per scanned stack: forward, and dq + dk/dv in the backward (CLIP and Llama)
        assert kernels == (6 if impl == "pallas" else 0), kernels
        return jax.jit(grad_fn)(params)

    (_, logits_x), grads_x = run("xla")
    (_, logits_p), grads_p = run("pallas")
    real = batch[4] > 0
    np.testing.assert_allclose(np.asarray(logits_p)[real], np.asarray(logits_x)[real], atol=1e-4, rtol=0)
    flat_x = jax.tree_util.tree_leaves_with_path(grads_x)
    flat_p = jax.tree_util.tree_leaves(grads_p)
    assert len(flat_x) == len(flat_p) > 20
    for (path, gx), gp in zip(flat_x, flat_p):
        gx, gp = np.asarray(gx), np.asarray(gp)
        scale = max(1.0, float(np.abs(gx).max()))
        name = jax.tree_util.keystr(path)
        assert np.abs(gx).max() > 0 or "post_layernorm" in name, name  # LLaVA skips CLIP's last norm
        np.testing.assert_allclose(gp, gx, atol=2e-5 * scale, rtol=1e-4, err_msg=name)
