"""ScienceQA loader, prompt turns and scorers (the original's strict parser and whole-split accuracy; vlm_jax's
lenient "standard" one) against hand-counted accuracies."""
import json
import os

import pytest

from vlm_jax.evaluate.__main__ import main
from vlm_jax.evaluate.examples import BenchmarkFileError
from vlm_jax.evaluate.prompts import build_prompt
from vlm_jax.evaluate.registry import get, turns_for
from vlm_jax.evaluate.scienceqa import load_scienceqa, parse_original, scienceqa_correct

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")


def _problem(question, choices, answer, hint, subject, grade, image="image.png", split="test"):
    return {"question": question, "choices": choices, "answer": answer, "hint": hint, "image": image,
            "subject": subject, "grade": grade, "split": split, "task": "closed choice", "lecture": "",
            "solution": ""}


PROBLEMS = {
    "1": _problem("Which animal barks?", ["cat", "dog", "bird"], 1, "", "natural science", "grade2"),
    "2": _problem("Which city is the capital of France?", ["Paris", "Rome"], 0, "Look at the map.",
                  "social science", "grade8"),
    "3": _problem("Which word is a noun?", ["run", "table"], 1, "", "language science", "grade3", image=None),
    "4": _problem("Which verb fits?", ["is", "are", "was", "be"], 3, "", "language science", "grade10"),
    "5": _problem("Which colour is the sky?", ["red", "blue"], 1, "Colors", "natural science", "grade5"),
    "6": _problem("Train question?", ["x", "y"], 0, "", "natural science", "grade1", split="train"),
}


@pytest.fixture
def sqa_files(tmp_path):
    problems, splits = tmp_path / "problems.json", tmp_path / "pid_splits.json"
    problems.write_text(json.dumps(PROBLEMS))
    splits.write_text(json.dumps({"test": ["1", "2", "3", "4", "5"], "train": ["6"]}))
    return str(problems), str(splits)


def test_loader_keeps_image_questions_of_the_split(sqa_files):
    problems, splits = sqa_files
    examples = load_scienceqa(problems, "test", splits, image_root="/data/sqa", images_only=True)
    assert [e.qid for e in examples] == ["1", "2", "4", "5"]
    every = load_scienceqa(problems, "test", splits)
    assert [e.qid for e in every] == ["1", "2", "3", "4", "5"] and not every[2].meta["has_image"]
    assert examples[0].image_path == "/data/sqa/test/1/image.png"
    assert examples[0].answers == ("B",) and examples[0].choices == ("cat", "dog", "bird")
    assert examples[1].meta["hint"] == "Look at the map." and examples[1].meta["grade_group"] == "G7-12"
    assert [e.qid for e in load_scienceqa(problems, "train")] == ["6"]  # split from problems.json itself


@pytest.mark.parametrize("generation, correct", [
    ("B", True), ("(B)", True), ("B.", True), ("B) dog", True), ("B. dog", True), ("The answer is B.", True),
    ("The answer is B", True), ("Answer: B", True), ("dog", True), ("The answer is dog.", True),
    ("A dog", True),  # "A" is an article here: no stated letter, and the text names the option "dog"
    ("A", False), ("cat", False), ("The answer is A.", False), ("I don't know", False), ("D", False), ("", False),
])
def test_option_extraction(sqa_files, generation, correct):
    problems, splits = sqa_files
    example = load_scienceqa(problems, "test", splits)[0]  # "Which animal barks?" -> B. dog
    assert scienceqa_correct(example, generation) is correct


@pytest.mark.parametrize("generation, parsed", [
    # the original's eval_science_qa.py: exact letter, "X. " prefix, or exactly one "The answer is X."
    ("B", "B"), ("B. dog", "B"), ("The answer is B.", "B"), ("I think. The answer is C!", "C"),
    ("(B)", "FAILED"), ("B.", "FAILED"), ("B) dog", "FAILED"), ("Answer: B", "FAILED"), ("dog", "FAILED"),
    ("The answer is B", "FAILED"),  # the regex needs one more character after the letter
    ("The answer is A. The answer is B.", "FAILED"), ("F", "FAILED"), ("b", "FAILED"), ("", "FAILED"),
])
def test_original_parser(generation, parsed):
    assert parse_original(generation) == parsed


def test_turns_original_and_standard(sqa_files):
    problems, splits = sqa_files
    demo, query = load_scienceqa(problems, "train", splits)[0], load_scienceqa(problems, "test", splits)[1]
    sqa = get("scienceqa")
    original = build_prompt(turns_for(sqa, query, [demo], "original")).render()
    assert original == (
        SYSTEM + " USER: <image>\nTrain question?\nA. x\nB. y"
        "Answer with the option's letter from the given choices directly. ASSISTANT: A</s>"
        "USER: <image>\nContext: Look at the map.\nWhich city is the capital of France?\nA. Paris\nB. Rome"
        " ASSISTANT:")
    standard = build_prompt(turns_for(sqa, query, [demo], "standard")).render()
    assert standard == (
        SYSTEM + " USER: <image>\nTrain question?\nA. x\nB. y\n"
        "Answer with the option's letter from the given choices directly. ASSISTANT: A</s>"
        "USER: <image>\nContext: Look at the map.\nWhich city is the capital of France?\nA. Paris\nB. Rome\n"
        "Answer with the option's letter from the given choices directly. ASSISTANT:")


def test_scienceqa_cli_breakdowns(sqa_files, tmp_path, capsys):
    problems, splits = sqa_files
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question_id": "1", "answer": "The answer is B."},  # natural, G1-6, no hint: right
        {"question_id": "2", "answer": "(A)"},               # social, G7-12, hint: right
        {"question_id": "4", "answer": "be"},                # language, G7-12: right (option text)
        {"question_id": "5", "answer": "A. red"}]))          # natural, G1-6, hint: wrong
    args = ["score", "--config", os.path.join(REPO, "configs", "eval", "scienceqa.py"), "--predictions", str(preds),
            f"--config.eval_split.problems_path={problems}", f"--config.eval_split.pid_splits_path={splits}"]
    assert main(args + ["--config.protocol=standard"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(75.0) and result["count"] == 4
    assert result["per_subject"] == pytest.approx(
        {"language science": 100.0, "natural science": 50.0, "social science": 100.0})
    assert result["per_context"] == pytest.approx({"image": 75.0, "text": 50.0})
    assert result["per_grade"] == pytest.approx({"G1-6": 50.0, "G7-12": 100.0})
    # the original: only "The answer is B." (pid 1) parses right ("(A)" and "be" fail, "A. red" is wrong);
    # accuracy over all 5 test questions (pid 3 has no image, no prediction: wrong), IMG accuracy over 4
    records = tmp_path / "records.jsonl"
    assert main(args + ["--records", str(records)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(20.0) and result["count"] == 5 and result["missing"] == 0
    assert result["img_accuracy"] == pytest.approx(25.0) and result["img_count"] == 4
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert [(r["question_id"], r["extracted"], r["ground_truth"], r["score"]) for r in rows] == [
        ("1", "B", "B", 1.0), ("2", "FAILED", "A", 0.0), ("3", "FAILED", "B", 0.0), ("4", "FAILED", "D", 0.0),
        ("5", "A", "B", 0.0)]


def test_bad_records_are_named(tmp_path):
    bad = dict(PROBLEMS, **{"9": dict(PROBLEMS["1"], answer=7)})
    path = tmp_path / "problems.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(BenchmarkFileError, match=r"problems.json pid 9: field 'answer' = 7"):
        load_scienceqa(str(path))
    bad["9"] = dict(PROBLEMS["1"], answer=True)
    path.write_text(json.dumps(bad))
    with pytest.raises(BenchmarkFileError, match=r"pid 9: field 'answer' = True"):
        load_scienceqa(str(path))
    bad["9"] = {k: v for k, v in PROBLEMS["1"].items() if k != "grade"}
    path.write_text(json.dumps(bad))
    with pytest.raises(BenchmarkFileError, match=r"problems.json pid 9: missing field 'grade'"):
        load_scienceqa(str(path))


def test_run_generates_for_image_questions_and_scores_the_whole_split(sqa_files):
    """The run's question list is the image questions; scoring keeps every test question (the original's
    Total); the demonstration pool is the train split's image questions, whole for RICES, a seeded sample of
    query_set_size for `random` or rices.pool=query_set."""
    import runpy

    from vlm_jax.evaluate.run import load_questions_and_pool

    problems, splits = sqa_files
    config = runpy.run_path(os.path.join(REPO, "configs", "eval", "scienceqa.py"))["get_config"]()
    config.eval_split.problems_path = config.demo_split.problems_path = problems
    config.eval_split.pid_splits_path = config.demo_split.pid_splits_path = splits
    config.shots = 1
    examples, queries, pool = load_questions_and_pool(config)
    assert [e.qid for e in examples] == ["1", "2", "3", "4", "5"] and [q.qid for q in queries] == ["1", "2", "4", "5"]
    assert [e.qid for e in pool] == ["6"]
    data = json.loads(open(problems).read())
    data.update({str(i): dict(PROBLEMS["6"], question=f"t{i}") for i in range(7, 12)})
    open(problems, "w").write(json.dumps(data))
    json.dump({"test": ["1", "2", "3", "4", "5"], "train": [str(i) for i in range(6, 12)]}, open(splits, "w"))
    assert len(load_questions_and_pool(config)[2]) == 6  # RICES: the whole demonstration split
    config.query_set_size = 3
    config.rices.pool = "query_set"
    sample = [e.qid for e in load_questions_and_pool(config)[2]]
    assert len(sample) == 3 and sample == [e.qid for e in load_questions_and_pool(config)[2]]  # seeded
