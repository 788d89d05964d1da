"""Train LLaVA or Idefics2: `python -m vlm_jax.train --config configs/NAME.py [--config.key=value ...] [--workdir DIR]`.

Builds the mesh and the sharded train state (fresh, from `init_checkpoint`, or resumed from the
latest checkpoint in WORKDIR/checkpoints together with the data iterator), then loops: next packed
batch -> global array -> jitted train step. Every step's loss goes to WORKDIR/metrics.jsonl; every
`log_every` steps also throughput (tokens/s, images/s, TFLOP/s, MFU) and loader counters, to the
console and TensorBoard. Rerunning the same command after an interruption continues exactly where
the last checkpoint left off. See `vlm_jax.training.config` for every field.

The model family (LLaVA or Idefics2, from the config's preset or the checkpoint's architecture) picks the
data pipeline's tokenization and image preprocessing (`vlm_jax.data.loader` `family`) and the held-out
scorer's prompts (`vlm_jax.inference.model.VLM`); everything else is one code path.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import flags, logging
from jax.sharding import NamedSharding, PartitionSpec

from vlm_jax import checkpoint as ckpt_lib
from vlm_jax import cli, config_file, paths
from vlm_jax.data import idefics2_processor
from vlm_jax.data.loader import loader_metrics, make_train_iterator
from vlm_jax.data.image import read_processor_settings
from vlm_jax.data.tokenizer import BYTE_SPEC, make_tokenizer
from vlm_jax.inference.model import VLM, idefics2_inputs
from vlm_jax.models.config import Idefics2Config
from vlm_jax.models.init import model_for
from vlm_jax.sharding import DEFAULT_RULES, batch_sharding, make_mesh
from vlm_jax.training import heldout as heldout_lib
from vlm_jax.training import aot
from vlm_jax.training import memory as memory_lib
from vlm_jax.training.config import batch_images, check_inputs, model_config as resolve_model_config
from vlm_jax.training.config import validate as validate_config
from vlm_jax.training.distributed import batch_divisor, global_batch, host_line, maybe_initialize_distributed
from vlm_jax.training.preemption import PreemptionFlag
from vlm_jax.training.profiling import StepProfiler
from vlm_jax.training.flops import peak_flops_per_device, train_step_flops
from vlm_jax.training.metrics import MetricsWriter, Throughput
from vlm_jax.training.optimizer import make_optimizer, make_schedule
from vlm_jax.training.params import IDEFICS2_MODULES, LLAVA_MODULES, count_params, parse_module_list
from vlm_jax.training.state import abstract_train_state, init_train_state, state_from_params
from vlm_jax.training.step import jit_train_step, token_losses, train_step_for



class NonFiniteLoss(cli.UserError, FloatingPointError):
    """The loss or gradient norm of a step was NaN or infinite (nan_policy="stop"): exit 1 at the command line."""


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _loader_config(config: ml_collections.ConfigDict, model_config, streams: int) -> dict[str, Any]:
    """`vlm_jax.data.LoaderConfig` fields for this process (`streams`: the run's data streams)."""
    d = config.data
    if config.global_batch_size % jax.process_count():
        raise cli.UsageError(f"global_batch_size={config.global_batch_size} must be a multiple of the "
                             f"{jax.process_count()} processes")
    if streams % jax.process_count() or config.global_batch_size % streams:
        raise cli.UsageError(f"{streams} data streams: the {jax.process_count()} processes must divide it and it "
                             f"must divide global_batch_size={config.global_batch_size} (data.streams; a resumed "
                             "run keeps the streams it started with)")
    shards = [s for s in d.shards.split(",") if s]
    return {
        "shards": tuple(shards),
        "batch_size": config.global_batch_size // jax.process_count(),
        "seq_len": d.seq_len,
        "max_images_per_row": d.max_images_per_row,
        "max_images": d.max_images,
        "num_image_tokens": model_config.num_image_tokens,
        "image_token_id": model_config.image_token_id,
        "tokenizer": d.tokenizer,
        "image_size": model_config.vision_config.image_size,
        "image_aspect": d.image_aspect,
        "preprocessor_config": d.preprocessor_config or None,
        "seed": d.seed,
        "num_epochs": None if d.num_epochs < 0 else d.num_epochs,
        "shuffle": d.shuffle,
        "packing": d.packing,
        "num_workers": d.num_workers,
        "read_threads": d.read_threads,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "family": "idefics2" if isinstance(model_config, Idefics2Config) else "llava",
        "image_longest_edge": d.image_longest_edge,
        "image_shortest_edge": d.image_shortest_edge,
        "streams": streams,
    }


def _check_tokenizer(tokenizer, model_config) -> None:
    if isinstance(model_config, Idefics2Config) and not hasattr(tokenizer, "path"):
        raise cli.UsageError(f"data.tokenizer={BYTE_SPEC!r}: an Idefics2 model needs a Hugging Face tokenizer folder "
                             "with <fake_token_around_image> and <image> (its checkpoint's; the demo's: "
                             "configs/idefics2_demo_tokenizer)")
    if tokenizer.vocab_size > model_config.text_config.vocab_size:
        raise cli.UsageError(f"data.tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                             f"{model_config.text_config.vocab_size}: give the model's own tokenizer")
    image_id = getattr(tokenizer, "image_token_id", None)
    if image_id is not None and image_id != model_config.image_token_id:
        raise cli.UsageError(f"data.tokenizer's <image> id {image_id} != the model's image_token_id "
                             f"{model_config.image_token_id}: give the model's own tokenizer")


def _schedule_steps(config) -> int:
    return config.schedule_steps if config.schedule_steps > 0 else config.num_train_steps


def _heldout_scorer(config, model, model_config, tokenizer, mesh, params_sharding):
    """A function params -> held-out metrics (None when no held-out file is configured)."""
    if not config.heldout.file:
        return None
    questions = heldout_lib.read_questions(config.heldout.file)
    if isinstance(model_config, Idefics2Config):  # the training run's own processor sizes
        sizes = {"longest_edge": config.data.image_longest_edge, "shortest_edge": config.data.image_shortest_edge}
        _, processor = idefics2_inputs(model_config, tokenizer, tuple(sizes.values()))
        vlm = VLM(model_config, None, tokenizer, sizes, processor=processor)
    else:
        image_settings = (read_processor_settings(config.data.preprocessor_config) if config.data.preprocessor_config
                          else {"image_size": model_config.vision_config.image_size})
        vlm = VLM(model_config, None, tokenizer, image_settings, aspect=config.data.image_aspect)
    rows = heldout_lib.choice_rows(questions, vlm)
    sharding = batch_sharding(mesh)
    # Every process holds all rows: each puts its own devices' part, and the NLLs come back replicated (readable
    # on every process, also when the mesh spans several).
    nll = jax.jit(lambda p, b: token_losses(model, p, b).sum(axis=-1), in_shardings=(params_sharding, sharding),
                  out_shardings=NamedSharding(mesh, PartitionSpec()))

    def put(batch):
        return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
                for k, v in batch.items()}

    def score(params):
        return heldout_lib.accuracy(questions, rows, lambda b: nll(params, put(b)),
                                    config.heldout.batch_size, batch_divisor(mesh))

    return score


def _build_demo_corpus(config, workdir: str) -> None:
    """Builds the demo corpus (once) into demo_corpus.dir (default WORKDIR/corpus) and points
    data.shards and, when it has questions, heldout.file at it."""
    from vlm_jax import demo_corpus

    d = config.demo_corpus

    def build():
        return demo_corpus.build(d.dir or paths.join(workdir, "corpus"), train_documents=d.train_documents,
                                 heldout_per_class=d.heldout_per_class, image_size=d.image_size, seed=d.seed)

    # Process 0 first; the others then reuse its corpus on a shared disk or build the same one on their own. The
    # wait is a barrier of the coordination service (a device collective would time out while process 0 builds).
    built = build() if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        import orbax.checkpoint as ocp

        ocp.multihost.sync_global_processes("vlm_jax demo corpus built", timeout=3600,
                                            processes=set(range(jax.process_count())))
    built = built or build()
    _log(demo_corpus.describe(built))
    with config.unlocked():
        config.data.shards = built["shards"]
        if d.heldout_per_class > 0:
            config.heldout.file = built["heldout"]


def build_step(config: ml_collections.ConfigDict, architecture, mesh) -> dict[str, Any]:
    """The pieces of a run that depend on the config's model and memory options: model_config, frozen,
    schedule, tx, abstract (state of ShapeDtypeStructs), shardings, step_fn (jitted, state donated)."""
    model_config = resolve_model_config(config, architecture)
    frozen = parse_module_list(config.frozen)
    schedule = make_schedule(config.optim, _schedule_steps(config))
    tx = make_optimizer(config.optim, schedule)
    abstract, shardings = abstract_train_state(model_config, frozen, tx, mesh, DEFAULT_RULES)
    step_fn = jit_train_step(
        train_step_for(config, model_for(model_config), tx, schedule, frozen=frozen, batch_shards=batch_divisor(mesh)),
        shardings, batch_sharding(mesh))
    return {"model_config": model_config, "frozen": frozen, "schedule": schedule, "tx": tx, "abstract": abstract,
            "shardings": shardings, "step_fn": step_fn}


def step_bytes(config: ml_collections.ConfigDict, architecture, mesh) -> float:
    """Device bytes the compiled train step of `config` needs (`memory_lib.compiled_bytes`); inf when the
    compiler itself reports that it does not fit."""
    parts = build_step(config, architecture, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        batch = aot.abstract_batch(config, parts["model_config"], sharding=batch_sharding(mesh))
        lowered = parts["step_fn"].lower(parts["abstract"], batch)
    try:
        return memory_lib.compiled_bytes(lowered.compile())
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "memory" in str(e).lower():
            return float("inf")
        raise


def train(config: ml_collections.ConfigDict, workdir: str, *, source: str = "the config") -> dict[str, Any]:
    """Runs (or resumes) training as `config` says; returns a summary dict (also printed as JSON).
    The config and the inputs it names are checked first (`source` names the config file in errors)."""
    validate_config(config, source)
    check_inputs(config, workdir)
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
    maybe_initialize_distributed(config.distributed)
    print(host_line(), flush=True)  # every host: which process it is and its devices
    config = ml_collections.ConfigDict(config.to_dict())  # a private copy
    workdir = paths.resolve(workdir)  # an absolute local path, or a URL (gs://...)
    architecture = ckpt_lib.load_config(config.init_checkpoint) if config.init_checkpoint else None
    model_config = resolve_model_config(config, architecture)
    frozen = parse_module_list(config.frozen)
    modules = IDEFICS2_MODULES if isinstance(model_config, Idefics2Config) else LLAVA_MODULES
    if set(frozen) - set(modules):
        raise cli.UsageError(f"frozen={config.frozen!r}: {type(model_config).__name__}'s modules are "
                             f"{', '.join(modules)}")
    try:
        mesh = make_mesh(**config.mesh)
    except ValueError as e:
        raise cli.UsageError(f"mesh {dict(config.mesh)} does not fit {jax.device_count()} devices ({e})") from e
    if config.global_batch_size % (batch_divisor(mesh) * config.grad_accum_steps):
        raise cli.UsageError(f"global_batch_size={config.global_batch_size} must be a multiple of data*fsdp "
                             f"({batch_divisor(mesh)}) x grad_accum_steps ({config.grad_accum_steps})")
    if config.data.seq_len < model_config.num_image_tokens + 2:
        raise cli.UsageError(f"data.seq_len={config.data.seq_len} cannot hold one image "
                             f"({model_config.num_image_tokens} tokens) and its text: make it larger")
    try:
        make_schedule(config.optim, _schedule_steps(config))  # checked before anything is built
    except ValueError as e:
        raise cli.UsageError(f"optim: {e}") from e
    tokenizer = make_tokenizer(config.data.tokenizer)
    _check_tokenizer(tokenizer, model_config)

    paths.makedirs(workdir)  # everything above is checked before anything is written
    if config.demo_corpus.build:
        _build_demo_corpus(config, workdir)
    checkpointer = ckpt_lib.TrainCheckpointer(paths.join(workdir, "checkpoints"),
                                              save_every=config.checkpoint.save_every, keep=config.checkpoint.keep,
                                              async_save=config.checkpoint.async_save)
    latest = checkpointer.latest_step()
    streams = config.data.streams or (latest is not None and checkpointer.stream_count(latest)) or jax.process_count()
    loader = make_train_iterator(_loader_config(config, model_config, streams), tokenizer)
    hbm = memory_lib.device_hbm_bytes(jax.devices()[0])
    if hbm is not None and config.memory == "auto":
        config, _, tried = memory_lib.choose(config, batch_divisor(mesh), lambda c: step_bytes(c, architecture, mesh),
                                             lambda need: need <= hbm)
        for name, need in tried:
            _log(f"memory: {name}: {need / 2**30:.2f} GiB of {hbm / 2**30:.2f} GiB HBM per device"
                 f"{'' if need <= hbm else ', does not fit'}")
    parts = build_step(config, architecture, mesh)
    model_config, tx, abstract, shardings, step_fn = (
        parts["model_config"], parts["tx"], parts["abstract"], parts["shardings"], parts["step_fn"])
    model = model_for(model_config)
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, ckpt_lib.RUN_CONFIG_FILE), json.dumps(
            {"train": config.to_dict(), "model": ckpt_lib.architecture_dict(model_config)}, indent=2))

    summary: dict[str, Any] = {"workdir": workdir}
    if latest is not None:
        state = checkpointer.restore(latest, abstract, loader)
        _log(f"resumed from {workdir}/checkpoints/{latest}")
    elif config.init_checkpoint:
        params = ckpt_lib.load_params(config.init_checkpoint, abstract.params)
        state = state_from_params(params, frozen, tx, shardings)
        _log(f"initialised from {config.init_checkpoint}")
    else:
        state = init_train_state(model_config, frozen, tx, shardings, jax.random.key(config.seed))
    start_step = int(jax.device_get(state.step))
    n_params = count_params(abstract.params)
    n_trained = count_params({k: v for k, v in abstract.params.items() if k not in frozen})
    _log(f"model: {n_params / 1e6:.2f}M params ({n_trained / 1e6:.2f}M trained, frozen: {list(frozen) or 'none'}); "
         f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].device_kind} device(s), "
         f"{jax.process_count()} process(es)")
    # The mesh context makes the models' activation constraints (logical names -> mesh axes) and the
    # per-shard Pallas attention apply inside the jitted functions.
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        score = _heldout_scorer(config, model, model_config, tokenizer, mesh, shardings.params)
        if score is not None:
            summary["heldout_start"] = score(state.params)
            _log(f"held-out at step {start_step}: {_fmt(summary['heldout_start'])}")

        state, loop_summary = _train_loop(config, workdir, model_config, frozen, mesh, state, start_step, loader,
                                          step_fn, checkpointer)
        summary.update(loop_summary)
        checkpointer.wait()
        checkpointer.close()
        if summary["preempted"]:  # exit promptly: the rerun continues from the checkpoint just saved
            return summary
        if score is not None:
            summary["heldout_end"] = score(state.params)
            _log(f"held-out at step {summary['final_step']}: {_fmt(summary['heldout_end'])}")
        if config.save_final_params:
            preprocessor_config = config.data.preprocessor_config
            if isinstance(model_config, Idefics2Config) and jax.process_index() == 0:  # the sizes it trained with
                preprocessor_config = idefics2_processor.write_preprocessor_config(
                    paths.join(workdir, idefics2_processor.PREPROCESSOR_FILE), config.data.image_longest_edge,
                    config.data.image_shortest_edge)
            ckpt_lib.save_params(paths.join(workdir, "final"), state.params, model_config,
                                 tokenizer=config.data.tokenizer, preprocessor_config=preprocessor_config)
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def _global_loader_metrics(loader) -> dict[str, int]:
    """The loader counters summed over all processes (a collective: every process calls it at the same step)."""
    local = loader_metrics(loader)
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    totals = multihost_utils.process_allgather(np.array(list(local.values()), np.int32)).sum(axis=0)
    return dict(zip(local, (int(n) for n in totals)))


def _progress(config, start_step: int, total: int | None):
    """A tqdm bar on process 0 when stdout is a terminal (pods and batch logs get log lines instead)."""
    if not config.progress_bar or jax.process_index() != 0 or not sys.stdout.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stdout)


def _train_loop(config, workdir, model_config, frozen, mesh, state, start_step, loader, step_fn, checkpointer):
    """The step loop. Metrics of step s are fetched after step s+1 is dispatched (the device never
    waits for the host), except at checkpoint steps, where they are checked before saving."""
    total = config.num_train_steps if config.num_train_steps >= 0 else None
    writer = MetricsWriter(workdir, start_step, tensorboard=config.tensorboard)
    bar = _progress(config, start_step, total)
    step_flops = train_step_flops(model_config, batch=config.global_batch_size, seq_len=config.data.seq_len,
                                  image_slots=config.data.max_images_per_row, frozen=frozen,
                                  image_size=batch_images(config, model_config)[0])
    peak = peak_flops_per_device(jax.devices()[0].device_kind, config.peak_tflops_per_device)
    throughput = Throughput()
    losses: list[float] = []
    pending: list[tuple[int, dict]] = []
    timed_from = None  # the first step is compile time: rates start after it

    def report(step: int, metrics: dict) -> None:
        nonlocal timed_from
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not m.pop("finite"):
            message = (f"non-finite loss at step {step} (loss {m['loss']}, grad_norm {m['grad_norm']})")
            if config.nan_policy == "stop":
                raise NonFiniteLoss(message + "; rerun resumes from the last checkpoint, or set "
                                              "--config.nan_policy=skip to skip such updates")
            _log(message + ": update skipped")
        losses.append(m["loss"])
        record = {k: m[k] for k in ("loss", "lr", "grad_norm", "loss_tokens")}
        if timed_from is None:
            timed_from = step
            throughput.rates()
        else:
            throughput.add(tokens=m["tokens"], images=m["images"], flops=step_flops, steps=1)
        if step % config.log_every == 0 or step == total:
            seconds, rates = throughput.rates()
            if rates:
                record.update(tokens_per_s=rates["tokens"], images_per_s=rates["images"],
                              tflops_per_s=rates["flops"] / 1e12, steps_per_s=rates["steps"])
                if peak:
                    record["mfu"] = rates["flops"] / (peak * jax.device_count())
            record.update({f"loader/{k}": v for k, v in _global_loader_metrics(loader).items()})
            if bar is None:
                _log(f"{time.strftime('%Y-%m-%d %H:%M:%S')} step {step}: "
                     + _fmt({k: v for k, v in record.items() if "/" not in k}))
        writer.write(step, record)
        if bar is not None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")

    step = start_step
    start_time = time.perf_counter()
    preemption = PreemptionFlag()
    profiler = StepProfiler(paths.join(workdir, "profile"), first_step=start_step + 2, steps=config.profile_steps)
    try:
        while total is None or step < total:
            if preemption.stop:
                _log(f"{preemption.signal_name} received: saved step {step}, exiting (rerun to continue)")
                break
            try:
                local = next(loader)
            except StopIteration:
                _log(f"data exhausted after step {step}")
                break
            profiler.before(step)
            state, metrics = step_fn(state, global_batch(local, mesh))
            step += 1
            profiler.after(step, metrics)
            preemption.poll()  # all processes agree on stopping here (one tiny collective with several)
            while pending:
                report(*pending.pop())
            if checkpointer.should_save(step) or preemption.stop:
                report(step, metrics)  # a non-finite step must not be saved
                checkpointer.save(step, state, loader, force=preemption.stop)
            else:
                pending.append((step, metrics))
        while pending:
            report(*pending.pop())
        if step > start_step and checkpointer.latest_step() != step:
            checkpointer.save(step, state, loader, force=True)
    finally:
        preemption.restore()
        profiler.stop()
        writer.close()
        if bar is not None:
            bar.close()
    summary = {"start_step": start_step, "final_step": step, "seconds": time.perf_counter() - start_time,
               "preempted": preemption.stop}
    if losses:
        k = max(1, len(losses) // 10)
        summary.update(first_loss=losses[0], last_loss=losses[-1], first_10pct_mean_loss=float(np.mean(losses[:k])),
                       last_10pct_mean_loss=float(np.mean(losses[-k:])))
    return state, summary


def compile_for_topology(config: ml_collections.ConfigDict, topology: str) -> int:
    """`--compile_topology`: compiles the train step for a TPU slice (`vlm_jax.training.aot`), prints a
    table and, as the last line, a JSON object; returns 0 if it fits the chip's HBM, else 1 (after one
    `does not fit: ...` line on stderr)."""
    from vlm_jax.topology import parse_slice

    if not os.environ.get("JAX_PLATFORMS"):  # nothing runs here: no accelerator backend needed
        jax.config.update("jax_platforms", "cpu")
    try:
        tpu_slice = parse_slice(topology)
    except ValueError as e:
        raise cli.UsageError(f"--compile_topology: {e}") from e
    architecture = None
    if config.init_checkpoint and paths.exists(paths.join(config.init_checkpoint, ckpt_lib.CONFIG_FILE)):
        architecture = ckpt_lib.load_config(config.init_checkpoint)
    mesh_shards = aot.batch_shards(config, tpu_slice)
    if config.global_batch_size % mesh_shards:
        raise cli.UsageError(f"--compile_topology {tpu_slice.name}: global_batch_size={config.global_batch_size} must "
                             f"be a multiple of data*fsdp ({mesh_shards}) on its {tpu_slice.chips} chips; e.g. "
                             f"--config.global_batch_size={mesh_shards} (1 row per chip)")
    config, report, tried = memory_lib.choose(
        config, mesh_shards, lambda c: aot.compile_train_step(c, resolve_model_config(c, architecture), tpu_slice),
        lambda r: r["fits"])
    report["memory_options"] = tried[-1][0]
    for name, r in tried[:-1]:
        print(f"memory: {name}: {r['per_chip_gib']:.2f} GiB per chip, does not fit", flush=True)
    print(aot.format_table(report), flush=True)
    if not report["fits"]:
        print(f"does not fit: train step on {tpu_slice.name} {report['reason']}", file=sys.stderr, flush=True)
    print(json.dumps(aot.summary_json(report)), flush=True)
    return 0 if report["fits"] else 1


PROG = "python -m vlm_jax.train"


def _define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "Run directory; overrides config.workdir.", flag_values=values)
    flags.DEFINE_integer("verbosity", None, "absl log level (0: INFO, with orbax's per-save lines; default WARNING)",
                         short_name="v", flag_values=values)
    flags.DEFINE_string("compile_topology", None, "Do not train: compile the train step for this TPU slice (v5p-8, "
                        "v5e-16, v4-8, v6e-8, v5p:2x2x1, 2xv5e-16; see vlm_jax.topology) on this machine, print the "
                        "memory per chip and exit 0 if it fits the chip's HBM, else 1. Needs libtpu "
                        "(pip install -e '.[tpu]'); JAX itself runs on CPU.", flag_values=values)


def parse_flags(argv: list[str]) -> flags.FlagValues:
    """Parses `--config FILE [--config.key=value ...] [--workdir DIR] [-v N]`; errors (missing or broken config
    file, unknown key with the closest valid one, bad value) are one line (`vlm_jax.cli`)."""
    return config_file.parse_flags(PROG, argv, define=_define_flags, config_help="Training config file (configs/NAME.py).")


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status (0, 1 bad input, 2 usage) after one `error:` line."""
    return cli.run(_main, argv, prog=PROG)


def _main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        print(f"flags: --config FILE (required), --config.FIELD=VALUE (any field of vlm_jax/training/config.py), "
              f"--workdir DIR, --verbosity N, --compile_topology SLICE\n{_CONFIG_FIELDS_HELP}")
        return 0
    values = parse_flags(argv)
    config = values.config
    source = values["config"].config_filename
    # Before any field is read; a compile-only run needs no checkpoint, tokenizer or data.
    validate_config(config, source, check_required=not values.compile_topology)
    logging.use_absl_handler()
    # Orbax logs every save step at INFO through absl; keep the console to our own lines (-v 0 shows them).
    logging.set_verbosity(logging.WARNING if values.verbosity is None else values.verbosity)
    if values.compile_topology:
        return compile_for_topology(config, values.compile_topology)
    summary = train(config, values.workdir or config.workdir, source=source)
    _log(json.dumps(summary, indent=2))
    return 0


_CONFIG_FIELDS_HELP = """main config fields (defaults in vlm_jax/training/config.py):
  init_checkpoint, model_preset, model_overrides   the model (a converted checkpoint, or a preset)
  data.shards, data.tokenizer, data.seq_len         ArrayRecord shards, tokenizer folder or 'byte', row length
  global_batch_size, grad_accum_steps, num_train_steps, schedule_steps
  optim.learning_rate, optim.schedule, optim.warmup_ratio, optim.weight_decay, optim.max_grad_norm
  mesh.data, mesh.fsdp, mesh.tensor                 device mesh (-1: the remaining devices)
  checkpoint.save_every, checkpoint.keep, frozen, dtype, attention_impl, remat_policy, nan_policy"""


if __name__ == "__main__":
    sys.exit(main())
