"""Sharded training equals one-device training: same losses on (data, fsdp, tensor) meshes of 8 CPU devices,
and gradient accumulation equals the one-shot global batch."""

import jax
import numpy as np
import pytest

from train_testlib import losses, packed_batches, run_steps, tiny_config, write_corpus
from vlm_jax.sharding import make_mesh

STEPS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    assert jax.device_count() == 8, "tests/conftest.py should give 8 simulated CPU devices"
    config = tiny_config()
    batches = packed_batches(write_corpus(tmp_path_factory.mktemp("corpus")), config, STEPS)
    _, _, reference = run_steps(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), batches)
    return config, batches, losses(reference)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_mesh_losses_equal_one_device(setup, shape):
    config, batches, reference = setup
    _, state, metrics = run_steps(config, make_mesh(*shape), batches)
    assert reference[-1] < reference[0]  # the steps do train
    np.testing.assert_allclose(losses(metrics), reference, rtol=1e-5)
    # parameters really are sharded as the rules say: the LM's MLP kernel splits over fsdp x tensor
    kernel = state.params["language_model"]["layers"]["mlp"]["gate_proj"]["kernel"]
    assert len(kernel.sharding.device_set) == 8
    assert kernel.addressable_shards[0].data.size == kernel.size // (shape[1] * shape[2])


def test_grad_accumulation_equals_global_batch(setup):
    config, batches, reference = setup
    _, _, metrics = run_steps(config, make_mesh(2, 2, 2), batches, grad_accum_steps=2)
    np.testing.assert_allclose(losses(metrics), reference, rtol=1e-5)
