"""ScienceQA loader from its public files: `problems.json`, `pid_splits.json`, images `{split}/{pid}/image.png`.

Only questions with an image are kept, as the Multimodal-Textbook evaluation does (its query file is LLaVA's
`llava_test_CQM-A.json` filtered to image questions, its demonstrations `train_with_image.json`).
"""
from __future__ import annotations

import os

from vlm_jax.evaluate.examples import OPTION_LETTERS, BenchmarkFileError, Example, field, read_json

def grade_group(grade: str) -> str:
    """ScienceQA's grade buckets: 'grade1'..'grade6' -> 'G1-6', 'grade7'..'grade12' -> 'G7-12'."""
    number = int(grade.removeprefix("grade"))
    return "G1-6" if number <= 6 else "G7-12"


def load_scienceqa(problems_path: str, split: str = "test", pid_splits_path: str | None = None,
                   image_root: str = "") -> list[Example]:
    """Image questions of one ScienceQA split, in `pid_splits.json` order (or problems.json order without it).

    answers: `(letter,)` of the correct choice; choices: the option texts; meta: hint, subject, grade,
    grade_group, has_text (non-empty hint) -- the fields of ScienceQA's per-category accuracies.
    """
    problems = read_json(problems_path)
    if pid_splits_path is not None:
        splits = read_json(pid_splits_path)
        pids = [str(p) for p in field(splits, split, pid_splits_path)]
    else:
        pids = [pid for pid, p in problems.items() if field(p, "split", f"{problems_path} pid {pid}") == split]
    examples = []
    for pid in pids:
        if pid not in problems:
            raise BenchmarkFileError(f"{pid_splits_path}: pid {pid} of split {split!r} is not in {problems_path}")
        p = problems[pid]
        where = f"{problems_path} pid {pid}"
        image = field(p, "image", where)
        if not image:
            continue
        choices = tuple(str(c) for c in field(p, "choices", where))
        answer = field(p, "answer", where)
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise BenchmarkFileError(f"{where}: field 'answer' = {answer!r} is not an index into its {len(choices)} choices")
        grade = str(field(p, "grade", where))
        try:
            group = grade_group(grade)
        except ValueError as e:
            raise BenchmarkFileError(f"{where}: field 'grade' = {grade!r} is not 'grade<N>'") from e
        hint = str(p.get("hint") or "")
        examples.append(Example(
            qid=pid, image_path=os.path.join(image_root, split, pid, image),
            question_text=str(field(p, "question", where)), answers=(OPTION_LETTERS[answer],), choices=choices,
            meta={"benchmark": "scienceqa", "hint": hint, "has_text": bool(hint),
                  "subject": str(field(p, "subject", where)), "grade": grade, "grade_group": group}))
    return examples
