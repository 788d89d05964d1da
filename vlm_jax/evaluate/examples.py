"""The uniform evaluation record every benchmark loader yields, and the file-reading helpers they share."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from vlm_jax import cli

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclasses.dataclass(frozen=True)
class Example:
    """One benchmark question.

    qid: the benchmark's own question id as a string (prediction files are matched on `str(question_id)`).
    image_path: the image file the question is about.
    question_text: the raw question as the benchmark states it (no instruction, no options).
    answers: ground truth. VQA: all human answers in file order. Multiple choice: `(letter,)` of the correct
        option. Free-form math: `(answer string,)`.
    choices: option texts in letter order A, B, ... (empty when the benchmark has none or they live only in the
        image).
    meta: benchmark fields needed by prompts and scorers; always holds "benchmark" (loader name) and the
        category fields the scorers break accuracy down by.
    """

    qid: str
    image_path: str
    question_text: str
    answers: tuple[str, ...]
    choices: tuple[str, ...] = ()
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def benchmark(self) -> str:
        return self.meta["benchmark"]


class BenchmarkFileError(cli.InputError, ValueError):
    """A benchmark file is missing, unreadable, or a record lacks a field: the message names file, record and field."""


def read_json(path: str) -> Any:
    """Reads a JSON file, raising BenchmarkFileError naming the file on a missing file or bad JSON."""
    if not os.path.isfile(path):
        raise BenchmarkFileError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkFileError(f"{path}: not valid UTF-8 JSON ({e})") from e
    except RecursionError as e:
        raise BenchmarkFileError(f"{path}: JSON nested too deeply") from e


def read_jsonl(path: str) -> list[Any]:
    """Reads a JSON-lines file (blank lines skipped), raising BenchmarkFileError naming file and line on bad JSON."""
    if not os.path.isfile(path):
        raise BenchmarkFileError(f"{path}: file not found")
    records = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise BenchmarkFileError(f"{path}:{line_no}: not valid JSON ({e})") from e
                except RecursionError as e:
                    raise BenchmarkFileError(f"{path}:{line_no}: JSON nested too deeply") from e
        except UnicodeDecodeError as e:
            raise BenchmarkFileError(f"{path}: not valid UTF-8 ({e})") from e
    return records


def field(record: Mapping[str, Any], name: str, where: str) -> Any:
    """`record[name]`, or a BenchmarkFileError naming `where` (file and record id) and the missing field."""
    if not isinstance(record, Mapping) or name not in record:
        raise BenchmarkFileError(f"{where}: missing field {name!r}")
    return record[name]


def list_field(record: Mapping[str, Any], name: str, where: str, *, nonempty: bool = False) -> list:
    """`record[name]` when it is a JSON list (non-empty with `nonempty`), else a BenchmarkFileError naming
    `where` and the field."""
    value = field(record, name, where)
    if not isinstance(value, list):
        raise BenchmarkFileError(f"{where}: field {name!r} must be a list, got {type(value).__name__}")
    if nonempty and not value:
        raise BenchmarkFileError(f"{where}: field {name!r} is an empty list")
    return value


def text_field(record: Mapping[str, Any], name: str, where: str) -> str:
    """`record[name]` as a string (numbers are written as text), else a BenchmarkFileError naming the field."""
    value = field(record, name, where)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BenchmarkFileError(f"{where}: field {name!r} must be text, got {type(value).__name__}")
    return str(value)


def sample_query_set(examples: Sequence[Example], size: int | None, seed: int) -> list[Example]:
    """A seeded sample of `size` examples without replacement (all of them, in order, when size is None or >= N).

    The demonstration pool of few-shot evaluation: OpenFlamingo-style `np.random.choice(N, size, replace=False)`,
    here through a seeded Generator so the pool does not depend on global RNG state.
    """
    if size is None or size >= len(examples):
        return list(examples)
    indices = np.random.default_rng(seed).choice(len(examples), size=size, replace=False)
    return [examples[i] for i in indices]
