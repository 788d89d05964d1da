"""Open-ended VQA benchmarks: OK-VQA, TextVQA and TextVQA with OCR tokens (`textvqa_ocr`, the paper's
"TextVQA_ocr" column). Loaders of the public files, prompt turns, scorers and per-type breakdowns.

Original protocol (`llava/eval/model_vqa_loader_few_shot.py`, `eval_okvqa.py`, `eval_textvqa.py`,
`vqa_tools/vqa_eval.py`, `m4c_evaluator.py`, `utils.py` of DAMO-NLP-SG/multimodal_textbook):
- turns: `{question}\\nAnswer the question using a single word or phrase.`, demo answer = the first human answer;
  with OCR: demonstrations `{Question}\\nReference OCR token: {t1, t2, ...}` (first letter upper-cased) + the
  instruction, the query LLaVA's `llava_textvqa_val_v051_ocr.jsonl` form `{question}\\nReference OCR token:
  ...\\nAnswer the question using a single word or phrase.`;
- OK-VQA: `short_answer` of the generation, then `OKVQAEval`: `processPunctuation` with a Porter stem of the
  WHOLE string at its end, then `processDigitArticle`; human answers are punctuation-processed (and stemmed)
  only when they are not all identical;
- TextVQA: the raw generation into M4C's `EvalAIAnswerProcessor` (no `short_answer`).
The "standard" protocol keeps vlm_jax's scorers: OK-VQA stems every word of the normalised prediction and of
every human answer, TextVQA cuts the generation with `short_answer` first.

A question's accuracy is the mean, over the 10 leave-one-out subsets of its human answers, of
min(#humans in the subset who gave the predicted answer / 3, 1).
"""
from __future__ import annotations

import functools
import os
from typing import Mapping, Sequence

from vlm_jax.evaluate.examples import BenchmarkFileError, Example, field, list_field, read_json, text_field
from vlm_jax.evaluate.predictions import accuracy_by, align, records, summary
from vlm_jax.evaluate.registry import Benchmark, Scored, register, register_loader
from vlm_jax.evaluate.vqa_normalize import (normalize_evalai, normalize_vqa_prediction, process_digit_article,
                                            process_punctuation)

VQA_INSTRUCTION = "Answer the question using a single word or phrase."
OCR_PREFIX = "Reference OCR token: "
_LEADING_PHRASES = ("it is ", "it's ", "a ", "an ", "the ")


# ---------------------------------------------------------------------------------------------- loaders

def _vqa_image_name(question: dict, data_subtype: str | None, where: str) -> str:
    """COCO file name for integer image ids (`COCO_val2014_000000297147.jpg`), `<id>.jpg` for string ids."""
    if "image" in question:
        return text_field(question, "image", where)
    image_id = field(question, "image_id", where)
    if isinstance(image_id, int) and not isinstance(image_id, bool):
        if not data_subtype:
            raise BenchmarkFileError(f"{where}: integer image_id needs the questions file's 'data_subtype'")
        if not 0 <= image_id < 10 ** 12:
            raise BenchmarkFileError(f"{where}: field 'image_id' = {image_id} is not a COCO image id")
        return f"COCO_{data_subtype}_{image_id:012d}.jpg"
    return f"{text_field(question, 'image_id', where)}.jpg"


def _human_answers(ann: Mapping, where: str) -> tuple[str, ...]:
    answers = list_field(ann, "answers", where, nonempty=True)
    return tuple(text_field(a, "answer", f"{where} answer #{i}") if isinstance(a, Mapping) else
                 text_field({"answer": a}, "answer", f"{where} answer #{i}") for i, a in enumerate(answers))


def _read_ocr(ocr_path: str) -> dict[str, list[str]]:
    """{image_id: ocr_tokens} from a TextVQA OCR file (`TextVQA_Rosetta_OCR_v0.2_*.json`: {"data": [...]})."""
    out = {}
    for i, r in enumerate(list_field(read_json(ocr_path), "data", ocr_path)):
        where = f"{ocr_path} data #{i}"
        out[text_field(r, "image_id", where)] = [str(t) for t in list_field(r, "ocr_tokens", where)]
    return out


def load_vqa(questions_path: str, annotations_path: str | None = None, image_dir: str = "",
             benchmark: str = "okvqa", ocr_path: str | None = None) -> list[Example]:
    """Questions of a VQA-format split (`OpenEnded_*_questions.json` + `*_annotations.json`), in question-file order.

    answers: the human answers' "answer" fields in annotation order (OK-VQA's are already stemmed by the
    dataset authors); meta: question_type, answer_type, image_id (and ocr_tokens with `ocr_path`).
    annotations_path None gives answer-less examples (a test split to generate on). Every question must have
    an annotation with at least one answer, and every annotation a question.
    """
    questions_file = read_json(questions_path)
    questions = list_field(questions_file, "questions", questions_path)
    data_subtype = questions_file.get("data_subtype")
    ocr = _read_ocr(ocr_path) if ocr_path else None
    annotations = {}
    if annotations_path is not None:
        for i, ann in enumerate(list_field(read_json(annotations_path), "annotations", annotations_path)):
            annotations[text_field(ann, "question_id", f"{annotations_path} annotation #{i}")] = ann
    examples = []
    for i, q in enumerate(questions):
        where = f"{questions_path} question #{i}"
        qid = text_field(q, "question_id", where)
        meta = {"benchmark": benchmark, "image_id": field(q, "image_id", where)}
        answers: tuple[str, ...] = ()
        if annotations_path is not None:
            ann = annotations.pop(qid, None)
            if ann is None:
                raise BenchmarkFileError(f"{annotations_path}: no annotation for question_id {qid}")
            answers = _human_answers(ann, f"{annotations_path} question_id {qid}")
            meta["question_type"] = str(ann.get("question_type", ""))
            meta["answer_type"] = str(ann.get("answer_type", ""))
        if ocr is not None:
            meta["ocr_tokens"] = tuple(ocr.get(str(meta["image_id"]), ()))
        examples.append(Example(qid=qid, image_path=os.path.join(image_dir, _vqa_image_name(q, data_subtype, where)),
                                question_text=text_field(q, "question", where), answers=answers, meta=meta))
    if annotations:
        extra = sorted(annotations)[:5]
        raise BenchmarkFileError(f"{annotations_path}: {len(annotations)} annotations have no question in "
                                 f"{questions_path}, e.g. question_id {extra}")
    return examples


def load_textvqa(path: str, image_dir: str = "", ocr_path: str | None = None,
                 benchmark: str = "textvqa") -> list[Example]:
    """Questions of TextVQA's native file (`TextVQA_0.5.1_val.json`: {"data": [...]}), images `<image_id>.jpg`.

    answers: the 10 human answers (empty for the test split); meta: image_id, set_name, and ocr_tokens (from
    the record's own `ocr_tokens`, else from the Rosetta OCR file `ocr_path`, else empty).
    """
    ocr = _read_ocr(ocr_path) if ocr_path else {}
    examples = []
    for i, q in enumerate(list_field(read_json(path), "data", path)):
        where = f"{path} data #{i}"
        image_id = text_field(q, "image_id", where)
        answers = tuple(text_field({"answer": a}, "answer", f"{where} answer #{j}")
                        for j, a in enumerate(list_field(q, "answers", where) if "answers" in q else []))
        tokens = q.get("ocr_tokens", ocr.get(image_id, ()))
        examples.append(Example(
            qid=text_field(q, "question_id", where), image_path=os.path.join(image_dir, f"{image_id}.jpg"),
            question_text=text_field(q, "question", where), answers=answers,
            meta={"benchmark": benchmark, "image_id": image_id, "set_name": str(q.get("set_name", "")),
                  "ocr_tokens": tuple(str(t) for t in tokens)}))
    return examples


# ---------------------------------------------------------------------------------------------- turns

def vqa_turn(example: Example, protocol: str = "original") -> str:
    return f"{example.question_text}\n{VQA_INSTRUCTION}"


def _ocr_line(example: Example) -> str:
    return OCR_PREFIX + ", ".join(example.meta.get("ocr_tokens", ()))


def ocr_query_turn(example: Example, protocol: str = "original") -> str:
    """LLaVA's `llava_textvqa_val_v051_ocr.jsonl` query: question, OCR line, instruction."""
    return f"{example.question_text}\n{_ocr_line(example)}\n{VQA_INSTRUCTION}"


def ocr_demo_question(example: Example) -> str:
    """The original's `OpenflamingVQAWithOCRDataset` question: first letter upper-cased + OCR line."""
    q = example.question_text
    return f"{q[:1].upper()}{q[1:]}\n{_ocr_line(example)}"


def first_answer(example: Example) -> str:
    """The demonstration answer: the first human answer (the original's `x["answers"][0]`)."""
    if not example.answers or not example.answers[0]:
        raise ValueError(f"{example.benchmark} question {example.qid}: a demonstration needs a ground-truth answer")
    return example.answers[0]


def vqa_demo(example: Example, protocol: str = "original") -> tuple[str, str]:
    return vqa_turn(example, protocol), first_answer(example)


def ocr_demo(example: Example, protocol: str = "original") -> tuple[str, str]:
    return f"{ocr_demo_question(example)}\n{VQA_INSTRUCTION}", first_answer(example)


# ---------------------------------------------------------------------------------------------- scoring

def short_answer(generation: str) -> str:
    """The original's `utils.short_answer`: first line, text before the first '. ', '"' and ', ', stripped and
    lower-cased, one trailing period dropped, then each of the leading phrases 'it is ', "it's ", 'a ', 'an ',
    'the ' removed once, in that order ("It is a red bus." -> "red bus")."""
    answer = generation.split("\n")[0].split(". ")[0].split('"')[0].split(", ")[0].strip().lower()
    if answer.endswith("."):
        answer = answer[:-1]
    for phrase in _LEADING_PHRASES:
        if answer.startswith(phrase):
            answer = answer[len(phrase):]
    return answer


def leave_one_out_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Mean over i of min(#{j != i : human_answers[j] == prediction} / 3, 1) (answers already normalised)."""
    n = len(human_answers)
    if n == 0:
        raise ValueError("VQA accuracy needs at least one human answer")
    matches = sum(a == prediction for a in human_answers)
    return sum(min(1.0, (matches - (a == prediction)) / 3) for a in human_answers) / n


@functools.cache
def _porter_stemmer():
    from nltk.stem.porter import PorterStemmer  # nltk takes seconds to import; only OK-VQA needs it
    return PorterStemmer()


def _stem_words(text: str) -> str:
    return " ".join(_porter_stemmer().stem(word) for word in text.split())


def okvqa_process_punctuation(text: str) -> str:
    """The original's `OKVQAEval.processPunctuation`: VQA punctuation processing, then `PorterStemmer().stem`
    of the whole resulting string (nltk lower-cases it and stems only its end)."""
    return _porter_stemmer().stem(process_punctuation(text))


def okvqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """The original's `OKVQAEval.evaluate` for one (already `short_answer`-ed) prediction."""
    return leave_one_out_accuracy(okvqa_normalize(prediction), okvqa_human_answers(human_answers))


def okvqa_normalize(prediction: str) -> str:
    prediction = prediction.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(okvqa_process_punctuation(prediction))


def okvqa_human_answers(human_answers: Sequence[str]) -> list[str]:
    answers = list(human_answers)
    return [okvqa_process_punctuation(a) for a in answers] if len(set(answers)) > 1 else answers


def vqa_accuracy(prediction: str, human_answers: Sequence[str], stem: bool = False) -> float:
    """vlm_jax's ("standard") VQA accuracy of one (short) answer: official `VQAEval` normalisation (prediction:
    punctuation, number words, articles, contractions; human answers: punctuation only, and only when they are
    not all identical). stem: Porter-stem every word of the normalised prediction and human answers."""
    prediction = normalize_vqa_prediction(prediction)
    answers = list(human_answers)
    if len(set(answers)) > 1:
        answers = [process_punctuation(a) for a in answers]
    if stem:
        prediction, answers = _stem_words(prediction), [_stem_words(a) for a in answers]
    return leave_one_out_accuracy(prediction, answers)


def textvqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """M4C `TextVQAAccuracyEvaluator` accuracy of one answer: EvalAI normalisation of prediction and all 10
    human answers, then the leave-one-out soft score."""
    if len(human_answers) != 10:
        raise ValueError(f"TextVQA accuracy needs exactly 10 human answers, got {len(human_answers)}")
    return leave_one_out_accuracy(normalize_evalai(prediction), [normalize_evalai(a) for a in human_answers])


def _breakdowns(examples: Sequence[Example], scores: list[float]) -> dict:
    out = {}
    for key in ("question_type", "answer_type"):
        if examples and all(e.meta.get(key) for e in examples):
            out[f"per_{key}"] = accuracy_by(scores, [e.meta[key] for e in examples])
    return out


def _check_answers(examples: Sequence[Example], benchmark: str, exactly: int | None = None) -> None:
    for e in examples:
        if not e.answers or (exactly is not None and len(e.answers) != exactly):
            need = f"exactly {exactly}" if exactly else "at least one"
            raise BenchmarkFileError(f"{benchmark} question_id {e.qid}: {len(e.answers)} human answers, the "
                                     f"scorer needs {need} (is this the annotated split?)")


def score_okvqa(examples: Sequence[Example], predictions: Mapping[str, str], *, protocol: str = "original",
                allow_missing: bool = False, judge=None) -> Scored:
    """OK-VQA accuracy (%) of raw generations {question_id: text}; per question and answer type too."""
    _check_answers(examples, "okvqa")
    preds = align(examples, predictions, allow_missing)
    extracted, scores = [], []
    for e, p in zip(examples, preds):
        if p is None:
            extracted.append(None)
            scores.append(0.0)
        elif protocol == "original":
            extracted.append(okvqa_normalize(short_answer(p)))
            scores.append(okvqa_accuracy(short_answer(p), e.answers))
        else:
            extracted.append(short_answer(p))
            scores.append(vqa_accuracy(short_answer(p), e.answers, stem=True))
    scorer = "okvqa_eval_original" if protocol == "original" else "vqa_eval_word_stem"
    return Scored(summary("okvqa", scores, preds, scorer=scorer, **_breakdowns(examples, scores)),
                  records(examples, [list(e.answers) for e in examples], extracted, scores))


def _score_textvqa(name: str):
    def score(examples: Sequence[Example], predictions: Mapping[str, str], *, protocol: str = "original",
              allow_missing: bool = False, judge=None) -> Scored:
        """TextVQA accuracy (%) of raw generations {question_id: text} with the M4C evaluator."""
        _check_answers(examples, name, exactly=10)
        preds = align(examples, predictions, allow_missing)
        extracted, scores = [], []
        for e, p in zip(examples, preds):
            answer = None if p is None else (p if protocol == "original" else short_answer(p))
            extracted.append(None if answer is None else normalize_evalai(answer))
            scores.append(0.0 if answer is None else textvqa_accuracy(answer, e.answers))
        scorer = "m4c_raw_generation" if protocol == "original" else "m4c_short_answer"
        return Scored(summary(name, scores, preds, scorer=scorer, **_breakdowns(examples, scores)),
                      records(examples, [list(e.answers) for e in examples], extracted, scores))
    return score


score_textvqa = _score_textvqa("textvqa")
score_textvqa_ocr = _score_textvqa("textvqa_ocr")

register_loader("vqa", load_vqa)
register_loader("textvqa", load_textvqa)
register(Benchmark("okvqa", query_turn=vqa_turn, demo_turn=vqa_demo, score=score_okvqa, self_turn=vqa_demo))
register(Benchmark("textvqa", query_turn=vqa_turn, demo_turn=vqa_demo, score=score_textvqa, self_turn=vqa_demo))
register(Benchmark("textvqa_ocr", query_turn=ocr_query_turn, demo_turn=ocr_demo, score=score_textvqa_ocr,
                   self_turn=ocr_demo))
