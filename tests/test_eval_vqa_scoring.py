"""OK-VQA / TextVQA scorers against accuracies computed by hand from the official rules, for the original
protocol (the Multimodal-Textbook scorers) and vlm_jax's "standard" one.

Leave-one-out VQA accuracy with m of 10 humans matching: the m subsets that drop a matching human see m-1
matches, the 10-m others see m, so acc = (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10:
m=0 -> 0, m=1 -> 9/30 = 0.3, m=2 -> (2/3 + 16/3)/10 = 0.6, m=3 -> (3*2/3 + 7)/10 = 0.9, m>=4 -> 1.
"""
import json
import os
import subprocess
import sys

import pytest

from vlm_jax.evaluate.__main__ import main
from vlm_jax.evaluate.examples import BenchmarkFileError, Example
from vlm_jax.evaluate.vqa import (leave_one_out_accuracy, load_vqa, okvqa_accuracy, score_textvqa,
                                  short_answer, textvqa_accuracy, vqa_accuracy)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def answers(*groups):
    """answers(("2", 2), ("3", 8)) -> ['2', '2', '3', ...]: ten human answers from (answer, count) pairs."""
    out = [a for a, n in groups for _ in range(n)]
    assert len(out) == 10
    return out


def score_args(config, preds, *overrides):
    return ["score", "--config", os.path.join(REPO, "configs", "eval", f"{config}.py"), "--predictions", preds,
            *overrides]


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_arithmetic(matches, expected):
    humans = ["x"] * matches + ["y"] * (10 - matches)
    assert leave_one_out_accuracy("x", humans) == pytest.approx(expected)


@pytest.mark.parametrize("prediction, humans, expected", [
    # number words -> digits ("Two" -> "2"): 2 matches
    ("Two", answers(("2", 2), ("3", 8)), 0.6),
    ("None", answers(("0", 10)), 1.0),
    # articles dropped: 3 matches
    ("The dog", answers(("dog", 3), ("cat", 7)), 0.9),
    # contractions restored ("dont" -> "don't"): 4 matches
    ("dont", answers(("don't", 4), ("no", 6)), 1.0),
    # capitalised contraction keys never match after lower-casing: "Im" stays "im"
    ("Im", answers(("im", 10)), 1.0),
    ("Im", answers(("I'm", 10)), 0.0),
    # punctuation not touching a space becomes a space: "red-white" -> "red white"
    ("red-white", answers(("red white", 2), ("red", 8)), 0.6),
    # punctuation touching a space is deleted: "yes !" -> "yes"
    ("yes !", answers(("yes", 10)), 1.0),
    # a digit,digit comma deletes all punctuation: "1,000" -> "1000"
    ("1,000", answers(("1000", 1), ("100", 9)), 0.3),
    # periods before a digit stay, others go
    ("3.5", answers(("3.5", 3), ("4", 7)), 0.9),
    ("Sunny.", answers(("sunny", 2), ("rainy", 8)), 0.6),
    # human answers are punctuation-normalised only when they disagree
    ("t-shirt", answers(("t-shirt", 10)), 0.0),
    ("t-shirt", answers(("t-shirt", 9), ("shirt", 1)), 1.0),
    # the official count=re.UNICODE (32): only the first 32 of 33 periods are stripped
    ("x." * 33, answers(("x" * 33 + ".", 10)), 1.0),
    ("x." * 33, answers(("x" * 33, 10)), 0.0),
])
def test_official_vqa_normalisation(prediction, humans, expected):
    assert vqa_accuracy(prediction, humans) == pytest.approx(expected)


@pytest.mark.parametrize("prediction, humans, expected_plain, expected_stemmed", [
    ("Riding", answers(("ride", 3), ("walk", 7)), 0.0, 0.9),
    ("bananas", answers(("banana", 2), ("apple", 8)), 0.0, 0.6),
    ("police", answers(("police", 10)), 1.0, 1.0),
])
def test_standard_okvqa_stems_every_word_of_both_sides(prediction, humans, expected_plain, expected_stemmed):
    assert vqa_accuracy(prediction, humans) == pytest.approx(expected_plain)
    assert vqa_accuracy(prediction, humans, stem=True) == pytest.approx(expected_stemmed)


# The original OKVQAEval: Porter stem of the WHOLE prediction string after punctuation processing (Porter step
# 5a drops a final "e" of a word with measure > 1: "police" -> "polic"; step 5b drops one "l" of a final "ll":
# "baseball" -> "basebal"; step 1a drops a plural "s" only at the end of the string: "riding horses" ->
# "riding horse" -> 5a "riding hors"); human answers are processed (and stemmed) only when they disagree.
@pytest.mark.parametrize("prediction, humans, original, standard", [
    # identical human answers stay raw: "polic" != "police" (standard stems both: equal)
    ("police", answers(("police", 10)), 0.0, 1.0),
    # pre-stemmed human answers "basebal": the original matches, standard stems them again to "baseb"
    ("baseball", answers(("basebal", 10)), 1.0, 0.0),
    # disagreeing humans are stemmed too: "riding horses" and 3 x "riding horses" -> "riding hors" (3 matches);
    # standard stems every word: "ride hors" on both sides, also 3 matches
    ("Riding horses", answers(("riding horses", 3), ("walking", 7)), 0.9, 0.9),
    # a human "ride horse" stems per word to "ride hors" (standard: 2 matches with "ride hors"); the original's
    # whole-string stem of "ride horse" is "ride hors" and of the prediction "riding horses" "riding hors": 0
    ("riding horses", answers(("ride horse", 2), ("walking", 8)), 0.0, 0.6),
])
def test_original_okvqa_scorer(prediction, humans, original, standard):
    assert okvqa_accuracy(prediction, humans) == pytest.approx(original)
    assert vqa_accuracy(prediction, humans, stem=True) == pytest.approx(standard)


@pytest.mark.parametrize("generation, expected", [
    ("It is a red bus.\nThe bus is parked.", "red bus"),
    ("Yes, it is.", "yes"),
    ("A dog. It runs", "dog"),
    ("it's the umbrella", "umbrella"),
    ('He said "hi" twice', "he said"),
    ("  The answer  ", "answer"),
    ("Two.", "two"),
])
def test_short_answer_postprocess(generation, expected):
    assert short_answer(generation) == expected


@pytest.mark.parametrize("prediction, humans, expected", [
    # EvalAI: lower-case, '-' -> ' ', trailing period stripped: 2 matches
    ("Coca-Cola.", ["coca cola", "Coca-Cola"] + ["pepsi"] * 8, 0.6),
    # "'s" split off on both sides: 3 matches
    ("McDonald's", ["mcdonald's"] * 3 + ["burger king"] * 7, 0.9),
    # ',' and '?' deleted before anything else: 1 match
    ("1,000?", ["1000"] + ["100"] * 9, 0.3),
    ("three", ["3"] * 4 + ["4"] * 6, 1.0),
])
def test_textvqa_m4c_accuracy(prediction, humans, expected):
    assert textvqa_accuracy(prediction, humans) == pytest.approx(expected)


@pytest.mark.parametrize("generation, original, standard", [
    # the original feeds the raw generation to the M4C processor; standard cuts it with short_answer first
    ("Nike, Inc.", 0.0, 1.0),         # raw -> "nike inc" (0 matches); short -> "nike"
    ("yes\nThe sign says stop", 0.0, 1.0),
    ("nike", 1.0, 1.0),
])
def test_textvqa_raw_generation_vs_short_answer(generation, original, standard):
    example = Example(qid="1", image_path="", question_text="q", answers=tuple(["nike"] * 4 + ["yes"] * 6),
                      meta={"benchmark": "textvqa"})
    if "yes" in generation:
        example = Example(qid="1", image_path="", question_text="q", answers=tuple(["yes"] * 10),
                          meta={"benchmark": "textvqa"})
    for protocol, expected in (("original", original), ("standard", standard)):
        scored = score_textvqa([example], {"1": generation}, protocol=protocol)
        assert scored.records[0]["score"] == pytest.approx(expected), protocol


def test_textvqa_needs_ten_answers():
    with pytest.raises(ValueError, match="exactly 10"):
        textvqa_accuracy("a", ["a"] * 9)


def _write_okvqa(tmp_path):
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 1, "question": "What is the man doing?", "question_id": 11},
        {"image_id": 2, "question": "How many cats?", "question_id": 22},
        {"image_id": 3, "question": "What is this fruit?", "question_id": 33}]}

    def ann(qid, qtype, atype, humans):
        return {"question_id": qid, "image_id": qid // 11, "question_type": qtype, "answer_type": atype,
                "answers": [{"answer_id": i + 1, "answer": a, "raw_answer": a, "answer_confidence": "yes"}
                            for i, a in enumerate(humans)]}
    annotations = {"annotations": [
        ann(11, "what is the man doing", "other", answers(("ride", 3), ("walk", 7))),
        ann(22, "how many", "number", answers(("2", 2), ("3", 8))),
        ann(33, "what is", "other", answers(("banana", 10)))]}
    q, a = tmp_path / "OpenEnded_mscoco_val2014_questions.json", tmp_path / "mscoco_val2014_annotations.json"
    q.write_text(json.dumps(questions))
    a.write_text(json.dumps(annotations))
    return str(q), str(a)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_okvqa_cli(tmp_path, capsys):
    q, a = _write_okvqa(tmp_path)
    preds = _write_jsonl(tmp_path / "p.jsonl", [
        {"question_id": 11, "answer": "It is riding.\nHe rides a horse."},  # -> "riding" -> stem "ride": 0.9
        {"question_id": 22, "answer": "Two, I think"},                      # -> "two" -> "2": 0.6
        {"question_id": 33, "answer": "apple"}])                            # 0
    paths = [f"--config.eval_split.questions_path={q}", f"--config.eval_split.annotations_path={a}"]
    assert main(score_args("okvqa", preds, *paths)) == 0
    result = json.loads(capsys.readouterr().out)
    # original: "riding" -> whole-string stem "ride"; the humans disagree so they are stemmed too: 3 -> 0.9
    assert result["accuracy"] == pytest.approx((0.9 + 0.6 + 0.0) / 3 * 100)
    assert result["scorer"] == "okvqa_eval_original"
    assert result["count"] == 3 and result["missing"] == 0
    assert result["per_answer_type"] == pytest.approx({"number": 60.0, "other": 45.0})
    assert result["per_question_type"] == pytest.approx(
        {"how many": 60.0, "what is": 0.0, "what is the man doing": 90.0})


def test_missing_and_unknown_predictions(tmp_path, capsys):
    q, a = _write_okvqa(tmp_path)
    partial = _write_jsonl(tmp_path / "partial.jsonl", [{"question_id": 22, "answer": "2"}])
    paths = [f"--config.eval_split.questions_path={q}", f"--config.eval_split.annotations_path={a}"]
    assert main(score_args("okvqa", partial, *paths)) == 1
    assert "no prediction for 2 of 3 questions" in capsys.readouterr().err
    assert main(score_args("okvqa", partial, *paths, "--config.allow_missing=True")) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["missing"] == 2 and result["accuracy"] == pytest.approx(0.6 * 100 / 3)
    unknown = _write_jsonl(tmp_path / "unknown.jsonl", [{"question_id": 99, "answer": "2"}])
    assert main(score_args("okvqa", unknown, *paths, "--config.allow_missing=True")) == 1
    assert "not in the benchmark" in capsys.readouterr().err


def test_textvqa_native_file_cli_runs_alone(tmp_path):
    data = {"dataset_name": "textvqa", "data": [
        {"question_id": 5, "image_id": "abc", "question": "what brand?", "set_name": "val",
         "answers": ["coca cola", "Coca-Cola"] + ["pepsi"] * 8},
        {"question_id": 6, "image_id": "def", "question": "what number?", "set_name": "val",
         "answers": ["1000"] + ["100"] * 9}]}
    ann = tmp_path / "TextVQA_0.5.1_val.json"
    ann.write_text(json.dumps(data))
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"question_id": 5, "answer": "Coca-Cola. It is a can."},
                                                {"question_id": 6, "answer": "It is 1,000."}])
    cmd = [sys.executable, "-m", "vlm_jax.evaluate", *score_args("textvqa", preds, f"--config.eval_split.path={ann}")]
    out = subprocess.run(cmd + ["--config.protocol=standard"], cwd=REPO, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["accuracy"] == pytest.approx((0.6 + 0.3) / 2 * 100)  # short answers "coca-cola", "1,000"
    assert result["count"] == 2
    # the original's raw generations: "coca cola it is can" and "it is 1000" match no human answer
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["accuracy"] == 0.0


def test_bad_prediction_record_is_named(tmp_path, capsys):
    q, a = _write_okvqa(tmp_path)
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"question_id": 11}])
    assert main(score_args("okvqa", preds, f"--config.eval_split.questions_path={q}",
                           f"--config.eval_split.annotations_path={a}")) == 1
    assert "p.jsonl record #0: missing field 'answer'" in capsys.readouterr().err
    with pytest.raises(BenchmarkFileError, match="missing field 'questions'"):
        load_vqa(a, None)


def test_vqa_loader_files_and_image_names(tmp_path):
    q, a = _write_okvqa(tmp_path)
    examples = load_vqa(q, a, image_dir="/coco/val2014")
    assert [e.qid for e in examples] == ["11", "22", "33"]
    assert examples[0].image_path == "/coco/val2014/COCO_val2014_000000000001.jpg"
    assert examples[1].answers == tuple(answers(("2", 2), ("3", 8))) and examples[1].meta["answer_type"] == "number"
    assert load_vqa(q, None)[0].answers == ()
    data = json.loads(open(a).read())
    data["annotations"].append(dict(data["annotations"][0], question_id=44))
    (tmp_path / "extra.json").write_text(json.dumps(data))
    with pytest.raises(BenchmarkFileError, match="1 annotations have no question"):
        load_vqa(q, str(tmp_path / "extra.json"))
    data["annotations"] = data["annotations"][1:]
    (tmp_path / "fewer.json").write_text(json.dumps(data))
    with pytest.raises(BenchmarkFileError, match="no annotation for question_id 11"):
        load_vqa(q, str(tmp_path / "fewer.json"))


def test_judge_scorer_only_for_math(tmp_path, capsys):
    q, a = _write_okvqa(tmp_path)
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"question_id": i, "answer": "x"} for i in (11, 22, 33)])
    assert main(score_args("okvqa", preds, f"--config.eval_split.questions_path={q}",
                           f"--config.eval_split.annotations_path={a}", "--config.scorer=judge")) == 1
    assert "math benchmarks only" in capsys.readouterr().err
