"""Visual math benchmarks: MathVista (`testmini.json` / `test_mini.json`), MATH-Vision (`test.jsonl`,
`testmini.jsonl`, or the authors' `test.json`) and MathVerse (`testmini.json`): loaders, prompt turns, scorers
(the original's LLM judge, or rules) and each benchmark's breakdowns.

Original protocol (`llava/eval/model_vqa_loader_few_shot_math{vista,vision,verse}.py`, `eval_math*.py`,
`scripts/*_fewshot.sh` of DAMO-NLP-SG/multimodal_textbook):
- demonstration pools come from ANOTHER benchmark (configs/eval/*.py): MathVista and MathVerse questions take
  MATH-Vision demonstrations, MATH-Vision questions MathVista testmini ones;
- the evaluated benchmark's loader writes the pool items: a MathVista run writes `Question: {query}`, MATH-Vision
  and MathVerse runs write `{query}`, answer = the pool file's raw `answer` (MathVista: the option TEXT);
- query turns: MathVista `{query}`, MATH-Vision `{query}`, MathVerse `{query}. Please answer the question and
  provide final value or choices.`; the include-self ablation writes the query as the original's
  `current_sample` (MathVista and MathVerse with that suffix, raw answer);
- 512 new tokens; scoring by an LLM judge (`judge.py`) on the raw generation.
A record's `query` field is used where the file has one (the authors' MATH-Vision `test.json` and MathVerse
`testmini.json` have it; they are not public): otherwise MATH-Vision's query is written from its question
and options in MathVista's layout and MathVerse's is `query_wo`.
"standard" keeps vlm_jax's turns: every example written in its own benchmark's layout, multiple-choice
answers as option letters.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

from vlm_jax.evaluate.answer_extract import (extract_choice, extract_number, extract_number_list,
                                             extract_short_answer, normalize_answer_text, parse_number)
from vlm_jax.evaluate.examples import (OPTION_LETTERS, BenchmarkFileError, Example, field, list_field, read_json,
                                       read_jsonl, text_field)
from vlm_jax.evaluate.predictions import accuracy_by, align, records, summary
from vlm_jax.evaluate.registry import Benchmark, Scored, register, register_loader

MULTI_CHOICE = "multi_choice"
FREE_FORM = "free_form"
MATH_MAX_NEW_TOKENS = 512
ANSWER_SUFFIX = ". Please answer the question and provide final value or choices."
_MATHVISTA_METADATA = ("category", "task", "context", "grade", "language", "source", "skills")
_CHOICES_HEADER = re.compile(r"^\s*choices?\s*:\s*$", re.IGNORECASE)
_CHOICE_LINE = re.compile(r"^\s*\(?([A-H])\s*[:：.)]\s*(.*?)\s*$")
_INLINE_IMAGE_TAG = re.compile(r"[ \t]*<image\d+>[ \t]*")
_LETTERS_WITHOUT_OPTIONS = 8  # options that live only in the image (MathVerse, MATH-Vision): accept A..H


# ---------------------------------------------------------------------------------------------- loaders

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
    """MathVista questions. meta: query (the official prompt with its hint), raw_answer (the file's answer:
    option text for multiple choice), raw_choices (the file's `choices`), question_type, answer_type,
    precision, unit and the metadata fields (category, task, context, grade, language, source, skills).
    A multiple-choice answer is stored as the letter of the first choice equal to the answer text."""
    examples = []
    for where, r in _records(path):
        qid = text_field(r, "pid", where)
        where = f"{path} pid {qid}"
        question_type = text_field(r, "question_type", where)
        answer = raw_answer = text_field(r, "answer", where)
        choices: tuple[str, ...] = ()
        if question_type == MULTI_CHOICE:
            choices = tuple(str(c) for c in list_field(r, "choices", where, nonempty=True))
            if answer not in choices:
                raise BenchmarkFileError(f"{where}: answer {answer!r} is not one of its choices {list(choices)}")
            answer = OPTION_LETTERS[choices.index(answer)]
        elif question_type != FREE_FORM:
            raise BenchmarkFileError(f"{where}: unknown question_type {question_type!r}")
        metadata = field(r, "metadata", where)
        if not isinstance(metadata, Mapping):
            raise BenchmarkFileError(f"{where}: field 'metadata' must be an object")
        answer_type = text_field(r, "answer_type", where)
        precision = r.get("precision")
        if answer_type == "float" and (isinstance(precision, bool) or not isinstance(precision, (int, float))
                                       or not 0 <= precision <= 15):
            raise BenchmarkFileError(f"{where}: field 'precision' = {precision!r:.40} is not a number of decimals")
        meta = {"benchmark": "mathvista", "query": text_field(r, "query", where), "question_type": question_type,
                "answer_type": answer_type, "precision": precision, "unit": r.get("unit"),
                "raw_answer": raw_answer, "raw_choices": r.get("choices")}
        for key in _MATHVISTA_METADATA:
            value = metadata.get(key, "")
            meta[key] = tuple(value) if isinstance(value, list) else value
        examples.append(Example(qid=qid, image_path=os.path.join(image_dir, text_field(r, "image", where)),
                                question_text=text_field(r, "question", where), answers=(answer,),
                                choices=choices, meta=meta))
    return examples


def mathvision_query(question: str, choices: Sequence[str]) -> str:
    """A MATH-Vision query in MathVista's layout (MATH-Vision publishes none): hint, question, choices. Inline
    figure tags (`<image1>`) are dropped: the model sees the question's single composite image."""
    question = _INLINE_IMAGE_TAG.sub(" ", question)
    question = "\n".join(line.strip() for line in question.splitlines() if line.strip())
    if not choices:
        return f"Hint: Please answer the question and provide the final answer at the end.\nQuestion: {question}"
    lines = ["Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
             f"Question: {question}"]
    if any(c != OPTION_LETTERS[i] for i, c in enumerate(choices)):
        lines.append("Choices:")
        lines += [f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(choices)]
    return "\n".join(lines)


def load_mathvision(path: str, image_dir: str = "") -> list[Example]:
    """MATH-Vision questions (`id` (or `pid`), question, options, image, answer, level, subject; `query` where
    the file has one). With options the answer is their letter; without, a free-form value (occasionally
    itself a letter naming a figure in the image). meta: query, raw_answer, raw_choices (= options),
    question_type, level, subject."""
    examples = []
    for where, r in _records(path):
        qid = text_field(r, "id" if "id" in r or "pid" not in r else "pid", where)
        where = f"{path} id {qid}"
        choices = tuple(str(c) for c in list_field(r, "options", where))
        answer = raw_answer = text_field(r, "answer", where)
        if choices:
            answer = _letter_answer(answer, len(choices), where)
        question = text_field(r, "question", where)
        query = text_field(r, "query", where) if "query" in r else mathvision_query(question, choices)
        examples.append(Example(
            qid=qid, image_path=os.path.join(image_dir, text_field(r, "image", where)),
            question_text=question, answers=(answer,), choices=choices,
            meta={"benchmark": "mathvision", "query": query, "raw_answer": raw_answer, "raw_choices": list(choices),
                  "question_type": MULTI_CHOICE if choices else FREE_FORM,
                  "level": field(r, "level", where), "subject": text_field(r, "subject", where)}))
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
    them (they can live only in the image for vision-heavy versions). meta: query (the record's `query`, else
    `query_wo`), raw_answer, question_type, problem_version, subject, subfield."""
    examples = []
    for where, r in _records(path):
        qid = text_field(r, "sample_index", where)
        where = f"{path} sample_index {qid}"
        question = text_field(r, "question", where)
        answer = raw_answer = text_field(r, "answer", where).strip()
        raw_type = text_field(r, "question_type", where)
        if raw_type not in ("multi-choice", "free-form"):
            raise BenchmarkFileError(f"{where}: unknown question_type {raw_type!r}")
        choices: tuple[str, ...] = ()
        if raw_type == "multi-choice":
            choices = parse_inline_choices(question)
            if answer in choices and not (len(answer) == 1 and answer in OPTION_LETTERS):
                answer = OPTION_LETTERS[choices.index(answer)]
            answer = _letter_answer(answer, len(choices) or len(OPTION_LETTERS), where)
        image = text_field(r, "image", where)
        if not image:
            raise BenchmarkFileError(f"{where}: empty 'image' (the text-only version has no image to evaluate)")
        metadata = r.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise BenchmarkFileError(f"{where}: field 'metadata' must be an object")
        query = text_field(r, "query" if "query" in r else "query_wo", where)
        examples.append(Example(
            qid=qid, image_path=os.path.join(image_dir, image), question_text=question, answers=(answer,),
            choices=choices,
            meta={"benchmark": "mathverse", "query": query, "raw_answer": raw_answer, "raw_choices": None,
                  "question_type": MULTI_CHOICE if raw_type == "multi-choice" else FREE_FORM,
                  "problem_version": text_field(r, "problem_version", where),
                  "problem_index": str(r.get("problem_index", "")),
                  "subject": str(metadata.get("subject", "")), "subfield": str(metadata.get("subfield", ""))}))
    return examples


# ---------------------------------------------------------------------------------------------- turns

def _answer_or_error(example: Example, value: str) -> str:
    if not value:
        raise ValueError(f"{example.benchmark} question {example.qid}: a demonstration needs a ground-truth answer")
    return value


def standard_turn(example: Example) -> str:
    """vlm_jax's turn: each example in its own benchmark's query layout."""
    return example.meta["query"]


def _standard_demo(example: Example) -> tuple[str, str]:
    return standard_turn(example), _answer_or_error(example, example.answers[0])


def _demo_writer(prefix: str):
    def demo_turn(demo: Example, protocol: str = "original") -> tuple[str, str]:
        if protocol != "original":
            return _standard_demo(demo)
        return prefix + demo.meta["query"], _answer_or_error(demo, demo.meta["raw_answer"])
    return demo_turn


def _query_writer(suffix: str):
    def query_turn(example: Example, protocol: str = "original") -> str:
        return example.meta["query"] + (suffix if protocol == "original" else "")
    return query_turn


def _self_writer(suffix: str):
    def self_turn(example: Example, protocol: str = "original") -> tuple[str, str]:
        if protocol != "original":
            return _standard_demo(example)
        return example.meta["query"] + suffix, _answer_or_error(example, example.meta["raw_answer"])
    return self_turn


# ---------------------------------------------------------------------------------------------- rules

def _choice_correct(example: Example, generation: str) -> tuple[bool, str | None]:
    choices = example.choices
    gt = OPTION_LETTERS.index(example.answers[0])
    index = extract_choice(generation, choices, num_options=len(choices) or max(_LETTERS_WITHOUT_OPTIONS, gt + 1))
    if index is None:
        return False, None
    return index == gt or (index < len(choices) and choices[index] == choices[gt]), OPTION_LETTERS[index]


def _without_spaces(text: str) -> str:
    return re.sub(r"\s+", "", text)


def free_form_correct(generation: str, answer: str) -> tuple[bool, str | None]:
    """Whether a generation gives a free-form answer (number, expression, letter or short text)."""
    value = parse_number(answer)
    if value is not None:
        number = extract_number(generation)
        return number is not None and math.isclose(number, value, rel_tol=1e-6, abs_tol=1e-9), \
            None if number is None else repr(number)
    if len(answer) == 1 and answer in OPTION_LETTERS:
        gt = OPTION_LETTERS.index(answer)
        index = extract_choice(generation, (), num_options=max(_LETTERS_WITHOUT_OPTIONS, gt + 1))
        return index == gt, None if index is None else OPTION_LETTERS[index]
    short = extract_short_answer(generation)
    return _without_spaces(short) == _without_spaces(normalize_answer_text(answer)), short


def rule_correct(example: Example, generation: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) of a MathVista / MATH-Vision / MathVerse generation by vlm_jax's rules
    (after MathVista's `normalize_extracted_answer` + `safe_equal`): the named option must be the correct one
    (or carry the same text); integers compare `int()` of the extracted number; floats at the question's
    precision; lists number by number; other free-form answers as numbers (1e-6 relative), letters or
    whitespace-free normalised text."""
    if example.meta["question_type"] == MULTI_CHOICE:
        return _choice_correct(example, generation)
    answer = example.answers[0]
    answer_type = example.meta.get("answer_type")  # MathVista only
    if answer_type in ("integer", "float"):
        number = extract_number(generation)
        if number is None:
            return False, None
        if answer_type == "integer":
            try:
                return int(number) == int(float(answer)), repr(number)
            except (ValueError, OverflowError):
                return False, repr(number)
        precision = int(example.meta["precision"])
        try:
            return round(number, precision) == round(float(answer), precision), repr(number)
        except ValueError:
            return False, repr(number)
    if answer_type == "list":
        found = extract_number_list(generation)
        return found == extract_number_list(answer), repr(found)
    return free_form_correct(generation, answer)


def math_correct(example: Example, generation: str) -> bool:
    """Whether a generation answers a math example correctly by vlm_jax's rules (`rule_correct`)."""
    return rule_correct(example, generation)[0]


# ---------------------------------------------------------------------------------------------- scoring

def _score(name: str, breakdowns):
    def score(examples: Sequence[Example], predictions: Mapping[str, str], *, protocol: str = "original",
              allow_missing: bool = False, judge=None) -> Scored:
        """Accuracy (%) with the benchmark's breakdowns. judge: None → vlm_jax's rules; a `judge.MathJudge`
        → the original's LLM judge (mode "judge") or LLM answer extraction before the rules ("extract")."""
        from vlm_jax.evaluate import judge as judge_lib
        preds = align(examples, predictions, allow_missing)
        extracted, scores, errors, failed = [], [], 0, 0
        for e, p in zip(examples, preds):
            if p is None:
                ok, x = False, None
            elif judge is not None and judge.mode == "judge":
                ok, x, request_failed = judge_lib.judge_correct(judge, e, p)
                errors += x == judge_lib.JUDGE_ERROR
                failed += request_failed
            else:
                if judge is not None:
                    p = judge_lib.extract_answer(judge, e, p)
                ok, x = rule_correct(e, p)
            extracted.append(x)
            scores.append(float(ok))
        if failed and failed == sum(p is not None for p in preds):  # an endpoint that never answered: no score
            raise judge_lib.JudgeError(f"the judge at {judge.config.endpoint} failed on all {failed} questions")
        scorer = "rules" if judge is None else f"llm_{judge.mode}:{judge.config.model}"
        extra = {"scorer": scorer, **breakdowns(examples, scores)}
        if judge is not None and judge.mode == "judge":
            extra["judge_errors"] = errors
        return Scored(summary(name, scores, preds, **extra),
                      records(examples, [e.meta.get("raw_answer", e.answers[0]) for e in examples], extracted, scores))
    return score


_MATHVISTA_BREAKDOWNS = ("question_type", "answer_type", "task", "skills", "category", "context", "grade",
                         "language", "source")


def _by(*keys):
    return lambda examples, scores: {f"per_{k}": accuracy_by(scores, [e.meta[k] for e in examples]) for k in keys}


score_mathvista = _score("mathvista", _by(*_MATHVISTA_BREAKDOWNS))
score_mathvision = _score("mathvision", _by("subject", "level"))
score_mathverse = _score("mathverse", _by("problem_version", "subject"))

for _name, _loader in (("mathvista", load_mathvista), ("mathvision", load_mathvision), ("mathverse", load_mathverse)):
    register_loader(_name, _loader)
register(Benchmark("mathvista", query_turn=_query_writer(""), demo_turn=_demo_writer("Question: "),
                   self_turn=_self_writer(ANSWER_SUFFIX), score=score_mathvista,
                   max_new_tokens=MATH_MAX_NEW_TOKENS, judged=True))
register(Benchmark("mathvision", query_turn=_query_writer(""), demo_turn=_demo_writer(""),
                   self_turn=_self_writer(""), score=score_mathvision, max_new_tokens=MATH_MAX_NEW_TOKENS,
                   judged=True))
register(Benchmark("mathverse", query_turn=_query_writer(ANSWER_SUFFIX), demo_turn=_demo_writer(""),
                   self_turn=_self_writer(ANSWER_SUFFIX), score=score_mathverse,
                   max_new_tokens=MATH_MAX_NEW_TOKENS, judged=True))
