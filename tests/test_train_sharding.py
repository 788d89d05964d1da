"""Sharded training equals one-device training: same losses on (data, fsdp, tensor) meshes of 8 CPU devices,
and gradient accumulation equals the one-shot global batch."""

import jax
import numpy as np
import pytest

from train_testlib import initial_state, losses, packed_batches, run_steps, tiny_config, write_corpus
from vlm_jax.sharding import make_mesh

STEPS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    assert jax.device_count() == 8, "tests/conftest.py should give 8 simulated CPU devices"
    config = tiny_config()
    batches = packed_batches(write_corpus(tmp_path_factory.mktemp("corpus")), config, STEPS)
    state = initial_state(config)
    _, reference = run_steps(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), batches, state)
    return config, batches, state, losses(reference)


# (2, 4, 1) also accumulates gradients over 2 microbatches: the loss is still the global batch's.
@pytest.mark.parametrize("shape,accum", [((8, 1, 1), 1), ((2, 4, 1), 2), ((2, 2, 2), 1)])
def test_mesh_losses_equal_one_device(setup, shape, accum):
    config, batches, state, reference = setup
    final, metrics = run_steps(config, make_mesh(*shape), batches, state, grad_accum_steps=accum)
    assert reference[-1] < reference[0]  # the steps do train
    np.testing.assert_allclose(losses(metrics), reference, rtol=1e-5)
    # parameters really are sharded as the rules say: the LM's MLP kernel splits over fsdp x tensor
    kernel = final.params["language_model"]["layers"]["mlp"]["gate_proj"]["kernel"]
    assert len(kernel.sharding.device_set) == 8
    assert kernel.addressable_shards[0].data.size == kernel.size // (shape[1] * shape[2])
