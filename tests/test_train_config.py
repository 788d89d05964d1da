"""Training configs and the LR schedule: the 7B config mirrors the seed's run; warmup + constant / cosine
schedules equal transformers' schedulers (as HF Trainer computes warmup from warmup_ratio)."""

import importlib.util
import os

import numpy as np
import pytest
import torch
import transformers

from vlm_jax.training.config import model_config
from vlm_jax.training.optimizer import make_schedule, warmup_steps_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"train_config_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _hf_lrs(kind, lr, warmup, total):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    if kind == "constant":
        scheduler = transformers.get_constant_schedule_with_warmup(optimizer, warmup)
    else:
        scheduler = transformers.get_cosine_schedule_with_warmup(optimizer, warmup, total)
    lrs = []
    for _ in range(total):  # the lr used by update s+1 is the one after s scheduler steps
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_schedule_matches_transformers(kind):
    optim = {"learning_rate": 2e-5, "schedule": kind, "warmup_steps": -1, "warmup_ratio": 0.03, "min_lr_ratio": 0.0}
    total = 400
    warmup = warmup_steps_for(optim, total)
    assert warmup == 12  # ceil(0.03 * 400), as HF TrainingArguments.get_warmup_steps
    ours = np.array([float(make_schedule(optim, total)(s)) for s in range(total)])
    np.testing.assert_allclose(ours, _hf_lrs(kind, 2e-5, warmup, total), rtol=1e-5, atol=1e-12)


def test_textbook_7b_config_mirrors_the_seed_run():
    c = _load("llava_textbook_7b")
    assert (c.optim.learning_rate, c.optim.weight_decay, c.optim.warmup_ratio, c.optim.schedule) == \
        (2e-5, 0.0, 0.03, "constant")
    assert (c.dtype, c.param_dtype, c.frozen) == ("bfloat16", "float32", "vision_tower")
    assert (c.data.seq_len, c.data.max_images, c.data.num_epochs) == (32768, 12, 1)
    assert (c.checkpoint.save_every, c.checkpoint.keep, c.num_train_steps) == (100, 5, -1)
    resolved = model_config(c)
    assert resolved.num_image_tokens == 576 and resolved.text_config.hidden_size == 4096
    assert resolved.text_config.dtype == "bfloat16" and resolved.text_config.param_dtype == "float32"


def test_seed_config_has_the_original_batches_and_loss():
    packed, seed = _load("llava_textbook_7b"), _load("llava_textbook_7b_seed")
    assert (seed.data.packing, seed.data.shuffle, packed.data.packing, packed.data.shuffle) == \
        ("none", False, "best_fit", True)
    assert seed.mesh.fsdp * seed.mesh.data == 8 and seed.global_batch_size == 16 and seed.grad_accum_steps == 1
    assert (seed.loss_normalization, seed.optim.max_grad_norm) == ("per_device", 0.0)
    assert packed.loss_normalization == "global" and packed.global_batch_size == seed.global_batch_size
    # everything else is the packed config's
    assert seed.optim.learning_rate == packed.optim.learning_rate and seed.data.seq_len == packed.data.seq_len


def test_demo_config_resolves_and_unknown_override_fails():
    c = _load("demo")
    assert model_config(c).num_image_tokens == 16 and c.demo_corpus.build
    with c.unlocked():
        c.model_overrides.text_config.bogus = 1
    with pytest.raises(ValueError, match="bogus"):
        model_config(c)
