"""The CPU demo's held-out questions as a generative few-shot benchmark (`configs/eval/demo.py`).

The demo corpus (`vlm_jax.demo_corpus`) writes `heldout.jsonl`: one `{"image", "prompt", "choices", "answer"}`
per line, a new augmentation of one of 12 subjects asked "What is in the image? Answer:". Training ranks the
12 choices by log-likelihood; here the model *generates* the answer, after 0..k demonstrations drawn from the
same file (never the question itself; with RICES, the most similar other images). A demonstration is written
as the training documents write it, `<image>What is in the image? Answer: cat.` (the `interleaved` template:
images and text back to back, no chat roles), and the query ends after "Answer:". Score: the first word of
the generation, lower-cased without punctuation, equals the subject's name.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

from vlm_jax.evaluate.examples import BenchmarkFileError, Example, read_jsonl
from vlm_jax.evaluate.predictions import accuracy_by, align, records, summary
from vlm_jax.evaluate.prompts import Image, Text, Turn, make_prompt, register_template
from vlm_jax.evaluate.registry import Benchmark, Scored, register, register_loader

BENCHMARK = "demo"


def load_demo_questions(path: str) -> list[Example]:
    """The questions of a demo corpus's `heldout.jsonl` (image paths relative to the file)."""
    base = os.path.dirname(os.path.abspath(path))
    examples = []
    for line, record in enumerate(read_jsonl(path), start=1):
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            raise BenchmarkFileError(f"{where}: expected a JSON object")
        for key in ("image", "prompt", "choices", "answer"):
            if key not in record:
                raise BenchmarkFileError(f"{where}: no field {key!r}")
        examples.append(Example(qid=str(line), image_path=os.path.join(base, record["image"]),
                                question_text=str(record["prompt"]), answers=(str(record["answer"]),),
                                choices=tuple(map(str, record["choices"])), meta={"benchmark": BENCHMARK}))
    if not examples:
        raise BenchmarkFileError(f"{path}: no questions")
    return examples


def query_turn(example: Example, protocol: str = "original") -> str:
    return example.question_text


def demo_turn(example: Example, protocol: str = "original") -> tuple[str, str]:
    return example.question_text, f"{example.answers[0]}."


def interleaved(turns: Sequence[Turn]):
    """The training documents' layout: per turn the image, then "{text} {answer}" (the query: "{text}")."""
    segments = []
    for turn in turns:
        segments += [Image(turn.image_path), Text(turn.text if turn.answer is None else f"{turn.text} {turn.answer}")]
    return make_prompt(segments)


def first_word(generation: str) -> str:
    """"  Cat. This is..." -> "cat"."""
    words = re.findall(r"[a-z0-9]+", generation.lower())
    return words[0] if words else ""


def score_demo(examples: Sequence[Example], predictions: Mapping[str, str], *, protocol: str = "original",
               allow_missing: bool = False, judge=None) -> Scored:
    """Accuracy (%): the generation's first word is the subject's name; per subject too."""
    preds = align(examples, predictions, allow_missing)
    extracted = [None if p is None else first_word(p) for p in preds]
    scores = [float(x is not None and x == e.answers[0].lower()) for e, x in zip(examples, extracted)]
    return Scored(summary(BENCHMARK, scores, preds, scorer="first_word_exact",
                          per_answer=accuracy_by(scores, [e.answers[0] for e in examples])),
                  records(examples, [e.answers[0] for e in examples], extracted, scores))


register_template("interleaved", interleaved)
register_loader("demo_heldout", load_demo_questions)
register(Benchmark(BENCHMARK, query_turn=query_turn, demo_turn=demo_turn, score=score_demo, self_turn=demo_turn,
                   max_new_tokens=8))
