"""The training config: every field of `python -m vlm_jax.train --config configs/NAME.py`, with defaults.

A config file defines `get_config()` returning `base_config()` with its changes; any field can be
overridden on the command line (`--config.optim.learning_rate=1e-4`). `model_config` resolves the
model: the architecture of `init_checkpoint` (its config.json) or of `model_preset`, then
`model_overrides` deep-merged into its `to_dict()` (LlavaConfig or Idefics2Config: the family follows the
architecture), then the run-time fields.

`validate(config)` checks a config before anything is built: unknown fields (with the closest valid one),
types, ranges and finiteness, and the fields a config file marks `required(...)`; `check_inputs(config)`
checks that the files and folders it names exist and are of the right kind. Both raise one-line
`vlm_jax.cli` errors (exit 2 for settings, 1 for missing inputs).
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable, Mapping

import ml_collections

from vlm_jax import cli, paths
from vlm_jax.models.config import (ATTENTION_IMPLS, DTYPES, PRESETS, REMAT_POLICY_NAMES, Idefics2Config, LlavaConfig,
                                   model_config_from_dict, preset)

REQUIRED = "REQUIRED: "  # the value of a field a config file leaves for the command line (see `required`)


def required(what: str) -> str:
    """The value of a string field the user must set: `c.init_checkpoint = required("the converted ...")`.
    `validate` names every such field and `what` to put there."""
    return REQUIRED + what


def base_config() -> ml_collections.ConfigDict:
    """All training fields with their defaults (documented inline)."""
    c = ml_collections.ConfigDict()
    c.workdir = "workdir/run"  # checkpoints/, metrics.jsonl, tensorboard/, final/ (overridden by --workdir)
    c.seed = 0  # parameter init

    # Model.
    c.model_preset = "tiny"  # vlm_jax.models.config.preset name; ignored when init_checkpoint is set
    c.model_overrides = ml_collections.ConfigDict()  # deep-merged into the architecture's to_dict()
    c.init_checkpoint = ""  # params-format directory (vlm_jax.checkpoint) to start from
    c.dtype = "float32"  # compute dtype ("bfloat16" for bf16 compute on float32 master weights)
    c.param_dtype = "float32"
    c.attention_impl = "xla"  # "xla" | "cudnn" | "pallas"
    c.remat_policy = "none"  # "none" | "full" | "offload" (full, layer inputs in host memory) | "dots_saveable" | ...
    # loss positions per chunk (of one device's rows) of the LM head + cross-entropy; the head runs only on
    # positions with a loss, and chunks with none left are skipped (0: one chunk of all of them)
    c.loss_chunk = 0
    c.mlp_chunk = 0  # positions per chunk of the Llama MLP (0: all at once; must divide data.seq_len)
    # True: the decoder layers' gradients stay in the compute dtype until the update (half the gradient
    # memory in bf16; the same values, see vlm_jax.training.step.make_train_step; not with accumulation
    # unless compute_dtype_grads_accum: then each microbatch's are, added to the float32 accumulator)
    c.compute_dtype_grads = False
    c.compute_dtype_grads_accum = False
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
        "shards": "",  # converted corpus folders (python -m data_prep.convert --out), comma-separated
        "tokenizer": "byte",  # "byte" or a local Hugging Face tokenizer directory
        "seq_len": 512,  # packed row length (model_max_length)
        "max_images": 12,  # images kept per document
        "max_images_per_row": 12,  # image slots per packed row
        "image_aspect": "pad",  # LLaVA: "pad" (expand2square) | "none"
        "preprocessor_config": "",  # LLaVA: a checkpoint's preprocessor_config.json (size, crop, mean, std)
        # Idefics2: the processor's resize (the original's 560 / 336; its --high_res: 980); images are padded to
        # image_longest_edge² with a pixel mask
        "image_longest_edge": 560,
        "image_shortest_edge": 336,
        "num_epochs": 1,  # -1: repeat forever
        "seed": 0,  # shuffle seed
        "shuffle": True,  # False: records in file order (the original's sequential sampler)
        "packing": "best_fit",  # "best_fit" packs documents into rows | "none": one padded document per row
        "num_workers": 0,  # Grain worker processes (0: threads in the main process)
        "read_threads": 2,
        # Independent record streams (vlm_jax.data.loader): the batches depend on this, not on the process
        # count; any process count dividing it resumes the run. 0: the process count of the run's first start.
        "streams": 0,
    })

    c.checkpoint = ml_collections.ConfigDict({"save_every": 100, "keep": 5, "async_save": True})
    c.save_final_params = True  # write WORKDIR/final/ in the params format at the end
    c.log_every = 10  # console + throughput metrics every N steps (loss goes to metrics.jsonl every step)
    c.nan_policy = "stop"  # non-finite loss: "stop" with an error naming the step | "skip" the update
    c.peak_tflops_per_device = 0.0  # for MFU; 0: look up the device kind (unknown kinds: no MFU)
    c.progress_bar = True  # a tqdm bar on process 0 when stdout is a terminal; else a log line every log_every
    c.distributed = "auto"  # "auto": join a multi-process job when one is detected (training.distributed); "off"
    c.profile_steps = 0  # > 0: a jax.profiler trace of this many steps after warm-up into WORKDIR/profile
    c.compilation_cache_dir = ""  # a persistent XLA compilation cache directory ("": none)
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
            raise cli.UsageError(f"model_overrides: unknown field {key!r}{cli.did_you_mean(key, out)} "
                                 f"(known: {', '.join(sorted(out))})")
        if isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def model_config(config: ml_collections.ConfigDict, architecture=None) -> "LlavaConfig | Idefics2Config":
    """The model config (LlavaConfig or Idefics2Config) to train: `architecture` (from `init_checkpoint`) or the preset, with
    `model_overrides` and the run-time fields (dtype, param_dtype, attention_impl, remat_policy, mlp_chunk)."""
    base = architecture if architecture is not None else preset(config.model_preset)
    try:
        merged = model_config_from_dict(deep_merge(base.to_dict(), config.model_overrides.to_dict()))
        return merged.with_runtime(dtype=config.dtype, param_dtype=config.param_dtype,
                                   attention_impl=config.attention_impl, remat_policy=config.remat_policy,
                                   mlp_chunk=config.mlp_chunk)
    except cli.UserError:
        raise
    except (TypeError, ValueError) as e:
        raise cli.UsageError(f"model_overrides: {cli.one_line(e)}") from e


def _int(lo: int | None = None, *, special: tuple = (), choices: tuple = ()) -> Callable[[Any], str | None]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {type(v).__name__} {v!r}"
        if v in special:
            return None
        if lo is not None and v < lo:
            extra = f" (or {' or '.join(map(str, special))})" if special else ""
            return f"must be >= {lo}{extra}"
        return None
    return check


def _float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be a number, got {type(v).__name__} {v!r}"
        if not math.isfinite(v):
            return "must be a finite number"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and (v >= hi if hi_open else v > hi):
            return f"must be {'<' if hi_open else '<='} {hi}"
        return None
    return check


def _choice(*choices: str) -> Callable[[Any], str | None]:
    def check(v):
        if v in choices:
            return None
        hint = cli.did_you_mean(v, choices) if isinstance(v, str) else ""
        return f"must be one of {', '.join(choices)}{hint}"
    return check


def _bool(v) -> str | None:
    return None if isinstance(v, bool) else f"must be True or False, got {v!r}"


def _str(v) -> str | None:
    return None if isinstance(v, str) else f"must be a string, got {type(v).__name__} {v!r}"


def _nonempty_str(v) -> str | None:
    return _str(v) or (None if v.strip() else "must not be empty")


def _modules(v) -> str | None:
    from vlm_jax.training.params import MODULES

    if not isinstance(v, str):
        return f"must be a comma-separated string of module names, got {v!r}"
    unknown = [n.strip() for n in v.split(",") if n.strip() and n.strip() not in MODULES]
    if unknown:
        return f"has unknown module {unknown[0]!r}{cli.did_you_mean(unknown[0], MODULES)} " \
               f"(known: {', '.join(MODULES)})"
    return None


_MESH_AXIS = _int(1, special=(-1,))

# One rule per field of base_config() (fields added later without a rule are checked for their type only).
RULES: dict[str, Callable[[Any], str | None]] = {
    "workdir": _nonempty_str, "seed": _int(),
    "model_preset": _choice(*PRESETS), "init_checkpoint": _str,
    "dtype": _choice(*DTYPES), "param_dtype": _choice(*DTYPES), "attention_impl": _choice(*ATTENTION_IMPLS),
    "remat_policy": _choice(*REMAT_POLICY_NAMES), "frozen": _modules,
    "mesh.data": _MESH_AXIS, "mesh.fsdp": _MESH_AXIS, "mesh.tensor": _MESH_AXIS,
    "global_batch_size": _int(1), "grad_accum_steps": _int(1),
    "loss_chunk": _int(0), "mlp_chunk": _int(0), "compute_dtype_grads": _bool,
    "compute_dtype_grads_accum": _bool, "memory": _choice("fixed", "auto"),
    "loss_normalization": _choice("global", "per_device"), "optim.moment_dtype": _choice("float32", "bfloat16"),
    "num_train_steps": _int(0, special=(-1,)), "schedule_steps": _int(1, special=(-1,)),
    "optim.learning_rate": _float(0.0), "optim.schedule": _choice("constant", "cosine"),
    "optim.warmup_steps": _int(0, special=(-1,)), "optim.warmup_ratio": _float(0.0, 1.0),
    "optim.min_lr_ratio": _float(0.0, 1.0), "optim.weight_decay": _float(0.0),
    "optim.b1": _float(0.0, 1.0, hi_open=True), "optim.b2": _float(0.0, 1.0, hi_open=True),
    "optim.eps": _float(0.0, lo_open=True), "optim.max_grad_norm": _float(0.0),
    "data.shards": _str, "data.tokenizer": _nonempty_str, "data.seq_len": _int(1), "data.max_images": _int(0),
    "data.max_images_per_row": _int(1), "data.image_aspect": _choice("pad", "none"),
    "data.image_longest_edge": _int(1), "data.image_shortest_edge": _int(1),
    "data.shuffle": _bool, "data.packing": _choice("best_fit", "none"),
    "data.preprocessor_config": _str, "data.num_epochs": _int(1, special=(-1,)), "data.seed": _int(),
    "data.num_workers": _int(0), "data.read_threads": _int(1), "data.streams": _int(0),
    "checkpoint.save_every": _int(1), "checkpoint.keep": _int(1), "checkpoint.async_save": _bool,
    "save_final_params": _bool, "log_every": _int(1), "nan_policy": _choice("stop", "skip"),
    "peak_tflops_per_device": _float(0.0), "progress_bar": _bool, "tensorboard": _bool,
    "distributed": _choice("auto", "off"), "profile_steps": _int(0), "compilation_cache_dir": _str,
    "heldout.file": _str, "heldout.batch_size": _int(1),
    "demo_corpus.build": _bool, "demo_corpus.dir": _str, "demo_corpus.train_documents": _int(1),
    "demo_corpus.heldout_per_class": _int(0), "demo_corpus.image_size": _int(8), "demo_corpus.seed": _int(),
}
FREE_FORM = ("model_overrides",)  # checked when the model config is resolved (`deep_merge`)


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        path = prefix + key
        if hasattr(value, "items") and path not in FREE_FORM:
            out.update(_flat(value, path + "."))
        else:
            out[path] = value
    return out


def validate(config: ml_collections.ConfigDict, source: str = "the config", *, check_required: bool = True) -> None:
    """Checks every field of a training config before anything is built: unknown fields (with the closest
    valid one), types, ranges, finiteness, cross-field rules, and fields the config file marks `required(...)`.
    Raises `cli.UsageError` with one line naming every problem (`source` names the config file)."""
    base = _flat(base_config())
    fields = _flat(config)
    problems = []
    for path in fields:
        if path not in base:
            problems.append(f"unknown field {path!r}{cli.did_you_mean(path, base)}")
    missing = [path for path, v in fields.items() if isinstance(v, str) and v.startswith(REQUIRED)]
    for path, value in fields.items():
        if path not in base or path in missing:
            continue
        rule = RULES.get(path)
        problem = rule(value) if rule else _same_type(value, base[path])
        if problem:
            problems.append(f"{path}={value!r} {problem}")
    if not problems:
        problems += _cross_field_problems(config)
    if problems:
        raise cli.UsageError(f"{source}: " + "; ".join(problems))
    if missing and check_required:
        needs = "; ".join(f"--config.{path}=... ({fields[path][len(REQUIRED):]})" for path in missing)
        raise cli.UsageError(f"{source} needs {len(missing)} field{'s' * (len(missing) > 1)} set on the command "
                             f"line: {needs}")


def _same_type(value: Any, default: Any) -> str | None:
    if default is None or isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int)):
        return None
    return f"must be a {type(default).__name__} like the default {default!r}"


def _cross_field_problems(config: ml_collections.ConfigDict) -> list[str]:
    problems = []
    if config.data.streams and config.global_batch_size % config.data.streams:
        problems.append(f"global_batch_size={config.global_batch_size} must be a multiple of "
                        f"data.streams={config.data.streams}")
    if config.global_batch_size % config.grad_accum_steps:
        problems.append(f"global_batch_size={config.global_batch_size} must be a multiple of "
                        f"grad_accum_steps={config.grad_accum_steps}")
    if [config.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) > 1:
        problems.append(f"mesh {dict(config.mesh)}: at most one axis may be -1")
    if config.num_train_steps == -1 and config.data.num_epochs == -1:
        problems.append("num_train_steps=-1 (until the data ends) needs data.num_epochs >= 1 (it is -1: forever)")
    if config.num_train_steps == -1 and config.schedule_steps == -1 and (
            config.optim.schedule == "cosine" or config.optim.warmup_steps == -1 and config.optim.warmup_ratio > 0):
        problems.append("num_train_steps=-1 needs schedule_steps >= 1 for a cosine schedule or a warmup_ratio")
    if not config.data.shards and not config.demo_corpus.build:
        problems.append("data.shards is empty: give converted corpus folders (python -m data_prep.convert) "
                        "or set demo_corpus.build=True")
    if config.mlp_chunk and config.data.seq_len % config.mlp_chunk:
        problems.append(f"mlp_chunk={config.mlp_chunk} must divide data.seq_len={config.data.seq_len}")
    if config.data.image_shortest_edge > config.data.image_longest_edge:
        problems.append(f"data.image_shortest_edge={config.data.image_shortest_edge} must be <= "
                        f"data.image_longest_edge={config.data.image_longest_edge}")
    if config.data.max_images > config.data.max_images_per_row:
        problems.append(f"data.max_images={config.data.max_images} must be <= data.max_images_per_row="
                        f"{config.data.max_images_per_row} (a document's images must fit one row)")
    return problems


def check_inputs(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The files and folders a (validated) config names exist and are of the right kind; `cli.InputError`
    (exit 1) naming the field and the path otherwise. The workdir and init_checkpoint may be URLs
    (`vlm_jax.paths`: gs://...); the other inputs are read by local-file readers (`cli.UsageError` for a URL).
    Shards built by the demo corpus are not checked."""
    from vlm_jax.checkpoint import CONFIG_FILE

    paths.check(workdir, "--workdir")
    paths.check(config.init_checkpoint, "init_checkpoint")
    for what, path, why in (
            ("data.tokenizer", config.data.tokenizer, "a tokenizer folder"),
            ("data.preprocessor_config", config.data.preprocessor_config, "read before the run starts"),
            ("heldout.file", config.heldout.file, "its questions name local image files"),
            ("demo_corpus.dir", config.demo_corpus.dir, "the demo corpus is ArrayRecord shards"),
            *(("data.shards", shard, "ArrayRecord files are read with random access by a local-file reader")
              for shard in config.data.shards.split(","))):
        paths.require_local(path, what, why)
    if config.demo_corpus.build and not config.demo_corpus.dir and paths.is_remote(workdir):
        raise cli.UsageError(f"--workdir {workdir}: the demo corpus (ArrayRecord shards, local files only) is built "
                             "in WORKDIR/corpus by default; give a local --config.demo_corpus.dir")
    if not paths.is_remote(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise cli.InputError(f"--workdir {workdir}: is a file, expected a folder (give a new or existing run folder)")
    if config.init_checkpoint:
        fix = "give a params checkpoint folder (python -m vlm_jax.convert hf-to-orbax --out DIR)"
        if not paths.is_remote(config.init_checkpoint):
            cli.require_dir(config.init_checkpoint, "init_checkpoint", fix)
        elif not paths.isdir(config.init_checkpoint):
            raise cli.InputError(f"init_checkpoint {config.init_checkpoint}: no such folder; {fix}")
        if not paths.isfile(paths.join(config.init_checkpoint, CONFIG_FILE)):
            raise cli.InputError(f"init_checkpoint {config.init_checkpoint}: no {CONFIG_FILE}, not a vlm_jax params "
                                 "checkpoint (convert one with python -m vlm_jax.convert hf-to-orbax)")
    if config.data.tokenizer != "byte":
        from vlm_jax.data.tokenizer import check_tokenizer_folder

        check_tokenizer_folder(config.data.tokenizer, "data.tokenizer")
    if not config.demo_corpus.build:
        import glob

        for shard in (s for s in config.data.shards.split(",") if s):
            if not glob.has_magic(shard) and not os.path.exists(shard):
                raise cli.InputError(f"data.shards {shard}: no such folder (give a converted corpus folder, the "
                                     "--out of python -m data_prep.convert)")
    if config.heldout.file and not (config.demo_corpus.build and config.demo_corpus.heldout_per_class > 0):
        cli.require_file(config.heldout.file, "heldout.file")
    if config.data.preprocessor_config:
        cli.require_file(config.data.preprocessor_config, "data.preprocessor_config")


def batch_images(config: ml_collections.ConfigDict, model_config) -> tuple[int, bool]:
    """(side of the batch's square pixel_values, whether the batch has pixel_attention_mask) for the model's
    family: LLaVA's vision image size (the loader's crop), or Idefics2's `data.image_longest_edge` (every image
    zero-padded to it, with the mask)."""
    if isinstance(model_config, Idefics2Config):
        return config.data.image_longest_edge, True
    return model_config.vision_config.image_size, False
