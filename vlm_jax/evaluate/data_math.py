"""Loaders for the visual math benchmarks from their public question files: MathVista (`testmini.json` /
`test_mini.json`), MathVision (`data/test.jsonl`, `testmini.jsonl`) and MathVerse (`testmini.json`).

Multiple-choice examples carry `answers = (letter,)` and the option texts in `choices`; free-form ones carry
the answer string. meta holds "question_type" ("multi_choice" / "free_form") plus each benchmark's own fields.
"""
from __future__ import annotations

import os
import re
from typing import Any

from vlm_jax.evaluate.examples import (OPTION_LETTERS, BenchmarkFileError, Example, field, read_json,
                                       read_jsonl)

MULTI_CHOICE = "multi_choice"
FREE_FORM = "free_form"

_MATHVISTA_METADATA = ("category", "task", "context", "grade", "language", "source", "skills")
_CHOICES_HEADER = re.compile(r"^\s*choices?\s*:\s*$", re.IGNORECASE)
_CHOICE_LINE = re.compile(r"^\s*\(?([A-H])\s*[:：.)]\s*(.*?)\s*$")


def _records(path: str) -> list[tuple[str, Any]]:
    """(record label, record) pairs of a .json list / {id: record} dict or a .jsonl file."""
    if path.endswith(".jsonl"):
        return [(f"{path} record #{i}", r) for i, r in enumerate(read_jsonl(path))]
    data = read_json(path)
    if isinstance(data, dict):
        return [(f"{path} record {key!r}", r) for key, r in data.items()]
    if isinstance(data, list):
        return [(f"{path} record #{i}", r) for i, r in enumerate(data)]
    raise BenchmarkFileError(f"{path}: expected a JSON list or object of records, got {type(data).__name__}")


def _letter_answer(answer: str, n_choices: int, where: str) -> str:
    if len(answer) != 1 or answer not in OPTION_LETTERS[:max(n_choices, 1)]:
        raise BenchmarkFileError(f"{where}: answer {answer!r} is not an option letter A..{OPTION_LETTERS[n_choices - 1]}")
    return answer


def load_mathvista(path: str, image_dir: str = "") -> list[Example]:
    """MathVista questions. meta: query (the official prompt with its hint), question_type, answer_type,
    precision, unit and the metadata fields (category, task, context, grade, language, source, skills).
    A multiple-choice answer is stored as the letter of the first choice equal to the answer text."""
    examples = []
    for where, r in _records(path):
        qid = str(field(r, "pid", where))
        where = f"{path} pid {qid}"
        question_type = str(field(r, "question_type", where))
        answer = str(field(r, "answer", where))
        choices: tuple[str, ...] = ()
        if question_type == MULTI_CHOICE:
            choices = tuple(str(c) for c in field(r, "choices", where))
            if answer not in choices:
                raise BenchmarkFileError(f"{where}: answer {answer!r} is not one of its choices {list(choices)}")
            answer = OPTION_LETTERS[choices.index(answer)]
        elif question_type != FREE_FORM:
            raise BenchmarkFileError(f"{where}: unknown question_type {question_type!r}")
        metadata = field(r, "metadata", where)
        meta = {"benchmark": "mathvista", "query": str(field(r, "query", where)), "question_type": question_type,
                "answer_type": str(field(r, "answer_type", where)), "precision": r.get("precision"),
                "unit": r.get("unit")}
        for key in _MATHVISTA_METADATA:
            value = metadata.get(key, "")
            meta[key] = tuple(value) if isinstance(value, list) else value
        examples.append(Example(qid=qid, image_path=os.path.join(image_dir, str(field(r, "image", where))),
                                question_text=str(field(r, "question", where)), answers=(answer,),
                                choices=choices, meta=meta))
    return examples


def load_mathvision(path: str, image_dir: str = "") -> list[Example]:
    """MATH-Vision questions (`id, question, options, image, answer, solution, level, subject`).
    With options the answer is their letter; without, a free-form value (occasionally itself a letter naming
    a figure in the image). meta: question_type, level, subject."""
    examples = []
    for where, r in _records(path):
        qid = str(field(r, "id", where))
        where = f"{path} id {qid}"
        choices = tuple(str(c) for c in field(r, "options", where))
        answer = str(field(r, "answer", where))
        if choices:
            answer = _letter_answer(answer, len(choices), where)
        examples.append(Example(
            qid=qid, image_path=os.path.join(image_dir, str(field(r, "image", where))),
            question_text=str(field(r, "question", where)), answers=(answer,), choices=choices,
            meta={"benchmark": "mathvision", "question_type": MULTI_CHOICE if choices else FREE_FORM,
                  "level": field(r, "level", where), "subject": str(field(r, "subject", where))}))
    return examples


def parse_inline_choices(question: str) -> tuple[str, ...]:
    """Options written in a MathVerse question after a 'Choices:' line, one per line as 'A:40°' / 'B. 60°'."""
    lines = question.splitlines()
    for start, line in enumerate(lines):
        if _CHOICES_HEADER.match(line):
            choices = []
            for option in lines[start + 1:]:
                m = _CHOICE_LINE.match(option)
                if not m or m.group(1) != OPTION_LETTERS[len(choices)]:
                    break
                choices.append(m.group(2))
            return tuple(choices)
    return ()


def load_mathverse(path: str, image_dir: str = "") -> list[Example]:
    """MathVerse questions (`sample_index, problem_index, problem_version, question, image, answer,
    question_type, query_wo, query_cot, metadata`). Choices are parsed from the question text where it lists
    them (they can live only in the image for vision-heavy versions). meta: query (query_wo, the official
    direct-answer prompt), question_type, problem_version, subject, subfield."""
    examples = []
    for where, r in _records(path):
        qid = str(field(r, "sample_index", where))
        where = f"{path} sample_index {qid}"
        question = str(field(r, "question", where))
        answer = str(field(r, "answer", where)).strip()
        raw_type = str(field(r, "question_type", where))
        if raw_type not in ("multi-choice", "free-form"):
            raise BenchmarkFileError(f"{where}: unknown question_type {raw_type!r}")
        choices: tuple[str, ...] = ()
        if raw_type == "multi-choice":
            choices = parse_inline_choices(question)
            if answer in choices and not (len(answer) == 1 and answer in OPTION_LETTERS):
                answer = OPTION_LETTERS[choices.index(answer)]
            answer = _letter_answer(answer, len(choices) or len(OPTION_LETTERS), where)
        image = str(field(r, "image", where))
        if not image:
            raise BenchmarkFileError(f"{where}: empty 'image' (the text-only version has no image to evaluate)")
        metadata = r.get("metadata") or {}
        examples.append(Example(
            qid=qid, image_path=os.path.join(image_dir, image), question_text=question, answers=(answer,),
            choices=choices,
            meta={"benchmark": "mathverse", "query": str(field(r, "query_wo", where)),
                  "question_type": MULTI_CHOICE if raw_type == "multi-choice" else FREE_FORM,
                  "problem_version": str(field(r, "problem_version", where)),
                  "problem_index": str(r.get("problem_index", "")),
                  "subject": str(metadata.get("subject", "")), "subfield": str(metadata.get("subfield", ""))}))
    return examples
