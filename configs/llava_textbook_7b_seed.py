"""LLaVA-1.5-7B on the Multimodal-Textbook corpus with the original's batches and loss, seed-exact.

    python -m vlm_jax.train --config configs/llava_textbook_7b_seed.py \
        --config.init_checkpoint=/ckpt/llava-v1.5-7b --config.data.shards=/data/textbook_shards \
        --config.data.tokenizer=/ckpt/llava-v1.5-7b --workdir /runs/textbook_7b_seed

`configs/llava_textbook_7b.py` with the original's (`scripts/run_training.sh`, DeepSpeed ZeRO-3 on 8 GPUs)
batching instead of vlm_jax's packing: one document per row padded to 32768 tokens (`data.packing="none"`),
records in file order (`data.shuffle=False`), 2 documents per device on 8 devices (16 per update, no
accumulation), each device's token-mean loss averaged over devices (`loss_normalization="per_device"`,
HF's causal-LM loss under DeepSpeed), no gradient clipping (the original's zero3.json is not in its
repository; LLaVA's has no `gradient_clipping`). README "Training" compares the two configs.
"""
import os

from vlm_jax import config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    c = config_file.load(os.path.join(HERE, "llava_textbook_7b.py"))  # the packed recipe; its batching changes
    c.workdir = "workdir/llava_textbook_7b_seed"
    c.mesh = {"data": 1, "fsdp": 8, "tensor": 1}
    c.global_batch_size = 16  # 2 documents per device x 8 devices
    c.grad_accum_steps = 1
    c.loss_normalization = "per_device"
    c.optim.max_grad_norm = 0.0
    c.data.packing = "none"
    c.data.shuffle = False
    return c
