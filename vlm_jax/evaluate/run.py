"""One few-shot evaluation run: questions + demonstration pool → prompts (RICES or random demonstrations, turns
from the benchmark registry) → data-parallel batched generation → predictions JSONL + scores JSON.

Every process builds all prompts (cheap; RICES embeddings are cached on disk), generates its own contiguous
shard of each chunk of questions on its local devices, and the shards are gathered back in question order;
process 0 appends each chunk's records to the predictions file as soon as it is done, so an interrupted run
resumes from that file (questions already answered with the same prompt are not generated again).
"""
from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict
from tqdm import tqdm

import vlm_jax
from vlm_jax import paths
from vlm_jax.checkpoint import load_config
from vlm_jax.data.tokenizer import Tokenizer
from vlm_jax.evaluate import registry, rices
from vlm_jax.evaluate.batched_generation import Request, generate_requests
from vlm_jax.evaluate.examples import BenchmarkFileError, Example, sample_query_set
from vlm_jax.evaluate.judge import math_judge
from vlm_jax.evaluate.pixels import load_pixels
from vlm_jax.evaluate.predictions import (append_records, read_partial_records, write_json_atomic,
                                         write_jsonl_atomic)
from vlm_jax.evaluate.prompt_tokens import load_tokenizer, prompt_token_ids
from vlm_jax.evaluate.prompts import Prompt, build_prompt
from vlm_jax.evaluate.run_config import NTK_FACTOR, check_config, max_new_tokens, uses_ntk_rope
from vlm_jax.inference.generation import gather_rows, local_data_mesh, process_slice
from vlm_jax.inference.model import load
from vlm_jax.models.config import Idefics2Config, LlavaConfig, RopeScaling
from vlm_jax.models.llava import Llava


def _is_same_question(a: Example, b: Example) -> bool:
    return a.benchmark == b.benchmark and a.qid == b.qid


def select_demonstrations(config: ConfigDict, queries: Sequence[Example], pool: Sequence[Example],
                          embedder=None) -> list[list[Example]]:
    """The demonstrations of each query in prompt order (`config.shots` of them).

    rices: the most similar pool images by `embedder = (embed_fn, model_id)`, most similar last; random:
    `rices.random_indices` seeded by (config.seed, query index); random_select: the original's math mode
    (`rices.random_select_indices`, draw order). A pool entry that is the query itself (pool and questions
    from one file) is never a demonstration: one extra candidate is drawn and the query dropped.
    `include_self_first` then puts the query itself first (`rices.demonstrations`).
    """
    k = config.shots
    if k == 0:
        return [[] for _ in queries]
    pool_ids = {(e.benchmark, e.qid) for e in pool}
    extra = int(any((q.benchmark, q.qid) in pool_ids for q in queries))
    fetch = min(k + extra, len(pool))
    if config.demo_selection == "rices":
        embed_fn, model_id = embedder
        cache_dir = config.rices.cache_dir or paths.join(config.output_dir, "rices_cache")
        embed = lambda examples: rices.embed_images(  # noqa: E731
            [e.image_path for e in examples], embed_fn, model_id=model_id, cache_dir=cache_dir,
            batch_size=config.rices.batch_size)
        candidates = rices.rices_indices(embed(pool), embed(queries), fetch)  # most similar last
    elif config.demo_selection == "random_select":
        candidates = rices.random_select_indices(len(pool), fetch, config.seed, len(queries))
    else:
        candidates = [rices.random_indices(len(pool), fetch, config.seed, i) for i in range(len(queries))]
    chosen = []
    for query, indices in zip(queries, candidates):
        indices = [i for i in indices if not _is_same_question(pool[i], query)]
        indices = indices[-k:] if config.demo_selection == "rices" else indices[:k]
        if len(indices) < k:
            raise ValueError(f"question {query.qid}: only {len(indices)} demonstrations for {k} shots "
                             f"(pool of {len(pool)})")
        chosen.append(rices.demonstrations(pool, indices, query, config.include_self_first))
    return chosen


def output_stem(config: ConfigDict) -> str:
    """File name stem of a run's outputs: `okvqa_4shot_rices[_self]`."""
    return (f"{config.benchmark}_{config.shots}shot_{config.demo_selection}"
            + ("_self" if config.include_self_first else ""))


def load_questions_and_pool(config: ConfigDict) -> tuple[list[Example], list[Example], list[Example]]:
    """(every example of the eval split (scored), the ones generated for (the first `num_queries`), the
    demonstration pool: the whole demo split for RICES with rices.pool="all" and for random_select, else a
    seeded sample of `query_set_size`; empty for 0 shots)."""
    benchmark = registry.get(config.benchmark)
    examples = registry.load_split(config.eval_split, "config.eval_split")
    queries = [e for e in examples if benchmark.generated(e)]
    if config.num_queries:
        queries = queries[:config.num_queries]
        examples = queries
    if not queries:
        raise ValueError("config.eval_split has no questions")
    pool: list[Example] = []
    if config.shots:
        pool = registry.load_split(config.demo_split, "config.demo_split")
        whole = config.demo_selection == "random_select" or (
            config.demo_selection == "rices" and config.rices.pool == "all")
        if not whole:
            pool = sample_query_set(pool, config.query_set_size, config.seed)
    return examples, queries, pool


def build_prompts(config: ConfigDict, queries: Sequence[Example], demos: Sequence[Sequence[Example]]) -> list[Prompt]:
    """Each query's prompt: its demonstrations' turns then its own, laid out by `config.prompt_template`."""
    benchmark = registry.get(config.benchmark)
    return [build_prompt(registry.turns_for(benchmark, q, d, config.protocol, config.include_self_first),
                         config.prompt_template) for q, d in zip(queries, demos)]


def model_config_for_run(config: ConfigDict, ckpt: Path) -> LlavaConfig:
    """The checkpoint's model config with the run's dtype / attention, and dynamic NTK RoPE (factor 3) when
    `uses_ntk_rope` (the original: shots >= 8)."""
    model_config = load_config(ckpt, dtype=config.dtype, attention_impl=config.attention_impl)
    if uses_ntk_rope(config):
        text = dataclasses.replace(model_config.text_config,
                                   rope_scaling=RopeScaling(rope_type="dynamic", factor=NTK_FACTOR))
        model_config = dataclasses.replace(model_config, text_config=text)
    return model_config


def generate_answers(config: ConfigDict, params, model_config: LlavaConfig, tokenizer: Tokenizer,
                     settings: dict, prompts: Sequence[Prompt], mesh: Mesh, progress=None) -> list[str]:
    """The decoded generation of every prompt, in order, on every process: this process generates its
    `process_slice` of the prompts data-parallel over `mesh`, `gather_rows` collects all of them."""
    requests = [Request(tuple(prompt_token_ids(p, tokenizer, model_config.image_token_id,
                                               model_config.num_image_tokens)), p.image_paths) for p in prompts]
    shard = process_slice(len(requests))
    pad = model_config.pad_token_id if model_config.pad_token_id is not None else tokenizer.pad_id
    new_tokens = max_new_tokens(config)
    rows = generate_requests(
        Llava(model_config), params, [requests[i] for i in shard], mesh=mesh, batch_size=config.batch_size,
        max_images=config.shots + 1,
        load_pixels=lambda files: load_pixels(files, settings, config.image_aspect_ratio),
        max_new_tokens=new_tokens, eos_token_id=tokenizer.eos_id, pad_token_id=pad,
        temperature=config.temperature, top_p=config.top_p, seed=config.seed, progress=progress)
    rows = gather_rows(rows, shard, len(requests), new_tokens)
    return [tokenizer.decode([t for t in row if t != tokenizer.eos_id]).strip() for row in rows]


def _embedder(config: ConfigDict, ckpt: Path, mesh: Mesh):
    from vlm_jax.evaluate.clip_embed import checkpoint_embedder, hf_clip_embedder
    if config.rices.encoder == "model":
        return checkpoint_embedder(ckpt, batch_size=config.rices.batch_size, aspect=config.image_aspect_ratio,
                                   mesh=mesh)
    return hf_clip_embedder(config.rices.clip_path, batch_size=config.rices.batch_size, mesh=mesh)


def run_settings(config: ConfigDict, ckpt: Path, pool_size: int) -> dict:
    """Every setting of a run, resolved, for `scores.json`."""
    return {"config": config.to_dict(), "ckpt": str(ckpt), "protocol": config.protocol, "shots": config.shots,
            "demo_selection": config.demo_selection, "seed": config.seed, "dtype": config.dtype,
            "rices_encoder": (config.rices.encoder if config.shots and config.demo_selection == "rices" else None),
            "pool_size": pool_size, "max_new_tokens": max_new_tokens(config),
            "rope_scaling": f"dynamic(factor={NTK_FACTOR})" if uses_ntk_rope(config) else "checkpoint",
            "vlm_jax_version": vlm_jax.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_evaluation(config: ConfigDict, ckpt: str | Path, devices: Sequence[jax.Device] | None = None) -> dict:
    """Runs the evaluation `config` describes on checkpoint `ckpt` (on `devices`, default all local ones) and
    returns the scores dict (the scorer's summary plus `settings`); process 0 writes
    `OUTPUT_DIR/<stem>.predictions.jsonl` (per question: question_id, prompt, answer = the raw generation,
    demo_ids, ground_truth, extracted, score) and `OUTPUT_DIR/<stem>.scores.json`. A predictions file left by
    an interrupted run with the same prompts is resumed."""
    check_config(config)
    ckpt = paths.as_path(ckpt)  # a local folder or a URL (gs://...)
    stored = load_config(ckpt)
    if isinstance(stored, Idefics2Config):  # the model family picks the protocol: the original's Idefics2 one
        from vlm_jax.evaluate import idefics2_protocol

        return idefics2_protocol.run_evaluation(config, ckpt, stored)
    started = time.time()
    benchmark = registry.get(config.benchmark)
    model_config = model_config_for_run(config, ckpt)
    tokenizer = load_tokenizer(config.tokenizer, ckpt)
    judge = math_judge(config.scorer, benchmark.judged)  # a missing judge URL fails before any generation
    examples, queries, pool = load_questions_and_pool(config)
    mesh = local_data_mesh(devices)
    embedder = _embedder(config, ckpt, mesh) if config.shots and config.demo_selection == "rices" else None
    demos = select_demonstrations(config, queries, pool, embedder)
    prompts = build_prompts(config, queries, demos)

    out_dir = paths.resolve(config.output_dir)
    predictions_path = paths.join(out_dir, f"{output_stem(config)}.predictions.jsonl")
    done = read_partial_records(predictions_path)
    for q, p in zip(queries, prompts):
        if q.qid in done and done[q.qid].get("prompt") != p.render():
            raise BenchmarkFileError(f"{predictions_path}: question_id {q.qid} was generated with another prompt "
                                     "(other settings); delete the file or set config.output_dir elsewhere")
    todo = [i for i, q in enumerate(queries) if q.qid not in done]
    answers = {q.qid: done[q.qid]["answer"] for q in queries if q.qid in done}
    if todo:
        replicated = NamedSharding(mesh, PartitionSpec())
        # The inference handle: params replicated on the mesh, the checkpoint's image settings.
        vlm = load(ckpt, dtype=config.dtype, attention_impl=config.attention_impl, tokenizer=tokenizer,
                   aspect=config.image_aspect_ratio, sharding=replicated)
        params, settings = vlm.params, vlm.image_settings
        if jax.process_index() == 0:
            paths.makedirs(out_dir)
        chunk = max(1, config.batch_size) * mesh.size * jax.process_count() * 4
        with tqdm(total=len(queries), initial=len(queries) - len(todo), unit="q", disable=jax.process_index() != 0,
                  desc=f"{config.benchmark} {config.shots}-shot") as progress:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                texts = generate_answers(config, params, model_config, tokenizer, settings,
                                         [prompts[i] for i in part], mesh)
                progress.update(len(part))
                for i, text in zip(part, texts):
                    answers[queries[i].qid] = text
                if jax.process_index() == 0:
                    append_records(predictions_path, (
                        {"question_id": queries[i].qid, "prompt": prompts[i].render(), "answer": text,
                         "demo_ids": [d.qid for d in demos[i]]} for i, text in zip(part, texts)))

    scored = benchmark.score(examples, answers, protocol=config.protocol, allow_missing=False, judge=judge)
    scores = dict(scored.summary)
    scores.update(settings=run_settings(config, ckpt, len(pool)), resumed=len(queries) - len(todo),
                  processes=jax.process_count(), devices_per_process=mesh.size,
                  seconds=round(time.time() - started, 1))
    if jax.process_index() == 0:
        by_qid = {r["question_id"]: r for r in scored.records}
        final = [{"question_id": q.qid, "prompt": p.render(), "answer": answers[q.qid],
                  "demo_ids": [d.qid for d in ds], **{k: v for k, v in by_qid[q.qid].items() if k != "question_id"}}
                 for q, p, ds in zip(queries, prompts, demos)]
        write_jsonl_atomic(predictions_path, final)
        write_json_atomic(paths.join(out_dir, f"{output_stem(config)}.scores.json"), scores)
    return scores
