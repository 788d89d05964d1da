"""Idefics2 on the shared training machinery: tokenized documents (the original collator's labels) packed with
segment ids into rows whose image blocks stay whole, then the family-agnostic train step (`make_train_step` on
`models.init.model_for`) fits a batch; the training loader's Idefics2 family (images of different sizes padded with
their pixel mask); and `python -m vlm_jax.train --config configs/idefics2_demo.py`, shortened, learns."""
import io

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



def _loader(shards, tokenizer, cfg, packing, **overrides):
    from vlm_jax.data.loader import make_train_iterator

    return make_train_iterator(dict(
        shards=[shards], batch_size=4, seq_len=96, max_images_per_row=3, max_images=3,
        num_image_tokens=cfg.num_image_tokens, image_token_id=cfg.image_token_id, tokenizer=tokenizer, seed=0,
        num_epochs=1, shuffle=False, packing=packing, family="idefics2", image_longest_edge=32,
        image_shortest_edge=20, **overrides))


def test_idefics2_loader_pads_images_of_different_sizes_with_their_mask(tmp_path):
    """The training loader's Idefics2 family: each document tokenized as `tokenize_document` (the original collator),
    each image resized by the Idefics2 processor (itself equal to transformers', test_generate_idefics2) and
    zero-padded to 32 × 32 with `pixel_attention_mask` True exactly on its pixels; a corrupt image is skipped and
    counted; packed rows hold the same images and masks; the mask reaches the model."""
    from PIL import Image

    from data_testlib import document, write_corpus_dir
    from vlm_jax.data.loader import loader_metrics
    from vlm_jax.models.config import Idefics2Config

    tok = proc.write_byte_tokenizer(str(tmp_path / "tok"))
    cfg = Idefics2Config.from_dict({**hf_tiny.idefics2_config().to_dict(), "image_token_id": proc.BYTE_IMAGE_TOKEN_ID})
    cfg = Idefics2Config.from_dict({**cfg.to_dict(), "text_config": {**cfg.text_config.to_dict(), "vocab_size": 261}})
    # images of several sizes (24-26 x 18-22 px) and one 60 x 12 strip (resized to 32 x 6, raised to 32 x 20)
    docs = [document(i, n_images=1 + i % 3, words=2, corrupt=(1,) if i == 2 else ()) for i in range(6)]
    docs[3]["images"][1] = _image(60, 12)
    shards = write_corpus_dir(str(tmp_path / "corpus"), docs)
    processor = proc.Idefics2Processor(tok, cfg.num_image_tokens, 32, 20)

    it = _loader(shards, tok, cfg, "none")
    batch = next(it)  # 6 documents, batches of 4 (drop remainder): one batch
    rows = [{k: v[r] for k, v in batch.items()} for r in range(4)]
    for d, row in zip(docs, rows):
        texts = list(d["texts"])
        if d["id"] == "doc2":  # its 2nd image is corrupt: dropped with its placeholder
            pos = [i for i, t in enumerate(texts) if t is None][1]
            texts = texts[:pos] + texts[pos + 1:]
        good = [im for im in d["images"] if im is not None and b"not really" not in im]
        want = processor.tokenize_document(texts, 96)
        n = len(want.input_ids)
        np.testing.assert_array_equal(row["input_ids"][:n], want.input_ids)
        np.testing.assert_array_equal(row["loss_mask"][:n - 1], want.labels[1:] != -100)
        assert row["image_mask"].sum() == want.num_images == len(good)
        for k, data in enumerate(good):
            with Image.open(io.BytesIO(data)) as img:
                pixels = proc.preprocess_image(img, 32, 20)
            h, w = pixels.shape[:2]
            mask = np.zeros((32, 32), bool)
            mask[:h, :w] = True
            np.testing.assert_array_equal(row["pixel_attention_mask"][k], mask)
            np.testing.assert_array_equal(row["pixel_values"][k, :h, :w], pixels)
            assert not row["pixel_values"][k][~mask].any()
        assert not row["pixel_attention_mask"][want.num_images:].any()
    assert rows[3]["pixel_attention_mask"][0].sum() == 32 * 20 and rows[0]["pixel_attention_mask"][0].sum() < 32 * 20
    assert loader_metrics(it)["images_skipped_corrupt"] == 1

    packed = next(iter(_loader(shards, tok, cfg, "best_fit", pack_lookahead=6)))
    got = {m.tobytes() for m, real in zip(packed["pixel_attention_mask"].reshape(-1, 32, 32),
                                          packed["image_mask"].reshape(-1)) if real}
    sizes = set()
    for d in docs:
        for data in (im for im in d["images"] if im is not None and b"not really" not in im):
            with Image.open(io.BytesIO(data)) as img:
                sizes.add(proc.preprocess_image(img, 32, 20).shape[:2])
    masks = {np.pad(np.ones(hw, bool), ((0, 32 - hw[0]), (0, 32 - hw[1]))).tobytes() for hw in sizes}
    assert got <= masks and len(got) >= 2

    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    model = model_for(cfg)
    params = nn.unbox(init_variables(cfg, jax.random.key(0)))["params"]
    from vlm_jax.training.step import token_losses

    with_mask = token_losses(model, params, batch).sum()
    all_valid = token_losses(model, params, {**batch, "pixel_attention_mask": jnp.ones_like(
        batch["pixel_attention_mask"])}).sum()
    assert abs(float(with_mask) - float(all_valid)) > 1e-4  # the padding is masked out, not seen as black pixels


def _image(width, height):
    from data_testlib import image_bytes

    return image_bytes(width, height, seed=width * height)


def test_short_idefics2_demo_learns(tmp_path):
    """`python -m vlm_jax.train --config configs/idefics2_demo.py`, shortened as tests/test_train_demo.py shortens
    the LLaVA demo: the loss falls, the held-out answers become far more likely, and the final checkpoint (with
    its tokenizer and the processor sizes it trained with) serves `vlm_jax.load` and `python -m vlm_jax.generate`."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "vlm_jax.train", "--config", os.path.join(root, "configs", "idefics2_demo.py"),
               f"--workdir={tmp_path}", "--config.demo_corpus.train_documents=120",
               "--config.demo_corpus.heldout_per_class=3", "--config.progress_bar=false",
               "--config.num_train_steps=60", "--config.optim.warmup_steps=5", "--config.log_every=20"]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_step"] == 60
    assert summary["last_10pct_mean_loss"] < 0.7 * summary["first_10pct_mean_loss"]
    assert summary["heldout_end"]["answer_nll"] < 0.5 * summary["heldout_start"]["answer_nll"]
    assert summary["heldout_end"]["accuracy"] >= summary["heldout_start"]["accuracy"]

    import vlm_jax
    from vlm_jax.generate import main as generate_main

    final = tmp_path / "final"
    assert proc.checkpoint_sizes(final) == (32, 32)
    vlm = vlm_jax.load(final)
    image = sorted((tmp_path / "corpus" / "images" / "heldout").iterdir())[0]
    out = vlm.generate("<image>What is in the image? Answer:", [str(image)], max_new_tokens=4)
    assert len(out["token_ids"]) <= 4 and isinstance(out["text"], str)
    assert generate_main(["--ckpt", str(final), "--image", str(image), "--prompt", "<image>This is",
                          "--max-new-tokens", "4"]) == 0


def test_idefics2_training_refuses_a_byte_tokenizer_and_llava_module_names(tmp_path):
    """Bad Idefics2 training settings get one line before anything is built."""
    import importlib.util as iu
    import os

    from vlm_jax import cli
    from vlm_jax.train import train

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = iu.spec_from_file_location("idefics2_demo_cfg", os.path.join(root, "configs", "idefics2_demo.py"))
    module = iu.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.tokenizer = "byte"
    with pytest.raises(cli.UsageError, match="Idefics2 model needs a Hugging Face tokenizer folder"):
        train(c, str(tmp_path / "a"))
    c = module.get_config()
    c.frozen = "vision_tower"
    with pytest.raises(cli.UsageError, match="Idefics2Config's modules are vision_model, connector, text_model"):
        train(c, str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
