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


def test_idefics2_textbook_8b_config_is_the_original_recipe():
    """configs/idefics2_textbook_8b.py: training_idefics/run.sh's settings (seed_protocol.md §4), and it validates."""
    from vlm_jax.models.config import Idefics2Config
    from vlm_jax.training.config import validate

    c = _load("idefics2_textbook_8b")
    validate(c, "idefics2_textbook_8b.py", check_required=False)
    assert (c.optim.learning_rate, c.optim.schedule, c.optim.warmup_ratio, c.optim.weight_decay) == \
        (1e-6, "cosine", 0.03, 0.0)
    assert (c.frozen, c.dtype, c.param_dtype, c.remat_policy) == ("", "bfloat16", "float32", "full")
    assert (c.data.seq_len, c.data.image_longest_edge, c.data.image_shortest_edge) == (4096, 560, 336)
    assert c.global_batch_size == 2 * c.grad_accum_steps * 8 and c.grad_accum_steps == 128  # 8 devices assumed
    assert (c.checkpoint.save_every, c.checkpoint.keep, c.data.num_epochs, c.num_train_steps) == (80, 10, 1, -1)
    resolved = model_config(c)
    assert isinstance(resolved, Idefics2Config) and resolved.num_image_tokens == 64
    assert resolved.text_config.dtype == "bfloat16" and resolved.vision_config.remat_policy == "full"
    with pytest.raises(Exception, match="init_checkpoint"):  # the checkpoint and data are for the command line
        validate(c, "idefics2_textbook_8b.py")


def test_idefics2_demo_config_resolves_with_its_tokenizer():
    from vlm_jax.data import idefics2_processor as proc
    from vlm_jax.training.config import validate

    c = _load("idefics2_demo")
    validate(c, "idefics2_demo.py")
    resolved = model_config(c)
    assert resolved.num_image_tokens == 16 and resolved.image_token_id == proc.BYTE_IMAGE_TOKEN_ID
    assert resolved.text_config.vocab_size == proc.BYTE_VOCAB_SIZE
    processor = proc.Idefics2Processor(c.data.tokenizer, resolved.num_image_tokens)
    assert (processor.image_token_id, processor.fake_image_token_id) == (proc.BYTE_IMAGE_TOKEN_ID,
                                                                         proc.BYTE_FAKE_TOKEN_ID)
    # the committed folder is what write_byte_tokenizer writes: the same ids for text with every special token
    text = "<s>Image:<image>This is a cat. é\n<fake_token_around_image></s>"
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        fresh = proc.Idefics2Processor(proc.write_byte_tokenizer(d), resolved.num_image_tokens)
        assert fresh.encode(text) == processor.encode(text)
    ids = processor.encode("<s>Ab<image>")
    assert ids[:4] == [1, 1, 3 + ord("A"), 3 + ord("b")] and ids[4] == proc.BYTE_FAKE_TOKEN_ID
    with c.unlocked():
        c.data.image_shortest_edge = 64
    with pytest.raises(Exception, match="image_shortest_edge"):
        validate(c, "idefics2_demo.py")
