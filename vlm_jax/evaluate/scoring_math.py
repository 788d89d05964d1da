"""Accuracy on MathVista, MATH-Vision and MathVerse with a rule-based answer extractor (optionally fed by the
LLM judge's extraction, `judge.py`), broken down by each benchmark's categories.

Comparison rules, after MathVista's `normalize_extracted_answer` + `safe_equal`:
- multiple choice: the named option (letter or option text) must be the correct option, or carry the same
  text (MathVista compares option texts, so duplicated options are interchangeable);
- integer: `int(float(x))` of the extracted number equals the answer (the official truncation);
- float: both rounded to the question's `precision` decimals are equal;
- list: the extracted numbers equal the answer's numbers, in order;
- other free-form answers (MATH-Vision, MathVerse): numeric answers (plain numbers or simple LaTeX like
  `\\frac{1}{2}`, `2\\sqrt{3}`) must match within 1e-6 relative tolerance; a letter answer must be named as a
  letter; anything else must equal the normalised short answer, ignoring whitespace.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Mapping, Sequence

from vlm_jax.evaluate.answer_extract import (extract_choice, extract_number, extract_number_list,
                                             extract_short_answer, normalize_answer_text, parse_number)
from vlm_jax.evaluate.data_math import MULTI_CHOICE
from vlm_jax.evaluate.examples import OPTION_LETTERS, Example
from vlm_jax.evaluate.predictions import accuracy_by, align, summary

Extractor = Callable[[Example, str], str]
_LETTERS_WITHOUT_OPTIONS = 8  # options that live only in the image (MathVerse, MATH-Vision): accept A..H


def _choice_correct(example: Example, generation: str) -> bool:
    choices = example.choices
    gt = OPTION_LETTERS.index(example.answers[0])
    index = extract_choice(generation, choices, num_options=len(choices) or max(_LETTERS_WITHOUT_OPTIONS, gt + 1))
    if index is None:
        return False
    return index == gt or (index < len(choices) and choices[index] == choices[gt])


def _without_spaces(text: str) -> str:
    return re.sub(r"\s+", "", text)


def free_form_correct(generation: str, answer: str) -> bool:
    """Whether a generation gives a free-form answer (number, expression, letter or short text)."""
    value = parse_number(answer)
    if value is not None:
        number = extract_number(generation)
        return number is not None and math.isclose(number, value, rel_tol=1e-6, abs_tol=1e-9)
    if len(answer) == 1 and answer in OPTION_LETTERS:
        gt = OPTION_LETTERS.index(answer)
        return extract_choice(generation, (), num_options=max(_LETTERS_WITHOUT_OPTIONS, gt + 1)) == gt
    return _without_spaces(extract_short_answer(generation)) == _without_spaces(normalize_answer_text(answer))


def math_correct(example: Example, generation: str) -> bool:
    """Whether a generation answers a MathVista / MATH-Vision / MathVerse example correctly (rules above)."""
    if example.meta["question_type"] == MULTI_CHOICE:
        return _choice_correct(example, generation)
    answer = example.answers[0]
    answer_type = example.meta.get("answer_type")  # MathVista only
    if answer_type in ("integer", "float"):
        number = extract_number(generation)
        if number is None:
            return False
        if answer_type == "integer":
            return int(number) == int(float(answer))
        precision = int(example.meta["precision"])
        return round(number, precision) == round(float(answer), precision)
    if answer_type == "list":
        return extract_number_list(generation) == extract_number_list(answer)
    return free_form_correct(generation, answer)


def _scores(examples: Sequence[Example], predictions: Mapping[str, str], allow_missing: bool,
            extract: Extractor | None) -> tuple[list[float], list[str | None]]:
    preds = align(examples, predictions, allow_missing)
    scores = []
    for e, p in zip(examples, preds):
        if p is not None and extract is not None:
            p = extract(e, p)
        scores.append(float(p is not None and math_correct(e, p)))
    return scores, preds


_MATHVISTA_BREAKDOWNS = ("question_type", "answer_type", "task", "skills", "category", "context", "grade",
                         "language", "source")


def score_mathvista(examples: Sequence[Example], predictions: Mapping[str, str], allow_missing: bool = False,
                    extract: Extractor | None = None) -> dict:
    """MathVista accuracy (%) with the official breakdowns (question/answer type, task, skill (multi-label),
    category, context, grade, language, source). extract: optional generation -> extracted answer step."""
    scores, preds = _scores(examples, predictions, allow_missing, extract)
    return summary("mathvista", scores, preds, **{
        f"per_{key}": accuracy_by(scores, [e.meta[key] for e in examples]) for key in _MATHVISTA_BREAKDOWNS})


def score_mathvision(examples: Sequence[Example], predictions: Mapping[str, str], allow_missing: bool = False,
                     extract: Extractor | None = None) -> dict:
    """MATH-Vision accuracy (%), per_subject and per_level."""
    scores, preds = _scores(examples, predictions, allow_missing, extract)
    return summary("mathvision", scores, preds,
                   per_subject=accuracy_by(scores, [e.meta["subject"] for e in examples]),
                   per_level=accuracy_by(scores, [e.meta["level"] for e in examples]))


def score_mathverse(examples: Sequence[Example], predictions: Mapping[str, str], allow_missing: bool = False,
                    extract: Extractor | None = None) -> dict:
    """MathVerse accuracy (%), per_problem_version (Text Dominant ... Vision Only) and per_subject."""
    scores, preds = _scores(examples, predictions, allow_missing, extract)
    return summary("mathverse", scores, preds,
                   per_problem_version=accuracy_by(scores, [e.meta["problem_version"] for e in examples]),
                   per_subject=accuracy_by(scores, [e.meta["subject"] for e in examples]))
