"""ScienceQA accuracy: the option a generation names (letter, "(A)", "A.", "The answer is A", or the option
text) against the correct one; broken down like ScienceQA's own evaluation by subject, context and grade."""
from __future__ import annotations

from typing import Mapping, Sequence

from vlm_jax.evaluate.answer_extract import extract_choice
from vlm_jax.evaluate.examples import OPTION_LETTERS, Example
from vlm_jax.evaluate.predictions import accuracy_by, align, percent, summary


def scienceqa_correct(example: Example, generation: str) -> bool:
    """Whether the generation names the correct option of a ScienceQA example."""
    return extract_choice(generation, example.choices) == OPTION_LETTERS.index(example.answers[0])


def score_scienceqa(examples: Sequence[Example], predictions: Mapping[str, str], allow_missing: bool = False) -> dict:
    """Accuracy (%) overall, per_subject (natural / social / language science), per_context and per_grade
    (G1-6, G7-12). per_context has ScienceQA's "image" (questions with an image: all of them, as only those
    are loaded, so ScienceQA's "no context" bucket is empty) and "text" (questions with a hint)."""
    preds = align(examples, predictions, allow_missing)
    scores = [float(p is not None and scienceqa_correct(e, p)) for e, p in zip(examples, preds)]
    per_context = {"image": percent(scores)}
    with_text = [s for s, e in zip(scores, examples) if e.meta["has_text"]]
    if with_text:
        per_context["text"] = percent(with_text)
    return summary("scienceqa", scores, preds,
                   per_subject=accuracy_by(scores, [e.meta["subject"] for e in examples]),
                   per_context=per_context,
                   per_grade=accuracy_by(scores, [e.meta["grade_group"] for e in examples]))
