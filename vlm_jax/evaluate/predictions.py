"""Prediction files and score aggregation shared by all scorers.

A prediction file is JSON lines, one object per question: `{"question_id": <the benchmark's id>, "answer":
"<the model's raw generation>"}` (other fields are ignored). Ids are matched as strings.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Iterable, Mapping, Sequence

from vlm_jax.evaluate.examples import BenchmarkFileError, Example, field, read_jsonl


def read_predictions(path: str) -> dict[str, str]:
    """{str(question_id): answer} from a JSONL prediction file; a record without the two fields, a non-string
    answer, or a repeated question_id is an error naming the file and record."""
    predictions: dict[str, str] = {}
    for i, record in enumerate(read_jsonl(path)):
        where = f"{path} record #{i}"
        qid = str(field(record, "question_id", where))
        answer = field(record, "answer", where)
        if not isinstance(answer, str):
            raise BenchmarkFileError(f"{where}: field 'answer' must be a string, got {type(answer).__name__}")
        if qid in predictions:
            raise BenchmarkFileError(f"{where}: question_id {qid} appears more than once")
        predictions[qid] = answer
    return predictions


def align(examples: Sequence[Example], predictions: Mapping[str, str], allow_missing: bool = False,
          source: str = "predictions") -> list[str | None]:
    """The prediction of each example in order (None where missing).

    A prediction whose id is not a question of the benchmark is an error; a question without a prediction
    is an error unless allow_missing, in which case it is scored wrong and counted as missing.
    """
    ids = {e.qid for e in examples}
    unknown = [q for q in predictions if q not in ids]
    if unknown:
        raise BenchmarkFileError(f"{source}: {len(unknown)} question_id(s) are not in the benchmark, "
                                 f"e.g. {unknown[:5]}")
    missing = [e.qid for e in examples if e.qid not in predictions]
    if missing and not allow_missing:
        raise BenchmarkFileError(f"{source}: no prediction for {len(missing)} of {len(examples)} questions, "
                                 f"e.g. question_id {missing[:5]} (allow_missing scores them as wrong)")
    return [predictions.get(e.qid) for e in examples]


def percent(scores: Sequence[float]) -> float:
    """Mean of per-question scores in [0, 1], as a percentage."""
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def accuracy_by(scores: Sequence[float], groups: Iterable[Hashable | tuple]) -> dict[str, float]:
    """Percentage accuracy per group value (sorted by name). A tuple group is multi-label: the question counts
    in each of its values (MathVista skills)."""
    buckets: dict[str, list[float]] = defaultdict(list)
    for score, group in zip(scores, groups, strict=True):
        for value in group if isinstance(group, tuple) else (group,):
            buckets[str(value)].append(score)
    return {k: percent(v) for k, v in sorted(buckets.items())}


def summary(benchmark: str, scores: Sequence[float], predictions: Sequence[str | None], **per_category) -> dict:
    """The scorer result: benchmark, accuracy (%), count, missing, and `per_<name>` breakdowns."""
    return {"benchmark": benchmark, "accuracy": percent(scores), "count": len(scores),
            "missing": sum(p is None for p in predictions), **per_category}
