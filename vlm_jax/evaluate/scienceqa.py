"""ScienceQA: loader of the public files (`problems.json`, `pid_splits.json`, images `{split}/{pid}/image.png`),
prompt turns, scorers and the subject / context / grade breakdowns.

Original protocol (`llava/eval/model_vqa_loader_few_shot_scienceQA.py`, `eval_science_qa.py`):
- the run generates for the split's image questions only (LLaVA's `llava_test_CQM-A.json` filtered to images);
- query turn = the LLaVA CQM-A text `Context: {hint}\\n{question}\\nA. ...\\nB. ...` with NO instruction
  (the `--single-pred-prompt` suffix is commented out in the original loader);
- demonstration turn = the same text with "Answer with the option's letter from the given choices directly."
  glued on with no separator, answer = the letter;
- parser: the generation is exactly a letter A-E, or starts "X. ", or contains exactly one
  "The answer is X." (regex `The answer is ([A-Z]).`); anything else is FAILED (wrong);
- `accuracy` is over the WHOLE test split (questions without an image have no prediction and count as wrong,
  as the original's `Total`), `img_accuracy` over the image questions (the original's `IMG-Accuracy`).
"standard" keeps vlm_jax's choices: the instruction on its own line in every turn, the lenient option
extractor (`answer_extract.extract_choice`), accuracy over image questions only.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

from vlm_jax.evaluate.answer_extract import extract_choice
from vlm_jax.evaluate.examples import (OPTION_LETTERS, BenchmarkFileError, Example, field, list_field, read_json,
                                       text_field)
from vlm_jax.evaluate.predictions import accuracy_by, align, percent, records, summary
from vlm_jax.evaluate.registry import Benchmark, Scored, register, register_loader

CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
ORIGINAL_OPTIONS = ("A", "B", "C", "D", "E")
_STATED = re.compile(r"The answer is ([A-Z]).")
FAILED = "FAILED"


def grade_group(grade: str) -> str:
    """ScienceQA's grade buckets: 'grade1'..'grade6' -> 'G1-6', 'grade7'..'grade12' -> 'G7-12'."""
    number = int(grade.removeprefix("grade"))
    return "G1-6" if number <= 6 else "G7-12"


def load_scienceqa(problems_path: str, split: str = "test", pid_splits_path: str | None = None,
                   image_root: str = "", images_only: bool = False) -> list[Example]:
    """The questions of one ScienceQA split, in `pid_splits.json` order (or problems.json order without it).

    answers: `(letter,)` of the correct choice; choices: the option texts; meta: hint, subject, grade,
    grade_group, has_text (non-empty hint), has_image. images_only keeps only questions with an image.
    """
    problems = read_json(problems_path)
    if not isinstance(problems, Mapping):
        raise BenchmarkFileError(f"{problems_path}: expected a JSON object {{pid: problem}}, got {type(problems).__name__}")
    if pid_splits_path is not None:
        pids = [str(p) for p in list_field(read_json(pid_splits_path), split, pid_splits_path)]
    else:
        pids = [pid for pid, p in problems.items() if field(p, "split", f"{problems_path} pid {pid}") == split]
    examples = []
    for pid in pids:
        if pid not in problems:
            raise BenchmarkFileError(f"{pid_splits_path}: pid {pid} of split {split!r} is not in {problems_path}")
        p = problems[pid]
        where = f"{problems_path} pid {pid}"
        image = field(p, "image", where)
        if images_only and not image:
            continue
        choices = tuple(str(c) for c in list_field(p, "choices", where, nonempty=True))
        answer = field(p, "answer", where)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise BenchmarkFileError(f"{where}: field 'answer' = {answer!r:.40} is not an index into its "
                                     f"{len(choices)} choices")
        grade = text_field(p, "grade", where)
        try:
            group = grade_group(grade)
        except ValueError as e:
            raise BenchmarkFileError(f"{where}: field 'grade' = {grade!r} is not 'grade<N>'") from e
        hint = str(p.get("hint") or "")
        examples.append(Example(
            qid=pid, image_path=os.path.join(image_root, split, pid, str(image)) if image else "",
            question_text=text_field(p, "question", where), answers=(OPTION_LETTERS[answer],), choices=choices,
            meta={"benchmark": "scienceqa", "hint": hint, "has_text": bool(hint), "has_image": bool(image),
                  "subject": text_field(p, "subject", where), "grade": grade, "grade_group": group}))
    return examples


def question_body(example: Example) -> str:
    """LLaVA's CQM-A text: `Context: {hint}` (only with a hint), the question, one `X. option` line each."""
    lines = [f"Context: {example.meta['hint']}"] if example.meta["hint"] else []
    lines.append(example.question_text)
    lines += [f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(example.choices)]
    return "\n".join(lines)


def query_turn(example: Example, protocol: str = "original") -> str:
    body = question_body(example)
    return body if protocol == "original" else f"{body}\n{CHOICE_INSTRUCTION}"


def demo_turn(example: Example, protocol: str = "original") -> tuple[str, str]:
    body = question_body(example)
    text = body + CHOICE_INSTRUCTION if protocol == "original" else f"{body}\n{CHOICE_INSTRUCTION}"
    return text, example.answers[0]


def parse_original(generation: str) -> str:
    """The original's parser: a bare letter A-E, an "X. " prefix, or exactly one "The answer is X."; else
    "FAILED"."""
    if generation in ORIGINAL_OPTIONS:
        return generation
    if len(generation) >= 3 and generation[0] in ORIGINAL_OPTIONS and generation[1:3] == ". ":
        return generation[0]
    found = _STATED.findall(generation)
    return found[0] if len(found) == 1 else FAILED


def original_correct(example: Example, generation: str) -> tuple[bool, str]:
    """(correct, parsed letter) by the original's parser; a letter beyond the question's options is wrong."""
    letter = parse_original(generation)
    valid = ORIGINAL_OPTIONS[:len(example.choices)]
    return letter in valid and letter == example.answers[0], letter


def scienceqa_correct(example: Example, generation: str) -> bool:
    """vlm_jax's lenient rule: the option the generation names (letter, "(A)", "A.", "The answer is A",
    the option text) is the correct one."""
    return extract_choice(generation, example.choices) == OPTION_LETTERS.index(example.answers[0])


def score_scienceqa(examples: Sequence[Example], predictions: Mapping[str, str], *, protocol: str = "original",
                    allow_missing: bool = False, judge=None) -> Scored:
    """Accuracy (%), per_subject, per_context ("image", "text" = with a hint, "no context": neither) and per_grade
    (G1-6, G7-12). Original: `accuracy` over every question of the split, `img_accuracy` over image questions;
    standard: image questions only."""
    if protocol != "original":
        examples = [e for e in examples if e.meta.get("has_image", True)]
    has_image = [e.meta.get("has_image", True) for e in examples]
    preds = align(examples, predictions, allow_missing, required=has_image)
    extracted, scores = [], []
    for e, p in zip(examples, preds):
        if p is None:
            extracted.append(FAILED if protocol == "original" else None)
            scores.append(0.0)
        elif protocol == "original":
            ok, letter = original_correct(e, p)
            extracted.append(letter)
            scores.append(float(ok))
        else:
            index = extract_choice(p, e.choices)
            extracted.append(None if index is None else OPTION_LETTERS[index])
            scores.append(float(index == OPTION_LETTERS.index(e.answers[0])))
    image_scores = [s for s, i in zip(scores, has_image) if i]
    buckets = {"image": image_scores,  # ScienceQA's IMG / TXT (a text context, image or not) / NO buckets
               "text": [s for s, e in zip(scores, examples) if e.meta["has_text"]],
               "no context": [s for s, e, i in zip(scores, examples, has_image) if not i and not e.meta["has_text"]]}
    per_context = {k: percent(v) for k, v in buckets.items() if v}
    missing = sum(p is None for p, i in zip(preds, has_image) if i)
    result = summary("scienceqa", scores, preds, scorer=f"scienceqa_{protocol}",
                     per_subject=accuracy_by(scores, [e.meta["subject"] for e in examples]),
                     per_context=per_context,
                     per_grade=accuracy_by(scores, [e.meta["grade_group"] for e in examples]))
    result.update(missing=missing, img_accuracy=percent(image_scores), img_count=len(image_scores))
    return Scored(result, records(examples, [e.answers[0] for e in examples], extracted, scores))


register_loader("scienceqa", load_scienceqa)
register(Benchmark("scienceqa", query_turn=query_turn, demo_turn=demo_turn, score=score_scienceqa,
                   self_turn=demo_turn, generated=lambda e: e.meta.get("has_image", True)))
