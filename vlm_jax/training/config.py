"""The training config: every field of `python -m vlm_jax.train --config configs/NAME.py`, with defaults.

A config file defines `get_config()` returning `base_config()` with its changes; any field can be
overridden on the command line (`--config.optim.learning_rate=1e-4`). `model_config` resolves the
model: the architecture of `init_checkpoint` (its config.json) or of `model_preset`, then
`model_overrides` deep-merged into `LlavaConfig.to_dict()`, then the run-time fields.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import ml_collections

from vlm_jax.models.config import LlavaConfig, preset


def base_config() -> ml_collections.ConfigDict:
    """All training fields with their defaults (documented inline)."""
    c = ml_collections.ConfigDict()
    c.workdir = "workdir/run"  # checkpoints/, metrics.jsonl, tensorboard/, final/ (overridden by --workdir)
    c.seed = 0  # parameter init

    # Model.
    c.model_preset = "tiny"  # vlm_jax.models.config.preset name; ignored when init_checkpoint is set
    c.model_overrides = ml_collections.ConfigDict()  # deep-merged into LlavaConfig.to_dict()
    c.init_checkpoint = ""  # params-format directory (vlm_jax.checkpoint) to start from
    c.dtype = "float32"  # compute dtype ("bfloat16" for bf16 compute on float32 master weights)
    c.param_dtype = "float32"
    c.attention_impl = "xla"  # "xla" | "cudnn" | "pallas"
    c.remat_policy = "none"  # "none" | "full" | "offload" (full, layer inputs in host memory) | "dots_saveable" | ...
    c.loss_chunk = 0  # positions per chunk of the LM head + cross-entropy (0: full [seq, vocab] logits)
    c.mlp_chunk = 0  # positions per chunk of the Llama MLP (0: all at once; must divide data.seq_len)
    # "fixed": the memory options as written | "auto": the fastest rung of vlm_jax.training.memory.LADDER
    # whose compiled step fits the device's HBM (devices without a reported limit, e.g. CPU: as written)
    c.memory = "fixed"
    c.frozen = "vision_tower"  # comma-separated top-level modules that do not train

    # Mesh: sizes of the (data, fsdp, tensor) axes; one may be -1 (= the remaining devices).
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})

    # Steps and batch.
    c.global_batch_size = 8  # packed rows per optimizer step, all processes together
    c.grad_accum_steps = 1  # microbatches per step (global_batch_size must divide by it)
    # "global": token mean over the whole global batch | "per_device": each device's (and microbatch's)
    # token mean, averaged over devices and microbatches (the original's; see vlm_jax.training.step)
    c.loss_normalization = "global"
    c.num_train_steps = 100  # -1: until the data ends (data.num_epochs epochs)
    c.schedule_steps = -1  # length of the LR schedule (warmup_ratio, cosine); -1: num_train_steps

    c.optim = ml_collections.ConfigDict({
        "learning_rate": 1e-4,
        "schedule": "constant",  # after warmup: "constant" | "cosine"
        "warmup_steps": -1,  # -1: ceil(warmup_ratio * schedule_steps)
        "warmup_ratio": 0.0,
        "min_lr_ratio": 0.0,  # cosine end value / learning_rate
        "weight_decay": 0.0,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "max_grad_norm": 1.0,  # 0: no clipping
        "moment_dtype": "float32",  # Adam moments stored as "float32" | "bfloat16" (updates computed in float32)
    })

    # Data (vlm_jax.data.LoaderConfig; image size, image tokens and image token id come from the model).
    c.data = ml_collections.ConfigDict({
        "shards": "",  # ArrayRecord paths / globs / directories / convert manifests, comma-separated
        "tokenizer": "byte",  # "byte" or a local Hugging Face tokenizer directory
        "seq_len": 512,  # packed row length (model_max_length)
        "max_images": 12,  # images kept per document
        "max_images_per_row": 12,  # image slots per packed row
        "image_aspect": "pad",  # "pad" (LLaVA expand2square) | "none"
        "preprocessor_config": "",  # a checkpoint's preprocessor_config.json (size, crop, mean, std)
        "num_epochs": 1,  # -1: repeat forever
        "seed": 0,  # shuffle seed
        "num_workers": 0,  # Grain worker processes (0: threads in the main process)
        "read_threads": 2,
    })

    c.checkpoint = ml_collections.ConfigDict({"save_every": 100, "keep": 5, "async_save": True})
    c.save_final_params = True  # write WORKDIR/final/ in the params format at the end
    c.log_every = 10  # console + throughput metrics every N steps (loss goes to metrics.jsonl every step)
    c.nan_policy = "stop"  # non-finite loss: "stop" with an error naming the step | "skip" the update
    c.peak_tflops_per_device = 0.0  # for MFU; 0: look up the device kind (unknown kinds: no MFU)
    c.progress_bar = True
    c.tensorboard = True

    # Held-out multiple-choice set (vlm_jax.training.heldout), scored before and after training.
    c.heldout = ml_collections.ConfigDict({"file": "", "batch_size": 32})

    # The CPU demo corpus (vlm_jax.demo_corpus), built when `build` is set into `dir` ("": WORKDIR/corpus);
    # heldout_per_class=0 builds no held-out questions (and leaves heldout.file as it is).
    c.demo_corpus = ml_collections.ConfigDict({
        "build": False, "dir": "", "train_documents": 600, "heldout_per_class": 10, "image_size": 64, "seed": 0})
    return c


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """`base` with `overrides` merged in, recursively for nested dicts; unknown keys are errors."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if key not in out:
            raise ValueError(f"model_overrides: unknown field {key!r}; known: {sorted(out)}")
        if isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def model_config(config: ml_collections.ConfigDict, architecture: LlavaConfig | None = None) -> LlavaConfig:
    """The LlavaConfig to train: `architecture` (from `init_checkpoint`) or the preset, with
    `model_overrides` and the run-time fields (dtype, param_dtype, attention_impl, remat_policy, mlp_chunk)."""
    base = architecture if architecture is not None else preset(config.model_preset)
    merged = LlavaConfig.from_dict(deep_merge(base.to_dict(), config.model_overrides.to_dict()))
    return merged.with_runtime(dtype=config.dtype, param_dtype=config.param_dtype,
                               attention_impl=config.attention_impl, remat_policy=config.remat_policy,
                               mlp_chunk=config.mlp_chunk)
