"""VQA accuracy for OK-VQA (official VQA evaluation + Porter stemming) and TextVQA (M4C / EvalAI evaluator).

A question's accuracy is the mean, over the 10 leave-one-out subsets of its human answers, of
min(#humans in the subset who gave the predicted answer / 3, 1). Generations are first cut to a short answer
the way the Multimodal-Textbook evaluation does (`short_answer`).
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

from vlm_jax.evaluate.examples import Example
from vlm_jax.evaluate.predictions import accuracy_by, align, summary
from vlm_jax.evaluate.vqa_normalize import normalize_evalai, normalize_vqa_prediction, process_punctuation

_LEADING_PHRASES = ("it is ", "it's ", "a ", "an ", "the ")


def short_answer(generation: str) -> str:
    """The seeds' answer post-processing: first line, text before the first '. ', '"' and ', ', stripped and
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
    matches = sum(a == prediction for a in human_answers)
    return sum(min(1.0, (matches - (a == prediction)) / 3) for a in human_answers) / n


@functools.cache
def _porter_stemmer():
    from nltk.stem.porter import PorterStemmer  # nltk takes seconds to import; only OK-VQA needs it
    return PorterStemmer()


def _stem(text: str) -> str:
    return " ".join(_porter_stemmer().stem(word) for word in text.split())


def vqa_accuracy(prediction: str, human_answers: Sequence[str], stem: bool = False) -> float:
    """Official `VQAEval` accuracy of one (short) answer. As the official code: the prediction gets punctuation,
    number-word, article and contraction normalisation; human answers get punctuation normalisation only,
    and only when they are not all identical. stem: OK-VQA's variant, Porter-stemming every word of the
    normalised prediction and human answers (nltk PorterStemmer)."""
    prediction = normalize_vqa_prediction(prediction)
    answers = list(human_answers)
    if len(set(answers)) > 1:
        answers = [process_punctuation(a) for a in answers]
    if stem:
        prediction, answers = _stem(prediction), [_stem(a) for a in answers]
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
        if all(e.meta.get(key) for e in examples):
            out[f"per_{key}"] = accuracy_by(scores, [e.meta[key] for e in examples])
    return out


def score_okvqa(examples: Sequence[Example], predictions: Mapping[str, str], allow_missing: bool = False) -> dict:
    """OK-VQA accuracy (%) of raw generations {question_id: text}; per question and answer type too."""
    preds = align(examples, predictions, allow_missing)
    scores = [0.0 if p is None else vqa_accuracy(short_answer(p), e.answers, stem=True)
              for e, p in zip(examples, preds)]
    return summary("okvqa", scores, preds, **_breakdowns(examples, scores))


def score_textvqa(examples: Sequence[Example], predictions: Mapping[str, str], allow_missing: bool = False) -> dict:
    """TextVQA accuracy (%) of raw generations {question_id: text} with the M4C evaluator."""
    preds = align(examples, predictions, allow_missing)
    scores = []
    for e, p in zip(examples, preds):
        if len(e.answers) != 10:
            raise ValueError(f"textvqa question_id {e.qid}: {len(e.answers)} human answers, the evaluator needs 10")
        scores.append(0.0 if p is None else textvqa_accuracy(short_answer(p), e.answers))
    return summary("textvqa", scores, preds, **_breakdowns(examples, scores))
