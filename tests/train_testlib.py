"""Helpers for the training tests: a tiny LLaVA config, real packed batches, and a few optimizer steps."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

from data_testlib import document, write_corpus_dir
from vlm_jax.data.loader import make_train_iterator
from vlm_jax.models.config import LlavaConfig, preset
from vlm_jax.models.llava import Llava
from vlm_jax.sharding import DEFAULT_RULES, batch_sharding, make_mesh
from vlm_jax.training.config import deep_merge
from vlm_jax.training.distributed import global_batch
from vlm_jax.training.optimizer import make_optimizer, make_schedule
from vlm_jax.training.params import split_params
from vlm_jax.training.state import TrainState, abstract_train_state, init_train_state
from vlm_jax.training.step import jit_train_step, make_train_step

# Dimensions divide by 4 (fsdp) and heads by 2 (tensor) so every sharding rule takes effect.
TINY_OVERRIDES = {
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "image_size": 16, "patch_size": 8},
    "text_config": {"vocab_size": 264, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
                    "rope_scaling": None},
    "image_token_id": 3,
    "pad_token_id": 0,
}
OPTIM = {"learning_rate": 3e-3, "schedule": "cosine", "warmup_steps": 1, "warmup_ratio": 0.0, "min_lr_ratio": 0.1,
         "weight_decay": 0.01, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "max_grad_norm": 1.0}


def tiny_config() -> LlavaConfig:
    """A tiny float32 LLaVA (4-token image blocks) for the byte tokenizer."""
    return LlavaConfig.from_dict(deep_merge(preset("tiny").to_dict(), TINY_OVERRIDES)).with_runtime(
        dtype="float32", param_dtype="float32", attention_impl="xla", remat_policy="none")


def write_corpus(directory, n_docs: int = 24) -> str:
    """A corpus folder of `n_docs` interleaved documents with real images; returns its path."""
    return write_corpus_dir(str(directory / "corpus"), [document(i, n_images=1 + i % 3) for i in range(n_docs)])


def packed_batches(shard: str, config: LlavaConfig, n: int, batch_size: int = 8, seq_len: int = 64) -> list[dict]:
    """The first `n` packed batches of the real Grain loader over `shard`."""
    it = make_train_iterator(dict(shards=[shard], batch_size=batch_size, seq_len=seq_len, max_images_per_row=3,
                                  max_images=3, num_image_tokens=config.num_image_tokens,
                                  image_token_id=config.image_token_id, image_size=config.vision_config.image_size,
                                  tokenizer="byte", seed=0, num_epochs=None))
    return [next(it) for _ in range(n)]


def optimizer():
    schedule = make_schedule(OPTIM, 10)
    return schedule, make_optimizer(OPTIM, schedule)


@functools.cache
def _fresh_params(config: LlavaConfig, seed: int):
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    _, shardings = abstract_train_state(config, (), optimizer()[1], mesh, DEFAULT_RULES)
    return jax.device_get(init_train_state(config, (), optimizer()[1], shardings, jax.random.key(seed)).params)


def initial_state(config: LlavaConfig, frozen=(), seed: int = 0) -> TrainState:
    """A fresh train state on the host: params initialised once per (config, seed) on one device,
    optimizer state for the trained part (placed on any mesh by `run_steps`)."""
    params = _fresh_params(config, seed)
    trained, _ = split_params(params, frozen)
    return TrainState(step=np.zeros((), np.int32), params=params,
                      opt_state=jax.device_get(optimizer()[1].init(trained)))


def run_steps(config: LlavaConfig, mesh, batches, state: TrainState, *, frozen=(), grad_accum_steps: int = 1,
              nan_policy: str = "stop", **step_options):
    """`state` (host) placed on `mesh` by the sharding rules, one train step per batch; returns
    (final state, per-step metrics on host). `step_options`: more `make_train_step` arguments."""
    schedule, tx = optimizer()
    _, shardings = abstract_train_state(config, frozen, tx, mesh, DEFAULT_RULES)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        state = jax.device_put(state, shardings)
        step = jit_train_step(make_train_step(Llava(config), tx, schedule, frozen=frozen,
                                              grad_accum_steps=grad_accum_steps, nan_policy=nan_policy,
                                              **step_options),
                              shardings, batch_sharding(mesh))
        metrics = []
        for batch in batches:
            state, m = step(state, global_batch(batch, mesh))
            metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    return state, metrics


def losses(metrics) -> np.ndarray:
    return np.array([m["loss"] for m in metrics])
