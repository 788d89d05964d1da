"""Frozen modules stay bit-identical and get no optimizer state; trained modules change; a non-finite
loss is flagged and, with nan_policy="skip", leaves the parameters untouched; the params checkpoint
format round-trips onto a mesh."""

import jax
import numpy as np
import pytest

from train_testlib import initial_state, optimizer, packed_batches, run_steps, tiny_config, write_corpus
from vlm_jax.checkpoint import load_config, load_params, save_params
from vlm_jax.sharding import DEFAULT_RULES, make_mesh
from vlm_jax.training.state import abstract_train_state


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = tiny_config()
    return config, packed_batches(write_corpus(tmp_path_factory.mktemp("corpus")), config, 2)


def _leaves(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_frozen_bit_identical_trained_changed(setup):
    config, batches = setup
    initial = initial_state(config, frozen=("vision_tower",))
    state, metrics = run_steps(config, make_mesh(2, 2, 2), batches, initial, frozen=("vision_tower",))
    assert all(m["finite"] == 1.0 for m in metrics)
    before, after = _leaves(initial.params), _leaves(jax.device_get(state.params))
    assert before.keys() == after.keys()
    for key in before:
        if key.startswith("['vision_tower']"):
            assert np.array_equal(before[key], after[key]), key
        else:
            assert not np.array_equal(before[key], after[key]), f"{key} did not train"
    moments = " ".join(jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state))
    assert "vision_tower" not in moments and "language_model" in moments


def test_non_finite_loss_skip_keeps_params(setup):
    config, batches = setup
    bad = dict(batches[0], pixel_values=np.full_like(batches[0]["pixel_values"], np.nan))
    initial = initial_state(config)
    state, metrics = run_steps(config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), [bad], initial,
                              nan_policy="skip")
    assert metrics[0]["finite"] == 0.0 and not np.isfinite(metrics[0]["loss"])
    assert int(state.step) == 1
    before, after = _leaves(initial.params), _leaves(jax.device_get(state.params))
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_params_checkpoint_round_trip(setup, tmp_path):
    """`WORKDIR/final` (the params format that `init_checkpoint` reads) holds exactly the params and config."""
    config, _ = setup
    params = initial_state(config).params
    save_params(str(tmp_path), params, config)
    assert load_config(str(tmp_path)) == config
    mesh = make_mesh(2, 2, 2)
    abstract, _ = abstract_train_state(config, (), optimizer()[1], mesh, DEFAULT_RULES)
    restored = load_params(str(tmp_path), abstract.params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(restored))))
    assert restored["language_model"]["layers"]["mlp"]["gate_proj"]["kernel"].sharding.mesh.shape == mesh.shape
    with pytest.raises(ValueError, match="multi_modal_projector.*model does not"):
        load_params(str(tmp_path), dict(abstract.params, multi_modal_projector={}))
