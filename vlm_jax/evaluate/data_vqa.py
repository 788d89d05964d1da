"""Loaders for open-ended VQA benchmarks from their public files: the VQA format (OK-VQA, and TextVQA converted
to it) and TextVQA's native `TextVQA_0.5.1_{train,val}.json`."""
from __future__ import annotations

import os

from vlm_jax.evaluate.examples import BenchmarkFileError, Example, field, read_json


def _vqa_image_name(question: dict, data_subtype: str | None, where: str) -> str:
    """COCO file name for integer image ids (`COCO_val2014_000000297147.jpg`), `<id>.jpg` for string ids."""
    if "image" in question:
        return question["image"]
    image_id = field(question, "image_id", where)
    if isinstance(image_id, int):
        if not data_subtype:
            raise BenchmarkFileError(f"{where}: integer image_id needs the questions file's 'data_subtype'")
        return f"COCO_{data_subtype}_{image_id:012d}.jpg"
    return f"{image_id}.jpg"


def load_vqa(questions_path: str, annotations_path: str | None, image_dir: str = "",
             benchmark: str = "okvqa") -> list[Example]:
    """Questions of a VQA-format split (`OpenEnded_*_questions.json` + `*_annotations.json`), in question-file order.

    answers: the human answers' "answer" fields in annotation order (OK-VQA's are already stemmed by the
    dataset authors); meta: question_type, answer_type, image_id. annotations_path None gives answer-less
    examples (a test split to generate on). Every question must have an annotation and vice versa.
    """
    questions_file = read_json(questions_path)
    questions = field(questions_file, "questions", questions_path)
    data_subtype = questions_file.get("data_subtype")
    annotations = {}
    if annotations_path is not None:
        for i, ann in enumerate(field(read_json(annotations_path), "annotations", annotations_path)):
            qid = str(field(ann, "question_id", f"{annotations_path} annotation #{i}"))
            annotations[qid] = ann
    examples = []
    for i, q in enumerate(questions):
        where = f"{questions_path} question #{i}"
        qid = str(field(q, "question_id", where))
        meta = {"benchmark": benchmark, "image_id": field(q, "image_id", where)}
        answers: tuple[str, ...] = ()
        if annotations_path is not None:
            ann = annotations.pop(qid, None)
            if ann is None:
                raise BenchmarkFileError(f"{annotations_path}: no annotation for question_id {qid}")
            ann_where = f"{annotations_path} question_id {qid}"
            answers = tuple(str(field(a, "answer", ann_where)) for a in field(ann, "answers", ann_where))
            meta["question_type"] = ann.get("question_type", "")
            meta["answer_type"] = ann.get("answer_type", "")
        examples.append(Example(qid=qid, image_path=os.path.join(image_dir, _vqa_image_name(q, data_subtype, where)),
                                question_text=str(field(q, "question", where)), answers=answers, meta=meta))
    if annotations:
        extra = sorted(annotations)[:5]
        raise BenchmarkFileError(f"{annotations_path}: {len(annotations)} annotations have no question in "
                                 f"{questions_path}, e.g. question_id {extra}")
    return examples


def load_textvqa(path: str, image_dir: str = "") -> list[Example]:
    """Questions of TextVQA's native file (`TextVQA_0.5.1_val.json`: {"data": [...]}), images `<image_id>.jpg`.

    answers: the 10 human answers (empty for the test split); meta: image_id, set_name.
    """
    examples = []
    for i, q in enumerate(field(read_json(path), "data", path)):
        where = f"{path} data #{i}"
        image_id = str(field(q, "image_id", where))
        examples.append(Example(
            qid=str(field(q, "question_id", where)), image_path=os.path.join(image_dir, f"{image_id}.jpg"),
            question_text=str(field(q, "question", where)), answers=tuple(str(a) for a in q.get("answers", ())),
            meta={"benchmark": "textvqa", "image_id": image_id, "set_name": q.get("set_name", "")}))
    return examples
