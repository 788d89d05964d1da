"""Idefics2 on the shared training machinery: tokenized documents (the original collator's labels) packed with
segment ids into rows whose image blocks stay whole, then the family-agnostic train step (`make_train_step` on
`models.init.model_for`) fits a batch. (The training CLI's data pipeline is still LLaVA's; it refuses an Idefics2
config.)"""
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hf_tiny
from test_generate_idefics2 import save_tokenizer
from vlm_jax.data import idefics2_processor as proc
from vlm_jax.data.packing import document_example, pack_documents
from vlm_jax.models.init import init_variables, model_for
from vlm_jax.training.state import TrainState
from vlm_jax.training.step import make_train_step


def test_packed_idefics2_documents_train(tmp_path):
    cfg = hf_tiny.idefics2_config()
    save_tokenizer(tmp_path)
    processor = proc.Idefics2Processor(str(tmp_path), image_seq_len=cfg.num_image_tokens)
    rng = np.random.default_rng(0)
    examples = []
    for d in range(5):
        n_images = 1 + d % 2
        pieces = ["<s>"] + sum([["Image:", None, f"\nw{5 + d} w{6 + k}"] for k in range(n_images)], [])
        doc = processor.tokenize_document(pieces, max_length=48)
        pixels = rng.normal(size=(doc.num_images, 28, 28, 3)).astype(np.float32)
        examples.append(document_example(doc, pixels))
    rows = list(pack_documents(grain.MapDataset.source(examples).to_iter_dataset(), seq_len=64,
                               max_images_per_row=3, lookahead=5))
    batch = {k: np.stack([r[k] for r in rows[:2]]) for k in rows[0]}
    fake, image = processor.fake_image_token_id, cfg.image_token_id
    for ids, seg, mask in zip(batch["input_ids"], batch["segment_ids"], batch["image_mask"]):
        runs = proc._image_blocks(ids, image)
        assert len(runs) == mask.sum() > 0
        for s, e in runs:  # whole blocks, framed by fake tokens, inside one document
            assert e - s == cfg.num_image_tokens and ids[s - 1] == ids[e] == fake and len(set(seg[s - 1:e + 1])) == 1
        assert len(np.unique(seg[seg > 0])) >= 2  # documents packed together
    # fake tokens are trained (targets with loss), image tokens never are
    assert np.any((batch["targets"] == fake) & (batch["loss_mask"] > 0))
    assert not np.any((batch["targets"] == image) & (batch["loss_mask"] > 0))

    model = model_for(cfg)
    params = nn.unbox(init_variables(cfg, jax.random.key(0)))["params"]
    tx = optax.adam(3e-3)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    step = jax.jit(make_train_step(model, tx, lambda s: 3e-3, frozen=()))
    losses = []
    for _ in range(8):
        state, metrics = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses

