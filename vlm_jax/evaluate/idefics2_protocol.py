"""The original's Idefics2 few-shot protocol (`training_idefics/evaluation/eval_*.py`, `utils.py`), picked by
`run.run_evaluation` when the checkpoint is an Idefics2:

- demonstrations: `random.seed(0); random.sample(range(len(eval split)), shots)` — the same k questions of the
  *evaluated* split for every query (a query may meet itself among them, as in the original);
- prompt (template "idefics2"): `"<s>Instruction: provide an answer to the question. Use the image to answer.\\n"`
  + `"Image:<image>Question: {q} Answer: {a}\\n"` per demonstration + `"Image:<image>Question: {q} Answer:"`,
  tokenized by the Idefics2 processor (its BOS + the literal `<s>`), images by its image processor with the
  checkpoint's `preprocessor_config.json` sizes (HF's 980 / 378 without one), one prompt at a time;
- q: the question as the benchmark states it; MathVista `query[6:]` (the original drops its first 6 characters);
  a: the first annotator answer (VQA), the raw answer (math);
- greedy, 64 new tokens, the answer = the first line of the decoded generation; scored by the benchmark's scorer.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Sequence

import jax

from vlm_jax import paths
from vlm_jax.data.image import open_image_file

from vlm_jax.checkpoint import SIDE_FILES, load_params
from vlm_jax.data import idefics2_processor as proc
from vlm_jax.evaluate import registry
from vlm_jax.evaluate.examples import Example
from vlm_jax.evaluate.predictions import write_json_atomic, write_jsonl_atomic
from vlm_jax.evaluate.prompts import Image, Prompt, Text, Turn, make_prompt, register_template
from vlm_jax.inference.generation import generate, left_pad
from vlm_jax.models.config import Idefics2Config
from vlm_jax.models.idefics2 import Idefics2

INSTRUCTION = "<s>Instruction: provide an answer to the question. Use the image to answer.\n"
MAX_NEW_TOKENS = 64
TEMPLATE = "idefics2"


def question(example: Example) -> str:
    """The question text the original writes for `example` (MathVista: `query[6:]`)."""
    if example.benchmark == "mathvista":
        return example.meta["query"][6:]
    return example.question_text


def answer(example: Example) -> str:
    """A demonstration's answer: the first annotator answer (VQA) or the raw answer (math)."""
    return str(example.meta.get("raw_answer", example.answers[0]))


def idefics2_template(turns: Sequence[Turn]) -> Prompt:
    """The original's `make_prompt` turns after the instruction line."""
    segments = [Text(INSTRUCTION)]
    for turn in turns:
        segments += [Text("Image:"), Image(turn.image_path), Text(f"Question: {turn.text} Answer:")]
        if turn.answer is not None:
            segments.append(Text(f" {turn.answer}\n"))
    return make_prompt(segments)


register_template(TEMPLATE, idefics2_template)


def fixed_demonstrations(examples: Sequence[Example], shots: int, seed: int = 0) -> list[Example]:
    """`random.seed(seed); random.sample(range(len(examples)), shots)` (the original's draw)."""
    rng = random.Random(seed)
    return [examples[i] for i in rng.sample(range(len(examples)), shots)]


def prompt_for(query: Example, demos: Sequence[Example]) -> Prompt:
    turns = [Turn(d.image_path, question(d), answer(d), d) for d in demos]
    return idefics2_template(turns + [Turn(query.image_path, question(query), None, query)])


def first_line(text: str) -> str:
    return text.split("\n")[0].strip()


def run_evaluation(config, ckpt: Path, model_config: Idefics2Config) -> dict:
    """The Idefics2 run: writes `<stem>.predictions.jsonl` and `<stem>.scores.json` as `run.run_evaluation`
    (no resume) and returns the scores."""
    from vlm_jax.evaluate.run import output_stem

    started = time.time()
    model_config = model_config.with_runtime(dtype=config.dtype, attention_impl=config.attention_impl)
    benchmark = registry.get(config.benchmark)
    examples = registry.load_split(config.eval_split, "config.eval_split")
    queries = [e for e in examples if benchmark.generated(e)]
    if config.num_queries:
        queries = queries[:config.num_queries]
    demos = fixed_demonstrations(examples, config.shots, seed=0) if config.shots else []
    prompts = [prompt_for(q, demos) for q in queries]
    # the checkpoint's preprocessor_config.json sizes, else HF's defaults (980, 378)
    longest, shortest = proc.checkpoint_sizes(ckpt, (980, 378))
    tokenizer_dir = paths.local_copy(ckpt, SIDE_FILES)  # a remote checkpoint's tokenizer files, downloaded
    processor = proc.Idefics2Processor(tokenizer_dir, model_config.num_image_tokens, longest, shortest)
    model, params = Idefics2(model_config), load_params(ckpt, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    pad = model_config.pad_token_id if model_config.pad_token_id is not None else 0
    demo_pixels = [proc.preprocess_image(open_image_file(d.image_path), longest, shortest) for d in demos]
    answers, raw = {}, {}
    for query, prompt in zip(queries, prompts):
        ids, seg = left_pad([processor.encode(prompt.render())], pad_token_id=pad)
        images = demo_pixels + [proc.preprocess_image(open_image_file(query.image_path), longest, shortest)]
        pixels, pixel_mask, image_mask = proc.pad_images([images])
        out = generate(model, params, ids, seg, pixels, image_mask, max_new_tokens=MAX_NEW_TOKENS,
                       eos_token_id=processor.tokenizer.eos_token_id, pad_token_id=pad,
                       pixel_attention_mask=pixel_mask)
        raw[query.qid] = processor.decode(out.rows()[0])
        answers[query.qid] = first_line(raw[query.qid])
    scored = benchmark.score(examples if not config.num_queries else queries, answers, protocol=config.protocol,
                             allow_missing=False, judge=None)
    scores = dict(scored.summary)
    scores.update(settings={"config": config.to_dict(), "ckpt": str(ckpt), "protocol": "idefics2 (original)",
                            "shots": config.shots, "demo_selection": "fixed random.sample, seed 0, eval split",
                            "demo_ids": [d.qid for d in demos], "max_new_tokens": MAX_NEW_TOKENS,
                            "image_sizes": [longest, shortest]},
                  seconds=round(time.time() - started, 1))
    out_dir = paths.resolve(config.output_dir)
    stem = output_stem(config)
    by_qid = {r["question_id"]: r for r in scored.records}
    records = [{"question_id": q.qid, "prompt": p.render(), "output_text": raw[q.qid], "answer": answers[q.qid],
                "demo_ids": [d.qid for d in demos], **{k: v for k, v in by_qid[q.qid].items() if k != "question_id"}}
               for q, p in zip(queries, prompts)]
    write_jsonl_atomic(paths.join(out_dir, f"{stem}.predictions.jsonl"), records)
    write_json_atomic(paths.join(out_dir, f"{stem}.scores.json"), scores)
    return scores


