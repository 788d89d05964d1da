"""Prediction files, per-question records and score aggregation shared by all scorers.

A prediction file is JSON lines, one object per question: `{"question_id": <the benchmark's id>, "answer":
"<the model's raw generation>"}` (other fields, e.g. the run's `prompt`, `demo_ids`, `ground_truth`,
`extracted`, `score`, are ignored when scoring). Ids are matched as strings.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Hashable, Iterable, Mapping, Sequence

from vlm_jax import paths
from vlm_jax.evaluate.examples import BenchmarkFileError, Example, field, read_jsonl


def read_predictions(path: str) -> dict[str, str]:
    """{str(question_id): answer} from a JSONL prediction file; a record without the two fields, a non-string
    answer, or a repeated question_id is an error naming the file and record."""
    predictions: dict[str, str] = {}
    for i, record in enumerate(read_jsonl(path)):
        where = f"{path} record #{i}"
        qid = field(record, "question_id", where)
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise BenchmarkFileError(f"{where}: field 'question_id' must be a string or integer, got {qid!r:.40}")
        qid = str(qid)
        answer = field(record, "answer", where)
        if not isinstance(answer, str):
            raise BenchmarkFileError(f"{where}: field 'answer' must be a string, got {type(answer).__name__}")
        if qid in predictions:
            raise BenchmarkFileError(f"{where}: question_id {qid} appears more than once")
        predictions[qid] = answer
    return predictions


def read_partial_records(path: str) -> dict[str, dict]:
    """The records of an interrupted run's predictions file, by question_id, for resuming: every complete JSON
    line with a string answer (a torn last line is dropped). Missing file → {}."""
    if not paths.isfile(path):
        return {}
    out: dict[str, dict] = {}
    for line in paths.read_text(path).split("\n"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the interruption
        if isinstance(record, dict) and isinstance(record.get("answer"), str) and "question_id" in record:
            out[str(record["question_id"])] = record
    return out


def _lines(records: Iterable[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def append_records(path: str, records: Iterable[dict]) -> None:
    """Appends JSON lines, durably (a killed run keeps every line written); `path` may be remote."""
    with paths.Appender(path) as f:
        f.write(_lines(records))


def write_jsonl_atomic(path: str, records: Iterable[dict]) -> None:
    """Writes JSON lines to `path` whole (`paths.write_text`: never a half-written file)."""
    paths.write_text(path, _lines(records))


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON to `path` whole (`paths.write_text`: never a half-written file)."""
    paths.write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def align(examples: Sequence[Example], predictions: Mapping[str, str], allow_missing: bool = False,
          source: str = "predictions", required: Sequence[bool] | None = None) -> list[str | None]:
    """The prediction of each example in order (None where missing).

    A prediction whose id is not a question of the benchmark is an error; a required question (default: all)
    without a prediction is an error unless allow_missing, in which case it is scored wrong and counted as
    missing.
    """
    ids = {e.qid for e in examples}
    unknown = [q for q in predictions if q not in ids]
    if unknown:
        raise BenchmarkFileError(f"{source}: {len(unknown)} question_id(s) are not in the benchmark, "
                                 f"e.g. {unknown[:5]}")
    required = [True] * len(examples) if required is None else required
    missing = [e.qid for e, r in zip(examples, required) if r and e.qid not in predictions]
    if missing and not allow_missing:
        raise BenchmarkFileError(f"{source}: no prediction for {len(missing)} of {sum(required)} questions, "
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


def summary(benchmark: str, scores: Sequence[float], predictions: Sequence[str | None], **extra) -> dict:
    """The scorer result: benchmark, accuracy (%), count, missing, and extra fields (`per_<name>` breakdowns,
    `scorer`)."""
    return {"benchmark": benchmark, "accuracy": percent(scores), "count": len(scores),
            "missing": sum(p is None for p in predictions), **extra}


def records(examples: Sequence[Example], ground_truth: Sequence, extracted: Sequence, scores: Sequence[float]
            ) -> list[dict]:
    """One `{"question_id", "ground_truth", "extracted", "score"}` per example."""
    return [{"question_id": e.qid, "ground_truth": g, "extracted": x, "score": s}
            for e, g, x, s in zip(examples, ground_truth, extracted, scores, strict=True)]
