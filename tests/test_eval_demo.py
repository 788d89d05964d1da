"""The demo's held-out questions as a generative benchmark: loader, prompt layout (as the training documents),
first-word scoring, and the config file."""
import json
import os

import pytest

from vlm_jax.evaluate import registry
from vlm_jax.evaluate.demo_questions import first_word, load_demo_questions
from vlm_jax.evaluate.examples import BenchmarkFileError
from vlm_jax.evaluate.prompts import Image, Text, build_prompt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Q = "What is in the image? Answer:"


def _heldout(tmp_path, rows):
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_load_turns_and_score(tmp_path):
    path = _heldout(tmp_path, [{"image": f"images/{n}.jpg", "prompt": Q, "choices": ["cat", "moon"], "answer": n}
                               for n in ("cat", "moon", "cat")])
    examples = registry.load_split({"loader": "demo_heldout", "path": path})
    assert [e.qid for e in examples] == ["1", "2", "3"]
    assert examples[1].image_path == str(tmp_path / "images" / "moon.jpg") and examples[1].answers == ("moon",)
    bench = registry.get("demo")
    turns = registry.turns_for(bench, examples[0], [examples[1]], "original")
    prompt = build_prompt(turns, "interleaved")
    assert prompt.segments == (Image(examples[1].image_path), Text(f"{Q} moon."), Image(examples[0].image_path),
                               Text(Q))
    scored = bench.score(examples, {"1": " cat. This is", "2": "The moon.", "3": " Moon"})
    assert scored.summary["accuracy"] == pytest.approx(100 / 3) and scored.summary["per_answer"] == {"cat": 50.0,
                                                                                                     "moon": 0.0}
    assert [r["extracted"] for r in scored.records] == ["cat", "the", "moon"]


def test_bad_files_name_the_line(tmp_path):
    with pytest.raises(BenchmarkFileError, match=r"heldout.jsonl:2: no field 'answer'"):
        load_demo_questions(_heldout(tmp_path, [{"image": "a", "prompt": Q, "choices": [], "answer": "x"},
                                                {"image": "b", "prompt": Q, "choices": []}]))
    assert first_word("  ...") == ""


def test_config_file_reads_the_demo_heldout_file():
    from vlm_jax import config_file

    c = config_file.load(os.path.join(REPO, "configs", "eval", "demo.py"))
    assert c.benchmark == "demo" and c.eval_split.path == "workdir/demo/corpus/heldout.jsonl"
    assert c.rices.encoder == "model" and c.prompt_template == "interleaved"
