"""LLaVA-1.5-7B continued pre-training on the Multimodal-Textbook corpus, as the seed's run.

    python -m vlm_jax.train --config configs/llava_textbook_7b.py \
        --config.init_checkpoint=/ckpt/llava-v1.5-7b --config.data.shards=/data/textbook_shards \
        --config.data.tokenizer=/ckpt/llava-v1.5-7b-tokenizer --workdir /runs/textbook_7b

Starts from llava-v1.5-7b (a params-format checkpoint from `python -m vlm_jax.convert hf-to-orbax`);
the CLIP ViT-L/14-336 tower is frozen, the projector and the LM train; lr 2e-5, no weight decay,
3% linear warmup then constant; bf16 compute on float32 master weights; 32768-token packed rows,
at most 12 images per document; one epoch; a checkpoint every 100 steps, the last 5 kept; full remat.
Memory: the LM head and cross-entropy run in 4096-position chunks, the decoder layers' gradients are kept in
bf16 (the values they have anyway with bf16 compute); `memory="auto"` adds host offload of the
layer inputs, a chunked MLP and bfloat16 Adam moments, in that order, only as far as the slice's HBM needs
(`vlm_jax.training.memory`; README "Memory").
Set `schedule_steps` to the epoch's step count (the warmup is 3% of it) and the mesh to the slice.
"""
from vlm_jax.training.config import base_config, required


def get_config():
    c = base_config()
    c.workdir = "workdir/llava_textbook_7b"
    c.init_checkpoint = required("the converted llava-v1.5-7b folder, from python -m vlm_jax.convert hf-to-orbax "
                                 "--hf llava-v1.5-7b --out DIR")
    c.model_preset = "llava-1.5-7b"  # only used if init_checkpoint is left empty (from-scratch runs)
    c.dtype = "bfloat16"
    c.param_dtype = "float32"
    c.remat_policy = "full"
    c.loss_chunk = 4096  # the LM head + cross-entropy 4096 positions at a time (never the full logits)
    c.compute_dtype_grads = True  # the decoder layers' gradients in bf16 until the update (the same values)
    c.memory = "auto"  # offload / chunked MLP / bf16 moments only where the chips' HBM needs them
    c.attention_impl = "pallas"
    c.frozen = "vision_tower"
    c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
    # Packed 32k-token rows per update, matching the original's 16 documents per update (2 per GPU x 8,
    # configs/llava_textbook_7b_seed.py): a textbook document's up to 12 images fill a row's 12 image slots,
    # so rows hold about one document each and both configs make about as many updates per epoch.
    # Slices with fewer than 16 devices: raise grad_accum_steps (e.g. 2 on 8 devices for one row per device).
    c.global_batch_size = 16
    c.grad_accum_steps = 1
    c.num_train_steps = -1  # one pass over the data
    c.schedule_steps = 2000  # estimate of the epoch's steps, for the 3% warmup
    c.optim.learning_rate = 2e-5
    c.optim.schedule = "constant"
    c.optim.warmup_ratio = 0.03
    c.optim.weight_decay = 0.0
    c.optim.max_grad_norm = 1.0
    c.data.tokenizer = required("the llava-v1.5-7b tokenizer folder (the converted folder holds it)")
    c.data.shards = required("the converted textbook corpus folder, the --out of python -m data_prep.convert")
    c.data.seq_len = 32768
    c.data.max_images = 12
    c.data.max_images_per_row = 12
    c.data.num_epochs = 1
    c.data.num_workers = 8
    c.checkpoint.save_every = 100
    c.checkpoint.keep = 5
    c.log_every = 10
    return c
