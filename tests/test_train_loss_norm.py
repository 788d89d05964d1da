"""Both loss normalisations, checked on gradients: the pre-clipping grad_norm of a step equals the norm of
the gradient of the loss written out by hand (one device, full logits), one-shot and accumulated.

"global": sum of token losses / loss tokens of the whole batch. "per_device" (the original's): the mean
over (microbatch, device) groups of each group's token mean. A step that divided each accumulated
microbatch by its own token count would double the accumulated grad_norm and fail here.
"""

import jax
import numpy as np
import optax
import pytest

from train_testlib import initial_state, packed_batches, run_steps, tiny_config, write_corpus
from vlm_jax.models.llava import Llava
from vlm_jax.sharding import make_mesh
from vlm_jax.training.step import MODEL_INPUTS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = tiny_config()
    batch = packed_batches(write_corpus(tmp_path_factory.mktemp("corpus")), config, 1)[0]
    assert batch["input_ids"].shape[0] == 8
    state = initial_state(config)
    return config, batch, state, reference_grad_norm(config, state.params, batch, None)


def reference_grad_norm(config, params, batch, groups):
    """Norm of the gradient of the hand-written loss: `groups` None -> global token mean; else a list of
    row-index lists, the loss being the mean over groups of each group's token mean."""

    def loss(p):
        logits, _ = Llava(config).apply({"params": p}, *(batch[k] for k in MODEL_INPUTS))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]) * batch["loss_mask"]
        if groups is None:
            return ce.sum() / batch["loss_mask"].sum()
        mask = batch["loss_mask"]
        return sum(ce[np.array(g)].sum() / mask[np.array(g)].sum() for g in groups) / len(groups)

    return float(jax.jit(lambda p: optax.tree.norm(jax.grad(loss)(p)))(params))


def grad_norm(config, state, batch, mesh_shape, accum, normalization):
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
    _, metrics = run_steps(config, mesh, [batch], state, grad_accum_steps=accum, loss_normalization=normalization,
                           batch_shards=mesh.shape["data"] * mesh.shape["fsdp"])
    return metrics[0]["grad_norm"]


def test_global_normalisation_grad_norm(setup):
    config, batch, state, want = setup
    for mesh_shape, accum in [((1, 8, 1), 1), ((2, 2, 1), 2)]:
        np.testing.assert_allclose(grad_norm(config, state, batch, mesh_shape, accum, "global"), want, rtol=2e-5)


def test_per_device_normalisation_grad_norm(setup):
    config, batch, state, global_want = setup
    # 4 devices, one shot: device d holds rows 2d, 2d+1.
    want = reference_grad_norm(config, state.params, batch, [[0, 1], [2, 3], [4, 5], [6, 7]])
    np.testing.assert_allclose(grad_norm(config, state, batch, (1, 4, 1), 1, "per_device"), want, rtol=2e-5)
    # 4 devices accumulating 2 microbatches (rows j, j+2, j+4, j+6; one per device): the mean of the 8 rows'
    # own token means, as one step on 8 devices (the original's DeepSpeed semantics).
    want = reference_grad_norm(config, state.params, batch, [[i] for i in range(8)])
    np.testing.assert_allclose(grad_norm(config, state, batch, (2, 2, 1), 2, "per_device"), want, rtol=2e-5)
    # the two normalisations differ on this batch (rows hold different numbers of loss tokens)
    assert abs(want - global_want) > 1e-3 * want
