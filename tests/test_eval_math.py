"""MathVista / MATH-Vision / MathVerse loaders and rule-based scorers. MathVista runs over all 1000 real
testmini questions: every ground truth fed back in several surface forms scores 100%, wrong answers 0%."""
import collections
import json
import os

import pytest
from eval_shared_data import shared_data_dir

from vlm_jax.evaluate.__main__ import main
from vlm_jax.evaluate.answer_extract import extract_choice, extract_number, parse_number
from vlm_jax.evaluate.examples import OPTION_LETTERS, BenchmarkFileError
from vlm_jax.evaluate.visual_math import (load_mathverse, load_mathvision, load_mathvista, parse_inline_choices,
                                          score_mathverse, score_mathvision, score_mathvista)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MATHVISTA = str(shared_data_dir() / "mathvista_test_mini.json")


@pytest.fixture(scope="module")
def mathvista():
    return load_mathvista(MATHVISTA, image_dir="images")


@pytest.fixture(scope="module")
def raw_mathvista():
    return json.loads(open(MATHVISTA).read())


def test_mathvista_loader(mathvista, raw_mathvista):
    assert len(mathvista) == 1000
    for e, r in zip(mathvista, raw_mathvista):
        assert e.qid == r["pid"] and e.image_path == f"images/{r['image']}" and e.meta["query"] == r["query"]
        if r["question_type"] == "multi_choice":
            assert e.choices[OPTION_LETTERS.index(e.answers[0])] == r["answer"]
        else:
            assert e.answers == (r["answer"],) and e.choices == ()
    assert mathvista[0].meta["skills"] == ("scientific reasoning",) and mathvista[0].meta["precision"] == 1.0


def _right_and_wrong(e):
    """Surface forms of the ground truth, and wrong answers, for one MathVista question."""
    gt = e.answers[0]
    if e.meta["question_type"] == "multi_choice":
        text = e.choices[OPTION_LETTERS.index(gt)]
        wrong = next(i for i, c in enumerate(e.choices) if c != text)
        return ([gt, f"({gt})", f"{gt}.", f"The answer is ({gt}).", f"Answer: {gt}", f"{gt}. {text}", text,
                 f"The answer is {text}.", f"Looking at the figure, {text} is correct."],
                [OPTION_LETTERS[wrong], f"The answer is ({OPTION_LETTERS[wrong]}).", e.choices[wrong]])
    kind = e.meta["answer_type"]
    if kind == "integer":
        unit = e.meta["unit"] or "items"
        return ([gt, f"The answer is {gt}.", f"{gt} {unit}", f"First 2 + 3 = 5, so the final answer is {gt}"],
                [str(int(gt) + 1), f"The answer is {int(gt) - 1}."])
    if kind == "float":
        p, v = int(e.meta["precision"]), float(gt)
        return ([gt, f"{v:.{p + 1}f} cm", f"The answer is {gt}.", f"x = {v:.{p + 1}f}"],
                [f"{v + 1:.{p}f}", f"The answer is {v + 10 ** -p:.{p}f}"])
    return [gt, f"The answer is {gt}."], [gt.replace("2", "3", 1), "[1, 2]"]


def test_mathvista_ground_truth_surface_forms_score_100_and_wrong_answers_0(mathvista):
    forms = [_right_and_wrong(e) for e in mathvista]
    n_right = max(len(r) for r, _ in forms)
    for k in range(n_right):
        predictions = {e.qid: right[k % len(right)] for e, (right, _) in zip(mathvista, forms)}
        assert score_mathvista(mathvista, predictions).summary["accuracy"] == 100.0, k
    for k in range(3):
        predictions = {e.qid: wrong[k % len(wrong)] for e, (_, wrong) in zip(mathvista, forms)}
        assert score_mathvista(mathvista, predictions).summary["accuracy"] == 0.0, k


def test_mathvista_breakdowns_by_hand(mathvista, raw_mathvista, tmp_path, capsys):
    # right exactly on the free-form questions (460 of 1000), wrong on all multiple-choice ones
    records = []
    for e, r in zip(mathvista, raw_mathvista):
        answer = r["answer"] if r["question_type"] == "free_form" else "I cannot tell."
        records.append({"question_id": r["pid"], "answer": answer})
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(x) + "\n" for x in records))
    assert main(["score", "--config", f"{REPO}/configs/eval/mathvista.py", "--predictions", str(preds),
                 f"--config.eval_split.path={MATHVISTA}"]) == 0
    result = json.loads(capsys.readouterr().out)
    free = [r for r in raw_mathvista if r["question_type"] == "free_form"]
    assert result["accuracy"] == pytest.approx(100 * len(free) / 1000) == pytest.approx(46.0)
    assert result["per_question_type"] == {"free_form": 100.0, "multi_choice": 0.0}
    for key in ("task", "grade"):
        total = collections.Counter(r["metadata"][key] for r in raw_mathvista)
        right = collections.Counter(r["metadata"][key] for r in free)
        assert result[f"per_{key}"] == pytest.approx({k: 100 * right[k] / n for k, n in total.items()})
    skills_total = collections.Counter(s for r in raw_mathvista for s in r["metadata"]["skills"])
    skills_right = collections.Counter(s for r in free for s in r["metadata"]["skills"])
    assert result["per_skills"] == pytest.approx({k: 100 * skills_right[k] / n for k, n in skills_total.items()})


@pytest.mark.parametrize("text, value", [
    ("3.50 cm", 3.5), ("-4.3", -4.3), ("1,000", 1000.0), ("50%", 50.0), ("145°", 145.0), ("\\frac{1}{2}", 0.5),
    ("$2\\sqrt{3}$", 2 * 3 ** 0.5), ("x = 5", 5.0), ("yes", None), ("2019-2020", None), ("[1, 2]", None)])
def test_parse_number(text, value):
    assert parse_number(text) == (pytest.approx(value) if value is not None else None)


@pytest.mark.parametrize("text, value", [
    ("The answer is 3.50 cm.", 3.5), ("There are 3 apples and 4 pears", 4.0), ("So x = 12. Done", 12.0),
    ("Answer: 7 because 3 + 4 = 7", 7.0), ("no number", None)])
def test_extract_number(text, value):
    assert extract_number(text) == value


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_mathvision_by_hand(tmp_path, capsys):
    rows = [
        {"id": "1", "question": "How many different digits?\n<image1>", "options": [], "answer": "6",
         "level": 1, "subject": "counting", "image": "images/1.jpg", "solution": None},
        {"id": "2", "question": "Which kitten?\n<image1>", "options": ["A", "B", "C", "D", "E"], "answer": "D",
         "level": 3, "subject": "logic", "image": "images/2.jpg", "solution": None},
        {"id": "3", "question": "How long is the room? <image1>", "options": ["$6 \\mathrm{~m}$", "$8 \\mathrm{~m}$"],
         "answer": "B", "level": 1, "subject": "combinatorial geometry", "image": "images/3.jpg", "solution": None},
        {"id": "4", "question": "What fraction is shaded?", "options": [], "answer": "\\frac{1}{2}",
         "level": 2, "subject": "arithmetic", "image": "images/4.jpg", "solution": None},
        {"id": "5", "question": "Which side is opposite?", "options": [], "answer": "C",
         "level": 1, "subject": "solid geometry", "image": "images/5.jpg", "solution": None},
        {"id": "6", "question": "How long is the diagonal?", "options": [], "answer": "2\\sqrt{3}",
         "level": 2, "subject": "arithmetic", "image": "images/6.jpg", "solution": None}]
    path = _write_jsonl(tmp_path / "test.jsonl", rows)
    examples = load_mathvision(path, image_dir="mv")
    assert [e.meta["question_type"] for e in examples] == ["free_form", "multi_choice", "multi_choice",
                                                            "free_form", "free_form", "free_form"]
    assert examples[2].choices == ("$6 \\mathrm{~m}$", "$8 \\mathrm{~m}$") and examples[0].image_path == "mv/images/1.jpg"
    preds = _write_jsonl(tmp_path / "p.jsonl", [
        {"question_id": "1", "answer": "I can see 6 different digits."},  # right (last number)
        {"question_id": "2", "answer": "The answer is D."},              # right
        {"question_id": "3", "answer": "8 m"},                           # right (option text, LaTeX stripped)
        {"question_id": "4", "answer": "0.5"},                           # right (1/2)
        {"question_id": "5", "answer": "B"},                             # wrong letter
        {"question_id": "6", "answer": "The answer is $2\\sqrt{3}$."}])  # right (same value)
    assert main(["score", "--config", f"{REPO}/configs/eval/mathvision.py", "--predictions", preds,
                 f"--config.eval_split.path={path}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(500 / 6)
    assert result["per_level"] == pytest.approx({"1": 200 / 3, "2": 100.0, "3": 100.0})
    assert result["per_subject"] == pytest.approx({"arithmetic": 100.0, "combinatorial geometry": 100.0,
                                                   "counting": 100.0, "logic": 100.0, "solid geometry": 0.0})
    wrong = {"1": "7", "2": "C", "3": "6 m", "4": "0.25", "5": "B", "6": "3"}
    assert score_mathvision(examples, wrong).summary["accuracy"] == 0.0


def test_mathverse_by_hand(tmp_path):
    def row(i, version, question, answer, qtype):
        return {"sample_index": str(i), "problem_index": str(i), "problem_version": version, "question": question,
                "image": f"images_version_1-4/image_{i}.png", "answer": answer, "question_type": qtype,
                "query_wo": f"Please directly answer the question.\nQuestion: {question}", "query_cot": "",
                "question_for_eval": question, "metadata": {"split": "testmini", "source": "GeoQA",
                                                             "subject": "plane geometry", "subfield": "angle"}}
    rows = [row(1, "Text Dominant", "Then the size of angle CED is ()\nChoices:\nA:40°\nB:60°\nC:120°\nD:140°",
                "D", "multi-choice"),
            row(2, "Vision Only", "According to the question shown in the image, please directly answer.", "B",
                "multi-choice"),
            row(3, "Text Lite", "What is 2 + 3?", "5", "free-form"),
            row(4, "Vision Intensive", "Find the line through the points.", "y=2x+1", "free-form")]
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps(rows))
    examples = load_mathverse(str(path))
    assert examples[0].choices == ("40°", "60°", "120°", "140°") and examples[1].choices == ()
    assert examples[0].meta["query"].startswith("Please directly answer")  # query_wo: the file has no "query"
    result = score_mathverse(examples, {"1": "140°", "2": "(B)", "3": "6", "4": "The answer is y = 2x + 1"}).summary
    assert result["accuracy"] == pytest.approx(75.0)
    assert result["per_problem_version"] == {"Text Dominant": 100.0, "Text Lite": 0.0, "Vision Intensive": 100.0,
                                             "Vision Only": 100.0}
    assert score_mathverse(examples, {"1": "A", "2": "C", "3": "The answer is 5", "4": "y=2x"}).summary["accuracy"] == 25.0


def test_inline_choices_and_choice_rules():
    assert parse_inline_choices("Q?\nChoice:\nA.5 cm\nB.5 m") == ("5 cm", "5 m")
    assert parse_inline_choices("Q?\nChoices:\nA:1\nC:3") == ("1",)  # letters must run A, B, ...
    assert parse_inline_choices("no options here") == ()
    choices = ("Yes", "No")
    assert extract_choice("No, it is not", choices) == 1
    assert extract_choice("No, it is not yes", choices) is None  # both named: ambiguous
    assert extract_choice("E", choices) is None  # beyond the options
    assert extract_choice("50", ("15", "100", "50", "50")) == 2  # duplicated texts count as one option


def test_bad_math_records_are_named(tmp_path):
    path = tmp_path / "mv.json"
    path.write_text(json.dumps([{"pid": "7", "question": "q", "image": "7.jpg", "choices": ["1", "2"],
                                 "answer": "3", "question_type": "multi_choice", "answer_type": "text",
                                 "metadata": {}, "query": "q"}]))
    with pytest.raises(BenchmarkFileError, match=r"mv.json pid 7: answer '3' is not one of its choices"):
        load_mathvista(str(path))
    path.write_text(json.dumps([{"id": "9", "question": "q", "options": ["a", "b"], "answer": "C", "image": "x",
                                 "level": 1, "subject": "s"}]))
    with pytest.raises(BenchmarkFileError, match=r"mv.json id 9: answer 'C' is not an option letter A..B"):
        load_mathvision(str(path))
