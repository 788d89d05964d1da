"""One few-shot evaluation run: questions + demonstration pool → prompts (random or RICES demonstrations) →
data-parallel batched generation → predictions JSONL + scores JSON.

Every process builds all prompts (cheap; RICES embeddings are cached on disk), generates its own contiguous
shard of the questions on its local devices, and the shards are gathered back in question order; process 0
writes the files.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict
from tqdm import tqdm

from vlm_jax.evaluate import rices
from vlm_jax.evaluate.batched_generation import Request, generate_requests
from vlm_jax.evaluate.clip_embed import checkpoint_embedder
from vlm_jax.evaluate.examples import Example, sample_query_set
from vlm_jax.evaluate.judge import JudgeConfig, judge_extractor
from vlm_jax.evaluate.pixels import load_pixels
from vlm_jax.evaluate.prompt_tokens import load_tokenizer, prompt_token_ids
from vlm_jax.evaluate.prompts import Prompt, build_prompt
from vlm_jax.evaluate.run_config import check_config
from vlm_jax.evaluate.score_cli import MATH_BENCHMARKS, SCORERS
from vlm_jax.evaluate.splits import load_split
from vlm_jax.inference.generation import gather_rows, local_data_mesh, process_slice
from vlm_jax.inference.model import VLM, load


def _is_same_question(a: Example, b: Example) -> bool:
    return a.benchmark == b.benchmark and a.qid == b.qid


def select_demonstrations(config: ConfigDict, queries: Sequence[Example], pool: Sequence[Example],
                          embedder=None) -> list[list[Example]]:
    """The demonstrations of each query in prompt order (`config.shots` of them).

    random: `rices.random_indices` seeded by (config.seed, query index); rices: the most similar pool images
    by `embedder = (embed_fn, model_id)`, most similar last. A pool entry that is the query itself (pool and
    questions from one file) is never a demonstration: one extra candidate is drawn and the query dropped.
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
        cache_dir = config.rices.cache_dir or os.path.join(config.output_dir, "rices_cache")
        embed = lambda examples: rices.embed_images(  # noqa: E731
            [e.image_path for e in examples], embed_fn, model_id=model_id, cache_dir=cache_dir,
            batch_size=config.rices.batch_size)
        candidates = rices.rices_indices(embed(pool), embed(queries), fetch)  # most similar last
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


def load_questions_and_pool(config: ConfigDict) -> tuple[list[Example], list[Example]]:
    """The evaluated questions (the first `num_queries` when set) and the demonstration pool (a seeded sample of
    `query_set_size` from the demo split; empty for 0 shots)."""
    queries = load_split(config.eval_split, "config.eval_split")
    if config.num_queries:
        queries = queries[:config.num_queries]
    if not queries:
        raise ValueError("config.eval_split has no questions")
    pool = (sample_query_set(load_split(config.demo_split, "config.demo_split"), config.query_set_size, config.seed)
            if config.shots else [])
    return queries, pool


def generate_answers(config: ConfigDict, vlm: VLM, prompts: Sequence[Prompt], mesh: Mesh) -> list[str]:
    """The decoded generation of every prompt, in order, on every process: this process generates its
    `process_slice` of the prompts data-parallel over `mesh` (`vlm`'s params replicated on it), `gather_rows`
    collects all of them."""
    model_config, tokenizer = vlm.config, vlm.tokenizer
    requests = [Request(tuple(prompt_token_ids(p.text, tokenizer, model_config.image_token_id,
                                               model_config.num_image_tokens)), p.image_paths) for p in prompts]
    shard = process_slice(len(requests))
    pad = vlm.pad_token_id
    with tqdm(total=len(shard), desc=f"{config.benchmark} {config.shots}-shot", unit="q",
              disable=jax.process_index() != 0) as progress:
        rows = generate_requests(
            vlm.model, vlm.params, [requests[i] for i in shard], mesh=mesh, batch_size=config.batch_size,
            max_images=config.shots + 1,
            load_pixels=lambda paths: load_pixels(paths, vlm.image_settings, config.image_aspect_ratio),
            max_new_tokens=config.max_new_tokens, eos_token_id=tokenizer.eos_id, pad_token_id=pad,
            temperature=config.temperature, top_p=config.top_p, seed=config.seed, progress=progress)
    rows = gather_rows(rows, shard, len(requests), config.max_new_tokens)
    return [tokenizer.decode([t for t in row if t != tokenizer.eos_id]).strip() for row in rows]


def _scorer_kwargs(config: ConfigDict) -> dict:
    """The judge extractor when `config.judge` (checked before any generation: a missing URL fails early)."""
    if not config.judge:
        return {}
    if config.benchmark not in MATH_BENCHMARKS:
        raise ValueError(f"config.judge applies to {', '.join(MATH_BENCHMARKS)}, not {config.benchmark}")
    return {"extract": judge_extractor(JudgeConfig.from_env())}


def run_evaluation(config: ConfigDict, ckpt: str | Path, devices: Sequence[jax.Device] | None = None) -> dict:
    """Runs the evaluation `config` describes on checkpoint `ckpt` (on `devices`, default all local ones) and
    returns the scores dict (the scorer's, plus the run settings); process 0 writes
    `OUTPUT_DIR/<stem>.predictions.jsonl` (question_id, prompt, answer = the raw generation, demo_ids) and
    `OUTPUT_DIR/<stem>.scores.json`."""
    check_config(config)
    ckpt = Path(ckpt)
    started = time.time()
    tokenizer = load_tokenizer(config.tokenizer, ckpt)  # first: a checkpoint without one fails before any loading
    scorer_kwargs = _scorer_kwargs(config)
    queries, pool = load_questions_and_pool(config)
    mesh = local_data_mesh(devices)
    embedder = None
    if config.shots and config.demo_selection == "rices":
        embedder = checkpoint_embedder(config.rices.ckpt or ckpt, batch_size=config.rices.batch_size,
                                       aspect=config.image_aspect_ratio, mesh=mesh)
    demos = select_demonstrations(config, queries, pool, embedder)
    prompts = [build_prompt(q, d) for q, d in zip(queries, demos)]
    vlm = load(ckpt, dtype=config.dtype, attention_impl=config.attention_impl, tokenizer=tokenizer,
               aspect=config.image_aspect_ratio, sharding=NamedSharding(mesh, PartitionSpec()))
    answers = generate_answers(config, vlm, prompts, mesh)

    scores = SCORERS[config.benchmark](queries, {q.qid: a for q, a in zip(queries, answers)}, **scorer_kwargs)
    scores.update({"ckpt": str(ckpt), "shots": config.shots, "demo_selection": config.demo_selection,
                   "include_self_first": config.include_self_first, "seed": config.seed,
                   "query_set_size": len(pool), "max_new_tokens": config.max_new_tokens,
                   "processes": jax.process_count(), "devices_per_process": mesh.size,
                   "seconds": round(time.time() - started, 1)})
    if jax.process_index() == 0:
        _write_outputs(Path(config.output_dir), output_stem(config), queries, prompts, answers, demos, scores)
    return scores


def _write_outputs(out_dir: Path, stem: str, queries, prompts, answers, demos, scores) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{stem}.predictions.jsonl", "w", encoding="utf-8") as f:
        for query, prompt, answer, demo in zip(queries, prompts, answers, demos):
            f.write(json.dumps({"question_id": query.qid, "prompt": prompt.text, "answer": answer,
                                "demo_ids": [d.qid for d in demo]}) + "\n")
    (out_dir / f"{stem}.scores.json").write_text(json.dumps(scores, indent=1) + "\n")
