"""Idefics2-8B-base continued pre-training on the Multimodal-Textbook video clips, the original's recipe
(`training_idefics/run.sh`, `training/training.py`; /work/shared/reference/seed_protocol.md §4).

    python -m vlm_jax.train --config configs/idefics2_textbook_8b.py \
        --config.init_checkpoint=/ckpt/idefics2-8b-base --config.data.tokenizer=/ckpt/idefics2-8b-base \
        --config.data.shards=/data/textbook_clips --config.schedule_steps=<updates in the epoch> \
        --workdir /runs/idefics2_textbook_8b

Starts from idefics2-8b-base converted with `python -m vlm_jax.convert hf-to-orbax` (or the original's
from-scratch assembly, `hf-to-orbax --family idefics2 --vision DIR --llm DIR`); the corpus from
`python -m data_prep.convert --format textbook_clips`. Everything trains (`--freeze_backbone False`); lr 1e-6,
cosine, 3 % warmup, no weight decay, one epoch; bf16 compute on float32 master weights, full remat; rows of
max length 4096, one document per row (the original's batches; `data.packing="none"`), seeded shuffle (HF's
random sampler, `set_seed(42)`); images by the Idefics2 processor as the original configured it (no
splitting, longest edge 560, shortest 336; 980 for its `--high_res`: `--config.data.image_longest_edge=980`).
Batch: per-device 2 × gradient accumulation 128 × **8 devices assumed** (the original's one-node DeepSpeed
launch) = 2048 documents per update; on N devices keep 2048 and set grad_accum_steps = 2048 / (2 N) for the
same per-device microbatch. Loss: each device's token mean, averaged (HF Trainer under DeepSpeed,
`loss_normalization="per_device"`); gradient clipping at 1.0 (HF Trainer's default; the original's zero3.json
is not in its repository). A checkpoint every 80 updates, the last 10 kept.
Not the original's: at most 32 images per document (the original has no cap; 4096 tokens hold at most 62
image blocks of 66 tokens), and rows padded to 4096 tokens (the original pads to the batch's longest).
"""
from vlm_jax.training.config import base_config, required

DEVICES_ASSUMED = 8  # the original's per-device batch 2 x accumulation 128 x this


def get_config():
    c = base_config()
    c.workdir = "workdir/idefics2_textbook_8b"
    c.init_checkpoint = required("the converted idefics2-8b-base folder, from python -m vlm_jax.convert hf-to-orbax "
                                 "--hf idefics2-8b-base --out DIR")
    c.model_preset = "idefics2-8b-base"  # only used if init_checkpoint is left empty (compile checks, scratch runs)
    c.dtype = "bfloat16"
    c.param_dtype = "float32"
    c.remat_policy = "full"
    c.loss_chunk = 1024  # the LM head + cross-entropy 1024 positions at a time (never the full logits)
    c.memory = "auto"
    c.attention_impl = "pallas"
    c.frozen = ""  # full-model training
    c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
    c.grad_accum_steps = 128
    c.global_batch_size = 2 * c.grad_accum_steps * DEVICES_ASSUMED  # 2048
    c.loss_normalization = "per_device"
    c.num_train_steps = -1  # one pass over the data
    c.schedule_steps = 300  # estimate of the epoch's updates, for the cosine and its 3% warmup: set it
    c.optim.learning_rate = 1e-6
    c.optim.schedule = "cosine"
    c.optim.warmup_ratio = 0.03
    c.optim.min_lr_ratio = 0.0
    c.optim.weight_decay = 0.0
    c.optim.max_grad_norm = 1.0
    c.data.tokenizer = required("the idefics2-8b-base tokenizer folder (the converted folder holds it)")
    c.data.shards = required("the converted textbook clips corpus, the --out of python -m data_prep.convert "
                             "--format textbook_clips")
    c.data.seq_len = 4096
    c.data.packing = "none"
    c.data.shuffle = True
    c.data.seed = 42
    c.data.max_images = 32
    c.data.max_images_per_row = 32
    c.data.image_longest_edge = 560
    c.data.image_shortest_edge = 336
    c.data.num_epochs = 1
    c.data.num_workers = 8
    c.checkpoint.save_every = 80
    c.checkpoint.keep = 10
    c.log_every = 10
    c.seed = 42
    return c
